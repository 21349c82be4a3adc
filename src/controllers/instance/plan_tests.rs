//! Table tests of the planner: every desired state x observed status x recorded action state.

use chrono::TimeZone;

use super::*;

const GEN: i64 = 3;

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap() + chrono::Duration::milliseconds(s)
}

fn spec(desired: DesiredState) -> ComputeInstanceActionSpec {
    ComputeInstanceActionSpec {
        instance_id: "inst-1".into(),
        desired_state: desired,
        request_id: (!desired.is_level()).then(|| "r1".into()),
        timeout_seconds: 60,
        enforcement: Enforcement::Continuous,
        dry_run: false,
        suspend: false,
        not_after: None,
        escalation: None,
    }
}

fn instance(status: &str) -> Observation {
    Observation::Instance(Instance {
        id: "inst-1".into(),
        user_id: String::new(),
        customer_id: String::new(),
        name: "n".into(),
        zone: "z".into(),
        machine_type: String::new(),
        external_ip: String::new(),
        internal_ip: String::new(),
        status: InstanceStatus::parse(status),
        template_id: String::new(),
        created_at: String::new(),
    })
}

fn record(action: PowerAction, state: ActionState, request_id: Option<&str>) -> ActionRecord {
    ActionRecord {
        action,
        request_id: request_id.map(Into::into),
        generation: GEN,
        state,
        intent_at: t(0),
        accepted_at: (state != ActionState::Requested && state != ActionState::Rejected).then(|| t(100)),
        completed_at: state.is_terminal().then(|| t(2000)),
        attempts: 1,
        from_status: Some("running".into()),
        saw_transition: false,
        reason: None,
        drift: false,
    }
}

/// Change control holds nothing back.
pub(super) static NO_HOLDS: Holds = Holds(Vec::new());

fn status_with(action: Option<ActionRecord>) -> ComputeInstanceActionStatus {
    ComputeInstanceActionStatus {
        action,
        ..Default::default()
    }
}

fn run(spec: &ComputeInstanceActionSpec, status: &ComputeInstanceActionStatus, obs: &Observation, now_ms: i64) -> Plan {
    run_with(spec, status, obs, &[], now_ms)
}

fn run_with(
    spec: &ComputeInstanceActionSpec,
    status: &ComputeInstanceActionStatus,
    obs: &Observation,
    peers: &[Peer],
    now_ms: i64,
) -> Plan {
    run_full(spec, status, obs, peers, &NO_HOLDS, now_ms)
}

/// The planner with a settle time of 5 s, no policy denial and no recent one-shots.
fn run_full(
    spec: &ComputeInstanceActionSpec,
    status: &ComputeInstanceActionStatus,
    obs: &Observation,
    peers: &[Peer],
    holds: &Holds,
    now_ms: i64,
) -> Plan {
    let settings = PlanSettings {
        settle: Duration::from_secs(5),
        ..Default::default()
    };
    plan(&PlanInput {
        spec,
        generation: GEN,
        status,
        observation: obs,
        peers,
        now: t(now_ms),
        settings: &settings,
        policy_denial: None,
        recent_one_shots: 0,
        holds,
    })
}

fn ready(p: &Plan) -> (&str, &str) {
    let c = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    (c.status.as_str(), c.reason.as_str())
}

fn stalled_reason(p: &Plan) -> Option<&str> {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .map(|c| c.reason.as_str())
}

const DESIRED: [DesiredState; 4] = [
    DesiredState::Running,
    DesiredState::Stopped,
    DesiredState::Restarted,
    DesiredState::Reset,
];
const STATUSES: [&str; 11] = [
    "running",
    "stopped",
    "provisioning",
    "error",
    "deleting",
    "stopping",
    "starting",
    "restarting",
    "resetting",
    "hibernating",
    "",
];
const STATES: [Option<ActionState>; 7] = [
    None,
    Some(ActionState::Requested),
    Some(ActionState::Rejected),
    Some(ActionState::Accepted),
    Some(ActionState::Succeeded),
    Some(ActionState::Failed),
    Some(ActionState::OutcomeUnknown),
];

