//! ComputeFleetAction on the real API server (with kube-controller-manager for garbage collection) and the
//! simulator: selection by filters, snapshot vs follow, pacing, failure budget, pause, restart, policy, dry
//! run, deletion. Helpers: tests/support/fleet.rs.
use crate::support;

use std::time::{Duration, Instant};

use compute_operator::api::InstanceStatus;
use compute_operator::controllers::fleet::ComputeFleetAction;
use compute_operator::crd::access_policy::{
    ComputeAccessPolicy, ComputeAccessPolicySpec, InstanceMatch, NamespaceMatch, PolicyMode,
};
use compute_operator::crd::instance_action::DesiredState;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use support::fleet::*;
use support::*;

const LONG: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_by_each_filter_and_combined_and_dry_run_acts_on_nothing() {
    let instances = vec![
        inst("a-1", "cust-a", "user-1", "zone-x", "tmpl-1", "running"),
        inst("a-2", "cust-a", "user-1", "zone-y", "tmpl-2", "running"),
        inst("a-3", "cust-a", "user-2", "zone-x", "tmpl-1", "stopped"),
        inst("b-1", "cust-b", "user-3", "zone-x", "tmpl-2", "running"),
        inst("b-2", "cust-b", "user-3", "zone-y", "tmpl-1", "error"),
        inst("b-3", "cust-b", "user-4", "zone-y", "tmpl-2", "stopped"),
    ];
    let e = env("fleet-select", instances, 200, PolicyMode::Off).await;
    let rows: Vec<(&str, serde_json::Value, Vec<&str>)> = vec![
        (
            "customer",
            serde_json::json!({"customerId": "cust-a"}),
            vec!["a-1", "a-2", "a-3"],
        ),
        ("user", serde_json::json!({"userId": "user-3"}), vec!["b-1", "b-2"]),
        ("zone", serde_json::json!({"zone": "zone-y"}), vec!["a-2", "b-2", "b-3"]),
        (
            "template",
            serde_json::json!({"templateId": "tmpl-1"}),
            vec!["a-1", "a-3", "b-2"],
        ),
        ("status", serde_json::json!({"status": "stopped"}), vec!["a-3", "b-3"]),
        (
            "combined",
            serde_json::json!({"customerId": "cust-b", "zone": "zone-y", "templateId": "tmpl-2"}),
            vec!["b-3"],
        ),
        (
            "ids",
            serde_json::json!({"instanceIds": ["b-1", "a-2"]}),
            vec!["a-2", "b-1"],
        ),
        (
            "ids-and-filter",
            serde_json::json!({"instanceIds": ["b-1", "a-2", "a-1"], "zone": "zone-x"}),
            vec!["a-1", "b-1"],
        ),
    ];
    for (name, selector, _) in &rows {
        e.create(
            name,
            serde_json::json!({"selector": selector, "desiredState": "reset", "requestId": "r1", "dryRun": true}),
        )
        .await;
    }
    for (name, _, want) in &rows {
        let f = e.wait_reason(name, "Ready", "DryRun", LONG).await;
        let st = status(&f);
        let report = st.dry_run.clone().expect("dry-run report");
        let mut got = report.first_ids.clone();
        got.sort();
        assert_eq!(got, *want, "{name}: {}", st.message.unwrap_or_default());
        assert_eq!(
            (st.selected, report.would_act),
            (want.len() as u32, want.len() as u32),
            "{name}"
        );
        assert!(
            f.status
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.message.contains("would reset")),
            "{name}"
        );
    }
    // A level dry run counts only what is not there yet.
    e.create(
        "level",
        serde_json::json!({"selector": {"zone": "zone-x"}, "desiredState": "stopped", "dryRun": true}),
    )
    .await;
    let f = e.wait_reason("level", "Ready", "DryRun", LONG).await;
    assert_eq!(status(&f).dry_run.unwrap().first_ids, ["a-1", "b-1"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(e.sim.audit().is_empty(), "a dry run never acts");
    assert!(
        e.cias.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "no children"
    );
    // An empty selector is refused by the API server, with a message a person understands.
    let bad: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "empty"}, "spec": {"selector": {}, "desiredState": "stopped"},
    }))
    .unwrap();
    let err = e
        .fleets
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("every instance of the platform"), "{err}");
    let no_rid: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "no-rid"}, "spec": {"selector": {"zone": "z"}, "desiredState": "restarted"},
    }))
    .unwrap();
    let err = e
        .fleets
        .create(&PostParams::default(), &no_rid)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("set requestId"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_is_never_exceeded_and_reapplying_runs_nothing() {
    let transition = Duration::from_millis(700);
    let e = env("fleet-pace", zone_fleet("p", "z1", 12), 700, PolicyMode::Off).await;
    e.create(
        "pace",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 3}}),
    )
    .await;
    // kubectl wait works on fleets, unchanged; meanwhile the reported in-progress count stays within the cap.
    let kubectl = tokio::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &control_plane().kubeconfig.display().to_string(),
            "-n",
            &e.ns,
        ])
        .args(["wait", "--for=condition=Ready", "cfa/pace", "--timeout=90s"])
        .output();
    let watch = async {
        let mut max_reported = 0;
        loop {
            let f = e.fleets.get("pace").await.unwrap();
            let st = status(&f);
            max_reported = max_reported.max(st.in_progress);
            let live = e.children("pace").await;
            assert!(live.len() <= 12);
            if has(&f, "Ready", "Succeeded") {
                return max_reported;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let (out, max_reported) = tokio::join!(kubectl, tokio::time::timeout(LONG, watch));
    let out = out.expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max_reported = max_reported.expect("fleet Ready in time");
    assert!(max_reported <= 3, "status reported {max_reported} in progress");
    let actions = e.actions();
    let ids = e.acted_on();
    let mut want: Vec<String> = (0..12).map(|n| format!("p-{n:02}")).collect();
    want.sort();
    assert_eq!(ids, want, "each instance restarted exactly once");
    let overlap = max_in_flight(&actions, transition);
    assert!(
        overlap <= 3,
        "{overlap} actions within one transition: cap exceeded ({actions:?})"
    );
    assert!(overlap >= 2, "the rollout ran in parallel ({overlap})");
    let f = e.fleets.get("pace").await.unwrap();
    let st = status(&f);
    assert_eq!((st.selected, st.succeeded, st.failed, st.pending), (12, 12, 0, 0));
    assert_eq!(
        e.children("pace").await.len(),
        12,
        "children stay as the record of the run"
    );
    // Re-applying the same spec runs nothing.
    let same = serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "pace"}, "spec": f.spec,
    });
    e.fleets
        .patch("pace", &PatchParams::apply("gitops").force(), &Patch::Apply(&same))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(e.actions().len(), 12, "a re-apply sent nothing");
    // A new requestId is a new run.
    e.patch_spec(
        "pace",
        serde_json::json!({"requestId": "r2", "strategy": {"maxConcurrent": 6}}),
    )
    .await;
    e.wait("pace", LONG, "Ready for r2", |f| {
        has(f, "Ready", "Succeeded") && status(f).snapshot.is_some_and(|s| s.request_id == "r2")
    })
    .await;
    assert_eq!(e.actions().len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shots_snapshot_the_selection_and_levels_follow_it() {
    let mut instances = zone_fleet("s", "z1", 4);
    instances.extend(zone_fleet("l", "z2", 3));
    let e = env("fleet-snap", instances, 600, PolicyMode::Off).await;
    e.create(
        "snap",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1"}),
    )
    .await;
    e.wait("snap", LONG, "snapshot taken", |f| status(f).snapshot.is_some())
        .await;
    // Appears after the snapshot: not swept in.
    e.sim.upsert_instance(inst("s-late", "c1", "u1", "z1", "t1", "running"));
    let f = e.wait_reason("snap", "Ready", "Succeeded", LONG).await;
    assert_eq!(status(&f).selected, 4);
    assert!(!e.acted_on().contains(&"s-late".to_string()));

    e.create(
        "level",
        serde_json::json!({"selector": {"zone": "z2"}, "desiredState": "stopped", "strategy": {"maxConcurrent": 2}}),
    )
    .await;
    let f = e.wait_reason("level", "Ready", "Succeeded", LONG).await;
    assert_eq!(status(&f).selected, 3);
    e.sim.upsert_instance(inst("l-late", "c1", "u1", "z2", "t1", "running"));
    let f = e
        .wait("level", LONG, "following the new instance", |f| {
            has(f, "Ready", "Succeeded") && status(f).succeeded == 4
        })
        .await;
    assert_eq!(status(&f).selected, 4);
    assert_eq!(e.sim.instance("l-late").unwrap().status, InstanceStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_beyond_max_failures_stop_the_rollout() {
    let mut instances = zone_fleet("f", "z1", 8);
    // Two kinds of failure: f-00 cannot restart (in error, its child ends Stalled without a POST); f-02's
    // restart is accepted and runs, but the host fails it (the simulator's per-instance fault): it ends in error.
    instances[0].status = InstanceStatus::Error;
    let e = env("fleet-fail", instances, 300, PolicyMode::Off).await;
    e.sim.fail_actions_on("f-02");
    e.create(
        "fail",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 1, "maxFailures": 1}}),
    )
    .await;
    let f = e.wait_reason("fail", "Stalled", "FailureBudgetExceeded", LONG).await;
    let st = status(&f);
    assert_eq!((st.failed, st.succeeded), (2, 1), "{st:?}");
    assert_eq!(st.failed_ids, ["f-00", "f-02"]);
    e.wait_event("fail", "RunStarted").await;
    e.wait_event("fail", "FailureBudgetExceeded").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        e.acted_on(),
        ["f-01", "f-02"],
        "nothing started after the budget was spent"
    );
    assert_eq!(e.sim.instance("f-02").unwrap().status, InstanceStatus::Error);
    assert_eq!(e.children("fail").await.len(), 3);
    let st = status(&e.fleets.get("fail").await.unwrap());
    assert_eq!((st.pending, st.in_progress), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_new_starts_and_resume_continues() {
    let e = env("fleet-pause", zone_fleet("q", "z1", 6), 500, PolicyMode::Off).await;
    e.create(
        "pause",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "reset", "requestId": "r1", "paused": true}),
    )
    .await;
    e.wait_reason("pause", "Reconciling", "Paused", LONG).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(e.actions().is_empty(), "paused from the start: nothing runs");
    e.patch_spec("pause", serde_json::json!({"paused": false})).await;
    e.wait("pause", LONG, "two done", |f| status(f).succeeded >= 2).await;
    e.patch_spec("pause", serde_json::json!({"paused": true})).await;
    e.wait_reason("pause", "Reconciling", "Paused", LONG).await;
    // The one in flight may finish; nothing new starts.
    e.wait("pause", LONG, "in flight finished", |f| status(f).in_progress == 0)
        .await;
    let held = e.actions().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(e.actions().len(), held, "paused: no new start");
    assert!(held < 6);
    e.patch_spec("pause", serde_json::json!({"paused": false})).await;
    e.wait_reason("pause", "Ready", "Succeeded", LONG).await;
    let mut want: Vec<String> = (0..6).map(|n| format!("q-{n:02}")).collect();
    want.sort();
    assert_eq!(e.acted_on(), want, "each instance once, across pause and resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_mid_rollout_repeats_nothing_and_keeps_the_cap() {
    let transition = Duration::from_millis(800);
    let mut e = env("fleet-restart", zone_fleet("r", "z1", 10), 800, PolicyMode::Off).await;
    e.create(
        "restart",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 2}}),
    )
    .await;
    e.wait("restart", LONG, "three done", |f| status(f).succeeded >= 3)
        .await;
    // The operator is replaced as on a rollout or a leader hand-over: in-flight reconciles finish their writes.
    for c in std::mem::take(&mut e.controllers) {
        c.stop().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    e.start(PolicyMode::Off).await;
    e.wait_reason("restart", "Ready", "Succeeded", LONG).await;
    let mut want: Vec<String> = (0..10).map(|n| format!("r-{n:02}")).collect();
    want.sort();
    assert_eq!(e.acted_on(), want, "no instance restarted twice");
    let overlap = max_in_flight(&e.actions(), transition);
    assert!(overlap <= 2, "cap exceeded across the restart: {overlap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_crash_mid_rollout_repeats_nothing_and_keeps_the_cap() {
    let transition = Duration::from_millis(800);
    let mut e = env("fleet-crash", zone_fleet("k", "z1", 10), 800, PolicyMode::Off).await;
    // A crash may land between a POST and the write of its answer: that child ends OutcomeUnknown (never
    // resent), so the fleet is given room to finish with it.
    e.create(
        "crash",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 2, "maxFailures": 2}}),
    )
    .await;
    e.wait("crash", LONG, "three done", |f| status(f).succeeded >= 3).await;
    // The whole process dies wherever it is (both controllers share one runtime).
    for c in std::mem::take(&mut e.controllers) {
        c.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    e.start(PolicyMode::Off).await;
    let f = e
        .wait("crash", LONG, "Ready", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
    let acted = e.acted_on();
    let mut unique = acted.clone();
    unique.dedup();
    assert_eq!(acted, unique, "no instance restarted twice");
    for child in e.children("crash").await {
        let ready = child
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        assert!(
            ready == "Succeeded" || ready == "OutcomeUnknown",
            "{}: only a child caught by the crash may be unclear, got {ready}",
            child.spec.instance_id
        );
    }
    let st = status(&f);
    assert_eq!(st.succeeded + st.failed, 10, "every instance was decided: {st:?}");
    assert!(
        st.failed <= 2,
        "at most the children in flight at the crash are unclear: {st:?}"
    );
    let overlap = max_in_flight(&e.actions(), transition);
    assert!(overlap <= 2, "cap exceeded across the crash: {overlap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outside_the_policies_are_never_selected_counted_or_started() {
    let mut instances = zone_fleet("d", "allowed-zone", 3);
    instances.extend(zone_fleet("x", "other-zone", 2));
    let e = env("fleet-deny", instances, 200, PolicyMode::Enforce).await;
    let policies: Api<ComputeAccessPolicy> = Api::all(e.client.clone());
    let policy = ComputeAccessPolicy::new(
        &format!("{}-zone", e.ns),
        ComputeAccessPolicySpec {
            namespaces: NamespaceMatch {
                names: Some(vec![e.ns.clone()]),
                selector: None,
            },
            instances: InstanceMatch {
                zones: Some(vec!["allowed-zone".into()]),
                ..Default::default()
            },
            desired_states: vec![DesiredState::Restarted],
        },
    );
    policies.create(&PostParams::default(), &policy).await.unwrap();
    // Let the controllers' policy caches see it before the fleet takes its snapshot.
    tokio::time::sleep(Duration::from_secs(1)).await;
    e.create(
        "deny",
        serde_json::json!({"selector": {"customerId": "c1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 5}}),
    )
    .await;
    let f = e.wait_reason("deny", "Ready", "Succeeded", LONG).await;
    let st = status(&f);
    assert_eq!(
        (st.selected, st.succeeded, st.denied, st.failed),
        (3, 3, 0, 0),
        "the fleet sees only what its namespace may power: {st:?}"
    );
    assert_eq!(e.acted_on(), ["d-00", "d-01", "d-02"]);
    // The policy's zone went into the list filter: the walk never returned another zone's instance.
    let queries = e.sim.list_queries();
    assert!(
        !queries.is_empty()
            && queries
                .iter()
                .all(|q| q.contains("zone=allowed-zone") && q.contains("customerID=c1")),
        "{queries:?}"
    );
    assert_eq!(e.children("deny").await.len(), 3, "no child for a denied instance");
    policies
        .delete(&policy.name_any(), &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_fleet_garbage_collects_its_children_and_acts_on_nothing() {
    let e = env("fleet-delete", zone_fleet("g", "z1", 6), 1000, PolicyMode::Off).await;
    e.create(
        "gone",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1"}),
    )
    .await;
    e.wait("gone", LONG, "one done", |f| status(f).succeeded >= 1).await;
    let children = e.children("gone").await;
    assert!(!children.is_empty());
    for c in &children {
        let owner = &c.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller, owner.block_owner_deletion),
            ("ComputeFleetAction", Some(true), Some(true))
        );
    }
    e.fleets.delete("gone", &DeleteParams::default()).await.unwrap();
    // kube-controller-manager's garbage collector removes the children.
    let deadline = Instant::now() + LONG;
    while !e.children("gone").await.is_empty() {
        assert!(Instant::now() < deadline, "children were not garbage-collected");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let posts = e.sim.stats().requests;
    let sent = posts.restart + posts.reset + posts.start + posts.stop;
    assert!(sent < 6, "the rollout stopped with its fleet ({sent})");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = e.sim.stats().requests;
    assert_eq!(
        after.restart + after.reset + after.start + after.stop,
        sent,
        "no POST after deletion"
    );
    // Instances are left as they are: every one settles to running.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in e.sim.instances() {
        assert_eq!(i.status, InstanceStatus::Running, "{}", i.id);
    }
}
