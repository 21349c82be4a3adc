//! The fleet figure of the benchmark, on the real API server and the simulator (run on purpose only).
mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use compute_operator::api::PowerAction;
use compute_operator::controllers::fleet::ComputeFleetAction;
use compute_operator::sim::SimConfig;
use kube::api::{Api, PostParams};
use support::fleet::*;
use support::*;

/// The fleet figure of the benchmark: restart 1,000 instances, maxConcurrent 50, 1 s transitions. Ideal time is
/// 1,000 / 50 x 1 s = 20 s. Run on purpose only (about a minute):
/// `cargo test --test fleet_bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored"]
async fn fleet_benchmark_restart_1000_at_50() {
    let (count, cap, transition) = (1000usize, 50u32, Duration::from_secs(1));
    let client = client().await;
    let ns = namespace(&client, "fleet-bench").await;
    let sim = simulator(SimConfig {
        fleet: Some(zone_fleet("b", "bench", count)),
        transition,
        ..SimConfig::default()
    })
    .await;
    let mut config = test_controller_config(&ns);
    config.concurrency = 32;
    let _operator = start_fleet_operator(
        &sim,
        TOKEN,
        config,
        test_fleet_config(&ns),
        compute_operator::leader::Fence::always_open(),
    )
    .await;
    let fleets: Api<ComputeFleetAction> = Api::namespaced(client.clone(), &ns);
    let obj: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "bench"},
        "spec": {"selector": {"zone": "bench"}, "desiredState": "restarted", "requestId": "r1",
            "strategy": {"maxConcurrent": cap}},
    }))
    .unwrap();
    let started = Instant::now();
    fleets.create(&PostParams::default(), &obj).await.unwrap();
    let mut max_reported = 0;
    loop {
        let f = fleets.get("bench").await.unwrap();
        max_reported = max_reported.max(status(&f).in_progress);
        if has(&f, "Ready", "Succeeded") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not Ready in 10 minutes: {:?}",
            f.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let ideal = transition * (count as u32 / cap);
    let stats = sim.stats();
    let actions: Vec<(String, PowerAction, DateTime<Utc>)> = sim
        .audit()
        .into_iter()
        .map(|e| (e.instance_id, e.action, e.at))
        .collect();
    let overlap = max_in_flight(&actions, transition);
    println!(
        "fleet benchmark: restart {count} instances, maxConcurrent {cap}, {}s transitions: {:.1}s (ideal {:.0}s, x{:.2}); \
         admin API requests {} ({:.2} per instance: list {}, get {}, restart {}); max in flight from audit {overlap}, reported {max_reported}",
        transition.as_secs(),
        took.as_secs_f64(),
        ideal.as_secs_f64(),
        took.as_secs_f64() / ideal.as_secs_f64(),
        stats.total,
        stats.total as f64 / count as f64,
        stats.requests.list,
        stats.requests.get,
        stats.requests.restart,
    );
    assert_eq!(actions.len(), count, "each instance restarted once");
    assert!(overlap <= cap as usize && max_reported <= cap);
}
