//! Table tests of the schedule planner: due, caught up and skipped events, continuous enforcement, suspend,
//! overrides that start, extend, expire and are removed, history and suspension of older children.

use chrono::{DateTime, Utc};

use super::*;
use crate::controllers::schedule::children::ChildOutcome::{Failed, InProgress, Succeeded};
use crate::crd::power_schedule::Day::*;
use crate::crd::power_schedule::ScheduledState::{self, Running, Stopped};
use crate::crd::power_schedule::{PowerOverride, ScheduleEvent};
use crate::crd::selector::{InstanceSelector, Strategy};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Office hours in Madrid, Mon-Fri 07:00-19:00 (06:00Z-18:00Z in December).
fn spec() -> ComputePowerScheduleSpec {
    let weekdays = vec![Mon, Tue, Wed, Thu, Fri];
    ComputePowerScheduleSpec {
        selector: InstanceSelector {
            zone: Some("eu-1".into()),
            ..Default::default()
        },
        time_zone: "Europe/Madrid".into(),
        events: vec![
            ScheduleEvent {
                at: "07:00".into(),
                days: weekdays.clone(),
                state: Running,
            },
            ScheduleEvent {
                at: "19:00".into(),
                days: weekdays,
                state: Stopped,
            },
        ],
        enforcement: ScheduleEnforcement::Events,
        starting_deadline: "1h".into(),
        strategy: Strategy::default(),
        power_override: None,
        suspend: false,
    }
}

fn continuous() -> ComputePowerScheduleSpec {
    ComputePowerScheduleSpec {
        enforcement: ScheduleEnforcement::Continuous,
        ..spec()
    }
}

fn with_override(state: ScheduledState, until: &str) -> ComputePowerScheduleSpec {
    ComputePowerScheduleSpec {
        power_override: Some(PowerOverride { state, until: t(until) }),
        ..spec()
    }
}

fn last(time: &str, state: ScheduledState, result: EventResult, child: Option<&str>) -> ComputePowerScheduleStatus {
    ComputePowerScheduleStatus {
        last_event: Some(LastEvent {
            time: t(time),
            state,
            result,
            child: child.map(Into::into),
            message: None,
        }),
        ..Default::default()
    }
}

fn child(name: &str, at: &str, continuous: bool, suspended: bool, outcome: ChildOutcome) -> ChildView {
    ChildView {
        name: name.into(),
        scheduled_at: t(at),
        continuous,
        suspended,
        outcome,
    }
}

const CREATED: &str = "2026-11-01T00:00:00Z";

fn run(
    spec: &ComputePowerScheduleSpec,
    status: &ComputePowerScheduleStatus,
    children: &[ChildView],
    now: &str,
) -> Plan {
    plan(&PlanInput {
        name: "office",
        spec,
        status,
        generation: Some(1),
        created_at: t(CREATED),
        now: t(now),
        children,
    })
}

fn reason(p: &Plan) -> (&str, &str) {
    let c = p.status.conditions.iter().find(|c| c.status == "True").unwrap();
    (c.type_.as_str(), c.reason.as_str())
}

/// An override child's name as generation 1 of the schedule sets it.
fn override_child(cause: ChildCause, until: &str, state: ScheduledState) -> String {
    crate::controllers::schedule::children::child_name("office", cause, t(until), state, Some(1))
}

fn created(p: &Plan) -> Option<(&str, ScheduledState, ChildCause)> {
    p.create.as_ref().map(|c| (c.name.as_str(), c.state, c.cause))
}

#[test]
fn a_new_schedule_waits_for_its_first_event() {
    let created_at = "2026-12-01T09:00:00Z";
    let p = plan(&PlanInput {
        name: "office",
        spec: &spec(),
        status: &Default::default(),
        generation: Some(1),
        created_at: t(created_at),
        now: t("2026-12-01T09:00:05Z"),
        children: &[],
    });
    assert_eq!(p.create, None, "07:00 happened before the schedule existed");
    assert_eq!(p.requeue_at, Some(t("2026-12-01T18:00:00Z")));
    let next = p.status.next_event.as_ref().unwrap();
    assert_eq!((next.time, next.state), (t("2026-12-01T18:00:00Z"), Stopped));
    assert_eq!(reason(&p), ("Ready", "Waiting"));
    assert!(
        p.status
            .message
            .as_deref()
            .unwrap()
            .contains("next: stopped at 2026-12-01T18:00:00+00:00")
    );
}

