//! From and to ComputeFleetAction: the child object a schedule creates for one event, and how an existing
//! child reads back for the planner. Pure.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::children::{ChildOutcome, ChildRequest, ChildView, SCHEDULE_LABEL, SCHEDULED_AT_ANNOTATION, short_name};
use crate::controllers::calendar::parse_deadline;
use crate::controllers::conditions::{READY, STALLED};
use crate::crd::fleet_action::{ComputeFleetAction, ComputeFleetActionSpec};
use crate::crd::instance_action::Enforcement;
use crate::crd::power_schedule::{ComputePowerSchedule, ScheduleEnforcement};
use crate::crd::selector::SCHEDULE_DEFAULTS;

/// The label value that names a schedule on its children.
pub fn schedule_label_value(schedule: &str) -> String {
    short_name(schedule)
}

/// The child fleet for one event: owned by the schedule (controller, blockOwnerDeletion) so deleting the
/// schedule garbage-collects it; selector copied, strategy with the schedule's defaults. `events` schedules:
/// `once` enforcement (the child acts on what matched at the event, once, then leaves the instances alone) and
/// `notAfter` = the event + `startingDeadline` (what was not started by then is skipped as late).
/// `continuous` schedules: `continuous` enforcement (the level is held), no deadline.
pub fn child_fleet(schedule: &ComputePowerSchedule, request: &ChildRequest) -> ComputeFleetAction {
    let owner = OwnerReference {
        api_version: ComputePowerSchedule::api_version(&()).into_owned(),
        kind: ComputePowerSchedule::kind(&()).into_owned(),
        name: schedule.name_any(),
        uid: schedule.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let (enforcement, not_after) = match schedule.spec.enforcement {
        ScheduleEnforcement::Events => (
            Enforcement::Once,
            parse_deadline(&schedule.spec.starting_deadline).map(|d| request.scheduled_at + d),
        ),
        ScheduleEnforcement::Continuous => (Enforcement::Continuous, None),
    };
    ComputeFleetAction {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            namespace: schedule.namespace(),
            labels: Some([(SCHEDULE_LABEL.to_owned(), schedule_label_value(&schedule.name_any()))].into()),
            annotations: Some([(SCHEDULED_AT_ANNOTATION.to_owned(), request.scheduled_at.to_rfc3339())].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: ComputeFleetActionSpec {
            selector: schedule.spec.selector.clone(),
            desired_state: request.state.desired_state(),
            request_id: None,
            not_after,
            dry_run: false,
            suspend: false,
            paused: false,
            strategy: schedule.spec.strategy.resolved(SCHEDULE_DEFAULTS),
            enforcement,
        },
        status: None,
    }
}

/// Whether `fleet` is a child of `schedule` (the owner reference, not only the label, decides).
pub fn is_child_of(fleet: &ComputeFleetAction, schedule: &ComputePowerSchedule) -> bool {
    let uid = schedule.uid();
    uid.is_some() && fleet.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())
}

/// A Kubernetes timestamp as chrono time.
pub fn to_chrono(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().try_into().unwrap_or(0))
}

