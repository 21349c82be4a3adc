//! Change control in time: the cluster-scoped `ComputeMaintenanceWindow` (when actions may start, and when
//! they must not: weekly windows in an IANA zone, one-off freezes). Evaluated in `controllers::change`.
// kube-derive takes one `printcolumn(...)` / `validation = ...` per column or rule, by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::PowerAction;
use crate::crd::access_policy::{InstanceMatch, NamespaceMatch};
use crate::crd::instance_action::Condition;
use crate::crd::power_schedule::Day;

/// Most windows (and, separately, freezes) one object may list.
pub const MAX_WINDOWS: usize = 32;

/// Gates when power actions may start, for matching namespaces and instances. Written by cluster administrators
/// (cluster-scoped). `allow` windows: actions start only inside one of them. `deny` windows and `freezes`: no
/// action starts inside them. An action already sent is never interrupted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "compute.threatwinds.com",
    version = "v1alpha1",
    kind = "ComputeMaintenanceWindow",
    plural = "computemaintenancewindows",
    shortname = "cmw",
    status = "ComputeMaintenanceWindowStatus",
    derive = "PartialEq",
    doc = "Gates when power actions may start for matching namespaces and instances: weekly allow/deny windows in an IANA time zone and one-off freezes.",
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.timeZone"),
    printcolumn(name = "Actions", type_ = "string", json_path = ".spec.actions"),
    printcolumn(name = "Open", type_ = "string", json_path = ".status.open"),
    printcolumn(name = "Next Change", type_ = "string", json_path = ".status.nextChange"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.windows) > 0 || size(self.freezes) > 0")
    .message("a maintenance window must list at least one of windows or freezes"))]
pub struct ComputeMaintenanceWindowSpec {
    /// Which namespaces' actions it gates: by name and/or label selector (never empty).
    pub namespaces: NamespaceMatch,
    /// Which instances: IDs or admin API attributes (all given attributes must match). Omitted: every instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceMatch>,
    /// IANA time zone of the windows' wall-clock times, e.g. `Europe/Madrid`, `UTC`. Days and times follow the
    /// schedule calendar's rules (a time that does not exist runs at the first instant after it; a repeated one
    /// is taken at its first occurrence).
    #[serde(default = "utc")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')")
            .message("timeZone must be an IANA zone name such as Europe/Madrid, America/New_York or UTC")
    )]
    pub time_zone: String,
    /// Weekly windows.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub windows: Vec<Window>,
    /// One-off date ranges in which no action starts (change freezes).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub freezes: Vec<Freeze>,
    /// Which actions it gates. Default: `restart`, `reset`, `stop` (starting an instance is rarely disruptive;
    /// add `start` to gate it too).
    #[serde(default = "default_actions")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(
        validation = Rule::new("self.all(a, self.exists_one(b, b == a))")
            .message("actions must not list an action twice")
    )]
    pub actions: Vec<PowerAction>,
}

fn utc() -> String {
    "UTC".into()
}

fn default_actions() -> Vec<PowerAction> {
    vec![PowerAction::Restart, PowerAction::Reset, PowerAction::Stop]
}

/// `allow`: actions may start only inside some allow window. `deny`: no action starts inside it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Allow,
    Deny,
}

/// A weekly window: from `start` to `end` (wall clock in `timeZone`) on each of `days`. An `end` at or before
/// `start` ends on the next day (`22:00`-`02:00`; `00:00`-`00:00` is the whole day).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// `allow` or `deny`.
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// Days of the week the window starts on (`Mon` ... `Sun`); omitted means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 7))]
    #[x_kube(
        validation = Rule::new("self.all(d, self.exists_one(e, e == d))")
            .message("days must not list a day twice")
    )]
    pub days: Vec<Day>,
    /// 24-hour wall-clock start, `HH:MM`.
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(
        validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')")
            .message("start must be a 24-hour wall-clock time HH:MM, e.g. 22:00")
    )]
    pub start: String,
    /// 24-hour wall-clock end, `HH:MM`.
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(
        validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')")
            .message("end must be a 24-hour wall-clock time HH:MM, e.g. 06:00")
    )]
    pub end: String,
}

/// A one-off freeze: no gated action starts from `from` until `until` (RFC 3339).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("timestamp(self.until) > timestamp(self.from)")
    .message("a freeze's until must be after its from"))]
pub struct Freeze {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Why (shown in the messages of the actions it holds back), e.g. `year-end freeze`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,
}

/// What the operator last computed for the window (administrators read it; tenants see only their objects).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputeMaintenanceWindowStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether gated actions may start now (for the instances it covers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    /// When `open` next changes, if within the search horizon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change: Option<DateTime<Utc>>,
    /// kstatus conditions: `Ready` (the spec reads as a calendar) or `Stalled` (it does not, e.g. an unknown
    /// zone: such a window holds every action it covers back, never lets one through).
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
        let yaml = crate::crd::crd_to_yaml(&ComputeMaintenanceWindow::crd()).unwrap();
        assert!(yaml.contains("scope: Cluster"), "cluster-scoped");
        for needle in [
            "- cmw",
            "at least one of windows or freezes",
            "start must be a 24-hour wall-clock time",
            "until must be after its from",
            "timeZone must be an IANA zone name",
            "namespaces must give names or a selector",
            "Next Change",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn defaults_gate_the_disruptive_actions_in_utc() {
        let spec: ComputeMaintenanceWindowSpec = serde_json::from_str(
            r#"{"namespaces":{"names":["a"]},"windows":[{"type":"allow","start":"22:00","end":"02:00"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.time_zone, "UTC");
        assert_eq!(spec.actions, default_actions());
        assert!(spec.instances.is_none() && spec.freezes.is_empty());
        assert_eq!(spec.windows[0].kind, WindowKind::Allow);
    }
}
