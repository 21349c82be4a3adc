//! RBAC grants as (apiGroup, resource, verb) sets: read from a rendered Role or ClusterRole, and exactly what the
//! controller, policies, namespace labels and leader election need.

use std::collections::BTreeSet;

use serde_norway::Value;

use super::{name, s};

pub type Grant = (String, String, String); // (apiGroup, resource, verb)

pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .map(|x| x.as_str().expect("RBAC list entries are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut set = BTreeSet::new();
    for rule in s(role, &["rules"])
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
    {
        assert!(
            s(&rule, &["nonResourceURLs"]).is_none(),
            "{} has nonResourceURLs",
            name(role)
        );
        for g in strings(s(&rule, &["apiGroups"])) {
            for r in strings(s(&rule, &["resources"])) {
                for v in strings(s(&rule, &["verbs"])) {
                    set.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    set
}

pub fn grant_set(list: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    let mut set = BTreeSet::new();
    for (g, r, verbs) in list {
        for v in *verbs {
            set.insert((g.to_string(), r.to_string(), v.to_string()));
        }
    }
    set
}

/// What the controller needs in every namespace it watches, exactly.
pub fn controller_grants() -> BTreeSet<Grant> {
    grant_set(&[
        (
            "compute.threatwinds.com",
            "computeinstanceactions",
            // create/delete/patch: the fleet controller's children.
            &["get", "list", "watch", "create", "delete", "patch"],
        ),
        (
            "compute.threatwinds.com",
            "computeinstanceactions/status",
            &["patch", "update"],
        ),
        (
            "compute.threatwinds.com",
            "computefleetactions",
            // create/delete/patch: the schedule controller's children.
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "compute.threatwinds.com",
            "computefleetactions/status",
            &["patch", "update"],
        ),
        (
            "compute.threatwinds.com",
            "computepowerschedules",
            &["get", "list", "watch"],
        ),
        (
            "compute.threatwinds.com",
            "computepowerschedules/status",
            &["patch", "update"],
        ),
        ("compute.threatwinds.com", "computefleetactions/finalizers", &["update"]),
        (
            "compute.threatwinds.com",
            "computepowerschedules/finalizers",
            &["update"],
        ),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "events", &["create", "patch"]),
    ])
}

/// With `policyMode: enforce`: read the cluster-scoped ComputeAccessPolicies.
pub fn policy_grants() -> BTreeSet<Grant> {
    grant_set(&[(
        "compute.threatwinds.com",
        "computeaccesspolicies",
        &["get", "list", "watch"],
    )])
}

/// With `policyMode: enforce`: watch namespace labels (policies select namespaces by label).
pub fn namespace_grants() -> BTreeSet<Grant> {
    grant_set(&[("", "namespaces", &["get", "list", "watch"])])
}

/// Always: read the cluster-scoped ComputeMaintenanceWindows and ComputeDisruptionBudgets, write their status.
pub fn change_control_grants() -> BTreeSet<Grant> {
    grant_set(&[
        (
            "compute.threatwinds.com",
            "computemaintenancewindows",
            &["get", "list", "watch"],
        ),
        (
            "compute.threatwinds.com",
            "computedisruptionbudgets",
            &["get", "list", "watch"],
        ),
        (
            "compute.threatwinds.com",
            "computemaintenancewindows/status",
            &["get", "patch"],
        ),
        (
            "compute.threatwinds.com",
            "computedisruptionbudgets/status",
            &["get", "patch"],
        ),
    ])
}

pub fn lease_grants() -> BTreeSet<Grant> {
    grant_set(&[("coordination.k8s.io", "leases", &["create", "get", "update"])])
}
