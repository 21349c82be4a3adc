//! Table tests of change control in the planner (windows and budgets hold actions back) and of escalation.
use super::*;

fn hold(reason: &'static str, until_ms: Option<i64>) -> Hold {
    Hold {
        reason,
        by: "test-gate".into(),
        message: format!("{reason} by test-gate"),
        until: until_ms.map(t),
    }
}

fn run_held(
    sp: &ComputeInstanceActionSpec,
    status: &ComputeInstanceActionStatus,
    obs: &Observation,
    holds: &Holds,
    now_ms: i64,
) -> Plan {
    run_full(sp, status, obs, &[], holds, now_ms)
}

fn reconciling(p: &Plan) -> Option<(&str, &str)> {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True")
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

#[test]
fn a_window_holds_every_kind_of_action_until_it_opens() {
    let window = |a| Holds(vec![(a, hold("WaitingForWindow", Some(5_000)))]);
    for (desired, seen) in [
        (DesiredState::Restarted, "running"),
        (DesiredState::Reset, "running"),
        (DesiredState::Stopped, "running"),
        (DesiredState::Running, "stopped"),
    ] {
        let sp = spec(desired);
        let p = run_held(&sp, &status_with(None), &instance(seen), &window(desired.action()), 0);
        assert_eq!(p.post, None, "{desired:?}: nothing is sent");
        assert!(p.status.action.is_none(), "{desired:?}: no intent is written");
        assert_eq!(
            reconciling(&p),
            Some(("WaitingForWindow", "WaitingForWindow by test-gate"))
        );
        assert_eq!(p.status.held_until, Some(t(5_000)));
        assert_eq!(p.status.held_by.as_deref(), Some("test-gate"));
        assert_eq!(
            p.requeue,
            Requeue::Exactly(Duration::from_secs(5) + HOLD_MARGIN),
            "back exactly at the opening"
        );
        assert_eq!(p.events.len(), 1, "told once");
        let again = run_held(&sp, &p.status, &instance(seen), &window(desired.action()), 1_000);
        assert!(again.events.is_empty(), "{desired:?}: still held, no second event");
        assert_eq!(again.requeue, Requeue::Exactly(Duration::from_secs(4) + HOLD_MARGIN));
        // Open: sent, and the hold's time is gone from the status.
        let open = run_held(&sp, &again.status, &instance(seen), &NO_HOLDS, 5_000);
        assert_eq!(open.post, Some(desired.action()), "{desired:?}: sent once open");
        assert_eq!((open.status.held_until, open.status.held_by), (None, None));
    }
}

#[test]
fn a_hold_of_another_action_changes_nothing() {
    let sp = spec(DesiredState::Restarted);
    let holds = Holds(vec![(PowerAction::Stop, hold("WaitingForWindow", Some(5_000)))]);
    let p = run_held(&sp, &status_with(None), &instance("running"), &holds, 0);
    assert_eq!(p.post, Some(PowerAction::Restart));
}

#[test]
fn not_after_still_applies_while_held() {
    let mut sp = spec(DesiredState::Restarted);
    sp.not_after = Some(t(2_000));
    let holds = Holds(vec![(PowerAction::Restart, hold("WaitingForWindow", Some(60_000)))]);
    let p = run_held(&sp, &status_with(None), &instance("running"), &holds, 0);
    assert_eq!(
        p.requeue,
        Requeue::Exactly(Duration::from_secs(2) + HOLD_MARGIN),
        "back at notAfter"
    );
    let late = run_held(&sp, &p.status, &instance("running"), &holds, 2_001);
    assert_eq!(late.post, None);
    assert_eq!(ready(&late), ("True", "Expired"), "the window opened too late for it");
}

#[test]
fn drift_correction_obeys_windows() {
    let sp = spec(DesiredState::Stopped);
    let mut converged = status_with(Some(ActionRecord {
        completed_at: Some(t(50)),
        ..record(PowerAction::Stop, ActionState::Succeeded, None)
    }));
    converged.observed_generation = Some(GEN);
    converged.phase = Some(Phase::Succeeded);
    let holds = Holds(vec![(PowerAction::Stop, hold("WaitingForWindow", Some(9_000)))]);
    let p = run_held(&sp, &converged, &instance("running"), &holds, 1_000);
    assert_eq!(p.post, None, "drift is not corrected inside a freeze");
    assert_eq!(reconciling(&p).map(|r| r.0), Some("WaitingForWindow"));
    let open = run_held(&sp, &p.status, &instance("running"), &NO_HOLDS, 9_000);
    assert_eq!(open.post, Some(PowerAction::Stop));
}

#[test]
fn a_dry_run_reports_what_a_window_would_hold_back() {
    let mut sp = spec(DesiredState::Restarted);
    sp.dry_run = true;
    let holds = Holds(vec![(PowerAction::Restart, hold("WaitingForWindow", Some(5_000)))]);
    let p = run_held(&sp, &status_with(None), &instance("running"), &holds, 0);
    assert_eq!(p.post, None);
    let (_, reason) = ready(&p);
    assert_eq!(reason, "DryRun");
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("held back now: WaitingForWindow by test-gate")),
        "{:?}",
        p.status.message
    );
}

#[test]
fn a_budget_hold_waits_to_be_woken() {
    let sp = spec(DesiredState::Stopped);
    let holds = Holds(vec![(PowerAction::Stop, hold("WaitingForBudget", None))]);
    let p = run_held(&sp, &status_with(None), &instance("running"), &holds, 0);
    assert_eq!(p.post, None);
    assert_eq!(reconciling(&p).map(|r| r.0), Some("WaitingForBudget"));
    assert_eq!(p.status.held_until, None);
    assert_eq!(
        p.requeue,
        Requeue::Exactly(PlanSettings::default().slow_retry),
        "woken when a disruption ends; a slow look as the safety net"
    );
}

