//! Table tests of the fleet planner.

use chrono::TimeZone;

use super::*;
use crate::controllers::conditions::{READY, RECONCILING, STALLED};
use crate::crd::instance_action::{DesiredState, Enforcement};
use crate::crd::selector::MaxConcurrent;

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
}

fn spec(desired: &str, extra: serde_json::Value) -> ComputeFleetActionSpec {
    let mut v = serde_json::json!({"selector": {"zone": "z1"}, "desiredState": desired});
    if desired == "restarted" || desired == "reset" {
        v["requestId"] = "r1".into();
    }
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// A selection as the walk hands it over: instances the namespace may not power (`deny-*` here) were never
/// candidates, they are narrowed out before the planner sees anything.
fn selection(ids: &[&str]) -> Selection {
    Selection {
        listed_at: t(0),
        candidates: ids
            .iter()
            .filter(|id| !id.starts_with("deny"))
            .map(|id| Candidate {
                id: id.to_string(),
                status: Some(InstanceStatus::Running),
                held: false,
            })
            .collect(),
        complete: true,
    }
}

fn child(s: &ComputeFleetActionSpec, id: &str, outcome: Outcome) -> ChildView {
    let one_shot = !s.desired_state.is_level();
    let rid = if one_shot { s.request_id.clone() } else { None };
    ChildView {
        name: child_name(
            "fleet",
            &ChildKey {
                fleet_uid: "uid",
                instance_id: id,
                desired_state: s.desired_state,
                request_id: rid.as_deref(),
            },
        ),
        instance_id: id.into(),
        desired_state: s.desired_state,
        request_id: rid,
        synced: SyncedFields::of_fleet(s),
        outcome,
        held: false,
    }
}

fn run_once(
    s: &ComputeFleetActionSpec,
    status: &ComputeFleetActionStatus,
    sel: Option<&Selection>,
    unlisted: Option<Unlisted>,
    children: &[ChildView],
    now: DateTime<Utc>,
) -> Plan {
    plan(&PlanInput {
        fleet_name: "fleet",
        fleet_uid: "uid",
        namespace: "team-a",
        generation: Some(1),
        spec: s,
        status,
        selection: sel,
        unlisted,
        children,
        now,
        settings: FleetSettings::default(),
    })
}

/// What the reconciler does: a plan, and when it only wrote a new run's snapshot ahead (requeue at once), the
/// next plan from that status; the Events of both.
fn run(
    s: &ComputeFleetActionSpec,
    status: &ComputeFleetActionStatus,
    sel: Option<&Selection>,
    children: &[ChildView],
    now: DateTime<Utc>,
) -> Plan {
    let first = run_once(s, status, sel, None, children, now);
    if first.requeue != Duration::ZERO {
        return first;
    }
    assert!(
        first.create.is_empty(),
        "nothing is created in the plan that writes the snapshot"
    );
    let mut second = run_once(s, &first.status, None, None, children, now);
    let mut events = first.events;
    events.append(&mut second.events);
    second.events = events;
    second
}

fn created(p: &Plan) -> Vec<&str> {
    p.create.iter().map(|c| c.instance_id.as_str()).collect()
}

fn cond<'a>(p: &'a Plan, type_: &str) -> &'a crate::crd::instance_action::Condition {
    p.status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

fn is_true(p: &Plan, type_: &str, reason: &str) -> bool {
    let c = cond(p, type_);
    c.status == "True" && c.reason == reason
}

const FIVE: [&str; 5] = ["i-1", "i-2", "i-3", "i-4", "i-5"];

#[test]
fn one_shot_takes_a_snapshot_and_starts_up_to_the_cap() {
    let s = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 2}}));
    let p = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    assert_eq!(created(&p), ["i-1", "i-2"]);
    let snap = p.status.snapshot.as_ref().unwrap();
    assert_eq!(snap.instance_ids, FIVE);
    assert_eq!((snap.request_id.as_str(), snap.taken_at), ("r1", t(0)));
    assert_eq!((p.status.selected, p.status.in_progress, p.status.pending), (5, 2, 3));
    assert!(is_true(&p, RECONCILING, "RollingOut"));
    // The reconciler records what it created; the next round does not create them again.
    let mut status = p.status.clone();
    record_started(&mut status, &p.create);
    assert_eq!(status.snapshot.as_ref().unwrap().started_ids, ["i-1", "i-2"]);
}