#[test]
fn due_caught_up_and_skipped_events() {
    // (what, now, created child, note reason, last result)
    let monday_evening = last("2026-11-30T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let rows: &[(&str, &str, Option<&str>, &str, EventResult)] = &[
        (
            "on time",
            "2026-12-01T06:00:00.200Z",
            Some("office-1796104800-running"),
            "EventStarted",
            EventResult::InProgress,
        ),
        (
            "40 minutes late: caught up",
            "2026-12-01T06:40:00Z",
            Some("office-1796104800-running"),
            "CaughtUp",
            EventResult::InProgress,
        ),
        (
            "exactly at the deadline: caught up",
            "2026-12-01T07:00:00Z",
            Some("office-1796104800-running"),
            "CaughtUp",
            EventResult::InProgress,
        ),
        (
            "90 minutes late: skipped and reported",
            "2026-12-01T07:30:00Z",
            None,
            "MissedEvent",
            EventResult::Skipped,
        ),
    ];
    for (what, now, want_child, want_note, want_result) in rows {
        let p = run(&spec(), &monday_evening, &[], now);
        assert_eq!(p.create.as_ref().map(|c| c.name.as_str()), *want_child, "{what}");
        assert_eq!(
            p.notes.iter().map(|n| n.reason.as_str()).collect::<Vec<_>>(),
            vec![*want_note],
            "{what}"
        );
        let last = p.status.last_event.as_ref().unwrap();
        assert_eq!(
            (last.time, last.state, last.result),
            (t("2026-12-01T06:00:00Z"), Running, *want_result),
            "{what}"
        );
        assert_eq!(last.child.as_deref(), *want_child, "{what}");
        assert_eq!(
            p.requeue_at,
            Some(t("2026-12-01T18:00:00Z")),
            "{what}: requeue for the next event"
        );
    }
    let skipped = run(&spec(), &monday_evening, &[], "2026-12-01T07:30:00Z");
    assert!(skipped.notes[0].warning && skipped.notes[0].message.contains("missed by 1h30m"));
    assert_eq!(reason(&skipped), ("Ready", "MissedEvent"));
    // Once recorded, the skipped event is not looked at again.
    let again = run(&spec(), &skipped.status, &[], "2026-12-01T07:31:00Z");
    assert_eq!((again.create, again.notes.len()), (None, 0));
}

