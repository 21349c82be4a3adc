//! The `ComputeFleetAction` custom resource: many instances chosen by list filters or IDs, acted on through
//! child ComputeInstanceActions at a bounded pace with a failure budget.
// kube-derive takes one `printcolumn(...)` / `validation = ...` per column or rule, by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::instance_action::{Condition, DesiredState, Enforcement};
use crate::crd::selector::{InstanceSelector, Strategy};

/// The label naming the fleet a child belongs to (`kubectl get cia -l compute.threatwinds.com/fleet=NAME`).
pub const FLEET_LABEL: &str = "compute.threatwinds.com/fleet";
/// Longest fleet-name prefix of a child name: prefix + `-` + 10 hex digits stays within 63 characters.
pub(crate) const NAME_PREFIX_MAX: usize = 52;

/// FNV-1a, 64 bit: stable across Rust versions and platforms (std's hasher is not), so names survive upgrades.
pub(crate) fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `name` cut to `max` characters without a trailing `-` or `.` (keeps it a DNS-1123 name).
pub(crate) fn truncated(name: &str, max: usize) -> &str {
    let cut = &name[..name.len().min(max)];
    cut.trim_end_matches(['-', '.'])
}

/// The value of [`FLEET_LABEL`]: the fleet's name, or for names longer than a label value allows, a
/// shortened name with a hash.
pub fn fleet_label_value(fleet_name: &str) -> String {
    if fleet_name.len() <= 63 {
        fleet_name.to_owned()
    } else {
        format!(
            "{}-{:010x}",
            truncated(fleet_name, NAME_PREFIX_MAX),
            stable_hash(&[fleet_name]) & 0xff_ffff_ffff
        )
    }
}

/// How many instance IDs a status lists as examples (dry run, failures).
pub const SAMPLE_IDS: usize = 10;

/// Declares the power state of every instance a selector matches, rolled out a few at a time.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "compute.threatwinds.com",
    version = "v1alpha1",
    kind = "ComputeFleetAction",
    plural = "computefleetactions",
    shortname = "cfa",
    namespaced,
    status = "ComputeFleetActionStatus",
    derive = "PartialEq",
    doc = "Declares the power state of many compute instances, chosen by admin API filters or IDs, rolled out through child ComputeInstanceActions at most maxConcurrent at a time.",
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.desiredState"),
    printcolumn(name = "Selected", type_ = "integer", json_path = ".status.selected"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.succeeded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(name = "In Progress", type_ = "integer", json_path = ".status.inProgress"),
    printcolumn(name = "Denied", type_ = "integer", priority = 1, json_path = ".status.denied"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.desiredState in ['restarted', 'reset']) || has(self.requestId)")
        .message("desiredState restarted and reset run once per requestId: set requestId (for example a date); a new value starts a new run over a fresh snapshot of the selection")
)]
pub struct ComputeFleetActionSpec {
    /// Which instances: admin API list filters (AND-combined) and/or explicit IDs. At least one is required.
    pub selector: InstanceSelector,

    /// `running` and `stopped` are levels that follow the selection (with `enforcement: once`, they converge
    /// what matched when the run started); `restarted` and `reset` run once per `requestId`, for the fleet's
    /// whole life, over a snapshot of the selection taken when the run starts.
    pub desired_state: DesiredState,

    /// For `restarted`/`reset` (required there): a new value starts a new run with a new snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub request_id: Option<String>,

    /// For `restarted`/`reset` and `enforcement: once` levels: instances not started by this time (RFC 3339)
    /// are never started (counted as expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,

    /// Report how many instances would be acted on (and how many are denied) without creating any child.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,

    /// Make no admin API calls at all (children are suspended too) until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Start no new instance while true; those in flight finish. Resuming continues where it stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// Pace (`maxConcurrent`, default 1) and failure budget (`maxFailures`, default 0).
    #[serde(default)]
    pub strategy: Strategy,

    /// For `running`/`stopped`, passed to each child: `continuous` corrects later drift, `once` converges and
    /// then only reports.
    #[serde(default)]
    pub enforcement: Enforcement,
}

/// The frozen selection of a one-shot run: taken once per (`desiredState`, `requestId`), all pages.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub request_id: String,
    pub desired_state: Option<DesiredState>,
    /// When the selection was listed.
    pub taken_at: DateTime<Utc>,
    /// Every instance selected at that time (only instances the namespace may power), in list order.
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// Instances a child was created for in this run: never created again, even if the child is deleted,
    /// so a one-shot runs at most once per instance and run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started_ids: Vec<String>,
    /// For `enforcement: once` levels: the selector the snapshot was taken for (a new selector is a new run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<InstanceSelector>,
    /// True when the selection kept changing while it was walked: the snapshot may miss instances.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// What a dry run found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunReport {
    /// Instances that would be acted on (not already at a level).
    pub would_act: u32,
    /// Of those, how many a maintenance window holds back now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_back: u32,
    /// The first few instance IDs that would be acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_ids: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputeFleetActionStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Instances in the selection (one-shots: the snapshot).
    #[serde(default)]
    pub selected: u32,
    /// Children that reached their desired state.
    #[serde(default)]
    pub succeeded: u32,
    /// Children that ended Stalled or Failed.
    #[serde(default)]
    pub failed: u32,
    /// Children the instance controller denied after the selection (a policy changed meanwhile); never
    /// started, not failures. Instances the namespace may not power are never selected, so never counted.
    #[serde(default)]
    pub denied: u32,
    /// Children started and not finished.
    #[serde(default)]
    pub in_progress: u32,
    /// Selected, allowed instances without a child yet.
    #[serde(default)]
    pub pending: u32,
    /// Children in progress that a maintenance window or disruption budget holds back (nothing sent yet).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiting: u32,
    /// One-shot instances not started before `notAfter` (never started).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired: u32,
    /// The first few instances whose child failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_ids: Vec<String>,
    /// The run in progress or last finished (one-shots and `enforcement: once` levels), with its frozen
    /// selection, written before any of its children is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// Digests of every (desiredState, requestId) one-shot run this fleet ever started, for its whole life
    /// (the newest 1024): going back to one of them runs nothing (`Ready/AlreadyRun`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ran_runs: Vec<String>,
    /// Set while `spec.dryRun` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunReport>,
    /// When the selection was last listed from the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_listed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_carries_the_rules_and_columns() {
        let yaml = crate::crd::crd_to_yaml(&ComputeFleetAction::crd()).unwrap();
        for needle in [
            "- cfa",
            "subresources:",
            "set requestId",
            "selector must set at least one of",
            "In Progress",
            "x-kubernetes-int-or-string: true",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn spec_defaults() {
        let spec: ComputeFleetActionSpec =
            serde_json::from_str(r#"{"selector":{"zone":"z"},"desiredState":"running"}"#).unwrap();
        assert_eq!(spec.enforcement, Enforcement::Continuous);
        assert_eq!(spec.strategy, Strategy::default());
        assert!(!spec.dry_run && !spec.suspend && !spec.paused && spec.request_id.is_none());
    }
}