#[test]
fn never_more_than_max_concurrent_in_flight() {
    let s = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 3}}));
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    // (children, expected new ones)
    let rows: Vec<(Vec<ChildView>, Vec<&str>)> = vec![
        (vec![], vec!["i-1", "i-2", "i-3"]),
        (
            vec![
                child(&s, "i-1", Outcome::InProgress),
                child(&s, "i-2", Outcome::InProgress),
                child(&s, "i-3", Outcome::InProgress),
            ],
            vec![],
        ),
        (
            vec![
                child(&s, "i-1", Outcome::Succeeded),
                child(&s, "i-2", Outcome::InProgress),
                child(&s, "i-3", Outcome::InProgress),
            ],
            vec!["i-4"],
        ),
        (
            vec![
                child(&s, "i-1", Outcome::Succeeded),
                child(&s, "i-2", Outcome::Succeeded),
                child(&s, "i-3", Outcome::Succeeded),
            ],
            vec!["i-4", "i-5"],
        ),
    ];
    for (children, want) in rows {
        // The snapshot is reused: no selection is passed.
        let p = run(&s, &first.status, None, &children, t(2));
        assert_eq!(created(&p), want, "{children:?}");
        assert!(p.status.in_progress <= 3);
    }
}

#[test]
fn children_held_by_change_control_keep_their_slot_and_are_counted() {
    let s = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 2}}));
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let held = |id| ChildView {
        held: true,
        ..child(&s, id, Outcome::InProgress)
    };
    let p = run(&s, &first.status, None, &[held("i-1"), held("i-2")], t(2));
    assert!(created(&p).is_empty(), "a held child is in flight: the cap holds");
    assert_eq!((p.status.in_progress, p.status.waiting), (2, 2));
    let message = p.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("2 in progress (2 waiting for a maintenance window or disruption budget)"),
        "{message}"
    );
    let p = run(
        &s,
        &first.status,
        None,
        &[held("i-1"), child(&s, "i-2", Outcome::Succeeded)],
        t(3),
    );
    assert_eq!((created(&p), p.status.waiting), (vec!["i-3"], 1));
}

#[test]
fn percentage_cap_is_of_the_selection() {
    let s = spec("stopped", serde_json::json!({"strategy": {"maxConcurrent": "40%"}}));
    let p = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    assert_eq!(created(&p).len(), 2);
    assert_eq!(s.strategy.max_concurrent(), MaxConcurrent::Percent("40%".into()));
}

#[test]
fn snapshot_ignores_later_instances_but_levels_follow() {
    let one = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 10}}));
    let first = run(&one, &Default::default(), Some(&selection(&["i-1", "i-2"])), &[], t(1));
    let children = [
        child(&one, "i-1", Outcome::Succeeded),
        child(&one, "i-2", Outcome::Succeeded),
    ];
    // A later listing (e.g. cached) with a new instance does not widen the snapshot.
    let p = run(
        &one,
        &first.status,
        Some(&selection(&["i-1", "i-2", "i-9"])),
        &children,
        t(5),
    );
    assert!(p.create.is_empty());
    assert!(is_true(&p, READY, "Succeeded"), "{:?}", p.status.conditions);
    assert_eq!(p.status.selected, 2);
    // A new requestId is a new run over a new snapshot.
    let mut two = one.clone();
    two.request_id = Some("r2".into());
    let p = run(
        &two,
        &first.status,
        Some(&selection(&["i-1", "i-2", "i-9"])),
        &children,
        t(6),
    );
    assert_eq!(created(&p), ["i-1", "i-2", "i-9"]);
    assert_eq!(p.delete.len(), 2, "the finished children of run r1 go");
    // Levels follow the selection.
    let lvl = spec("stopped", serde_json::json!({"strategy": {"maxConcurrent": 10}}));
    let children = [
        child(&lvl, "i-1", Outcome::Succeeded),
        child(&lvl, "i-2", Outcome::Succeeded),
    ];
    let p = run(
        &lvl,
        &Default::default(),
        Some(&selection(&["i-1", "i-2"])),
        &children,
        t(1),
    );
    assert!(p.create.is_empty() && is_true(&p, READY, "Succeeded"));
    let p = run(
        &lvl,
        &p.status,
        Some(&selection(&["i-1", "i-2", "i-9"])),
        &children,
        t(70),
    );
    assert_eq!(created(&p), ["i-9"]);
    // An instance that left a `status: running` selection after being stopped is still counted.
    let p = run(&lvl, &p.status, Some(&selection(&["i-9"])), &children, t(140));
    assert_eq!(p.status.selected, 3);
}

