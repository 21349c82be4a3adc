//! Every promise a single ComputeInstanceAction keeps, kept again by ComputeFleetAction, through the
//! composition, against the same adversaries: a tenant probing other tenants' instances, a rollback of a
//! spec to an earlier requestId, a pause or delete in the middle of a slow walk, instances deleted between
//! pages, a leader that lost its fence. Real API server, simulator with slow list pages.
use crate::support;

use std::time::{Duration, Instant};

use compute_operator::api::PowerAction;
use compute_operator::crd::access_policy::{
    ComputeAccessPolicy, ComputeAccessPolicySpec, InstanceMatch, NamespaceMatch, PolicyMode,
};
use compute_operator::crd::instance_action::DesiredState;
use compute_operator::sim::faults::Faults;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use support::fleet::*;
use support::*;

const LONG: Duration = Duration::from_secs(90);

fn posts(e: &Env) -> u64 {
    let r = e.sim.stats().requests;
    r.stop + r.start + r.restart + r.reset
}

fn reads(e: &Env) -> u64 {
    let r = e.sim.stats().requests;
    r.list + r.get
}

async fn grant(e: &Env, name: &str, instances: InstanceMatch, states: &[DesiredState]) -> ComputeAccessPolicy {
    let policies: Api<ComputeAccessPolicy> = Api::all(e.client.clone());
    let policy = ComputeAccessPolicy::new(
        &format!("{}-{name}", e.ns),
        ComputeAccessPolicySpec {
            namespaces: NamespaceMatch {
                names: Some(vec![e.ns.clone()]),
                selector: None,
            },
            instances,
            desired_states: states.to_vec(),
        },
    );
    let created = policies.create(&PostParams::default(), &policy).await.unwrap();
    // Let the shared gate's cache see it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    created
}

async fn revoke(e: &Env, policy: &ComputeAccessPolicy) {
    let policies: Api<ComputeAccessPolicy> = Api::all(e.client.clone());
    let _ = policies.delete(&policy.name_any(), &DeleteParams::default()).await;
}

/// Two tenants' instances: `mine-*` (customer c-mine, zone z1) and `their-*` (customer c-other, zones z1/z9).
fn two_tenants() -> Vec<compute_operator::api::Instance> {
    vec![
        inst("mine-1", "c-mine", "u1", "z1", "t1", "running"),
        inst("mine-2", "c-mine", "u1", "z1", "t1", "running"),
        inst("their-1", "c-other", "u2", "z1", "t1", "running"),
        inst("their-2", "c-other", "u2", "z1", "t1", "running"),
        inst("their-secret", "c-other", "u2", "z9", "t9", "running"),
    ]
}

