//! A short fault-injection run in the test suite: the operator binary as its own process, a real
//! kube-apiserver + etcd, the simulator; kill -9 of the controller, an API server restart, dropped connections,
//! 503 bursts, latency and a leader change while ~20 restart/reset/start/stop actions run. No one-shot may run
//! twice for one requestId, every object must settle, and no process may be left behind.
//! (`cargo run --release --bin faults` is the long version.)

use std::path::PathBuf;
use std::time::Duration;

use compute_operator::benchkit::{FaultsOptions, run_faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_fault_run_never_duplicates_and_always_settles() {
    compute_operator::api::client::install_crypto_provider();
    let mut opts = FaultsOptions::new(20, PathBuf::from(env!("CARGO_BIN_EXE_compute-operator")));
    opts.seed = 7;
    opts.objects = 6;
    opts.kills = 3;
    opts.transition = Duration::from_millis(500);
    opts.phase = Duration::from_secs(2);
    opts.settle_deadline = Duration::from_secs(45);
    opts.fleet_instances = 12;
    opts.fleet_max_concurrent = 2;
    let report = run_faults(&opts).await.expect("the fault run completes");
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    eprintln!("{json}");
    assert_eq!(report.duplicates, 0, "a one-shot ran twice for one requestId:\n{json}");
    let fleet = report.fleet.as_ref().expect("the run had a fleet");
    assert_eq!(fleet.duplicates, 0, "a fleet instance was restarted twice:\n{json}");
    assert!(fleet.settled, "the fleet did not settle:\n{json}");
    assert!(fleet.restarted_once > 0, "the fleet restarted nothing:\n{json}");
    assert_eq!(report.unresolved, 0, "objects did not settle:\n{json}");
    assert!(report.leftover_processes.is_empty(), "processes left behind:\n{json}");
    assert!(report.faults_injected.controller_kills >= 3, "{json}");
    assert_eq!(report.faults_injected.apiserver_restarts, 1, "{json}");
    assert_eq!(report.actions, 20, "{json}");
    assert_eq!(report.unexpected_controller_exits, 0, "{json}");
    // Leader election is built in: the leader change must have happened (only "unavailable" may skip it).
    assert!(
        report.leader_change == "ok" || report.leader_change == "unavailable",
        "leader change: {}\n{json}",
        report.leader_change
    );
}