#[test]
fn failure_budget_stops_the_rollout() {
    let s = spec(
        "reset",
        serde_json::json!({"strategy": {"maxConcurrent": 2, "maxFailures": 1}}),
    );
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let failed = |id| {
        child(
            &s,
            id,
            Outcome::Failed {
                reason: "InvalidInstanceState".into(),
            },
        )
    };
    // One failure is within the budget.
    let p = run(
        &s,
        &first.status,
        None,
        &[failed("i-1"), child(&s, "i-2", Outcome::InProgress)],
        t(2),
    );
    assert_eq!(created(&p), ["i-3"]);
    // The second is not: nothing new starts; the one in flight finishes.
    let p = run(
        &s,
        &first.status,
        None,
        &[failed("i-1"), failed("i-2"), child(&s, "i-3", Outcome::InProgress)],
        t(3),
    );
    assert!(p.create.is_empty());
    assert!(is_true(&p, STALLED, "FailureBudgetExceeded"));
    assert_eq!(p.status.failed_ids, ["i-1", "i-2"]);
    assert!(cond(&p, READY).status == "False");
    // With maxFailures 0 the first failure stops it.
    let strict = spec("reset", serde_json::json!({"strategy": {"maxConcurrent": 2}}));
    let first = run(&strict, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let p = run(
        &strict,
        &first.status,
        None,
        &[child(
            &strict,
            "i-1",
            Outcome::Failed {
                reason: "Timeout".into(),
            },
        )],
        t(2),
    );
    assert!(p.create.is_empty() && is_true(&p, STALLED, "FailureBudgetExceeded"));
}

#[test]
fn tolerated_failures_end_ready_with_their_reason() {
    let s = spec(
        "running",
        serde_json::json!({"strategy": {"maxConcurrent": 5, "maxFailures": 1}}),
    );
    let mut children: Vec<ChildView> = FIVE[..4].iter().map(|id| child(&s, id, Outcome::Succeeded)).collect();
    children.push(child(
        &s,
        "i-5",
        Outcome::Failed {
            reason: "Timeout".into(),
        },
    ));
    let p = run(&s, &Default::default(), Some(&selection(&FIVE)), &children, t(1));
    assert!(is_true(&p, READY, "CompletedWithFailures"));
    assert_eq!((p.status.succeeded, p.status.failed), (4, 1));
}

#[test]
fn paused_and_suspended_start_nothing_and_resume_where_they_stopped() {
    let s = spec(
        "restarted",
        serde_json::json!({"paused": true, "strategy": {"maxConcurrent": 2}}),
    );
    let p = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    assert!(p.create.is_empty());
    assert!(
        p.status.snapshot.is_some(),
        "the run's snapshot is taken even while paused"
    );
    assert!(is_true(&p, RECONCILING, "Paused"));
    let mut resumed = s.clone();
    resumed.paused = false;
    let children = [child(&resumed, "i-1", Outcome::Succeeded)];
    let p = run(&resumed, &p.status, None, &children, t(2));
    assert_eq!(created(&p), ["i-2", "i-3"]);

    let mut suspended = resumed.clone();
    suspended.suspend = true;
    let children = [child(&resumed, "i-1", Outcome::InProgress)];
    let p = run(&suspended, &p.status, None, &children, t(3));
    assert!(p.create.is_empty() && is_true(&p, READY, "Suspended"));
    assert_eq!(p.sync, [children[0].name.clone()], "children are suspended too");
}

#[test]
fn dry_run_reports_and_creates_nothing() {
    let s = spec("stopped", serde_json::json!({"dryRun": true}));
    let mut sel = selection(&["i-1", "i-2", "deny-1", "i-3"]);
    sel.candidates[2].status = Some(InstanceStatus::Running);
    sel.candidates[1].status = Some(InstanceStatus::Stopped);
    let p = run(&s, &Default::default(), Some(&sel), &[], t(1));
    assert!(p.create.is_empty());
    let report = p.status.dry_run.as_ref().unwrap();
    assert_eq!(report.would_act, 2);
    assert_eq!(report.first_ids, ["i-1", "i-3"]);
    assert!(is_true(&p, READY, "DryRun"));
    assert!(
        cond(&p, READY).message.contains("would stop 2 of 3"),
        "{}",
        cond(&p, READY).message
    );
    // A one-shot dry run takes no snapshot.
    let s = spec("reset", serde_json::json!({"dryRun": true}));
    let p = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    assert!(p.status.snapshot.is_none() && p.create.is_empty());
    assert_eq!(p.status.dry_run.as_ref().unwrap().would_act, 5);
    // What a maintenance window would hold back is reported.
    let mut sel = selection(&FIVE);
    sel.candidates[0].held = true;
    sel.candidates[3].held = true;
    let p = run(&s, &Default::default(), Some(&sel), &[], t(1));
    assert_eq!(
        p.status.dry_run.as_ref().map(|r| (r.would_act, r.held_back)),
        Some((5, 2))
    );
    assert!(
        cond(&p, READY)
            .message
            .ends_with("; a maintenance window holds back 2 of them now"),
        "{}",
        cond(&p, READY).message
    );
}

#[test]
fn instances_the_namespace_may_not_power_are_never_counted() {
    let s = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 10}}));
    let p = run(
        &s,
        &Default::default(),
        Some(&selection(&["i-1", "deny-1", "deny-2"])),
        &[],
        t(1),
    );
    assert_eq!(created(&p), ["i-1"]);
    assert_eq!((p.status.selected, p.status.denied), (1, 0));
    assert!(
        !cond(&p, RECONCILING).message.contains("denied"),
        "{}",
        cond(&p, RECONCILING).message
    );
    let children = [child(&s, "i-1", Outcome::Succeeded)];
    let p = run(&s, &p.status, None, &children, t(2));
    assert!(is_true(&p, READY, "Succeeded"));
    assert_eq!(p.status.denied, 0);
    // A child the instance controller denied later (its policy changed) counts as denied, not failed.
    let children = [child(&s, "i-1", Outcome::Denied)];
    let p = run(&s, &p.status, None, &children, t(3));
    assert_eq!((p.status.denied, p.status.failed), (1, 0));
}