/// What a tenant reads back from a fleet, without the times that differ between any two objects.
fn readable(f: &compute_operator::controllers::fleet::ComputeFleetAction) -> String {
    let s = status(f);
    let c: Vec<(String, String, String)> = s
        .conditions
        .iter()
        .filter(|c| c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone(), c.message.clone()))
        .collect();
    format!(
        "selected {} denied {} pending {} dryRun {:?} message {:?} conditions {c:?}",
        s.selected, s.denied, s.pending, s.dry_run, s.message
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_no_policy_covers_learns_nothing_and_asks_nothing() {
    let e = env("promise-nopolicy", two_tenants(), 200, PolicyMode::Enforce).await;
    e.sim.clear_audit();
    e.create(
        "probe",
        serde_json::json!({"selector": {"customerId": "c-other"}, "desiredState": "stopped", "dryRun": true}),
    )
    .await;
    e.create(
        "probe-id",
        serde_json::json!({"selector": {"instanceIds": ["their-secret"], "zone": "z9"}, "desiredState": "restarted",
            "requestId": "r1"}),
    )
    .await;
    let f = e.wait_reason("probe", "Stalled", "PolicyDenied", LONG).await;
    let m = status(&f).message.unwrap_or_default();
    assert!(
        m.contains(&e.ns) && m.contains("`stopped`"),
        "names the namespace and the state: {m}"
    );
    let g = e.wait_reason("probe-id", "Stalled", "PolicyDenied", LONG).await;
    assert_eq!((status(&f).selected, status(&g).selected), (0, 0));
    // A while later: still not one request for this namespace's fleets.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!((reads(&e), posts(&e)), (0, 0), "{:?}", e.sim.stats().requests);
    assert!(e.children("probe-id").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_probing_other_customers_reads_the_same_as_for_a_customer_that_does_not_exist() {
    let e = env("promise-probe", two_tenants(), 200, PolicyMode::Enforce).await;
    let policy = grant(
        &e,
        "mine",
        InstanceMatch {
            customer_ids: Some(vec!["c-mine".into()]),
            ..Default::default()
        },
        &[DesiredState::Stopped, DesiredState::Restarted],
    )
    .await;
    // An existing foreign customer and a customer nobody has.
    let probes = [
        ("existing-customer", serde_json::json!({"customerId": "c-other"})),
        ("missing-customer", serde_json::json!({"customerId": "c-nobody"})),
        // A foreign ID whose zone matches, and the same ID with a zone that does not.
        (
            "id-zone-match",
            serde_json::json!({"instanceIds": ["their-secret"], "zone": "z9"}),
        ),
        (
            "id-zone-other",
            serde_json::json!({"instanceIds": ["their-secret"], "zone": "z1"}),
        ),
        ("id-alone", serde_json::json!({"instanceIds": ["their-secret"]})),
        ("id-missing", serde_json::json!({"instanceIds": ["nobody-has-this"]})),
    ];
    for (name, selector) in &probes {
        e.create(
            name,
            serde_json::json!({"selector": selector, "desiredState": "stopped", "dryRun": true}),
        )
        .await;
    }
    let mut read = Vec::new();
    for (name, _) in &probes {
        let f = e.wait_reason(name, "Ready", "DryRun", LONG).await;
        read.push((name.to_string(), readable(&f)));
    }
    for (name, text) in &read {
        assert_eq!(text, &read[0].1, "{name} reads differently from {}", read[0].0);
        assert!(
            !text.contains("their-") && !text.contains("denied by policy"),
            "{name}: {text}"
        );
    }
    // The namespace's own instances are seen, and the policy's customer went into the list filter.
    e.create(
        "mine",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "stopped", "dryRun": true}),
    )
    .await;
    let f = e.wait_reason("mine", "Ready", "DryRun", LONG).await;
    assert_eq!((status(&f).selected, status(&f).denied), (2, 0), "{}", readable(&f));
    let queries = e.sim.list_queries();
    assert!(
        queries.iter().all(|q| q.contains("customerID=c-mine")),
        "every walk asked only for the namespace's customer: {queries:?}"
    );
    assert_eq!(posts(&e), 0, "dry runs send nothing");
    revoke(&e, &policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_request_id_never_runs_again() {
    let e = env("promise-rid", zone_fleet("r", "z1", 3), 200, PolicyMode::Off).await;
    let restarts = |e: &Env| {
        e.actions()
            .iter()
            .filter(|(_, a, _)| *a == PowerAction::Restart)
            .count()
    };
    let resets = |e: &Env| e.actions().iter().filter(|(_, a, _)| *a == PowerAction::Reset).count();
    e.create(
        "roll",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 3}}),
    )
    .await;
    e.wait_reason("roll", "Ready", "Succeeded", LONG).await;
    assert_eq!(restarts(&e), 3);
    e.patch_spec("roll", serde_json::json!({"requestId": "r2"})).await;
    e.wait("roll", LONG, "r2 succeeded", |f| {
        has(f, "Ready", "Succeeded") && status(f).snapshot.is_some_and(|s| s.request_id == "r2")
    })
    .await;
    assert_eq!(restarts(&e), 6);
    // An Argo CD self-heal puts Git's r1 back.
    e.patch_spec("roll", serde_json::json!({"requestId": "r1"})).await;
    let f = e.wait_reason("roll", "Ready", "AlreadyRun", LONG).await;
    let m = status(&f).message.unwrap_or_default();
    assert!(
        m.contains("requestId r1 already ran") && m.contains("new spec.requestId"),
        "{m}"
    );
    // restarted -> reset -> restarted with one requestId: the reset runs once, the restart never again.
    e.patch_spec("roll", serde_json::json!({"desiredState": "reset", "requestId": "r2"}))
        .await;
    e.wait("roll", LONG, "reset r2 succeeded", |f| {
        has(f, "Ready", "Succeeded")
            && status(f)
                .snapshot
                .is_some_and(|s| s.desired_state == Some(DesiredState::Reset))
    })
    .await;
    e.patch_spec("roll", serde_json::json!({"desiredState": "restarted"}))
        .await;
    e.wait_reason("roll", "Ready", "AlreadyRun", LONG).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((restarts(&e), resets(&e)), (6, 3), "{:?}", e.actions());
    // Every kind's reconciles are counted by the shared driver.
    let m = &e.controllers[0].metrics;
    for kind in ["instance", "fleet"] {
        let ok = compute_operator::metrics::KindResultLabels {
            kind: kind.into(),
            result: "ok".into(),
        };
        assert!(
            m.kind_reconciles.get_or_create(&ok).get() > 0,
            "{kind} reconciles are counted"
        );
    }
    assert!(e.children("roll").await.len() <= 3, "no child for an old run");
}

