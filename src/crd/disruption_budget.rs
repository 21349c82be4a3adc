//! Change control in space: the cluster-scoped `ComputeDisruptionBudget` (at most so many matching instances
//! disrupted at once, across every namespace, object and fleet), modelled on PodDisruptionBudget. Evaluated in
//! `controllers::change`.
// kube-derive takes one `printcolumn(...)` / `validation = ...` per column or rule, by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::crd::access_policy::InstanceMatch;
use crate::crd::instance_action::Condition;

/// Limits how many matching instances this operator disrupts at once. An instance counts as disrupted from the
/// intent of a stop, restart or reset until that action completed, and, for a stop, for as long as a
/// ComputeInstanceAction keeps it stopped. Written by cluster administrators (cluster-scoped).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "compute.threatwinds.com",
    version = "v1alpha1",
    kind = "ComputeDisruptionBudget",
    plural = "computedisruptionbudgets",
    shortname = "cdb",
    status = "ComputeDisruptionBudgetStatus",
    derive = "PartialEq",
    doc = "Limits how many matching compute instances the operator disrupts (stops, restarts, resets) at once, across every namespace, object and fleet.",
    printcolumn(name = "Max", type_ = "string", json_path = ".spec.maxDisrupted"),
    printcolumn(name = "Matching", type_ = "integer", json_path = ".status.matching"),
    printcolumn(name = "Disrupted", type_ = "integer", json_path = ".status.disrupted"),
    printcolumn(name = "Allowed", type_ = "integer", json_path = ".status.allowed"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ComputeDisruptionBudgetSpec {
    /// Which instances it covers: IDs or admin API attributes (all given attributes must match).
    pub instances: InstanceMatch,
    /// At most this many covered instances disrupted at once: a count (`2`) or a percentage of the matching
    /// instances (`"25%"`, rounded down, as the list endpoint last counted them).
    #[schemars(schema_with = "max_disrupted_schema")]
    pub max_disrupted: IntOrString,
}

fn max_disrupted_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^(100|[1-9]?[0-9])%$"}],
        "description": "A count (2) or a percentage of the matching instances (\"25%\").",
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')",
            "message": "maxDisrupted must be a count of at least 0 or a percentage from 0% to 100%, e.g. 2 or \"25%\""
        }]
    })
}

/// What the budget counts now (administrators read it: it counts instances of every tenant).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputeDisruptionBudgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Covered instances the list endpoint returned at `countedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<u32>,
    /// Covered instances disrupted now (from what the ComputeInstanceActions' statuses record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disrupted: Option<u32>,
    /// `maxDisrupted` resolved against `matching`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_at: Option<DateTime<Utc>>,
    /// kstatus conditions: `Ready` (counted) or `Reconciling` (not counted yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_carries_the_rules_and_columns() {
        let yaml = crate::crd::crd_to_yaml(&ComputeDisruptionBudget::crd()).unwrap();
        assert!(yaml.contains("scope: Cluster"), "cluster-scoped");
        for needle in [
            "- cdb",
            "x-kubernetes-int-or-string: true",
            "maxDisrupted must be a count",
            "instances must give ids or at least one of",
            "Disrupted",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn counts_and_percentages_read() {
        let count: ComputeDisruptionBudgetSpec =
            serde_json::from_str(r#"{"instances":{"zones":["z1"]},"maxDisrupted":2}"#).unwrap();
        assert_eq!(count.max_disrupted, IntOrString::Int(2));
        let share: ComputeDisruptionBudgetSpec =
            serde_json::from_str(r#"{"instances":{"zones":["z1"]},"maxDisrupted":"25%"}"#).unwrap();
        assert_eq!(share.max_disrupted, IntOrString::String("25%".into()));
    }
}