#[test]
fn a_selector_matching_nothing_allowed_reads_like_one_matching_nothing() {
    let s = spec("restarted", serde_json::json!({}));
    let foreign = run(
        &s,
        &Default::default(),
        Some(&selection(&["deny-1", "deny-2"])),
        &[],
        t(1),
    );
    let missing = run(&s, &Default::default(), Some(&selection(&[])), &[], t(1));
    assert_eq!(foreign.status, missing.status);
    assert_eq!(foreign.events, missing.events);
    assert!(is_true(&foreign, READY, "NothingSelected"));
}

#[test]
fn a_namespace_no_policy_covers_is_denied_plainly() {
    let s = spec("stopped", serde_json::json!({"selector": {"customerId": "c-other"}}));
    let p = run_once(&s, &Default::default(), None, Some(Unlisted::PolicyDenied), &[], t(1));
    assert!(is_true(&p, STALLED, "PolicyDenied"));
    let m = &cond(&p, STALLED).message;
    assert!(
        m.contains("namespace team-a") && m.contains("`stopped`") && m.contains("customerId=c-other"),
        "{m}"
    );
    assert!(p.create.is_empty() && p.status.selected == 0);
    assert!(p.requeue >= Duration::from_secs(60), "a denied fleet does not poll");
}

#[test]
fn a_fleet_waiting_for_its_namespace_walk_says_so() {
    let s = spec("stopped", serde_json::json!({}));
    let p = run_once(
        &s,
        &Default::default(),
        None,
        Some(Unlisted::WaitingForListBudget),
        &[],
        t(1),
    );
    assert!(is_true(&p, RECONCILING, "WaitingForListBudget"));
    assert!(p.create.is_empty());
    assert!(p.requeue <= Duration::from_secs(2));
}