/// 250 instances over three slow pages (each answers 1.5 s later).
async fn slow_platform(prefix: &str) -> Env {
    let e = env(prefix, zone_fleet("s", "z1", 250), 300, PolicyMode::Off).await;
    e.sim.set_faults(Faults {
        list_page_delay_ms: 1500,
        ..Faults::default()
    });
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_during_a_slow_walk_creates_nothing_and_sends_nothing() {
    let e = slow_platform("promise-pause").await;
    for (name, spec) in [
        (
            "level",
            serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "stopped",
            "strategy": {"maxConcurrent": 5}}),
        ),
        (
            "oneshot",
            serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 5}}),
        ),
    ] {
        e.create(name, spec).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    e.patch_spec("level", serde_json::json!({"paused": true})).await;
    e.patch_spec("oneshot", serde_json::json!({"paused": true})).await;
    for name in ["level", "oneshot"] {
        e.wait(name, LONG, "Paused for the new generation", |f| {
            has(f, "Reconciling", "Paused") && status(f).observed_generation == f.metadata.generation
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(e.children("level").await.is_empty() && e.children("oneshot").await.is_empty());
    assert_eq!(posts(&e), 0, "{:?}", e.actions());
    // Resumed: the walk's result is used now (so the test above could have failed).
    e.patch_spec("level", serde_json::json!({"paused": false})).await;
    e.wait("level", LONG, "children created", |f| {
        status(f).in_progress > 0 || status(f).succeeded > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_fleet_deleted_during_a_slow_walk_resets_nothing() {
    let e = slow_platform("promise-delete").await;
    e.create(
        "reset-all",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "reset", "requestId": "r1",
            "strategy": {"maxConcurrent": 10}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    e.fleets.delete("reset-all", &DeleteParams::default()).await.unwrap();
    // Longer than the walk (three pages of 1.5 s, walked again if they disagree).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(posts(&e), 0, "{:?}", e.actions());
    assert!(e.children("reset-all").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_fleet_deleted_during_its_relist_counts_nowhere() {
    let e = env("promise-gone", zone_fleet("g", "z1", 10), 200, PolicyMode::Off).await;
    e.create(
        "hold-running",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "running", "strategy": {"maxConcurrent": 10}}),
    )
    .await;
    e.wait("hold-running", LONG, "Ready", |f| {
        f.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    // Slow pages, so the next relist (every 2 s here) is still walking when the fleet is deleted.
    e.sim.set_faults(Faults {
        list_page_delay_ms: 1500,
        ..Faults::default()
    });
    e.sim.clear_audit();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !e.sim.list_queries().iter().any(|q| q.contains("zone=z1")) {
        assert!(Instant::now() < deadline, "the fleet did not list again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.fleets.delete("hold-running", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // The round that was walking when the fleet went keeps nothing of it: the fleet counts nowhere.
    let text = e.controllers[0].metrics.encode();
    let fleets = compute_operator::benchkit::metric_sum(&text, "compute_operator_resources_by_condition");
    let instances = compute_operator::benchkit::metric_sum(&text, "compute_operator_fleet_children");
    assert_eq!((fleets, instances), (0.0, 0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_walked_while_instances_are_deleted_misses_none() {
    let e = env("promise-walk", zone_fleet("w", "z1", 250), 300, PolicyMode::Off).await;
    e.sim.set_faults(Faults {
        list_page_delay_ms: 800,
        ..Faults::default()
    });
    e.sim.clear_audit();
    e.create(
        "snap",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "restarted", "requestId": "r1",
            "paused": true}),
    )
    .await;
    // Page 2 was asked for: delete 20 instances of page 1 before it is served, so every later page shifts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.sim.list_queries().len() < 2 {
        assert!(Instant::now() < deadline, "the walk did not reach page 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..20 {
        assert!(e.sim.remove_instance(&format!("w-{n:02}")));
    }
    let f = e
        .wait("snap", LONG, "snapshot taken", |f| status(f).snapshot.is_some())
        .await;
    let snap = status(&f).snapshot.unwrap();
    let mut want: Vec<String> = e.sim.instances().into_iter().map(|i| i.id).collect();
    let mut got = snap.instance_ids.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the snapshot is the selection as it is, no instance skipped");
    assert!(!snap.incomplete);
    assert!(e.sim.list_queries().len() > 3, "the disagreeing walk was walked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_fence_creates_no_child() {
    let mut e = unstarted_env("promise-fence", zone_fleet("f", "z1", 4), 200).await;
    // A paused leader: its lease ran out while it was stopped, so its fence is closed.
    e.start_fenced(PolicyMode::Off, compute_operator::leader::Fence::closed())
        .await;
    e.create(
        "fenced",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "stopped", "strategy": {"maxConcurrent": 4}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(e.children("fenced").await.is_empty(), "no child without the lease");
    assert_eq!(posts(&e), 0);
    let f = e.fleets.get("fenced").await.unwrap();
    assert!(f.status.is_none(), "no status write without the lease: {:?}", f.status);
    let walks: Vec<String> = e
        .sim
        .list_queries()
        .into_iter()
        .filter(|q| q.contains("zone=z1"))
        .collect();
    assert!(walks.is_empty(), "no walk without the lease: {walks:?}");
    // With the fence open (a new leader), the same fleet rolls out: the test could have failed.
    e.controllers.clear();
    e.start(PolicyMode::Off).await;
    e.wait_reason("fenced", "Ready", "Succeeded", LONG).await;
    assert_eq!(e.children("fenced").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_seen_first_by_another_objects_get_wakes_the_settled_continuous_object() {
    let e = env("promise-drift", zone_fleet("d", "z1", 1), 200, PolicyMode::Off).await;
    let mut holder = cia("holder", "d-00", DesiredState::Running, None);
    holder.spec.timeout_seconds = 60;
    create(&e.cias, &holder).await;
    let mut watcher = cia("watcher", "d-00", DesiredState::Running, None);
    watcher.spec.enforcement = compute_operator::crd::instance_action::Enforcement::Once;
    create(&e.cias, &watcher).await;
    wait_ready(&e.cias, "holder").await;
    wait_ready(&e.cias, "watcher").await;
    // Both settled (resync 30 s): the instance stops behind their back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(e.sim.set_status("d-00", compute_operator::api::InstanceStatus::Stopped));
    // The `once` object is edited, so it looks (GET) at once and sees the drift; it only reports it.
    let t0 = Instant::now();
    e.cias
        .patch(
            "watcher",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"timeoutSeconds": 61}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !e.actions().iter().any(|(_, a, _)| *a == PowerAction::Start) {
        assert!(
            Instant::now() < deadline,
            "the continuous holder was not woken by its peer's GET (it would wait for its 30 s resync)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("drift corrected {:?} after the peer's GET", t0.elapsed());
    assert_eq!(e.actions().len(), 1, "one start, by the continuous holder only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_kept_for_objects_deleted_mid_action() {
    // Each round on instances of its own: the last round's actions never finish, so their instances stay busy.
    let e = env("promise-memory", zone_fleet("m", "z1", 300), 200, PolicyMode::Off).await;
    // Actions never finish: every object is deleted with its action open.
    e.sim.set_faults(Faults {
        never_finish: true,
        ..Faults::default()
    });
    let held = |e: &Env| e.controllers[0].metrics.held_object_state.get();
    for round in 0..3 {
        for n in 0..100 {
            let o = cia(
                &format!("r{round}-{n:02}"),
                &format!("m-{:02}", round * 100 + n),
                DesiredState::Restarted,
                Some("r1"),
            );
            create(&e.cias, &o).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let open = e
                .cias
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|o| o.status.as_ref().and_then(|s| s.action.as_ref()).is_some())
                .count();
            if open == 100 {
                break;
            }
            if Instant::now() > deadline {
                let one = e.cias.get(&format!("r{round}-00")).await.unwrap();
                panic!(
                    "round {round}: only {open} of 100 acting; r{round}-00: {:?}",
                    one.status
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Objects mid-action hold state (acceptances, held statuses): the gauge (refreshed every 15 s) shows it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while held(&e) == 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no state counted for 100 acting objects"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        e.cias
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while held(&e) != 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} entries kept for deleted objects",
                held(&e)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        while !e.cias.list(&Default::default()).await.unwrap().items.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_once_child_that_could_not_act_in_time_does_not_act_late() {
    // One instance that cannot move yet (provisioning): its child exists in time, but the stop cannot be sent.
    let mut instances = zone_fleet("n", "z1", 2);
    instances[1].status = compute_operator::api::InstanceStatus::Provisioning;
    let e = env("promise-late", instances, 200, PolicyMode::Off).await;
    let not_after = chrono::Utc::now() + chrono::TimeDelta::seconds(8);
    e.create(
        "evening",
        serde_json::json!({"selector": {"zone": "z1"}, "desiredState": "stopped", "enforcement": "once",
            "notAfter": not_after.to_rfc3339(), "strategy": {"maxConcurrent": 2}}),
    )
    .await;
    let deadline = Instant::now() + LONG;
    while posts(&e) < 1 {
        assert!(Instant::now() < deadline, "n-00 was not stopped: {:?}", e.actions());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(e.children("evening").await.len(), 2, "both children exist in time");
    // Past notAfter the instance can move: its child must not stop it now, hours (here: seconds) late.
    let wait = (not_after - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    let mut ready = e.sim.instance("n-01").expect("n-01");
    ready.status = compute_operator::api::InstanceStatus::Running;
    e.sim.upsert_instance(ready);
    let f = e
        .wait("evening", LONG, "settled", |f| {
            f.status.as_ref().is_some_and(|s| s.in_progress == 0 && s.pending == 0)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(e.acted_on(), vec!["n-00".to_owned()], "nothing is sent after notAfter");
    let late = e
        .cias
        .get(
            &e.children("evening")
                .await
                .into_iter()
                .find(|c| c.spec.instance_id == "n-01")
                .unwrap()
                .name_any(),
        )
        .await
        .unwrap();
    let conditions = late.status.map(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Expired"),
        "{conditions:?}"
    );
    assert_eq!(status(&f).expired, 1, "{:?}", f.status);
}
