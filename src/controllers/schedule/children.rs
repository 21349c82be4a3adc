//! A schedule's child fleets as the planner sees them: deterministic names, what each child stands for, and
//! its outcome. Pure (the object building from and to ComputeFleetAction lives here too, without I/O).

use chrono::{DateTime, Utc};

use crate::crd::power_schedule::ScheduledState;

/// Label on every child naming its schedule (shortened like child names when too long for a label).
pub const SCHEDULE_LABEL: &str = "compute.threatwinds.com/schedule";
/// Annotation on every child: the instant it stands for (its event, or the start of an override), RFC 3339.
pub const SCHEDULED_AT_ANNOTATION: &str = "compute.threatwinds.com/scheduled-at";
/// Longest schedule-name part of a child's name; the rest is `-<kind><unix seconds>-<state>`.
const BASE_MAX: usize = 40;

/// Why a child was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildCause {
    /// A calendar event (on time or caught up).
    Event,
    /// `spec.override` came into effect.
    OverrideStart,
    /// The override ended: the schedule's state again.
    OverrideEnd,
}

/// A child to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRequest {
    pub name: String,
    pub state: ScheduledState,
    pub scheduled_at: DateTime<Utc>,
    pub cause: ChildCause,
}

/// Where a child fleet stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildOutcome {
    InProgress,
    /// Ready.
    Succeeded,
    /// Ready, but some instances were not started within `startingDeadline` of the event (the tally says how
    /// many were done and how many skipped as late).
    Late(String),
    /// Stalled, with its reason and message.
    Failed(String),
}

/// An existing child fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildView {
    pub name: String,
    /// The instant it stands for (annotation; its creation time if the annotation is missing).
    pub scheduled_at: DateTime<Utc>,
    /// Enforces its level continuously (so it must be suspended once superseded).
    pub continuous: bool,
    pub suspended: bool,
    pub outcome: ChildOutcome,
}

/// The deterministic name of a child: the same event always maps to the same name, so a retried create
/// after a lost status write finds the child instead of making a second one.
/// Calendar events: `<schedule>-<unix seconds>-<state>`. An override's start (`-o<hash>-`) and end
/// (`-r<hash>-`) are named by their time *and the spec generation that set them*: setting an override,
/// clearing it and setting the same one again is a new child that acts, never the old suspended one.
pub fn child_name(
    schedule: &str,
    cause: ChildCause,
    at: DateTime<Utc>,
    state: ScheduledState,
    generation: Option<i64>,
) -> String {
    let short = short_name(schedule);
    let run = |kind: &str| {
        let key = format!("{}/{}", at.timestamp(), generation.unwrap_or(0));
        format!("{short}-{kind}{:08x}-{}", fnv1a(&key), state.as_str())
    };
    match cause {
        ChildCause::Event => format!("{short}-{}-{}", at.timestamp(), state.as_str()),
        ChildCause::OverrideStart => run("o"),
        ChildCause::OverrideEnd => run("r"),
    }
}

/// The schedule's name, or a readable prefix plus a hash when it is long (child names and label values stay
/// within 63 characters).
pub fn short_name(schedule: &str) -> String {
    if schedule.len() <= BASE_MAX {
        return schedule.to_owned();
    }
    let prefix: String = schedule.chars().take(BASE_MAX - 9).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{:08x}", fnv1a(schedule))
}

/// FNV-1a, 32 bits: a stable hash (std's hasher may change between releases).
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_are_deterministic_and_short() {
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 6, 0, 0).unwrap();
        assert_eq!(
            child_name("office-hours", ChildCause::Event, at, ScheduledState::Running, Some(3)),
            "office-hours-1796623200-running"
        );
        let o = child_name(
            "office-hours",
            ChildCause::OverrideStart,
            at,
            ScheduledState::Stopped,
            Some(3),
        );
        assert!(o.starts_with("office-hours-o") && o.ends_with("-stopped"), "{o}");
        assert_eq!(
            o,
            child_name(
                "office-hours",
                ChildCause::OverrideStart,
                at,
                ScheduledState::Stopped,
                Some(3)
            )
        );
        // The same override set again by a later generation is a new child.
        assert_ne!(
            o,
            child_name(
                "office-hours",
                ChildCause::OverrideStart,
                at,
                ScheduledState::Stopped,
                Some(5)
            )
        );
        let long = "a-very-long-schedule-name-for-the-platform-team.of-customer-x";
        let name = child_name(long, ChildCause::OverrideEnd, at, ScheduledState::Running, Some(1));
        assert!(name.len() <= 63, "{name}");
        assert_eq!(
            name,
            child_name(long, ChildCause::OverrideEnd, at, ScheduledState::Running, Some(1))
        );
        assert_ne!(short_name(long), short_name(&format!("{long}2")));
        assert!(short_name(long).len() <= BASE_MAX);
        assert!(!short_name("abcdefghijklmnopqrstuvwxyzabcd-efghijklmnopqrs").contains("--"));
    }
}