/// An existing child as the planner reads it.
pub fn child_view(fleet: &ComputeFleetAction) -> ChildView {
    let scheduled_at = fleet
        .annotations()
        .get(SCHEDULED_AT_ANNOTATION)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| fleet.creation_timestamp().and_then(|t| to_chrono(&t)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    ChildView {
        name: fleet.name_any(),
        scheduled_at,
        continuous: fleet.spec.enforcement == Enforcement::Continuous,
        suspended: fleet.spec.suspend,
        outcome: outcome(fleet),
    }
}

/// Ready (for the current generation) is success, unless it only says the fleet is suspended (it settles
/// without finishing); Stalled is failure; anything else is still going.
fn outcome(fleet: &ComputeFleetAction) -> ChildOutcome {
    let Some(status) = fleet.status.as_ref() else {
        return ChildOutcome::InProgress;
    };
    if status.observed_generation != fleet.metadata.generation {
        return ChildOutcome::InProgress;
    }
    let holds = |t: &str| status.conditions.iter().find(|c| c.type_ == t && c.status == "True");
    if let Some(ready) = holds(READY) {
        match ready.reason.as_str() {
            "Suspended" => ChildOutcome::InProgress,
            "Expired" => ChildOutcome::Late(format!(
                "{} of {} done, {} not started within startingDeadline of the event (skipped as late), {} failed",
                status.succeeded, status.selected, status.expired, status.failed
            )),
            _ => ChildOutcome::Succeeded,
        }
    } else if let Some(c) = holds(STALLED) {
        ChildOutcome::Failed(format!("{}: {}", c.reason, c.message))
    } else {
        ChildOutcome::InProgress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::schedule::children::ChildCause;
    use crate::crd::power_schedule::{ComputePowerScheduleSpec, ScheduleEvent, ScheduledState};
    use chrono::TimeZone;

    fn schedule(enforcement: ScheduleEnforcement) -> ComputePowerSchedule {
        let mut s = ComputePowerSchedule::new(
            "office",
            ComputePowerScheduleSpec {
                selector: crate::crd::selector::InstanceSelector {
                    zone: Some("eu-1".into()),
                    ..Default::default()
                },
                time_zone: "Europe/Madrid".into(),
                events: vec![ScheduleEvent {
                    at: "07:00".into(),
                    days: vec![],
                    state: ScheduledState::Running,
                }],
                enforcement,
                starting_deadline: "1h".into(),
                strategy: Default::default(),
                power_override: None,
                suspend: false,
            },
        );
        s.metadata.namespace = Some("team".into());
        s.metadata.uid = Some("uid-1".into());
        s
    }

    /// The request for a `running` event at 06:00 UTC on 2026-12-01.
    fn running_at_six() -> (DateTime<Utc>, ChildRequest) {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 6, 0, 0).unwrap();
        let request = ChildRequest {
            name: "office-1796104800-running".into(),
            state: ScheduledState::Running,
            scheduled_at: at,
            cause: ChildCause::Event,
        };
        (at, request)
    }

    #[test]
    fn the_child_copies_the_target_and_reads_back() {
        let (at, request) = running_at_six();
        for (enforcement, want) in [
            (ScheduleEnforcement::Events, Enforcement::Once),
            (ScheduleEnforcement::Continuous, Enforcement::Continuous),
        ] {
            let s = schedule(enforcement);
            let child = child_fleet(&s, &request);
            assert_eq!(child.spec.enforcement, want);
            assert_eq!(child.spec.selector, s.spec.selector);
            assert_eq!(
                child.spec.desired_state,
                crate::crd::instance_action::DesiredState::Running
            );
            assert_eq!(child.labels()[SCHEDULE_LABEL], "office");
            assert!(is_child_of(&child, &s));
            let view = child_view(&child);
            assert_eq!(view.scheduled_at, at);
            assert_eq!(view.outcome, ChildOutcome::InProgress);
            assert_eq!(view.continuous, want == Enforcement::Continuous);
        }
    }

    #[test]
    fn a_child_is_judged_by_its_conditions_for_the_current_generation() {
        use crate::crd::fleet_action::ComputeFleetActionStatus;
        use crate::crd::instance_action::Condition;
        let (at, request) = running_at_six();
        let cases = [
            ("Ready", "Succeeded", 1, ChildOutcome::Succeeded),
            ("Ready", "Suspended", 1, ChildOutcome::InProgress),
            ("Ready", "Succeeded", 0, ChildOutcome::InProgress),
            ("Reconciling", "Progressing", 1, ChildOutcome::InProgress),
            (
                "Stalled",
                "FailureBudgetExceeded",
                1,
                ChildOutcome::Failed("FailureBudgetExceeded: m".into()),
            ),
        ];
        for (type_, reason, observed, want) in cases {
            let mut child = child_fleet(&schedule(ScheduleEnforcement::Events), &request);
            child.metadata.generation = Some(1);
            child.status = Some(ComputeFleetActionStatus {
                observed_generation: Some(observed),
                conditions: vec![Condition {
                    type_: type_.into(),
                    status: "True".into(),
                    observed_generation: Some(observed),
                    last_transition_time: at,
                    reason: reason.into(),
                    message: "m".into(),
                }],
                ..Default::default()
            });
            assert_eq!(outcome(&child), want, "{type_}/{reason} at generation {observed}");
        }
    }
}