/// Invariants over the whole product of inputs.
#[test]
fn invariants_hold_for_every_combination() {
    for desired in DESIRED {
        for observed in STATUSES {
            for state in STATES {
                for now in [500, 10_000, 120_000] {
                    let sp = spec(desired);
                    let rec = state.map(|s| record(desired.action(), s, sp.request_id.as_deref()));
                    let st = status_with(rec.clone());
                    let p = run(&sp, &st, &instance(observed), now);
                    let case = format!("{desired:?} observed={observed:?} state={state:?} now={now}");
                    // Conditions always present and consistent.
                    assert_eq!(p.status.conditions.len(), 3, "{case}");
                    assert_eq!(p.status.observed_generation, Some(GEN), "{case}");
                    let trues = p.status.conditions.iter().filter(|c| c.status == "True").count();
                    assert_eq!(trues, 1, "exactly one of Ready/Reconciling/Stalled: {case}");
                    if let Some(action) = p.post {
                        assert_eq!(action, desired.action(), "{case}");
                        // A POST always comes with a persisted-first intent.
                        let a = p.status.action.as_ref().expect("intent record");
                        assert_eq!(a.state, ActionState::Requested, "{case}");
                        assert_eq!(a.action, action, "{case}");
                        // Never into a transitional instance, never to a level already reached.
                        assert!(!InstanceStatus::parse(observed).is_transitional(), "{case}");
                        assert!(action_allowed_from(action, &InstanceStatus::parse(observed)), "{case}");
                        // At most once: a one-shot whose requestId already has a terminal or in-flight record is never re-posted.
                        if action.is_one_shot() {
                            assert!(
                                matches!(state, None | Some(ActionState::Rejected)),
                                "one-shot re-posted from {state:?}: {case}"
                            );
                        }
                    }
                    if desired.is_level() && observed == desired.level_target().unwrap().as_str() {
                        assert!(p.post.is_none(), "level already reached must not POST: {case}");
                        assert_eq!(ready(&p).0, "True", "{case}");
                    }
                }
            }
        }
    }
}