#[test]
fn only_the_latest_missed_event_runs() {
    let friday = last("2026-11-27T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let p = run(&spec(), &friday, &[], "2026-12-01T06:10:00Z");
    assert_eq!(
        created(&p),
        Some(("office-1796104800-running", Running, ChildCause::Event)),
        "Monday's events are superseded by Tuesday 07:00"
    );
}

#[test]
fn a_handled_event_is_not_run_again_and_its_result_follows_the_child() {
    let status = last("2026-12-01T06:00:00Z", Running, EventResult::InProgress, Some("c1"));
    let rows = [
        (InProgress, EventResult::InProgress, ("Reconciling", "EventInProgress")),
        (Succeeded, EventResult::Succeeded, ("Ready", "Waiting")),
        (
            Failed("FailureBudgetExceeded: 2 failed".into()),
            EventResult::Failed,
            ("Stalled", "EventFailed"),
        ),
    ];
    for (outcome, want, condition) in rows {
        let children = [child("c1", "2026-12-01T06:00:00Z", false, false, outcome)];
        let p = run(&spec(), &status, &children, "2026-12-01T06:10:00Z");
        assert_eq!(p.create, None);
        assert_eq!(p.status.last_event.as_ref().unwrap().result, want);
        assert_eq!(reason(&p), condition);
        assert!(p.suspend.is_empty() && p.delete.is_empty());
    }
}

#[test]
fn continuous_holds_the_last_state_however_late() {
    // A new continuous schedule asserts the current state at once.
    let p = run(&continuous(), &Default::default(), &[], "2026-12-01T10:00:00Z");
    assert_eq!(
        created(&p),
        Some(("office-1796104800-running", Running, ChildCause::Event))
    );
    // Three hours late (controller down): still run, the deadline is for `events` only.
    let monday = last("2026-11-30T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let p = run(&continuous(), &monday, &[], "2026-12-01T09:00:00Z");
    assert_eq!(
        created(&p),
        Some(("office-1796104800-running", Running, ChildCause::Event))
    );
}

#[test]
fn continuous_recreates_a_deleted_holder_and_events_does_not() {
    let status = last("2026-12-01T06:00:00Z", Running, EventResult::Succeeded, Some("c1"));
    let p = run(&continuous(), &status, &[], "2026-12-01T09:00:00Z");
    assert_eq!(created(&p), Some(("c1", Running, ChildCause::Event)));
    assert_eq!(p.notes[0].reason, "ChildRecreated");
    let present = [child("c1", "2026-12-01T06:00:00Z", true, false, Succeeded)];
    assert_eq!(
        run(&continuous(), &status, &present, "2026-12-01T09:00:00Z").create,
        None
    );
    assert_eq!(run(&spec(), &status, &[], "2026-12-01T09:00:00Z").create, None);
}

#[test]
fn suspend_creates_nothing_and_resumes_within_the_deadline() {
    let monday = last("2026-11-30T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let suspended = ComputePowerScheduleSpec {
        suspend: true,
        ..spec()
    };
    let p = run(&suspended, &monday, &[], "2026-12-01T06:00:01Z");
    assert_eq!((p.create.clone(), p.notes.len()), (None, 0));
    assert_eq!(reason(&p), ("Ready", "Suspended"));
    assert_eq!(p.requeue_at, Some(t("2026-12-01T18:00:00Z")));
    // Unsuspended 20 minutes later: caught up.
    let p = run(&spec(), &p.status, &[], "2026-12-01T06:20:00Z");
    assert_eq!(
        created(&p),
        Some(("office-1796104800-running", Running, ChildCause::Event))
    );
}

#[test]
fn an_override_starts_holds_extends_and_ends_by_itself() {
    // Tuesday 20:00 UTC: "keep it running until Friday 20:00 CET" (after Friday's 19:00 stop).
    let until = "2026-12-04T19:00:00Z";
    let monday = last("2026-12-01T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let spec = with_override(Running, until);
    let start = run(&spec, &monday, &[], "2026-12-01T20:00:00Z");
    let started = override_child(ChildCause::OverrideStart, until, Running);
    assert_eq!(
        created(&start),
        Some((started.as_str(), Running, ChildCause::OverrideStart))
    );
    assert_eq!(
        start.requeue_at,
        Some(t(until)),
        "wakes for the override's end, not for the events inside it"
    );
    let next = start.status.next_event.as_ref().unwrap();
    assert_eq!(
        (next.time, next.state),
        (t(until), Stopped),
        "the calendar's state at the end"
    );
    assert_eq!(reason(&start), ("Ready", "OverrideInEffect"));

    // Wednesday 07:00 passes: the override holds, nothing is created.
    let during = run(&spec, &start.status, &[], "2026-12-02T06:00:00.100Z");
    assert_eq!((during.create.clone(), during.requeue_at), (None, Some(t(until))));

    // Extended (same state, later end): no new child, the end moves.
    let later = "2026-12-05T10:00:00Z";
    let extended = run(
        &with_override(Running, later),
        &during.status,
        &[],
        "2026-12-02T09:00:00Z",
    );
    assert_eq!(extended.create, None);
    assert_eq!(extended.status.power_override.as_ref().unwrap().until, t(later));

    // Friday 20:00 CET: the override has expired (the spec still carries it): back to the schedule, stopped.
    let end = run(&spec, &during.status, &[], "2026-12-04T19:00:00.050Z");
    let ended = override_child(ChildCause::OverrideEnd, until, Stopped);
    assert_eq!(created(&end), Some((ended.as_str(), Stopped, ChildCause::OverrideEnd)));
    assert_eq!(end.status.power_override, None);
    let last = end.status.last_event.as_ref().unwrap();
    assert_eq!((last.time, last.state), (t(until), Stopped));
    assert_eq!(end.notes[0].reason, "OverrideEnded");
    assert_eq!(end.requeue_at, Some(t("2026-12-07T06:00:00Z")), "Monday 07:00 CET");
    // And that is the end of it.
    let after = run(&spec, &end.status, &[], "2026-12-04T19:05:00Z");
    assert_eq!(after.create, None);
}

#[test]
fn an_override_removed_early_resumes_with_the_current_state() {
    let held = ComputePowerScheduleStatus {
        power_override: Some(OverrideStatus {
            state: Stopped,
            until: t("2026-12-04T19:00:00Z"),
            child: Some(override_child(
                ChildCause::OverrideStart,
                "2026-12-04T19:00:00Z",
                Stopped,
            )),
        }),
        ..last("2026-12-01T06:00:00Z", Running, EventResult::Succeeded, Some("x"))
    };
    let p = run(&spec(), &held, &[], "2026-12-02T12:00:00Z");
    let resumed = override_child(ChildCause::OverrideEnd, "2026-12-04T19:00:00Z", Running);
    assert_eq!(
        created(&p),
        Some((resumed.as_str(), Running, ChildCause::OverrideEnd)),
        "Wednesday noon is office hours"
    );
    assert_eq!(p.status.last_event.as_ref().unwrap().time, t("2026-12-02T12:00:00Z"));
}

#[test]
fn an_event_after_the_override_end_supersedes_the_resume() {
    // The override ended at 18:00 CET; the controller comes back at 19:30 CET, after the 19:00 stop.
    let held = ComputePowerScheduleStatus {
        power_override: Some(OverrideStatus {
            state: Stopped,
            until: t("2026-12-04T17:00:00Z"),
            child: Some("o".into()),
        }),
        ..Default::default()
    };
    let p = run(&spec(), &held, &[], "2026-12-04T18:30:00Z");
    assert_eq!(
        created(&p),
        Some(("office-1796407200-stopped", Stopped, ChildCause::Event))
    );
}

#[test]
fn an_expired_override_never_applied_is_ignored() {
    let spec = with_override(Running, "2026-12-01T00:00:00Z");
    let status = last("2026-11-30T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let p = run(&spec, &status, &[], "2026-12-01T03:00:00Z");
    assert_eq!((p.create.clone(), p.status.power_override.clone()), (None, None));
}

#[test]
fn invalid_specs_stall_with_a_clear_reason() {
    let bad_zone = ComputePowerScheduleSpec {
        time_zone: "Europe/Madird".into(),
        ..spec()
    };
    let p = run(&bad_zone, &Default::default(), &[], "2026-12-01T06:00:00Z");
    assert_eq!(reason(&p), ("Stalled", "InvalidTimeZone"));
    assert!(
        p.status
            .message
            .as_deref()
            .unwrap()
            .contains("\"Europe/Madird\" is not a known IANA time zone")
    );
    assert_eq!(
        (p.create.clone(), p.requeue_at, p.status.next_event.clone()),
        (None, None, None)
    );
    let bad_deadline = ComputePowerScheduleSpec {
        starting_deadline: "1d".into(),
        ..spec()
    };
    assert_eq!(
        reason(&run(&bad_deadline, &Default::default(), &[], "2026-12-01T06:00:00Z")),
        ("Stalled", "InvalidStartingDeadline")
    );
}

#[test]
fn older_children_are_suspended_and_the_history_is_bounded() {
    let monday = last("2026-11-30T18:00:00Z", Stopped, EventResult::Succeeded, Some("c4"));
    let children = [
        child("c1", "2026-11-27T06:00:00Z", false, false, Succeeded),
        child("c2", "2026-11-27T18:00:00Z", false, false, Succeeded),
        child("c3", "2026-11-30T06:00:00Z", true, false, Succeeded),
        child("c4", "2026-11-30T18:00:00Z", false, false, InProgress),
    ];
    let p = run(&spec(), &monday, &children, "2026-12-01T06:00:01Z");
    assert!(p.create.is_some());
    assert_eq!(p.delete, vec!["c1", "c2"], "three kept: c3, c4 and the new one");
    assert_eq!(
        p.suspend,
        vec!["c3", "c4"],
        "continuous and unfinished children stop acting"
    );

    // Without a new child, the newest keeps acting and nothing else changes.
    let status = last("2026-11-30T18:00:00Z", Stopped, EventResult::InProgress, Some("c4"));
    let p = run(&spec(), &status, &children[2..], "2026-11-30T18:10:00Z");
    assert_eq!((p.create.clone(), p.delete.clone()), (None, vec![]));
    assert_eq!(p.suspend, vec!["c3"]);

    // A child the status still names is never deleted, even when old.
    let status = last("2026-11-30T18:00:00Z", Stopped, EventResult::Succeeded, Some("c1"));
    let p = run(&spec(), &status, &children, "2026-11-30T18:10:00Z");
    assert_eq!(p.create, None);
    assert!(
        p.delete.is_empty(),
        "c1 is the only one over the limit, and the status names it"
    );

    // The child to create may exist already (a status write was lost): it is neither suspended nor deleted.
    let existing = [
        child("c4", "2026-11-30T18:00:00Z", false, false, Succeeded),
        child(
            "office-1796104800-running",
            "2026-12-01T06:00:00Z",
            false,
            false,
            InProgress,
        ),
    ];
    let p = run(&spec(), &monday, &existing, "2026-12-01T06:00:02Z");
    assert_eq!(p.create.as_ref().unwrap().name, "office-1796104800-running");
    assert!(p.suspend.is_empty() && p.delete.is_empty());
}

#[test]
fn durations_read_well() {
    for (secs, want) in [(45, "45s"), (125, "2m5s"), (5400, "1h30m"), (-3, "0s")] {
        assert_eq!(human(TimeDelta::seconds(secs)), want);
    }
}

#[test]
fn setting_clearing_and_setting_an_override_again_acts_again() {
    let until = "2026-12-04T19:00:00Z";
    let monday = last("2026-12-01T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let set = |generation: i64, status: &ComputePowerScheduleStatus, now: &str| {
        plan(&PlanInput {
            name: "office",
            spec: &with_override(Running, until),
            status,
            generation: Some(generation),
            created_at: t(CREATED),
            now: t(now),
            children: &[],
        })
    };
    let first = set(2, &monday, "2026-12-01T20:00:00Z");
    let first_child = first.create.clone().unwrap().name;
    // Cleared (generation 3): back to the calendar.
    let cleared = plan(&PlanInput {
        name: "office",
        spec: &spec(),
        status: &first.status,
        generation: Some(3),
        created_at: t(CREATED),
        now: t("2026-12-01T20:05:00Z"),
        children: &[],
    });
    assert_eq!(cleared.create.as_ref().unwrap().cause, ChildCause::OverrideEnd);
    // Set again (generation 4), same state and until: a new child, not the suspended first one.
    let again = set(4, &cleared.status, "2026-12-01T20:10:00Z");
    let again_child = again.create.clone().expect("a child acts for the override again").name;
    assert_ne!(again_child, first_child);
    assert_eq!(reason(&again), ("Ready", "OverrideInEffect"));
}

#[test]
fn a_last_event_in_the_future_is_a_clock_error_not_a_silence() {
    // The clock stepped back a day: the last event was recorded "tomorrow".
    let future = last("2026-12-02T18:00:00Z", Stopped, EventResult::Succeeded, Some("x"));
    let p = run(&spec(), &future, &[], "2026-12-01T17:00:00Z");
    assert!(
        p.notes.iter().any(|n| n.reason == "ClockSkew" && n.warning),
        "{:?}",
        p.notes
    );
    assert_eq!(p.status.last_event.as_ref().unwrap().time, t("2026-12-01T17:00:00Z"));
    // The next event (18:00 UTC, Tuesday's stop) then runs as it comes, not a day later.
    let at_stop = run(&spec(), &p.status, &[], "2026-12-01T18:00:00.100Z");
    assert_eq!(
        created(&at_stop).map(|c| c.2),
        Some(ChildCause::Event),
        "{:?}",
        at_stop.status
    );
}

#[test]
fn a_child_that_skipped_late_instances_says_how_many() {
    let status = last(
        "2026-12-01T18:00:00Z",
        Stopped,
        EventResult::InProgress,
        Some("office-1796148000-stopped"),
    );
    let children = [child(
        "office-1796148000-stopped",
        "2026-12-01T18:00:00Z",
        false,
        false,
        ChildOutcome::Late(
            "3 of 11 done, 8 not started within startingDeadline of the event (skipped as late), 0 failed".into(),
        ),
    )];
    let p = run(&spec(), &status, &children, "2026-12-01T23:00:00Z");
    assert_eq!(p.status.last_event.as_ref().unwrap().result, EventResult::Late);
    assert_eq!(reason(&p), ("Ready", "LateEvent"));
    assert!(
        p.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("8 not started")
    );
}

#[test]
fn an_override_held_through_a_superseded_child_acts_again() {
    // Generation 1 held running through `a`. Generation 2 (stopped) created `b` and suspended `a`, but its
    // status write was lost (generation 3 came first). Generation 3 (running again) must not read "running is
    // held already" from the stale status: `a` is suspended and superseded, so a new child acts.
    let until = "2026-12-04T19:00:00Z";
    let a = override_child(ChildCause::OverrideStart, until, Running);
    let stale = ComputePowerScheduleStatus {
        power_override: Some(OverrideStatus {
            state: Running,
            until: t(until),
            child: Some(a.clone()),
        }),
        ..Default::default()
    };
    let b = "office-ob0000000-stopped";
    let plan_with = |children: &[ChildView]| {
        plan(&PlanInput {
            name: "office",
            spec: &with_override(Running, until),
            status: &stale,
            generation: Some(3),
            created_at: t(CREATED),
            now: t("2026-12-01T20:10:00Z"),
            children,
        })
    };
    let cases: [(&str, Vec<ChildView>, bool); 4] = [
        (
            "held child acts: nothing new",
            vec![child(
                &a,
                "2026-12-01T20:00:00Z",
                false,
                false,
                ChildOutcome::InProgress,
            )],
            false,
        ),
        (
            "held child suspended",
            vec![child(&a, "2026-12-01T20:00:00Z", false, true, ChildOutcome::InProgress)],
            true,
        ),
        (
            "a newer child superseded it",
            vec![
                child(&a, "2026-12-01T20:00:00Z", false, true, ChildOutcome::InProgress),
                child(b, "2026-12-01T20:05:00Z", false, false, ChildOutcome::InProgress),
            ],
            true,
        ),
        ("held child missing: the status stands", vec![], false),
    ];
    for (what, children, acts) in cases {
        let p = plan_with(&children);
        let made = p.create.as_ref().map(|c| (c.cause, c.state));
        assert_eq!(made.is_some(), acts, "{what}: {made:?}");
        if acts {
            let name = p.create.as_ref().map(|c| c.name.clone());
            assert_eq!(made, Some((ChildCause::OverrideStart, Running)), "{what}");
            assert_ne!(name.as_deref(), Some(a.as_str()), "{what}: a new generation's child");
            assert_eq!(
                p.status.power_override.as_ref().and_then(|o| o.child.clone()),
                name,
                "{what}"
            );
            assert!(p.suspend.iter().all(|n| Some(n) != name.as_ref()), "{what}");
        }
    }
}
