//! Every custom resource the operator serves, one module per kind, and the selector fleets and schedules share.
//! These types are the CRDs (generated from them; `crds/` holds the same text) and import nothing from the
//! controllers, so the plugin and the tests read them without the controllers.
pub mod access_policy;
pub mod disruption_budget;
pub mod duration;
pub mod fleet_action;
pub mod instance_action;
pub mod maintenance_window;
pub mod power_schedule;
pub mod selector;

use kube::CustomResourceExt;

/// Every CRD of the operator with the file name `crds/` stores it under.
pub fn crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    vec![
        (
            "computeinstanceactions.yaml",
            instance_action::ComputeInstanceAction::crd(),
        ),
        ("computeaccesspolicies.yaml", access_policy::ComputeAccessPolicy::crd()),
        ("computefleetactions.yaml", fleet_action::ComputeFleetAction::crd()),
        (
            "computepowerschedules.yaml",
            power_schedule::ComputePowerSchedule::crd(),
        ),
        (
            "computemaintenancewindows.yaml",
            maintenance_window::ComputeMaintenanceWindow::crd(),
        ),
        (
            "computedisruptionbudgets.yaml",
            disruption_budget::ComputeDisruptionBudget::crd(),
        ),
    ]
}

/// One CRD as YAML, exactly as `crds/` stores it.
pub fn crd_to_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_norway::Error> {
    Ok(format!("---\n{}", serde_norway::to_string(crd)?))
}

/// All CRDs as one YAML stream, as `compute-operator crd` prints them.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    crds().iter().map(|(_, crd)| crd_to_yaml(crd)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_folder_matches_generated_crd() {
        for (file, crd) in crds() {
            let generated = crd_to_yaml(&crd).expect("CRD serializes");
            let path = format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"));
            let stored = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                generated == stored,
                "crds/{file} is stale: run `cargo run -- crd-files` (writes crds/ and the chart's copy)"
            );
        }
    }
}
