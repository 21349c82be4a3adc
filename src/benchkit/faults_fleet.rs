//! The fault run's fleet: a ComputeFleetAction restarting its own instances (zone `faults-fleet`) a few at a
//! time while the controller is killed, the API server restarts and the leader changes. Judged from the
//! simulator's audit: no instance may be restarted twice (at most once for life, through the composition);
//! one that was never restarted is reported with the fleet's final condition (an unclear answer is never
//! resent, so a 503 burst may leave one unrestarted, visibly).

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde::Serialize;

use super::objects::instance;
use crate::api::{Instance, InstanceStatus, PowerAction};
use crate::crd::fleet_action::ComputeFleetAction;
use crate::sim::audit::AuditEntry;

const ZONE: &str = "faults-fleet";
const NAME: &str = "fleet-restart";

/// What became of the fleet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetFaults {
    pub instances: usize,
    pub restarted_once: usize,
    /// Instances restarted more than once (must be 0).
    pub duplicates: usize,
    pub not_restarted: usize,
    /// The fleet's Ready or Stalled reason at the end (`None`: it did not settle).
    pub final_reason: Option<String>,
    pub settled: bool,
}

pub fn instances(count: usize) -> Vec<Instance> {
    (0..count)
        .map(|i| {
            let mut inst = instance(&format!("fleet-{i:03}"), InstanceStatus::Running);
            inst.zone = ZONE.into();
            inst
        })
        .collect()
}

pub async fn create(client: &kube::Client, ns: &str, max_concurrent: u32) -> anyhow::Result<()> {
    let fleet: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": NAME},
        "spec": {"selector": {"zone": ZONE}, "desiredState": "restarted", "requestId": "faults-1",
            // Unclear answers end a child Stalled/OutcomeUnknown: tolerated, so the rollout goes on through them.
            "strategy": {"maxConcurrent": max_concurrent, "maxFailures": 100000}},
    }))?;
    Api::<ComputeFleetAction>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &fleet)
        .await?;
    Ok(())
}

/// Waits until the fleet is Ready or Stalled for its generation; its reason, or `None` at the deadline.
pub async fn settle(client: &kube::Client, ns: &str, deadline: Instant) -> Option<String> {
    let api = Api::<ComputeFleetAction>::namespaced(client.clone(), ns);
    loop {
        if let Ok(f) = api.get(NAME).await {
            let settled = f.status.as_ref().and_then(|s| {
                (s.observed_generation == f.metadata.generation)
                    .then(|| {
                        s.conditions
                            .iter()
                            .find(|c| c.status == "True" && (c.type_ == "Ready" || c.type_ == "Stalled"))
                            .map(|c| c.reason.clone())
                    })
                    .flatten()
            });
            if settled.is_some() {
                return settled;
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn judge(count: usize, audit: &[AuditEntry], final_reason: Option<String>) -> FleetFaults {
    let mut report = FleetFaults {
        instances: count,
        settled: final_reason.is_some(),
        final_reason,
        ..FleetFaults::default()
    };
    for (id, _) in instances(count).iter().map(|i| (i.id.clone(), ())) {
        let n = audit
            .iter()
            .filter(|e| e.instance_id == id && e.action == PowerAction::Restart)
            .count();
        match n {
            0 => report.not_restarted += 1,
            1 => report.restarted_once += 1,
            _ => report.duplicates += 1,
        }
    }
    report
}