/// Specific expectations, one row each.
#[test]
fn decision_table() {
    use ActionState as A;
    use DesiredState as D;
    struct Row {
        desired: D,
        observed: &'static str,
        state: Option<A>,
        saw_transition: bool,
        now: i64,
        post: bool,
        ready: &'static str,
        reason: &'static str,
        record_after: Option<A>,
    }
    let rows = [
        // Levels: already there -> Ready, no POST.
        Row {
            desired: D::Running,
            observed: "running",
            state: None,
            saw_transition: false,
            now: 1,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: None,
        },
        Row {
            desired: D::Stopped,
            observed: "stopped",
            state: None,
            saw_transition: false,
            now: 1,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: None,
        },
        // Levels: wrong and settled -> POST.
        Row {
            desired: D::Stopped,
            observed: "running",
            state: None,
            saw_transition: false,
            now: 1,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        Row {
            desired: D::Running,
            observed: "stopped",
            state: None,
            saw_transition: false,
            now: 1,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        Row {
            desired: D::Running,
            observed: "error",
            state: None,
            saw_transition: false,
            now: 1,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        // Levels: transitional -> wait.
        Row {
            desired: D::Running,
            observed: "starting",
            state: None,
            saw_transition: false,
            now: 1,
            post: false,
            ready: "False",
            reason: "WaitingForInstance",
            record_after: None,
        },
        Row {
            desired: D::Stopped,
            observed: "hibernating",
            state: None,
            saw_transition: false,
            now: 1,
            post: false,
            ready: "False",
            reason: "WaitingForInstance",
            record_after: None,
        },
        // Levels: crash after intent -> re-read and continue (here: already reached, so done).
        Row {
            desired: D::Stopped,
            observed: "stopped",
            state: Some(A::Requested),
            saw_transition: false,
            now: 500,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: Some(A::Succeeded),
        },
        Row {
            desired: D::Stopped,
            observed: "running",
            state: Some(A::Requested),
            saw_transition: false,
            now: 500,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        // Levels: accepted and reached -> done.
        Row {
            desired: D::Stopped,
            observed: "stopped",
            state: Some(A::Accepted),
            saw_transition: false,
            now: 600,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: Some(A::Succeeded),
        },
        Row {
            desired: D::Stopped,
            observed: "stopping",
            state: Some(A::Accepted),
            saw_transition: false,
            now: 600,
            post: false,
            ready: "False",
            reason: "ActionAccepted",
            record_after: Some(A::Accepted),
        },
        // Levels: accepted, past timeout -> Stalled Timeout.
        Row {
            desired: D::Stopped,
            observed: "stopping",
            state: Some(A::Accepted),
            saw_transition: false,
            now: 61_000,
            post: false,
            ready: "False",
            reason: "Timeout",
            record_after: Some(A::Failed),
        },
        // One-shots: first time from running -> POST.
        Row {
            desired: D::Restarted,
            observed: "running",
            state: None,
            saw_transition: false,
            now: 1,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        Row {
            desired: D::Reset,
            observed: "error",
            state: None,
            saw_transition: false,
            now: 1,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        // One-shots: restart of a stopped instance is refused by us, not sent.
        Row {
            desired: D::Restarted,
            observed: "stopped",
            state: None,
            saw_transition: false,
            now: 1,
            post: false,
            ready: "False",
            reason: "InvalidInstanceState",
            record_after: None,
        },
        // One-shots: no clear answer (crash, lost answer) -> never resent; evidence is looked for during the
        // settle time (5 s here): none yet -> keep looking; a departure -> accepted; none by then -> unknown.
        Row {
            desired: D::Restarted,
            observed: "running",
            state: Some(A::Requested),
            saw_transition: false,
            now: 500,
            post: false,
            ready: "False",
            reason: "ConfirmingAction",
            record_after: Some(A::Requested),
        },
        Row {
            desired: D::Restarted,
            observed: "restarting",
            state: Some(A::Requested),
            saw_transition: false,
            now: 1500,
            post: false,
            ready: "False",
            reason: "ActionAccepted",
            record_after: Some(A::Accepted),
        },
        Row {
            desired: D::Reset,
            observed: "stopped",
            state: Some(A::Requested),
            saw_transition: false,
            now: 1500,
            post: false,
            ready: "False",
            reason: "ActionAccepted",
            record_after: Some(A::Accepted),
        },
        Row {
            desired: D::Restarted,
            observed: "running",
            state: Some(A::Requested),
            saw_transition: false,
            now: 5_001,
            post: false,
            ready: "False",
            reason: "OutcomeUnknown",
            record_after: Some(A::OutcomeUnknown),
        },
        // One-shots: accepted, running on first poll, no transition seen -> not done yet.
        Row {
            desired: D::Restarted,
            observed: "running",
            state: Some(A::Accepted),
            saw_transition: false,
            now: 400,
            post: false,
            ready: "False",
            reason: "ActionAccepted",
            record_after: Some(A::Accepted),
        },
        // ... but done once the settle time passed.
        Row {
            desired: D::Restarted,
            observed: "running",
            state: Some(A::Accepted),
            saw_transition: false,
            now: 5_200,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: Some(A::Succeeded),
        },
        // ... or at once after a visible transition.
        Row {
            desired: D::Reset,
            observed: "running",
            state: Some(A::Accepted),
            saw_transition: true,
            now: 400,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: Some(A::Succeeded),
        },
        Row {
            desired: D::Reset,
            observed: "resetting",
            state: Some(A::Accepted),
            saw_transition: false,
            now: 400,
            post: false,
            ready: "False",
            reason: "ActionAccepted",
            record_after: Some(A::Accepted),
        },
        Row {
            desired: D::Restarted,
            observed: "error",
            state: Some(A::Accepted),
            saw_transition: true,
            now: 400,
            post: false,
            ready: "False",
            reason: "InstanceError",
            record_after: Some(A::Failed),
        },
        // One-shots: already answered for this requestId -> nothing new.
        Row {
            desired: D::Restarted,
            observed: "running",
            state: Some(A::Succeeded),
            saw_transition: false,
            now: 9_000,
            post: false,
            ready: "True",
            reason: "Succeeded",
            record_after: Some(A::Succeeded),
        },
        Row {
            desired: D::Reset,
            observed: "running",
            state: Some(A::OutcomeUnknown),
            saw_transition: false,
            now: 9_000,
            post: false,
            ready: "False",
            reason: "OutcomeUnknown",
            record_after: Some(A::OutcomeUnknown),
        },
        Row {
            desired: D::Reset,
            observed: "running",
            state: Some(A::Failed),
            saw_transition: false,
            now: 9_000,
            post: false,
            ready: "False",
            reason: "Failed",
            record_after: Some(A::Failed),
        },
        // One-shots: refused earlier (409) and instance settled now -> retried (it never ran).
        Row {
            desired: D::Restarted,
            observed: "running",
            state: Some(A::Rejected),
            saw_transition: false,
            now: 2_000,
            post: true,
            ready: "False",
            reason: "ActionRequested",
            record_after: Some(A::Requested),
        },
        Row {
            desired: D::Restarted,
            observed: "restarting",
            state: Some(A::Rejected),
            saw_transition: false,
            now: 2_000,
            post: false,
            ready: "False",
            reason: "WaitingForInstance",
            record_after: Some(A::Rejected),
        },
        Row {
            desired: D::Restarted,
            observed: "restarting",
            state: Some(A::Rejected),
            saw_transition: false,
            now: 70_000,
            post: false,
            ready: "False",
            reason: "Timeout",
            record_after: Some(A::Failed),
        },
    ];
    for (i, r) in rows.iter().enumerate() {
        let sp = spec(r.desired);
        let rec = r.state.map(|s| ActionRecord {
            saw_transition: r.saw_transition,
            ..record(r.desired.action(), s, sp.request_id.as_deref())
        });
        let p = run(&sp, &status_with(rec), &instance(r.observed), r.now);
        let case = format!("row {i}: {:?} {} {:?}", r.desired, r.observed, r.state);
        assert_eq!(p.post.is_some(), r.post, "{case}");
        assert_eq!(ready(&p), (r.ready, r.reason), "{case}: {:?}", p.status.message);
        assert_eq!(p.status.action.as_ref().map(|a| a.state), r.record_after, "{case}");
    }
}

#[test]
fn new_request_id_runs_once_more_and_old_ones_are_remembered() {
    let mut sp = spec(DesiredState::Restarted);
    let done = record(PowerAction::Restart, ActionState::Succeeded, Some("r1"));
    let st = status_with(Some(done));
    assert!(run(&sp, &st, &instance("running"), 9_000).post.is_none());
    sp.request_id = Some("r2".into());
    let p = run(&sp, &st, &instance("running"), 9_000);
    assert_eq!(p.post, Some(PowerAction::Restart));
    assert_eq!(p.status.history.len(), 1, "the r1 record moves to history");
    // Going back to r1 later does not run it again.
    sp.request_id = Some("r1".into());
    let mut st2 = p.status.clone();
    if let Some(a) = st2.action.as_mut() {
        a.state = ActionState::Succeeded;
    }
    assert!(run(&sp, &st2, &instance("running"), 20_000).post.is_none());
}

#[test]
fn contradicting_enforcers_both_stall_and_same_level_does_not() {
    let peer = |desired| Peer {
        key: "ns/other".into(),
        desired,
        enforcement: Enforcement::Continuous,
        suspended: false,
        acting: false,
    };
    let sp = spec(DesiredState::Stopped);
    let p = run_with(
        &sp,
        &status_with(None),
        &instance("running"),
        &[peer(DesiredState::Running)],
        1,
    );
    assert_eq!(stalled_reason(&p), Some("Conflict"));
    assert!(p.post.is_none());
    let p = run_with(
        &sp,
        &status_with(None),
        &instance("running"),
        &[peer(DesiredState::Stopped)],
        1,
    );
    assert_eq!(p.post, Some(PowerAction::Stop));
    // A peer in flight serializes us.
    let busy = Peer {
        acting: true,
        ..peer(DesiredState::Restarted)
    };
    let p = run_with(&sp, &status_with(None), &instance("running"), &[busy], 1);
    assert!(p.post.is_none());
    assert_eq!(ready(&p).1, "WaitingForOtherAction");
}

#[test]
fn drift_is_corrected_or_reported_by_enforcement() {
    let mut sp = spec(DesiredState::Stopped);
    let converged = record(PowerAction::Stop, ActionState::Succeeded, None);
    let p = run(
        &sp,
        &status_with(Some(converged.clone())),
        &instance("running"),
        100_000,
    );
    assert_eq!(p.post, Some(PowerAction::Stop));
    assert!(p.events.iter().any(|e| e.reason == "DriftDetected"));
    assert!(p.status.action.as_ref().unwrap().drift);
    sp.enforcement = Enforcement::Once;
    let p = run(&sp, &status_with(Some(converged)), &instance("running"), 100_000);
    assert!(p.post.is_none());
    assert_eq!(ready(&p), ("True", "ConvergedOnce"));
}

#[test]
fn dry_run_never_posts() {
    let mut sp = spec(DesiredState::Reset);
    sp.dry_run = true;
    let p = run(&sp, &status_with(None), &instance("running"), 1);
    assert!(p.post.is_none());
    assert_eq!(ready(&p), ("True", "DryRun"), "a dry run settles");
    assert_eq!(p.status.phase, Some(Phase::Skipped));
    assert!(p.status.message.as_deref().unwrap_or_default().contains("would reset"));
    assert!(p.events.iter().any(|e| e.reason == "DryRun"));
}

#[test]
fn a_one_shot_past_not_after_is_expired_not_sent() {
    let mut sp = spec(DesiredState::Restarted);
    sp.not_after = Some(t(1000));
    let before = run(&sp, &status_with(None), &instance("running"), 999);
    assert_eq!(before.post, Some(PowerAction::Restart), "before notAfter it runs");
    let after = run(&sp, &status_with(None), &instance("running"), 1001);
    assert!(after.post.is_none());
    assert_eq!(ready(&after), ("True", "Expired"));
    assert_eq!(after.status.phase, Some(Phase::Skipped));
    // A refused attempt is not retried past notAfter either.
    let refused = status_with(Some(record(PowerAction::Restart, ActionState::Rejected, Some("r1"))));
    let p = run(&sp, &refused, &instance("running"), 1001);
    assert!(p.post.is_none());
    assert_eq!(ready(&p).1, "Expired");
    // Levels too: a schedule event's child that could not be sent in time does not act hours after its event.
    let mut lvl = spec(DesiredState::Stopped);
    lvl.not_after = Some(t(1000));
    assert_eq!(
        run(&lvl, &status_with(None), &instance("running"), 999).post,
        Some(PowerAction::Stop)
    );
    let late = run(&lvl, &status_with(None), &instance("running"), 1001);
    assert!(late.post.is_none());
    assert_eq!(ready(&late), ("True", "Expired"));
    let message = late.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("was not run") && message.contains("later spec.notAfter"),
        "{message}"
    );
    // A level that converged in time stays Ready as it was (nothing to send).
    let converged = run(&lvl, &status_with(None), &instance("stopped"), 1001);
    assert!(converged.post.is_none());
    assert_ne!(ready(&converged).1, "Expired", "{:?}", converged.status.message);
}

#[test]
fn a_sent_request_id_never_runs_again_even_without_its_record() {
    let sp = spec(DesiredState::Restarted);
    let mut st = status_with(None);
    super::super::judge::remember_one_shot(&mut st, PowerAction::Restart, Some("r1"));
    let p = run(&sp, &st, &instance("running"), 1);
    assert!(p.post.is_none());
    assert_eq!(ready(&p), ("True", "AlreadyRun"));
    // The key is (action, requestId): a reset with the same requestId is new.
    let reset = spec(DesiredState::Reset);
    let p = run(&reset, &st, &instance("running"), 1);
    assert_eq!(p.post, Some(PowerAction::Reset));
    assert_eq!(p.status.sent_one_shots.len(), 2, "remembered from the intent on");
    // A refused attempt of the very same request is renewed, not "already run".
    let mut refused = status_with(Some(record(PowerAction::Restart, ActionState::Rejected, Some("r1"))));
    super::super::judge::remember_one_shot(&mut refused, PowerAction::Restart, Some("r1"));
    assert_eq!(
        run(&sp, &refused, &instance("running"), 1).post,
        Some(PowerAction::Restart)
    );
}

#[test]
fn a_queued_start_from_error_is_not_judged_by_the_first_polls() {
    let sp = spec(DesiredState::Running);
    let mut rec = record(PowerAction::Start, ActionState::Accepted, None);
    rec.from_status = Some("error".into());
    let st = status_with(Some(rec));
    for now in [400, 5_000, 30_000] {
        let p = run(&sp, &st, &instance("error"), now);
        assert_eq!(ready(&p), ("False", "ActionAccepted"), "at {now} ms");
        assert_eq!(p.status.action.as_ref().map(|a| a.state), Some(ActionState::Accepted));
    }
    let p = run(&sp, &st, &instance("running"), 30_000);
    assert_eq!(ready(&p), ("True", "Succeeded"));
    // Past the timeout, still in error: Failed with Timeout, not InstanceError.
    let p = run(&sp, &st, &instance("error"), 61_000);
    assert_eq!(stalled_reason(&p), Some("Timeout"));
}

#[test]
fn api_errors_become_conditions() {
    let sp = spec(DesiredState::Running);
    let table: [(ApiError, &str, bool); 6] = [
        (ApiError::NotFound, "InstanceNotFound", true),
        (ApiError::Unauthorized, "Unauthorized", true),
        (ApiError::Forbidden, "Forbidden", true),
        (ApiError::BadRequest("x".into()), "BadRequest", true),
        (
            ApiError::Server {
                status: 503,
                retry_after: None,
            },
            "AdminApiUnavailable",
            false,
        ),
        (ApiError::Malformed("garbage".into()), "AdminApiUnavailable", false),
    ];
    for (err, reason, stalled) in table {
        let p = run(&sp, &status_with(None), &Observation::Failed(err.clone()), 1);
        assert_eq!(ready(&p).1, reason, "{err:?}");
        assert_eq!(stalled_reason(&p).is_some(), stalled, "{err:?}");
        assert!(p.post.is_none());
    }
}

#[test]
fn after_post_table() {
    let sp = spec(DesiredState::Restarted);
    let lvl = spec(DesiredState::Stopped);
    let settings = PlanSettings::default();
    let intent = |a| status_with(Some(record(a, ActionState::Requested, None)));
    type Row<'a> = (
        &'a ComputeInstanceActionSpec,
        PowerAction,
        Result<(), ApiError>,
        ActionState,
        &'a str,
    );
    let table: Vec<Row> = vec![
        (
            &sp,
            PowerAction::Restart,
            Ok(()),
            ActionState::Accepted,
            "ActionAccepted",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::Conflict),
            ActionState::Rejected,
            "InstanceBusy",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::NotFound),
            ActionState::Failed,
            "InstanceNotFound",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::Forbidden),
            ActionState::Rejected,
            "Forbidden",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::RateLimited { retry_after: None }),
            ActionState::Rejected,
            "AdminApiUnavailable",
        ),
        // A gateway may answer 503 after the action ran: kept open and confirmed by evidence, never resent.
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::Server {
                status: 503,
                retry_after: None,
            }),
            ActionState::Requested,
            "ConfirmingAction",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::Server {
                status: 502,
                retry_after: None,
            }),
            ActionState::Requested,
            "ConfirmingAction",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::Timeout { sent: true }),
            ActionState::Requested,
            "ConfirmingAction",
        ),
        (
            &sp,
            PowerAction::Restart,
            Err(ApiError::Transport {
                message: "refused".into(),
                sent: false,
            }),
            ActionState::Rejected,
            "AdminApiUnavailable",
        ),
        (
            &lvl,
            PowerAction::Stop,
            Err(ApiError::Timeout { sent: true }),
            ActionState::Requested,
            "AdminApiUnavailable",
        ),
    ];
    for (spec, action, result, state, reason) in table {
        let p = after_post(&intent(action), spec, GEN, &result, t(10), &settings);
        assert_eq!(p.status.action.as_ref().map(|a| a.state), Some(state), "{result:?}");
        assert_eq!(ready(&p).1, reason, "{result:?}");
    }
}

