//! The admin API is allowed to be slow, quiet and behind a gateway: queued actions, answers lost after the
//! action ran, long `Retry-After`s; one-shots stay at most once for their whole life; dry run and suspend
//! settle. All on the real API server with the simulator in the matching mode.

use crate::support;

use std::time::{Duration, Instant};

use compute_operator::api::InstanceStatus;
use compute_operator::crd::instance_action::{ActionState, ComputeInstanceAction, DesiredState, Phase};
use compute_operator::sim::{Faults, SimConfig, SimServer};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use support::*;

const TOKEN: &str = "dev-admin-token";

fn add_instance(sim: &SimServer, id: &str, status: InstanceStatus) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.status = status;
    sim.upsert_instance(i);
}

async fn setup(prefix: &str, sim: SimConfig) -> (kube::Client, String, Api<ComputeInstanceAction>, SimServer) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let api = Api::namespaced(client.clone(), &ns);
    let sim = simulator(SimConfig { instances: 0, ..sim }).await;
    (client, ns, api, sim)
}

fn record_state(o: &ComputeInstanceAction) -> Option<ActionState> {
    o.status.as_ref()?.action.as_ref().map(|a| a.state)
}

fn ready_reason(o: &ComputeInstanceAction) -> Option<String> {
    condition(o, "Ready").map(|c| c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_before_the_first_poll_is_seen_by_the_look_right_after_the_202() {
    // Transitions of 40 ms, the first poll only after 500 ms, and a settle time of 30 s: only the look
    // right after the 202 can see the restart and reset under way.
    let (_c, ns, api, sim) = setup(
        "fastrestart",
        SimConfig {
            transition: Duration::from_millis(40),
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-restart", InstanceStatus::Running);
    add_instance(&sim, "i-reset", InstanceStatus::Running);
    let mut config = test_controller_config(&ns);
    config.plan.poll_min = Duration::from_millis(500);
    config.plan.settle = Duration::from_secs(30);
    let _ctl = start_controller(&sim, TOKEN, config).await;
    let started = Instant::now();
    create(&api, &cia("restart", "i-restart", DesiredState::Restarted, Some("r1"))).await;
    create(&api, &cia("reset", "i-reset", DesiredState::Reset, Some("r1"))).await;
    for name in ["restart", "reset"] {
        let o = wait_ready(&api, name).await;
        let record = o
            .status
            .as_ref()
            .and_then(|s| s.action.clone())
            .expect("an action record");
        assert_eq!(record.state, ActionState::Succeeded, "{name}: {record:?}");
        assert!(record.saw_transition, "{name}: the transition was seen: {record:?}");
        assert_ne!(record.reason.as_deref(), Some("CompletedAssumed"), "{name}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "done long before the 30 s settle time: {:?}",
        started.elapsed()
    );
    assert_eq!(audit_for(&sim, "i-restart"), ["restart"]);
    assert_eq!(audit_for(&sim, "i-reset"), ["reset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_start_and_reset_of_an_instance_in_error_are_not_judged_early() {
    let (_c, ns, api, sim) = setup(
        "queued",
        SimConfig {
            transition: Duration::from_millis(300),
            faults: Faults {
                queue_ms: 2500,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-start", InstanceStatus::Error);
    add_instance(&sim, "i-reset", InstanceStatus::Error);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    create(&api, &cia("start", "i-start", DesiredState::Running, None)).await;
    create(&api, &cia("reset", "i-reset", DesiredState::Reset, Some("r1"))).await;
    // While queued the instances still say `error`: never Failed, never Stalled.
    let queued_until = Instant::now() + Duration::from_millis(2200);
    while Instant::now() < queued_until {
        for name in ["start", "reset"] {
            let o = api.get(name).await.unwrap();
            assert!(
                condition(&o, "Stalled").is_none(),
                "{name} stalled while queued: {:?}",
                o.status
            );
            assert_ne!(
                record_state(&o),
                Some(ActionState::Failed),
                "{name} failed while queued"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["start", "reset"] {
        let o = wait_ready(&api, name).await;
        let st = o.status.unwrap();
        assert_eq!(st.phase, Some(Phase::Succeeded), "{name}");
        let a = st.action.unwrap();
        assert_eq!((a.state, a.attempts), (ActionState::Succeeded, 1), "{name}");
        assert_eq!(a.from_status.as_deref(), Some("error"), "{name}");
    }
    assert_eq!(audit_for(&sim, "i-start"), vec!["start"]);
    assert_eq!(audit_for(&sim, "i-reset"), vec!["reset"]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_503_after_a_restart_or_reset_ran_never_runs_it_twice() {
    let (_c, ns, api, sim) = setup(
        "gateway",
        SimConfig {
            transition: Duration::from_millis(800),
            faults: Faults {
                gateway503_first_one_shot: true,
                retry_after_seconds: Some(1),
                ..Faults::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-restart", InstanceStatus::Running);
    add_instance(&sim, "i-reset", InstanceStatus::Running);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    create(&api, &cia("restart", "i-restart", DesiredState::Restarted, Some("r1"))).await;
    create(&api, &cia("reset", "i-reset", DesiredState::Reset, Some("r1"))).await;
    for name in ["restart", "reset"] {
        let o = wait_ready(&api, name).await;
        let a = o.status.unwrap().action.unwrap();
        assert_eq!(
            a.state,
            ActionState::Succeeded,
            "{name}: confirmed by the visible transition"
        );
        assert!(a.saw_transition, "{name}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        audit_for(&sim, "i-restart"),
        vec!["restart"],
        "the 503 was not followed by a resend"
    );
    assert_eq!(audit_for(&sim, "i-reset"), vec!["reset"]);
    assert_eq!(
        sim.stats().responses_with(503),
        2,
        "each first one-shot was answered 503"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_evidence_a_lost_answer_is_outcome_unknown_and_a_new_request_id_runs_once() {
    let (_c, ns, api, sim) = setup(
        "noevidence",
        SimConfig {
            transition: Duration::from_millis(300),
            invisible_transitions: true,
            faults: Faults {
                gateway503_first_one_shot: true,
                retry_after_seconds: Some(1),
                ..Faults::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    create(&api, &cia("restart", "i-1", DesiredState::Restarted, Some("r1"))).await;
    let o = wait_reason(&api, "restart", "Stalled", "OutcomeUnknown").await;
    let message = &condition(&o, "Stalled").unwrap().message;
    assert!(message.contains("spec.requestId"), "says how to ask again: {message}");
    assert_eq!(audit_for(&sim, "i-1"), vec!["restart"], "never resent");
    let ssa = PatchParams::apply("test").force();
    let patch = serde_json::json!({"apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
        "spec": {"instanceId": "i-1", "desiredState": "restarted", "requestId": "r2"}});
    api.patch("restart", &ssa, &Patch::Apply(&patch)).await.unwrap();
    wait_ready_for_request(&api, "restart", "r2").await;
    assert_eq!(audit_for(&sim, "i-1"), vec!["restart", "restart"]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_is_waited_out_by_requeueing_not_by_holding_a_slot() {
    let (_c, ns, api, sim) = setup(
        "retryafter",
        SimConfig {
            transition: Duration::from_millis(200),
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-slow", InstanceStatus::Stopped);
    add_instance(&sim, "i-fast", InstanceStatus::Stopped);
    let mut config = test_controller_config(&ns);
    config.concurrency = 1;
    let ctl = start_controller(&sim, TOKEN, config).await;
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        retry_after_seconds: Some(8),
        ..Faults::default()
    });
    let started = Instant::now();
    create(&api, &cia("slow", "i-slow", DesiredState::Running, None)).await;
    while sim.stats().responses_with(503) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.set_faults(Faults::default());
    // With one reconcile slot, a reconcile sleeping out 8 s would hold up this one.
    create(&api, &cia("fast", "i-fast", DesiredState::Running, None)).await;
    wait_for(
        &api,
        "fast",
        Duration::from_secs(5),
        "Ready while the other waits",
        |o| condition(o, "Ready").is_some(),
    )
    .await;
    assert!(
        condition(&api.get("slow").await.unwrap(), "Ready").is_none(),
        "Retry-After is honoured"
    );
    wait_ready(&api, "slow").await;
    assert!(started.elapsed() >= Duration::from_secs(7), "waited about Retry-After");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_request_id_never_runs_again_however_many_ran_since() {
    let (_c, ns, api, sim) = setup(
        "reuse",
        SimConfig {
            transition: Duration::from_millis(100),
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let mut config = test_controller_config(&ns);
    config.plan.max_one_shots = 1000;
    let ctl = start_controller(&sim, TOKEN, config).await;
    let ssa = PatchParams::apply("test").force();
    let apply = |desired: &str, rid: &str| {
        serde_json::json!({"apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
            "metadata": {"name": "again"},
            "spec": {"instanceId": "i-1", "desiredState": desired, "requestId": rid}})
    };
    let runs = compute_operator::crd::instance_action::HISTORY_LIMIT + 2;
    for n in 0..runs {
        let rid = format!("r{n}");
        api.patch("again", &ssa, &Patch::Apply(&apply("restarted", &rid)))
            .await
            .unwrap();
        wait_ready_for_request(&api, "again", &rid).await;
    }
    assert_eq!(audit_for(&sim, "i-1").len(), runs);
    // Back to the first requestId, which fell out of the 16-entry history long ago.
    api.patch("again", &ssa, &Patch::Apply(&apply("restarted", "r0")))
        .await
        .unwrap();
    let o = wait_for(&api, "again", Duration::from_secs(20), "AlreadyRun", |o| {
        ready_reason(o).as_deref() == Some("AlreadyRun")
    })
    .await;
    assert_eq!(o.status.unwrap().phase, Some(Phase::Skipped));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_for(&sim, "i-1").len(), runs, "r0 did not run again");
    // The key is (action, requestId): a reset with a restart's requestId is a new request and runs once.
    api.patch("again", &ssa, &Patch::Apply(&apply("reset", "r0")))
        .await
        .unwrap();
    wait_for(&api, "again", Duration::from_secs(20), "reset done", |o| {
        condition(o, "Ready").is_some()
            && o.status
                .as_ref()
                .and_then(|s| s.action.as_ref())
                .is_some_and(|a| a.action == compute_operator::api::PowerAction::Reset)
    })
    .await;
    let audit = audit_for(&sim, "i-1");
    assert_eq!(audit.iter().filter(|a| *a == "reset").count(), 1, "{audit:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_one_shot_past_not_after_is_never_sent() {
    let (_c, ns, api, sim) = setup(
        "notafter",
        SimConfig {
            transition: Duration::from_millis(200),
            ..SimConfig::default()
        },
    )
    .await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let not_after = chrono::Utc::now() + chrono::Duration::seconds(6);
    let mut manifest = cia("restart", "i-1", DesiredState::Restarted, Some("2026-12-01"));
    manifest.spec.not_after = Some(not_after);
    create(&api, &manifest).await;
    wait_ready(&api, "restart").await;
    assert_eq!(audit_for(&sim, "i-1"), vec!["restart"]);
    // The cluster is rebuilt from Git: the same manifest comes back as a new object with empty status.
    api.delete("restart", &DeleteParams::default()).await.unwrap();
    while api.get_opt("restart").await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while chrono::Utc::now() <= not_after {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    create(&api, &manifest).await;
    let o = wait_reason(&api, "restart", "Ready", "Expired").await;
    let message = &condition(&o, "Ready").unwrap().message;
    assert!(message.contains("was not run"), "{message}");
    assert_eq!(o.status.unwrap().phase, Some(Phase::Skipped));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        audit_for(&sim, "i-1"),
        vec!["restart"],
        "the re-created object did not run again"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_suspend_settle_so_waiting_does_not_hang() {
    let (_c, ns, api, sim) = setup("settle", SimConfig::default()).await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let mut dry = cia("dry", "i-1", DesiredState::Restarted, Some("r1"));
    dry.spec.dry_run = true;
    let mut suspended = cia("suspended", "i-1", DesiredState::Stopped, None);
    suspended.spec.suspend = true;
    create(&api, &dry).await;
    create(&api, &suspended).await;
    let out = tokio::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &control_plane().kubeconfig.display().to_string(),
            "-n",
            &ns,
        ])
        .args([
            "wait",
            "--for=condition=Ready",
            "cia/dry",
            "cia/suspended",
            "--timeout=30s",
        ])
        .output()
        .await
        .expect("kubectl is on PATH");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry = api.get("dry").await.unwrap();
    assert_eq!(ready_reason(&dry).as_deref(), Some("DryRun"));
    let message = &condition(&dry, "Ready").unwrap().message;
    assert!(message.contains("would restart instance i-1"), "{message}");
    assert!(condition(&dry, "Reconciling").is_none());
    let suspended = api.get("suspended").await.unwrap();
    assert_eq!(ready_reason(&suspended).as_deref(), Some("Suspended"));
    assert!(condition(&suspended, "Reconciling").is_none(), "not Reconciling=True");
    assert_eq!(suspended.status.unwrap().phase, Some(Phase::Suspended));
    assert!(audit_for(&sim, "i-1").is_empty());
    ctl.stop().await;
}