#[test]
fn a_new_run_writes_its_snapshot_before_any_child() {
    let s = spec("reset", serde_json::json!({"strategy": {"maxConcurrent": 5}}));
    let first = run_once(&s, &Default::default(), Some(&selection(&FIVE)), None, &[], t(1));
    assert!(
        first.create.is_empty(),
        "nothing is created before the snapshot is written"
    );
    assert_eq!(first.requeue, Duration::ZERO);
    assert_eq!(first.status.snapshot.as_ref().unwrap().instance_ids, FIVE);
    assert_eq!(first.status.ran_runs, [run_digest(DesiredState::Reset, Some("r1"))]);
    let second = run_once(&s, &first.status, None, None, &[], t(2));
    assert_eq!(created(&second), FIVE);
}

#[test]
fn an_earlier_run_never_runs_again() {
    let r1 = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 5}}));
    let mut r2 = r1.clone();
    r2.request_id = Some("r2".into());
    let p = run(&r1, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let done: Vec<ChildView> = FIVE.iter().map(|id| child(&r1, id, Outcome::Succeeded)).collect();
    let p = run(&r1, &p.status, None, &done, t(2));
    let p = run(&r2, &p.status, Some(&selection(&FIVE)), &done, t(3));
    assert_eq!(created(&p), FIVE, "r2 is a new run");
    assert_eq!(p.delete.len(), 5, "r1's finished children go");
    // Back to r1 (a GitOps rollback): r1's children are gone, and nothing is created.
    let done2: Vec<ChildView> = FIVE.iter().map(|id| child(&r2, id, Outcome::Succeeded)).collect();
    let p = run(&r2, &p.status, None, &done2, t(4));
    assert!(!needs_selection(&r1, &p.status, None, t(5), FleetSettings::default()));
    let back = run(&r1, &p.status, None, &done2, t(5));
    assert!(back.create.is_empty());
    assert!(is_true(&back, READY, "AlreadyRun"), "{:?}", back.status.conditions);
    let m = &cond(&back, READY).message;
    assert!(
        m.contains("requestId r1 already ran") && m.contains("set a new spec.requestId"),
        "{m}"
    );
    // restarted -> reset -> restarted with the same requestId: the second restarted runs nothing.
    let mut reset = r1.clone();
    reset.desired_state = DesiredState::Reset;
    let p = run(&reset, &back.status, Some(&selection(&FIVE)), &done2, t(6));
    assert_eq!(created(&p), FIVE, "reset r1 never ran: it runs");
    let again = run(&r1, &p.status, None, &[], t(7));
    assert!(is_true(&again, READY, "AlreadyRun") && again.create.is_empty());
}

#[test]
fn a_once_level_converges_what_matched_when_it_started() {
    let s = spec(
        "stopped",
        serde_json::json!({"enforcement": "once", "strategy": {"maxConcurrent": 10}}),
    );
    let p = run(&s, &Default::default(), Some(&selection(&["i-1", "i-2"])), &[], t(1));
    assert_eq!(created(&p), ["i-1", "i-2"]);
    assert!(p.status.ran_runs.is_empty(), "levels may run again");
    let done = [
        child(&s, "i-1", Outcome::Succeeded),
        child(&s, "i-2", Outcome::Succeeded),
    ];
    let p = run(&s, &p.status, None, &done, t(2));
    assert!(is_true(&p, READY, "Succeeded"));
    // Hours later an instance newly matches: it is left alone (no listing is even needed).
    assert!(!needs_selection(
        &s,
        &p.status,
        Some(t(0)),
        t(7200),
        FleetSettings::default()
    ));
    let later = run(&s, &p.status, Some(&selection(&["i-1", "i-2", "i-9"])), &done, t(7200));
    assert!(later.create.is_empty());
    // A new selector is a new run.
    let mut wider = s.clone();
    wider.selector.zone = Some("z2".into());
    assert!(needs_selection(
        &wider,
        &p.status,
        None,
        t(7200),
        FleetSettings::default()
    ));
}

#[test]
fn a_once_level_skips_as_late_what_it_has_not_started_by_not_after() {
    let s = spec(
        "stopped",
        serde_json::json!({"enforcement": "once", "notAfter": "2027-01-15T08:00:00Z", "strategy": {"maxConcurrent": 1}}),
    );
    let early = s.not_after.unwrap() - chrono::Duration::seconds(60);
    let late = s.not_after.unwrap() + chrono::Duration::seconds(1);
    let p = run(
        &s,
        &Default::default(),
        Some(&selection(&["i-1", "i-2", "i-3"])),
        &[],
        early,
    );
    assert_eq!(created(&p), ["i-1"]);
    let p = run(&s, &p.status, None, &[child(&s, "i-1", Outcome::Succeeded)], late);
    assert!(p.create.is_empty() && is_true(&p, READY, "Expired"));
    assert_eq!((p.status.succeeded, p.status.expired), (1, 2));
    assert!(cond(&p, READY).message.contains("skipped as late"));
    // Created after notAfter: nothing at all.
    let p = run(&s, &Default::default(), None, &[], late);
    assert!(is_true(&p, READY, "Expired") && p.create.is_empty());
}

