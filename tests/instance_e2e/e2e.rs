//! End to end: the real kube-apiserver + etcd, the simulator, and the controller.

use crate::support;

use std::time::Duration;

use compute_operator::api::InstanceStatus;
use compute_operator::crd::instance_action::{
    ActionRecord, ActionState, ComputeInstanceAction, ComputeInstanceActionStatus, DesiredState,
};
use compute_operator::sim::{Faults, SimConfig};
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::*;

const TOKEN: &str = "dev-admin-token";

fn sim_config() -> SimConfig {
    SimConfig {
        instances: 0,
        transition: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

fn add_instance(sim: &compute_operator::sim::SimServer, id: &str, status: InstanceStatus) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.status = status;
    sim.upsert_instance(i);
}

async fn setup(
    prefix: &str,
) -> (
    kube::Client,
    String,
    Api<ComputeInstanceAction>,
    compute_operator::sim::SimServer,
) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let api = Api::namespaced(client.clone(), &ns);
    let sim = simulator(sim_config()).await;
    (client, ns, api, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_desired_state_reaches_ready_from_each_starting_status() {
    let (_client, ns, api, sim) = setup("states").await;
    let cases = [
        (
            "stop-running",
            "i-a",
            InstanceStatus::Running,
            DesiredState::Stopped,
            vec!["stop"],
        ),
        (
            "stop-error",
            "i-b",
            InstanceStatus::Error,
            DesiredState::Stopped,
            vec!["stop"],
        ),
        (
            "start-stopped",
            "i-c",
            InstanceStatus::Stopped,
            DesiredState::Running,
            vec!["start"],
        ),
        (
            "start-error",
            "i-d",
            InstanceStatus::Error,
            DesiredState::Running,
            vec!["start"],
        ),
        (
            "restart-running",
            "i-e",
            InstanceStatus::Running,
            DesiredState::Restarted,
            vec!["restart"],
        ),
        (
            "reset-running",
            "i-f",
            InstanceStatus::Running,
            DesiredState::Reset,
            vec!["reset"],
        ),
        (
            "reset-error",
            "i-g",
            InstanceStatus::Error,
            DesiredState::Reset,
            vec!["reset"],
        ),
        (
            "already-running",
            "i-h",
            InstanceStatus::Running,
            DesiredState::Running,
            vec![],
        ),
        (
            "already-stopped",
            "i-i",
            InstanceStatus::Stopped,
            DesiredState::Stopped,
            vec![],
        ),
    ];
    for (_, id, status, _, _) in &cases {
        add_instance(&sim, id, status.clone());
    }
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    for (name, id, _, desired, _) in &cases {
        create(&api, &cia(name, id, *desired, Some("r1"))).await;
    }
    // kubectl wait works on them, unchanged.
    let out = tokio::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &control_plane().kubeconfig.display().to_string(),
            "-n",
            &ns,
        ])
        .args(["wait", "--for=condition=Ready", "cia", "--all", "--timeout=60s"])
        .output()
        .await
        .expect("kubectl is on PATH");
    if !out.status.success() {
        let all = api.list(&Default::default()).await.unwrap();
        for o in all {
            eprintln!(
                "{}: {}",
                support::name_of(&o),
                serde_json::to_string(&o.status).unwrap_or_default()
            );
        }
        panic!("kubectl wait failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (name, id, _, desired, actions) in &cases {
        let o = wait_ready(&api, name).await;
        let st = o.status.as_ref().unwrap();
        assert_eq!(audit_for(&sim, id), *actions, "{name}: POSTs");
        assert_eq!(st.observed_generation, o.metadata.generation, "{name}");
        let want = match desired {
            DesiredState::Stopped => "stopped",
            _ => "running",
        };
        assert_eq!(st.instance.as_ref().unwrap().status, want, "{name}");
        if !actions.is_empty() {
            let a = st.action.as_ref().unwrap();
            assert_eq!(a.state, ActionState::Succeeded, "{name}");
            assert!(a.accepted_at.is_some() && a.completed_at.is_some(), "{name}");
        }
    }
    // No hot loop: once everything is Ready, status writes stop.
    let before = ctl.metrics.status_writes.get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ctl.metrics.status_writes.get(),
        before,
        "status writes continued after Ready"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shots_run_at_most_once_per_request_id() {
    let (_client, ns, api, sim) = setup("once").await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let obj = cia("restart", "i-1", DesiredState::Restarted, Some("2026-11-27T01"));
    let ssa = PatchParams::apply("gitops-test").force();
    api.patch("restart", &ssa, &Patch::Apply(&obj)).await.expect("apply");
    wait_ready(&api, "restart").await;
    // A GitOps re-sync: the same manifest again, several times.
    for _ in 0..3 {
        api.patch("restart", &ssa, &Patch::Apply(&obj)).await.expect("re-apply");
    }
    // Controller restart.
    ctl.stop().await;
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        audit_for(&sim, "i-1"),
        vec!["restart"],
        "a re-apply or restart ran it again"
    );
    // A new requestId: exactly one more.
    let mut obj2 = obj.clone();
    obj2.spec.request_id = Some("2026-11-27T02".into());
    api.patch("restart", &ssa, &Patch::Apply(&obj2))
        .await
        .expect("new requestId");
    wait_ready_for_request(&api, "restart", "2026-11-27T02").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_for(&sim, "i-1"), vec!["restart", "restart"]);
    let st = api.get("restart").await.unwrap().status.unwrap();
    assert_eq!(st.history.len(), 1, "the first run is kept in history");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_mid_action_never_resends() {
    let (_client, ns, api, sim) = setup("midaction").await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    sim.set_faults(Faults {
        never_finish: true,
        ..Faults::default()
    });
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    create(&api, &cia("reset", "i-1", DesiredState::Reset, Some("a"))).await;
    wait_for(&api, "reset", Duration::from_secs(20), "accepted", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.action.as_ref())
            .is_some_and(|a| a.state == ActionState::Accepted)
    })
    .await;
    ctl.abort();
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.set_faults(Faults::default());
    wait_ready(&api, "reset").await;
    assert_eq!(audit_for(&sim, "i-1"), vec!["reset"]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_without_outcome_is_reported_not_resent() {
    let (_client, ns, api, sim) = setup("unknown").await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    // What a crash between the intent write and the POST leaves behind.
    let created = api
        .create(
            &PostParams::default(),
            &cia("restart", "i-1", DesiredState::Restarted, Some("x")),
        )
        .await
        .unwrap();
    let mut with_intent = created.clone();
    with_intent.status = Some(ComputeInstanceActionStatus {
        action: Some(ActionRecord {
            action: compute_operator::api::PowerAction::Restart,
            request_id: Some("x".into()),
            generation: 1,
            state: ActionState::Requested,
            intent_at: chrono::Utc::now(),
            accepted_at: None,
            completed_at: None,
            attempts: 1,
            from_status: None,
            saw_transition: false,
            reason: None,
            drift: false,
        }),
        ..Default::default()
    });
    api.replace_status("restart", &PostParams::default(), &with_intent)
        .await
        .expect("write intent");
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let o = wait_reason(&api, "restart", "Stalled", "OutcomeUnknown").await;
    assert!(
        condition(&o, "Stalled").unwrap().message.contains("requestId"),
        "message tells the way on"
    );
    assert!(
        audit_for(&sim, "i-1").is_empty(),
        "an unknown outcome must not be resent"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_rejected_by_the_api_server() {
    let client = client().await;
    let ns = namespace(&client, "invalid").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<ComputeInstanceAction>(&()),
    );
    let bad = |spec: serde_json::Value| {
        serde_json::from_value::<kube::api::DynamicObject>(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
            "metadata": {"name": "bad"}, "spec": spec
        }))
        .unwrap()
    };
    let table = [
        (
            serde_json::json!({"instanceId": "i-1", "desiredState": "paused"}),
            "Unsupported value: \"paused\"",
        ),
        (
            serde_json::json!({"instanceId": "../etc", "desiredState": "running"}),
            "instanceId must start with a letter or digit",
        ),
        (
            serde_json::json!({"instanceId": "a/b", "desiredState": "running"}),
            "instanceId must start with a letter or digit",
        ),
        (
            serde_json::json!({"instanceId": "a..b", "desiredState": "running"}),
            "without '..'",
        ),
        (
            serde_json::json!({"instanceId": "a b", "desiredState": "running"}),
            "instanceId must",
        ),
        (
            serde_json::json!({"instanceId": "x".repeat(129), "desiredState": "running"}),
            "Too long",
        ),
        (
            serde_json::json!({"instanceId": "i-1", "desiredState": "running", "timeoutSeconds": 5}),
            "should be greater than or equal to 10",
        ),
        (
            serde_json::json!({"instanceId": "i-1", "desiredState": "running", "timeoutSeconds": 999999}),
            "should be less than or equal to 86400",
        ),
        (
            serde_json::json!({"desiredState": "running"}),
            "instanceId: Required value",
        ),
    ];
    for (spec, want) in table {
        let err = raw
            .create(&PostParams::default(), &bad(spec.clone()))
            .await
            .expect_err("must be rejected");
        let msg = err.to_string();
        assert!(msg.contains(want), "{spec}: got {msg}");
    }
    // instanceId is immutable.
    create(&api, &cia("ok", "i-1", DesiredState::Running, None)).await;
    let patch = serde_json::json!({"spec": {"instanceId": "i-2"}});
    let err = api
        .patch("ok", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("immutable");
    assert!(err.to_string().contains("instanceId is immutable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_become_conditions() {
    let (_client, ns, api, sim) = setup("failures").await;
    add_instance(&sim, "i-busy", InstanceStatus::Running);
    add_instance(&sim, "i-503", InstanceStatus::Running);
    let mut config = test_controller_config(&ns);
    config.plan.resync = Duration::from_secs(60);
    let ctl = start_controller(&sim, TOKEN, config).await;
    // 404.
    create(&api, &cia("missing", "i-nope", DesiredState::Stopped, None)).await;
    let o = wait_reason(&api, "missing", "Stalled", "InstanceNotFound").await;
    assert_eq!(
        o.status.unwrap().phase,
        Some(compute_operator::crd::instance_action::Phase::Failed)
    );
    // 409 storm: the instance stays busy (someone else's action never finishes) until it is released.
    sim.set_status("i-busy", InstanceStatus::Restarting);
    create(&api, &cia("busy", "i-busy", DesiredState::Stopped, None)).await;
    wait_reason(&api, "busy", "Reconciling", "WaitingForInstance").await;
    sim.set_status("i-busy", InstanceStatus::Running);
    wait_ready(&api, "busy").await;
    assert_eq!(audit_for(&sim, "i-busy"), vec!["stop"]);
    // 503 bursts with Retry-After: reported while they last, then it converges.
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        retry_after_seconds: Some(1),
        ..Faults::default()
    });
    create(&api, &cia("flaky", "i-503", DesiredState::Stopped, None)).await;
    wait_reason(&api, "flaky", "Reconciling", "AdminApiUnavailable").await;
    sim.set_faults(Faults::default());
    wait_ready(&api, "flaky").await;
    ctl.stop().await;
    // Credentials without the admin role.
    let ctl = start_controller(&sim, "dev-user-token", test_controller_config(&ns)).await;
    create(&api, &cia("noadmin", "i-busy", DesiredState::Running, None)).await;
    let o = wait_reason(&api, "noadmin", "Stalled", "Forbidden").await;
    assert!(condition(&o, "Stalled").unwrap().message.contains("compute_admin"));
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_on_one_instance_are_serialized_or_in_conflict() {
    let (_client, ns, api, sim) = setup("peers").await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    add_instance(&sim, "i-2", InstanceStatus::Running);
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    // Contradicting levels: both Stalled/Conflict, no POST.
    create(&api, &cia("want-up", "i-1", DesiredState::Running, None)).await;
    create(&api, &cia("want-down", "i-1", DesiredState::Stopped, None)).await;
    wait_reason(&api, "want-down", "Stalled", "Conflict").await;
    // The first one may have been Ready before the second appeared; on its next look it is in conflict too.
    api.patch(
        "want-up",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"timeoutSeconds": 61}})),
    )
    .await
    .unwrap();
    wait_reason(&api, "want-up", "Stalled", "Conflict").await;
    assert!(audit_for(&sim, "i-1").is_empty(), "neither acts");
    // Deleting one resolves it; deleting never touches the instance.
    api.delete("want-down", &Default::default()).await.unwrap();
    wait_ready(&api, "want-up").await;
    assert!(audit_for(&sim, "i-1").is_empty());
    // A restart and a reset on one instance: serialized, never overlapping (the sim answers 409 to overlap).
    create(&api, &cia("restart", "i-2", DesiredState::Restarted, Some("1"))).await;
    create(&api, &cia("reset", "i-2", DesiredState::Reset, Some("1"))).await;
    wait_ready(&api, "restart").await;
    wait_ready(&api, "reset").await;
    let mut actions = audit_for(&sim, "i-2");
    actions.sort();
    assert_eq!(actions, vec!["reset", "restart"]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_on_resync_and_deletion_leaves_the_instance_alone() {
    let (_client, ns, api, sim) = setup("drift").await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let mut config = test_controller_config(&ns);
    config.plan.resync = Duration::from_secs(2);
    let ctl = start_controller(&sim, TOKEN, config).await;
    create(&api, &cia("keep-stopped", "i-1", DesiredState::Stopped, None)).await;
    wait_ready(&api, "keep-stopped").await;
    // Someone starts it elsewhere.
    sim.set_status("i-1", InstanceStatus::Running);
    wait_for(&api, "keep-stopped", Duration::from_secs(20), "drift corrected", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.action.as_ref())
            .is_some_and(|a| a.drift && a.state == ActionState::Succeeded)
    })
    .await;
    assert_eq!(audit_for(&sim, "i-1"), vec!["stop", "stop"]);
    api.delete("keep-stopped", &Default::default()).await.unwrap();
    sim.set_status("i-1", InstanceStatus::Running);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        audit_for(&sim, "i-1"),
        vec!["stop", "stop"],
        "deleted objects never act"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_leak_into_logs_status_or_events() {
    const SENTINEL: &str = "SENTINEL-7d1e5c0ffee-never-print-me";
    let client = client().await;
    let ns = namespace(&client, "secrets").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let sim = simulator(SimConfig {
        instances: 0,
        admin_token: SENTINEL.into(),
        ..sim_config()
    })
    .await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    let log = std::env::temp_dir().join(format!("compute-operator-secrets-{}.log", std::process::id()));
    let port = compute_operator::devenv::controlplane::free_port().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_compute-operator"));
    cmd.args([
        "run",
        "--policy-mode",
        "off",
        "--log-level",
        "trace",
        "--log-format",
        "json",
    ])
    .args([
        "--namespaces",
        &ns,
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--api-url",
        sim.base_url(),
    ])
    .env("KUBECONFIG", &control_plane().kubeconfig)
    .env("COMPUTE_API_TOKEN", SENTINEL)
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    let mut operator = compute_operator::devenv::process::Guarded::spawn("compute-operator", cmd).unwrap();
    create(&api, &cia("restart", "i-1", DesiredState::Restarted, Some("1"))).await;
    // A second object that fails: error paths must not print credentials either.
    create(&api, &cia("missing", "i-404", DesiredState::Stopped, None)).await;
    let ready = wait_ready(&api, "restart").await;
    wait_reason(&api, "missing", "Stalled", "InstanceNotFound").await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    operator.stop(Duration::from_secs(10));
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("action sent"), "the log was captured");
    assert!(!logs.contains(SENTINEL), "credentials leaked into the logs");
    assert!(!metrics.contains(SENTINEL), "credentials leaked into metrics");
    assert!(
        !serde_json::to_string(&ready).unwrap().contains(SENTINEL),
        "credentials leaked into status"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let all = serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    assert!(
        all.contains("ActionCompleted") && !all.contains(SENTINEL),
        "credentials leaked into events"
    );
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_409_means_look_again_until_the_instance_is_free() {
    let client = client().await;
    let ns = namespace(&client, "storm").await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    // Invisible transitions: GET says `running` while the instance is busy, so only the POST's 409 tells.
    let sim = simulator(SimConfig {
        instances: 0,
        transition: Duration::from_millis(2500),
        invisible_transitions: true,
        ..SimConfig::default()
    })
    .await;
    add_instance(&sim, "i-1", InstanceStatus::Running);
    // Someone else restarts it through the admin API.
    admin_client_for(&sim, TOKEN)
        .act(
            "i-1",
            compute_operator::api::PowerAction::Restart,
            compute_operator::api::Repeat::Never,
        )
        .await
        .unwrap();
    let ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    create(&api, &cia("reset", "i-1", DesiredState::Reset, Some("1"))).await;
    wait_reason(&api, "reset", "Reconciling", "InstanceBusy").await;
    let o = wait_ready(&api, "reset").await;
    assert!(
        o.status.unwrap().action.unwrap().attempts >= 2,
        "the refused POST was retried after re-reading"
    );
    assert_eq!(
        audit_for(&sim, "i-1"),
        vec!["restart", "reset"],
        "exactly one reset, after the other action"
    );
    assert!(sim.stats().responses.get(&409).copied().unwrap_or(0) >= 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_becomes_a_series_on_the_first() {
    use compute_operator::controllers::events::{Event, EventRecorder, EventType};
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;

    let client = client().await;
    let ns = namespace(&client, "events").await;
    let reporter = kube::runtime::events::Reporter {
        controller: "compute-operator-test".into(),
        instance: None,
    };
    let recorder = EventRecorder::new(client.clone(), reporter);
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        name: Some("thing".into()),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let event = |reason: &str, note: &str| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
    };
    for e in [
        event("Refused", "first"),
        event("Refused", "again"),
        event("Other", "x"),
    ] {
        recorder.publish(&e, &regarding).await.expect("publish");
    }
    let events: Api<K8sEvent> = Api::namespaced(client, &ns);
    let items = events.list(&Default::default()).await.expect("list").items;
    let count_of = |reason: &str| {
        let found: Vec<_> = items.iter().filter(|e| e.reason.as_deref() == Some(reason)).collect();
        assert_eq!(found.len(), 1, "one {reason} Event: {found:?}");
        found[0].series.as_ref().map_or(1, |s| s.count)
    };
    assert_eq!(count_of("Refused"), 2, "the repeat is counted on the first Event");
    assert_eq!(count_of("Other"), 1);
    let refused = items
        .iter()
        .find(|e| e.reason.as_deref() == Some("Refused"))
        .expect("Refused");
    assert_eq!(refused.note.as_deref(), Some("first"));
    assert_eq!(refused.reporting_controller.as_deref(), Some("compute-operator-test"));
}
