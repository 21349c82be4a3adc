//! The `ComputePowerSchedule` custom resource: a calendar of power events in an IANA time zone, an override
//! that expires, and the status that says what happened last and what happens next.
// kube-derive takes one `printcolumn(...)` / `validation = ...` per column or rule, by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::instance_action::{Condition, DesiredState};
use crate::crd::selector::{InstanceSelector, Strategy};

/// Most events one schedule may list.
pub const MAX_EVENTS: usize = 32;
/// Default for `spec.startingDeadline`.
pub const DEFAULT_STARTING_DEADLINE: &str = "1h";

/// Powers instances on and off on a weekly calendar, through one child ComputeFleetAction per event.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "compute.threatwinds.com",
    version = "v1alpha1",
    kind = "ComputePowerSchedule",
    plural = "computepowerschedules",
    shortname = "cps",
    namespaced,
    status = "ComputePowerScheduleStatus",
    derive = "PartialEq",
    doc = "Powers compute instances on and off on a weekly calendar in an IANA time zone: at each event it creates a child ComputeFleetAction.",
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.timeZone"),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextEvent.state"),
    printcolumn(name = "Next At", type_ = "string", json_path = ".status.nextEvent.time"),
    printcolumn(name = "Last", type_ = "string", json_path = ".status.lastEvent.state"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.lastEvent.result"),
    printcolumn(
        name = "Override",
        type_ = "string",
        priority = 1,
        json_path = ".status.override.until"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ComputePowerScheduleSpec {
    /// Which instances: admin API list filters (AND-combined) and/or explicit IDs. At least one is required.
    pub selector: InstanceSelector,

    /// IANA time zone of the events' wall-clock times, e.g. `Europe/Madrid`, `America/New_York`, `UTC`.
    /// Zone data is compiled into the operator; an unknown name is reported as `Stalled/InvalidTimeZone`.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')")
            .message("timeZone must be an IANA zone name such as Europe/Madrid, America/New_York or UTC")
    )]
    pub time_zone: String,

    /// The calendar: at each `at` (on the listed `days`) the instances are brought to `state`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(
        validation = Rule::new("self.all(a, self.all(b, a.at != b.at || a.state == b.state || (has(a.days) && has(b.days) && !a.days.exists(d, d in b.days))))")
            .message("two events at the same time on a common day ask for different states: remove one or give them disjoint days")
    )]
    pub events: Vec<ScheduleEvent>,

    /// `events` (default): converge at each event and leave manual changes between events alone.
    /// `continuous`: hold the state of the last event at all times (drift is corrected).
    #[serde(default)]
    pub enforcement: ScheduleEnforcement,

    /// An event missed (controller down, schedule suspended) is still run if it is younger than this; otherwise
    /// it is skipped and reported. A duration such as `1h`, `30m`, `90s` or `1h30m` (default `1h`).
    /// Applies to `events` enforcement; `continuous` always holds the state of the last event.
    #[serde(default = "default_starting_deadline")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(
        validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$')")
            .message("startingDeadline must be a duration made of hours, minutes and seconds, e.g. 1h, 30m, 90s or 1h30m")
    )]
    pub starting_deadline: String,

    /// Pace and failure budget of each event's child fleet. Defaults fit a calendar: `maxConcurrent` 50 and a
    /// failure budget that never stops an event (each instance is tried once; one that cannot move holds back
    /// no other). A fleet's own defaults are more careful (1 and 0).
    #[serde(default)]
    pub strategy: Strategy,

    /// Hold `state` until `until`; then the schedule resumes by itself (the state of the calendar at `until`).
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub power_override: Option<PowerOverride>,

    /// Create no child fleet while true. Events missed meanwhile are caught up within `startingDeadline`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn default_starting_deadline() -> String {
    DEFAULT_STARTING_DEADLINE.to_owned()
}

