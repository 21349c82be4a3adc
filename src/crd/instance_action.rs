//! The `ComputeInstanceAction` custom resource: spec, status, conditions, and the CRD generated from them.
// kube-derive takes one `printcolumn(...)` / `validation = ...` per column or rule, by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::PowerAction;

/// Longest `instanceId` the resource accepts (the admin client refuses longer ones too).
pub const MAX_INSTANCE_ID_LEN: usize = crate::api::client::MAX_INSTANCE_ID_LEN;
/// Default for `spec.timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 600;
/// How many finished actions `status.history` keeps.
pub const HISTORY_LIMIT: usize = 16;
/// How many (action, requestId) digests `status.sentOneShots` keeps.
pub const SENT_ONE_SHOTS_LIMIT: usize = 1024;

/// Declares the power state of one compute instance.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "compute.threatwinds.com",
    version = "v1alpha1",
    kind = "ComputeInstanceAction",
    plural = "computeinstanceactions",
    shortname = "cia",
    namespaced,
    status = "ComputeInstanceActionStatus",
    derive = "PartialEq",
    doc = "Declares the power state of one compute instance: running, stopped, restarted or reset.",
    printcolumn(name = "Instance", type_ = "string", json_path = ".spec.instanceId"),
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.desiredState"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Observed", type_ = "string", json_path = ".status.instance.status"),
    printcolumn(name = "Held By", type_ = "string", json_path = ".status.heldBy"),
    printcolumn(name = "Held Until", type_ = "string", json_path = ".status.heldUntil"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.escalation) || self.desiredState == 'restarted'")
    .message("escalation applies to desiredState restarted only (a restart that does not bring the instance back is escalated to a reset)"))]
pub struct ComputeInstanceActionSpec {
    /// The admin API instance ID, e.g. `inst-7g2xq4bm`. Immutable.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9_:-]|[.][A-Za-z0-9_:-])*$')")
            .message("instanceId must start with a letter or digit and contain only letters, digits, '.', '_', ':' or '-', without '..', '/', '?', '#' or spaces"),
        validation = Rule::new("self == oldSelf").message("instanceId is immutable: create a new ComputeInstanceAction for another instance")
    )]
    pub instance_id: String,

    /// `running` and `stopped` are levels kept true; `restarted` and `reset` run once per `requestId`.
    pub desired_state: DesiredState,

    /// For `restarted`/`reset`: a new value asks for one more run (like `kubectl rollout restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub request_id: Option<String>,

    /// How long one convergence may take before it is reported as failed.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: u32,

    /// For `running`/`stopped`: `continuous` corrects later drift; `once` converges and then only reports.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// Report what would be done without calling any action endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,

    /// Make no admin API calls at all until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// No action is sent after this time (RFC 3339); one not sent by then ends `Ready` with reason `Expired`.
    /// For `restarted`/`reset` it protects against a re-created object (GitOps rebuild, restore) running again;
    /// for levels (a schedule event's children) it keeps an action from running long after its event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,

    /// For `restarted`: if the restart was accepted but the instance is not `running` again within `after`, one
    /// `reset` is sent (at most once, with its own intent; never after an unclear answer without evidence that
    /// the restart ran, nor while a maintenance window or disruption budget holds it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

/// A soft-then-hard power action: restart first, reset if the restart did not bring the instance back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// How long after the restart was accepted the instance may take to be `running` again: `90s`, `5m`,
    /// `1h30m` (hours, minutes, seconds in that order). Keep it below `timeoutSeconds`.
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(
        validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''")
            .message("after must be a duration like 90s, 5m or 1h30m")
    )]
    pub after: String,
    /// The action to escalate to. Only `reset`.
    pub to: EscalationTarget,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EscalationTarget {
    Reset,
}

impl Escalation {
    /// `after` as a duration (`None` if it does not read as one, which the API server's rule prevents).
    pub fn after(&self) -> Option<std::time::Duration> {
        crate::crd::duration::parse(&self.after)
    }
}

fn default_timeout_seconds() -> u32 {
    DEFAULT_TIMEOUT_SECONDS
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
    Restarted,
    Reset,
}