fn escalating() -> ComputeInstanceActionSpec {
    let mut sp = spec(DesiredState::Restarted);
    sp.escalation = Some(crate::crd::instance_action::Escalation {
        after: "10s".into(),
        to: crate::crd::instance_action::EscalationTarget::Reset,
    });
    sp
}

/// A restart accepted at 100 ms, its digest remembered as the planner does at the intent.
fn restart_accepted() -> ComputeInstanceActionStatus {
    let mut st = status_with(Some(record(PowerAction::Restart, ActionState::Accepted, Some("r1"))));
    judge::remember_one_shot(&mut st, PowerAction::Restart, Some("r1"));
    st
}

#[test]
fn escalation_fires_when_the_restart_does_not_bring_the_instance_back() {
    let sp = escalating();
    let st = restart_accepted();
    // Before `after`: waiting, whatever the instance shows (an error included).
    for seen in ["stopped", "restarting", "error"] {
        let p = run_held(&sp, &st, &instance(seen), &NO_HOLDS, 5_000);
        assert_eq!(p.post, None, "{seen}: not yet");
    }
    let p = run_held(&sp, &st, &instance("error"), &NO_HOLDS, 10_100);
    assert_eq!(p.post, Some(PowerAction::Reset), "escalated at `after`");
    let reset = p.status.action.as_ref().expect("the reset's own intent");
    assert_eq!(
        (reset.action, reset.state, reset.request_id.as_deref()),
        (PowerAction::Reset, ActionState::Requested, Some("r1"))
    );
    let restart = p.status.history.last().expect("the restart in history");
    assert_eq!(
        (restart.action, restart.reason.as_deref()),
        (PowerAction::Restart, Some(ESCALATED))
    );
    assert!(judge::one_shot_was_sent(&p.status, PowerAction::Reset, Some("r1")));
    assert!(p.events.iter().any(|e| e.reason == "Escalated" && e.warning));
    assert!(
        reconciling(&p).is_some_and(|(_, m)| m.contains("escalating to one reset")),
        "{:?}",
        reconciling(&p)
    );
    // The reset is accepted and completes: the request is answered, by the reset.
    let mut accepted = p.status.clone();
    if let Some(a) = accepted.action.as_mut() {
        a.state = ActionState::Accepted;
        a.accepted_at = Some(t(10_200));
    }
    let done = run_held(&sp, &accepted, &instance("running"), &NO_HOLDS, 12_000);
    assert_eq!(done.post, None);
    // Still within the settle time of an unseen transition: wait, then it completes.
    let done = run_held(&sp, &done.status, &instance("resetting"), &NO_HOLDS, 12_500);
    let done = run_held(&sp, &done.status, &instance("running"), &NO_HOLDS, 13_000);
    assert_eq!(ready(&done), ("True", "Succeeded"));
    assert!(
        done.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("escalated to a reset"))
    );
    // A resync says the same and sends nothing.
    let resync = run_held(&sp, &done.status, &instance("running"), &NO_HOLDS, 60_000);
    assert_eq!((resync.post, ready(&resync)), (None, ("True", "Succeeded")));
}

#[test]
fn escalation_does_not_fire_when_the_restart_completes() {
    let sp = escalating();
    let mut st = restart_accepted();
    if let Some(a) = st.action.as_mut() {
        a.saw_transition = true;
    }
    let p = run_held(&sp, &st, &instance("running"), &NO_HOLDS, 30_000);
    assert_eq!(p.post, None);
    assert_eq!(ready(&p), ("True", "Succeeded"));
    assert!(!judge::one_shot_was_sent(&p.status, PowerAction::Reset, Some("r1")));
}

#[test]
fn escalation_never_follows_an_unclear_answer_without_evidence() {
    let sp = escalating();
    // The restart's answer was lost (intent only), and the instance never moved.
    let mut st = status_with(Some(record(PowerAction::Restart, ActionState::Requested, Some("r1"))));
    judge::remember_one_shot(&mut st, PowerAction::Restart, Some("r1"));
    for now in [1_000, 10_100, 20_000] {
        let p = run_held(&sp, &st, &instance("running"), &NO_HOLDS, now);
        assert_eq!(p.post, None, "at {now}: nothing proves the restart ran");
    }
    let p = run_held(&sp, &st, &instance("running"), &NO_HOLDS, 20_000);
    assert_eq!(stalled_reason(&p), Some("OutcomeUnknown"));
}

#[test]
fn escalation_waits_for_the_gates_and_happens_at_most_once() {
    let sp = escalating();
    let st = restart_accepted();
    let windows = Holds(vec![(PowerAction::Reset, hold("WaitingForWindow", Some(50_000)))]);
    let p = run_held(&sp, &st, &instance("stopped"), &windows, 10_100);
    assert_eq!(p.post, None, "a window holds the reset back");
    assert_eq!(
        p.status.action.as_ref().map(|a| (a.action, a.state)),
        Some((PowerAction::Restart, ActionState::Accepted)),
        "the restart stays open"
    );
    assert_eq!(reconciling(&p).map(|r| r.0), Some("WaitingForWindow"));
    // A reset already sent for this requestId (its digest): never a second one.
    let mut sent = restart_accepted();
    judge::remember_one_shot(&mut sent, PowerAction::Reset, Some("r1"));
    let p = run_held(&sp, &sent, &instance("stopped"), &NO_HOLDS, 10_100);
    assert_eq!(p.post, None);
}