#[test]
fn a_first_look_after_the_202_catches_a_transition_shorter_than_a_poll() {
    use crate::controllers::instance::plan::first_look;
    let (restart, start) = (PowerAction::Restart, PowerAction::Start);
    // (action, record state, fromStatus, seen right after the 202, transition counted as seen)
    let rows = [
        (restart, ActionState::Accepted, "running", "restarting", true),
        (restart, ActionState::Accepted, "running", "stopped", true),
        (restart, ActionState::Accepted, "running", "running", false),
        (PowerAction::Reset, ActionState::Accepted, "error", "running", true),
        (PowerAction::Reset, ActionState::Accepted, "error", "error", false),
        // Only an accepted one-shot: an unclear answer is confirmed by polls, a level by its target.
        (restart, ActionState::Requested, "running", "restarting", false),
        (start, ActionState::Accepted, "stopped", "starting", false),
    ];
    for (action, state, from, seen, saw) in rows {
        let mut r = record(action, state, None);
        r.from_status = Some(from.into());
        let status = first_look(&status_with(Some(r)), &InstanceStatus::parse(seen));
        let got = status.action.as_ref().is_some_and(|a| a.saw_transition);
        assert_eq!(got, saw, "{action:?} {state:?} from {from}, seen {seen}");
    }
    // Seen departing at the first look, then running at the first poll: done, not assumed.
    let mut r = record(restart, ActionState::Accepted, Some("r1"));
    r.from_status = Some("running".into());
    let looked = first_look(&status_with(Some(r)), &InstanceStatus::Restarting);
    let mut sp = spec(DesiredState::Restarted);
    sp.request_id = Some("r1".into());
    let p = run(&sp, &looked, &instance("running"), 300);
    assert_eq!(
        ready(&p).0,
        "True",
        "done at 0.3 s, long before the settle time: {:?}",
        p.status.conditions
    );
    let reason = p.status.action.as_ref().and_then(|a| a.reason.clone());
    assert_ne!(reason.as_deref(), Some("CompletedAssumed"));
}