/// One calendar entry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleEvent {
    /// 24-hour wall-clock time in `timeZone`, `HH:MM`.
    #[schemars(length(min = 5, max = 5))]
    #[x_kube(
        validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')")
            .message("at must be a 24-hour wall-clock time HH:MM, e.g. 07:00 or 19:30")
    )]
    pub at: String,
    /// Days of the week (`Mon` ... `Sun`) in `timeZone`; omitted means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 7))]
    #[x_kube(
        validation = Rule::new("self.all(d, self.exists_one(e, e == d))")
            .message("days must not list a day twice")
    )]
    pub days: Vec<Day>,
    /// `running` or `stopped`.
    pub state: ScheduledState,
}

/// A day of the week, as written in a schedule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    pub fn weekday(self) -> chrono::Weekday {
        use chrono::Weekday as W;
        match self {
            Self::Mon => W::Mon,
            Self::Tue => W::Tue,
            Self::Wed => W::Wed,
            Self::Thu => W::Thu,
            Self::Fri => W::Fri,
            Self::Sat => W::Sat,
            Self::Sun => W::Sun,
        }
    }
}

/// The two levels a schedule sets. Ordered so that `Stopped` sorts last (it wins a tie, see the calendar).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduledState {
    Running,
    Stopped,
}

impl ScheduledState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }

    pub fn desired_state(self) -> DesiredState {
        match self {
            Self::Running => DesiredState::Running,
            Self::Stopped => DesiredState::Stopped,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleEnforcement {
    #[default]
    Events,
    Continuous,
}

/// Hold one state until a time, whatever the calendar says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerOverride {
    pub state: ScheduledState,
    /// RFC 3339, e.g. `2026-12-04T18:00:00+01:00`. Afterwards the schedule resumes by itself.
    pub until: DateTime<Utc>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputePowerScheduleStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The next time the schedule will act, and the state it will set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_event: Option<NextEvent>,
    /// The last event the schedule handled (run, caught up or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
    /// The override in effect, while it is.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub power_override: Option<OverrideStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NextEvent {
    pub time: DateTime<Utc>,
    pub state: ScheduledState,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastEvent {
    /// When the event was due (for the end of an override: the override's end).
    pub time: DateTime<Utc>,
    pub state: ScheduledState,
    pub result: EventResult,
    /// The ComputeFleetAction created for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What became of an event.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EventResult {
    /// Its child fleet is rolling out.
    InProgress,
    /// Its child fleet is Ready.
    Succeeded,
    /// Its child fleet is Stalled (failure budget, denied, ...).
    Failed,
    /// Missed by more than `startingDeadline`: nothing was run.
    Skipped,
    /// Its child fleet finished, but some instances were not started within `startingDeadline` of the event
    /// and were skipped as late (the message says how many).
    Late,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideStatus {
    pub state: ScheduledState,
    pub until: DateTime<Utc>,
    /// The ComputeFleetAction that holds the override's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_carries_the_rules_and_columns() {
        let yaml = crate::crd::crd_to_yaml(&ComputePowerSchedule::crd()).unwrap();
        for needle in [
            "- cps",
            "subresources:",
            "Next At",
            "at must be a 24-hour wall-clock time",
            "timeZone must be an IANA zone name",
            "selector must set at least one of",
            "maxItems: 32",
            "- Sun",
            "startingDeadline must be a duration",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn spec_defaults() {
        let spec: ComputePowerScheduleSpec = serde_json::from_str(
            r#"{"selector":{"zone":"z"},"timeZone":"UTC","events":[{"at":"07:00","state":"running"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.enforcement, ScheduleEnforcement::Events);
        assert_eq!(spec.starting_deadline, "1h");
        assert!(spec.events[0].days.is_empty() && !spec.suspend && spec.power_override.is_none());
        let with_override: ComputePowerScheduleSpec = serde_json::from_str(
            r#"{"selector":{"zone":"z"},"timeZone":"UTC","events":[{"at":"07:00","state":"running"}],
                "override":{"state":"running","until":"2026-12-04T18:00:00+01:00"}}"#,
        )
        .unwrap();
        assert_eq!(
            with_override.power_override.unwrap().until.to_rfc3339(),
            "2026-12-04T17:00:00+00:00"
        );
    }
}