#[test]
fn a_child_is_created_only_for_the_fleet_as_it_still_is() {
    let base: super::super::ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "f", "uid": "u1", "generation": 3},
        "spec": {"selector": {"zone": "z"}, "desiredState": "restarted", "requestId": "r1"}
    }))
    .unwrap();
    let changed = |edit: &dyn Fn(&mut super::super::ComputeFleetAction)| {
        let mut f = base.clone();
        edit(&mut f);
        f
    };
    let rows: Vec<(&str, super::super::ComputeFleetAction, bool)> = vec![
        ("unchanged", base.clone(), true),
        ("paused", changed(&|f| f.spec.paused = true), false),
        ("suspended", changed(&|f| f.spec.suspend = true), false),
        ("a new generation", changed(&|f| f.metadata.generation = Some(4)), false),
        (
            "another requestId",
            changed(&|f| f.spec.request_id = Some("r2".into())),
            false,
        ),
        ("re-created", changed(&|f| f.metadata.uid = Some("u2".into())), false),
        (
            "being deleted",
            changed(&|f| {
                f.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ))
            }),
            false,
        ),
    ];
    for (what, now, want) in rows {
        assert_eq!(still_asks(&base, &now), want, "{what}");
    }
}

#[test]
fn not_after_expires_a_run_that_has_not_started_and_stops_one_that_has() {
    let s = spec("restarted", serde_json::json!({"notAfter": "2027-01-15T08:00:00Z"}));
    let late = s.not_after.unwrap() + chrono::Duration::seconds(1);
    let p = run(&s, &Default::default(), None, &[], late);
    assert!(is_true(&p, READY, "Expired") && p.create.is_empty());
    assert!(p.status.snapshot.is_none());
    assert!(!needs_selection(
        &s,
        &Default::default(),
        None,
        late,
        FleetSettings::default()
    ));
    // Started before notAfter: what is pending afterwards is never started.
    let early = s.not_after.unwrap() - chrono::Duration::seconds(60);
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], early);
    assert_eq!(created(&first), ["i-1"]);
    let p = run(&s, &first.status, None, &[child(&s, "i-1", Outcome::Succeeded)], late);
    assert!(p.create.is_empty() && is_true(&p, READY, "Expired"));
    assert_eq!((p.status.succeeded, p.status.expired, p.status.pending), (1, 4, 0));
}

#[test]
fn a_deleted_one_shot_child_is_not_created_again() {
    let s = spec(
        "restarted",
        serde_json::json!({"strategy": {"maxConcurrent": 2, "maxFailures": 1}}),
    );
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let mut status = first.status.clone();
    record_started(&mut status, &first.create);
    // i-1's child vanished; i-2's is still there.
    let p = run(&s, &status, None, &[child(&s, "i-2", Outcome::Succeeded)], t(2));
    assert!(!created(&p).contains(&"i-1"));
    assert_eq!(created(&p), ["i-3", "i-4"]);
    assert_eq!(p.status.failed_ids, ["i-1"]);
}

#[test]
fn children_of_another_run_finish_before_they_are_replaced() {
    let old = spec("stopped", serde_json::json!({"strategy": {"maxConcurrent": 2}}));
    let new = spec("running", serde_json::json!({"strategy": {"maxConcurrent": 2}}));
    let children = [
        child(&old, "i-1", Outcome::InProgress),
        child(&old, "i-2", Outcome::Succeeded),
    ];
    let p = run(
        &new,
        &Default::default(),
        Some(&selection(&["i-1", "i-2", "i-3"])),
        &children,
        t(1),
    );
    // i-2's old child is finished: deleted. i-1's is in flight: it blocks i-1 and takes a slot.
    assert_eq!(p.delete, [children[1].name.clone()]);
    assert_eq!(created(&p), ["i-2"]);
}