impl DesiredState {
    /// The settled status a level asks for (`None` for one-shots).
    pub fn level_target(self) -> Option<crate::api::InstanceStatus> {
        match self {
            Self::Running => Some(crate::api::InstanceStatus::Running),
            Self::Stopped => Some(crate::api::InstanceStatus::Stopped),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Restarted => "restarted",
            Self::Reset => "reset",
        }
    }

    /// The action that moves an instance towards this state.
    pub fn action(self) -> PowerAction {
        match self {
            Self::Running => PowerAction::Start,
            Self::Stopped => PowerAction::Stop,
            Self::Restarted => PowerAction::Restart,
            Self::Reset => PowerAction::Reset,
        }
    }

    pub fn is_level(self) -> bool {
        matches!(self, Self::Running | Self::Stopped)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Continuous,
    Once,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputeInstanceActionStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The instance as last observed through the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<ObservedInstance>,
    /// The current or last action, written before the admin API is called (write-ahead intent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionRecord>,
    /// Finished actions, newest last, at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ActionRecord>,
    /// Every restart/reset this object ever sent (or may have sent), as short digests of (action, requestId),
    /// oldest first, at most 1024: an old requestId never runs again, however long ago it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent_one_shots: Vec<String>,
    /// While change control holds the action back: the ComputeMaintenanceWindow or ComputeDisruptionBudget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// While a maintenance window holds the action back: when it may next be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    /// Nothing was done on purpose: a dry run, an expired one-shot, a requestId that already ran.
    Skipped,
    /// `spec.suspend` is true.
    Suspended,
}

/// A Kubernetes condition (`metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: DateTime<Utc>,
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedInstance {
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// When this observation was written (it is refreshed only with other changes, to keep writes rare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
}

/// Where an action stands. `Requested` is the write-ahead intent: persisted before the POST.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ActionState {
    /// Intent persisted; whether the POST reached the admin API is not known yet.
    Requested,
    /// The admin API refused it (a 4xx such as 409, 429, 401/403, or a connection that never opened): it did not
    /// happen and may be tried again. A 5xx, a timeout or a cut connection is never a refusal.
    Rejected,
    /// The admin API answered 202; completion is being polled.
    Accepted,
    Succeeded,
    Failed,
    /// The POST may or may not have been carried out; a one-shot is never resent.
    OutcomeUnknown,
}

impl ActionState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::OutcomeUnknown)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    pub action: PowerAction,
    /// The `spec.requestId` this action answers (one-shots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The spec generation that asked for it.
    pub generation: i64,
    pub state: ActionState,
    /// When the intent was persisted, before the first POST.
    pub intent_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// POSTs sent for this action (a level may be sent again after a refusal).
    pub attempts: u32,
    /// The instance's status when the intent was written: the action is judged by a departure from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_status: Option<String>,
    /// The instance was seen departing from `fromStatus` (or in a transitional status) after the request:
    /// proof that the action ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub saw_transition: bool,
    /// Short reason of the last refusal or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Drift correction rather than a first convergence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drift: bool,
}

impl ActionRecord {
    /// A fresh intent: requested at `intent_at`, nothing answered or seen yet.
    pub fn intent(action: PowerAction, request_id: Option<String>, generation: i64, intent_at: DateTime<Utc>) -> Self {
        Self {
            action,
            request_id,
            generation,
            state: ActionState::Requested,
            intent_at,
            accepted_at: None,
            completed_at: None,
            attempts: 1,
            from_status: None,
            saw_transition: false,
            reason: None,
            drift: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::crd_to_yaml;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_the_validation_the_api_server_enforces() {
        let yaml = crd_to_yaml(&ComputeInstanceAction::crd()).unwrap();
        for needle in [
            "self == oldSelf",
            "x-kubernetes-list-type: map",
            "maxLength: 128",
            "- restarted",
            "maximum: 86400",
            "shortNames:",
            "subresources:",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn spec_defaults_apply_when_fields_are_missing() {
        let spec: ComputeInstanceActionSpec =
            serde_json::from_str(r#"{"instanceId":"i-1","desiredState":"restarted"}"#).unwrap();
        assert_eq!(spec.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
        assert_eq!(spec.enforcement, Enforcement::Continuous);
        assert!(!spec.dry_run && !spec.suspend && spec.request_id.is_none());
    }
}