#[test]
fn polls_start_fast_then_slow_down() {
    let s = PlanSettings::default();
    let ms = |d: Duration| d.as_millis();
    assert_eq!(ms(poll_delay(&s, Duration::ZERO)), 100);
    assert_eq!(ms(poll_delay(&s, Duration::from_millis(150))), 200);
    assert_eq!(ms(poll_delay(&s, Duration::from_millis(300))), 400);
    assert_eq!(ms(poll_delay(&s, Duration::from_millis(800))), 800);
    assert_eq!(ms(poll_delay(&s, Duration::from_secs(600))), 5000);
}

#[test]
fn policy_denial_stalls_without_posting_and_tells_once() {
    let sp = spec(DesiredState::Reset);
    let settings = PlanSettings::default();
    let status = status_with(None);
    let obs = instance("running");
    let input = PlanInput {
        spec: &sp,
        generation: GEN,
        status: &status,
        observation: &obs,
        peers: &[],
        now: t(1),
        settings: &settings,
        policy_denial: Some("no ComputeAccessPolicy allows it"),
        recent_one_shots: 0,
        holds: &NO_HOLDS,
    };
    let mut seen = status_with(None);
    seen.instance = Some(ObservedInstance {
        status: "running".into(),
        name: "secret-name".into(),
        zone: "secret-zone".into(),
        last_seen: None,
    });
    let p = plan(&PlanInput {
        status: &seen,
        ..input.clone()
    });
    assert!(
        p.status.instance.is_none(),
        "a denied object shows nothing of the instance"
    );
    assert_eq!(p.requeue, Requeue::After(settings.resync), "denied objects do not poll");
    let p = plan(&input);
    assert!(p.post.is_none());
    assert_eq!(stalled_reason(&p), Some("PolicyDenied"));
    assert_eq!(p.events.len(), 1);
    // Still denied on the next look: no second event.
    let again = PlanInput {
        status: &p.status,
        ..input
    };
    assert!(plan(&again).events.is_empty());
}