#[test]
fn unchanged_finished_fleet_plans_nothing() {
    let s = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 5}}));
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let mut status = first.status.clone();
    record_started(&mut status, &first.create);
    let children: Vec<ChildView> = FIVE.iter().map(|id| child(&s, id, Outcome::Succeeded)).collect();
    let p = run(&s, &status, None, &children, t(2));
    let again = run(&s, &p.status, None, &children, t(500));
    assert!(again.create.is_empty() && again.delete.is_empty() && again.sync.is_empty());
    assert_eq!(again.status, p.status, "a resync writes nothing");
    assert!(!needs_selection(&s, &p.status, None, t(500), FleetSettings::default()));
}

#[test]
fn needs_selection_table() {
    let st = FleetSettings::default();
    let level = spec("running", serde_json::json!({}));
    let suspended = spec("running", serde_json::json!({"suspend": true}));
    let paused = spec("running", serde_json::json!({"paused": true}));
    let paused_report = spec("reset", serde_json::json!({"paused": true, "dryRun": true}));
    let one = spec("reset", serde_json::json!({}));
    let paused_one = spec("reset", serde_json::json!({"paused": true}));
    let snap = run(&one, &Default::default(), Some(&selection(&FIVE)), &[], t(1)).status;
    let rows = [
        (
            "level, never listed",
            &level,
            ComputeFleetActionStatus::default(),
            None,
            true,
        ),
        ("level, fresh", &level, Default::default(), Some(t(0)), false),
        ("level, stale", &level, Default::default(), Some(t(-61)), true),
        ("suspended", &suspended, Default::default(), None, false),
        // A pause lists once (what the fleet holds) and never again: a paused fleet spends no list budget.
        ("paused level, never listed", &paused, Default::default(), None, true),
        (
            "paused level, stale",
            &paused,
            Default::default(),
            Some(t(-3600)),
            false,
        ),
        (
            "paused dry run, stale",
            &paused_report,
            Default::default(),
            Some(t(-3600)),
            false,
        ),
        // A paused one-shot takes its snapshot (resuming continues that run), then nothing more.
        ("paused one-shot, new run", &paused_one, Default::default(), None, true),
        ("one-shot, new run", &one, Default::default(), Some(t(0)), true),
        ("one-shot with its snapshot", &one, snap, None, false),
    ];
    for (case, s, status, listed, want) in rows {
        assert_eq!(needs_selection(s, &status, listed, t(0), st), want, "{case}");
    }
}

#[test]
fn empty_selection_is_ready_and_enforcement_is_synced() {
    let s = spec("running", serde_json::json!({"enforcement": "once"}));
    let p = run(&s, &Default::default(), Some(&selection(&[])), &[], t(1));
    assert!(is_true(&p, READY, "NothingSelected"));
    let continuous = spec("running", serde_json::json!({}));
    let c = child(&continuous, "i-1", Outcome::Succeeded);
    assert_eq!(c.synced.enforcement, Enforcement::Continuous);
    let p = run(
        &s,
        &Default::default(),
        Some(&selection(&["i-1"])),
        std::slice::from_ref(&c),
        t(1),
    );
    assert_eq!(p.sync, [c.name]);
}

#[test]
fn events_mark_a_new_run_its_end_and_a_spent_budget_once() {
    let s = spec("restarted", serde_json::json!({"strategy": {"maxConcurrent": 5}}));
    let first = run(&s, &Default::default(), Some(&selection(&FIVE)), &[], t(1));
    let reasons = |p: &Plan| p.events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>();
    assert_eq!(reasons(&first), ["RunStarted"]);
    let children: Vec<ChildView> = FIVE.iter().map(|id| child(&s, id, Outcome::Succeeded)).collect();
    let done = run(&s, &first.status, None, &children, t(2));
    assert_eq!(reasons(&done), ["Succeeded"]);
    let again = run(&s, &done.status, None, &children, t(3));
    assert!(again.events.is_empty(), "nothing new, no Event");
    let mut failing = children.clone();
    failing[0].outcome = Outcome::Failed {
        reason: "Timeout".into(),
    };
    let stalled = run(&s, &first.status, None, &failing, t(2));
    assert_eq!(reasons(&stalled), ["FailureBudgetExceeded"]);
    assert!(stalled.events[0].warning);
}
