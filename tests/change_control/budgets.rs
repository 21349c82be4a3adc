//! Disruption budgets on the real API server: a fleet and single objects in other namespaces against one
//! budget (never more disrupted at once than it allows, measured from the simulator's audit), and a leader
//! change while it is full (the new leader counts from what the statuses record).
use std::time::Duration;

use compute_operator::controllers::fleet::ComputeFleetAction;
use compute_operator::crd::disruption_budget::ComputeDisruptionBudget;
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::sim::SimConfig;
use kube::api::{Api, PostParams};

use crate::support::fleet::{TOKEN, has, inst, max_in_flight, status};
use crate::support::*;
use crate::{ONE_AT_A_TIME, create_cluster_object, delete_cluster_object, setup};

fn budget_json(name: &str, zone: &str, max: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"instances": {"zones": [zone]}, "maxDisrupted": max},
    })
}

async fn wait_budget(
    client: &kube::Client,
    name: &str,
    what: &str,
    check: impl Fn(&ComputeDisruptionBudget) -> bool,
) -> ComputeDisruptionBudget {
    let api: Api<ComputeDisruptionBudget> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let b = api.get(name).await.expect("get budget");
        if check(&b) {
            return b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: not {what}: {:?}",
            b.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_two_holds_a_fleet_and_single_objects_in_two_namespaces() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let transition = Duration::from_secs(1);
    let client = client().await;
    let fleet_ns = namespace(&client, "cdb-fleet").await;
    let (ns_a, ns_b) = (namespace(&client, "cdb-a").await, namespace(&client, "cdb-b").await);
    // Six instances in one zone: four for the fleet (customer cf), one for each single object (customer cs).
    let mut instances: Vec<_> = (0..4)
        .map(|n| inst(&format!("b-f{n}"), "cf", "u1", "zb", "t1", "running"))
        .collect();
    instances.extend((0..2).map(|n| inst(&format!("b-s{n}"), "cs", "u1", "zb", "t1", "running")));
    let sim = simulator(SimConfig {
        fleet: Some(instances),
        transition,
        ..SimConfig::default()
    })
    .await;
    let name = format!("{fleet_ns}-budget");
    create_cluster_object::<ComputeDisruptionBudget>(&client, budget_json(&name, "zb", serde_json::json!(2))).await;
    let served = vec![fleet_ns.clone(), ns_a.clone(), ns_b.clone()];
    let mut config = test_controller_config(&fleet_ns);
    config.namespaces = served.clone();
    let mut fleet_config = test_fleet_config(&fleet_ns);
    fleet_config.run.namespaces = served.clone();
    let _operator = start_fleet_operator(
        &sim,
        TOKEN,
        config,
        fleet_config,
        compute_operator::leader::Fence::always_open(),
    )
    .await;
    let counted = wait_budget(&client, &name, "counted", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.matching == Some(6) && s.allowed == Some(2))
    })
    .await;
    assert_eq!(counted.status.and_then(|s| s.disrupted), Some(0));
    let fleets: Api<ComputeFleetAction> = Api::namespaced(client.clone(), &fleet_ns);
    let fleet: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "restart-all"},
        "spec": {"selector": {"customerId": "cf"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": 6}},
    }))
    .expect("fleet");
    fleets
        .create(&PostParams::default(), &fleet)
        .await
        .expect("create fleet");
    let a: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns_a);
    let b: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns_b);
    create(&a, &cia("single", "b-s0", DesiredState::Restarted, Some("r1"))).await;
    create(&b, &cia("single", "b-s1", DesiredState::Stopped, None)).await;
    // Someone waits for the budget on the way, and the fleet says how many of its children wait.
    let mut saw_fleet_waiting = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let f = fleets.get("restart-all").await.expect("fleet");
        saw_fleet_waiting |= status(&f).waiting > 0;
        if has(&f, "Ready", "Succeeded") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fleet not done: {:?}", f.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(&a, "single").await;
    let stopped = wait_ready(&b, "single").await;
    assert!(saw_fleet_waiting, "the fleet reported children waiting for the budget");
    // Measured from the audit: restarts keep their instance down for a transition; the stop keeps b-s1 down
    // from its acceptance on.
    let actions: Vec<_> = sim
        .audit()
        .into_iter()
        .map(|e| (e.instance_id, e.action, e.at))
        .collect();
    assert_eq!(actions.len(), 6, "every instance acted on once: {actions:?}");
    let stop_at = actions
        .iter()
        .find(|(id, _, _)| id == "b-s1")
        .map(|(_, _, at)| *at)
        .expect("the stop");
    let restarts: Vec<_> = actions.iter().filter(|(id, _, _)| id != "b-s1").cloned().collect();
    let during_stop: Vec<_> = restarts.iter().filter(|(_, _, at)| *at >= stop_at).cloned().collect();
    let overlap = max_in_flight(&restarts, transition);
    eprintln!("at most {overlap} restarts of the budget's instances in flight at once");
    assert!(overlap <= 2, "more than 2 restarts at once: {overlap}");
    assert!(
        max_in_flight(&during_stop, transition) <= 1,
        "while b-s1 is stopped only one more may be down: {during_stop:?}"
    );
    // The stopped object holds its instance down: the budget counts it.
    assert_eq!(
        condition(&stopped, "Ready").map(|c| c.reason.as_str()),
        Some("Succeeded")
    );
    wait_budget(&client, &name, "one disrupted (the stop)", |b| {
        b.status.as_ref().is_some_and(|s| s.disrupted == Some(1))
    })
    .await;
    delete_cluster_object::<ComputeDisruptionBudget>(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_counts_the_full_budget_from_the_statuses() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let instances = (0..2)
        .map(|n| inst(&format!("l-{n}"), "c1", "u1", "zl", "t1", "running"))
        .collect();
    let (client, ns, sim) = setup("cdb-leader", instances, 300).await;
    let name = format!("{ns}-budget");
    create_cluster_object::<ComputeDisruptionBudget>(&client, budget_json(&name, "zl", serde_json::json!(1))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let first = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    create(&api, &cia("stop-0", "l-0", DesiredState::Stopped, None)).await;
    wait_ready(&api, "stop-0").await;
    create(&api, &cia("stop-1", "l-1", DesiredState::Stopped, None)).await;
    let held = wait_reason(&api, "stop-1", "Reconciling", "WaitingForBudget").await;
    let message = condition(&held, "Reconciling")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains(&name), "names the budget: {message}");
    assert!(
        !message.contains("l-0"),
        "never names another object's instance: {message}"
    );
    // The leader changes while the budget is full: the new one knows nothing but what the statuses say.
    first.stop().await;
    let _second = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        audit_for(&sim, "l-1"),
        Vec::<String>::new(),
        "the new leader keeps the budget"
    );
    let still = api.get("stop-1").await.expect("get");
    assert_eq!(
        condition(&still, "Reconciling").map(|c| c.reason.as_str()),
        Some("WaitingForBudget")
    );
    // The first instance is let go: the held stop goes at once (woken, not polled).
    api.delete("stop-0", &Default::default()).await.expect("delete");
    let started = std::time::Instant::now();
    wait_ready(&api, "stop-1").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woken when the disruption ended: {:?}",
        started.elapsed()
    );
    assert_eq!(audit_for(&sim, "l-1"), ["stop"]);
    delete_cluster_object::<ComputeDisruptionBudget>(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_held_by_a_budget_learns_its_name_and_nothing_of_other_tenants() {
    use compute_operator::crd::access_policy::{
        ComputeAccessPolicy, ComputeAccessPolicySpec, InstanceMatch, NamespaceMatch, PolicyMode,
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let client = client().await;
    let (ns_a, ns_b) = (namespace(&client, "cdb-ta").await, namespace(&client, "cdb-tb").await);
    let sim = simulator(SimConfig {
        fleet: Some(vec![
            inst("t-a", "ca", "u1", "zt", "t1", "running"),
            inst("t-b", "cb", "u1", "zt", "t1", "running"),
        ]),
        transition: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let policies: Api<ComputeAccessPolicy> = Api::all(client.clone());
    let mut names = Vec::new();
    for (ns, customer) in [(&ns_a, "ca"), (&ns_b, "cb")] {
        let policy = ComputeAccessPolicy::new(
            &format!("{ns}-own"),
            ComputeAccessPolicySpec {
                namespaces: NamespaceMatch {
                    names: Some(vec![ns.to_string()]),
                    selector: None,
                },
                instances: InstanceMatch {
                    customer_ids: Some(vec![customer.into()]),
                    ..Default::default()
                },
                desired_states: vec![DesiredState::Stopped, DesiredState::Restarted],
            },
        );
        policies.create(&PostParams::default(), &policy).await.expect("policy");
        names.push(format!("{ns}-own"));
    }
    let name = format!("{ns_a}-budget");
    create_cluster_object::<ComputeDisruptionBudget>(&client, budget_json(&name, "zt", serde_json::json!(1))).await;
    let mut config = test_controller_config(&ns_a);
    config.namespaces = vec![ns_a.clone(), ns_b.clone()];
    config.policy_mode = PolicyMode::Enforce;
    let _controller = start_controller(&sim, TOKEN, config).await;
    let a: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns_a);
    let b: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns_b);
    // Tenant b holds its instance stopped: the budget is spent.
    create(&b, &cia("stop", "t-b", DesiredState::Stopped, None)).await;
    wait_ready(&b, "stop").await;
    create(&a, &cia("restart", "t-a", DesiredState::Restarted, Some("r1"))).await;
    let held = wait_reason(&a, "restart", "Reconciling", "WaitingForBudget").await;
    let message = condition(&held, "Reconciling")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains(&name), "names the budget: {message}");
    assert!(
        !message.contains("t-b") && !message.replace(&name, "").chars().any(|c| c.is_ascii_digit()),
        "no other tenant's instance, no counts: {message}"
    );
    // Probing the other tenant's instance shows a denial, nothing about windows or budgets.
    create(&a, &cia("probe", "t-b", DesiredState::Restarted, Some("r1"))).await;
    let probe = wait_reason(&a, "probe", "Stalled", "PolicyDenied").await;
    let text = serde_json::to_string(&probe.status).unwrap_or_default();
    assert!(!text.contains(&name) && !text.contains("Budget"), "{text}");
    assert!(audit_for(&sim, "t-a").is_empty(), "held: nothing sent");
    b.delete("stop", &Default::default()).await.expect("delete");
    wait_ready(&a, "restart").await;
    assert_eq!(audit_for(&sim, "t-a"), ["restart"]);
    for n in names {
        let _ = policies.delete(&n, &Default::default()).await;
    }
    delete_cluster_object::<ComputeDisruptionBudget>(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_without_its_fence_writes_no_budget_status() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let instances = vec![inst("fz-0", "c1", "u1", "zf", "t1", "running")];
    let (client, ns, sim) = setup("cdb-fence", instances, 300).await;
    let name = format!("{ns}-budget");
    create_cluster_object::<ComputeDisruptionBudget>(&client, budget_json(&name, "zf", serde_json::json!(1))).await;
    let api: Api<ComputeDisruptionBudget> = Api::all(client.clone());
    // A paused leader: its lease ran out while it was stopped, so its fence is closed. Its upkeep counts (it
    // must know the budgets) but writes nothing.
    let config = test_controller_config(&ns);
    let fenced = shared_runtime(
        admin_client_for(&sim, TOKEN),
        &config,
        compute_operator::metrics::Metrics::new(),
        compute_operator::leader::Fence::closed(),
    )
    .await;
    // Longer than a status round (5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let b = api.get(&name).await.expect("get budget");
    assert!(b.status.is_none(), "no status write without the lease: {:?}", b.status);
    drop(fenced);
    // With the fence open (a new leader) the same budget gets its status: the test could have failed.
    let _open = shared_runtime(
        admin_client_for(&sim, TOKEN),
        &config,
        compute_operator::metrics::Metrics::new(),
        compute_operator::leader::Fence::always_open(),
    )
    .await;
    wait_budget(&client, &name, "a status", |b| b.status.is_some()).await;
    delete_cluster_object::<ComputeDisruptionBudget>(&client, &name).await;
}