#[test]
fn loop_protection_limits_one_shots_per_window() {
    let sp = spec(DesiredState::Restarted);
    let settings = PlanSettings {
        max_one_shots: 2,
        ..Default::default()
    };
    let status = status_with(None);
    let obs = instance("running");
    let mk = |recent| PlanInput {
        spec: &sp,
        generation: GEN,
        status: &status,
        observation: &obs,
        peers: &[],
        now: t(1),
        settings: &settings,
        policy_denial: None,
        recent_one_shots: recent,
        holds: &NO_HOLDS,
    };
    assert!(plan(&mk(1)).post.is_some());
    let p = plan(&mk(2));
    assert!(p.post.is_none());
    assert_eq!(stalled_reason(&p), Some("RateLimited"));
    // Counting: sent one-shots inside the window only.
    let mut st = status_with(Some(record(PowerAction::Restart, ActionState::Succeeded, Some("a"))));
    st.history = vec![
        record(PowerAction::Reset, ActionState::OutcomeUnknown, Some("b")),
        record(PowerAction::Restart, ActionState::Rejected, Some("c")),
        record(PowerAction::Stop, ActionState::Succeeded, None),
    ];
    assert_eq!(count_recent_one_shots([&st], t(10_000), Duration::from_secs(3600)), 2);
    assert_eq!(
        count_recent_one_shots([&st], t(7_200_000), Duration::from_secs(3600)),
        0
    );
}

#[path = "plan_change_tests.rs"]
mod change;
