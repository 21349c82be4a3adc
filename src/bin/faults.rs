//! `faults`: many restart/reset and start/stop actions while the controller is killed, the API server
//! restarts, the admin API drops connections, fails and slows down, and the leader changes; then checks that
//! no one-shot ran twice for one requestId, that every object settled, and that no process is left behind.
//! Exits non-zero when a check fails. Runs the operator as its own process (`cargo build --release` first).
//!
//! `cargo run --release --bin faults -- --actions 200 --json faults.json`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use compute_operator::benchkit::{self, FaultsOptions};

#[derive(Parser)]
#[command(
    name = "faults",
    about = "Fault-injection run of compute-operator against a real kube-apiserver and the simulator"
)]
struct Args {
    /// Spec changes in all (object creations included).
    #[arg(long, default_value_t = 200)]
    actions: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the schedule (kill moments, action kinds).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulator transition time.
    #[arg(long, default_value_t = 300)]
    transition_ms: u64,
    /// Objects (default: actions/8, between 4 and 32).
    #[arg(long)]
    objects: Option<usize>,
    /// kill -9 of the controller (default: actions/15, between 3 and 20).
    #[arg(long)]
    kills: Option<usize>,
    /// Skip the API server restart.
    #[arg(long)]
    no_apiserver_restart: bool,
    /// Skip the leader change.
    #[arg(long)]
    no_leader_change: bool,
    /// Skip drops, 503 bursts and latency.
    #[arg(long)]
    no_sim_faults: bool,
    /// How long objects may take to settle after the last action.
    #[arg(long, default_value_t = 120)]
    settle_seconds: u64,
    /// Instances a ComputeFleetAction restarts through the faults (0: no fleet).
    #[arg(long, default_value_t = 50)]
    fleet_instances: usize,
    /// The fleet's maxConcurrent.
    #[arg(long, default_value_t = 5)]
    fleet_max_concurrent: u32,
    /// Controller log level.
    #[arg(long, default_value = "info")]
    controller_log_level: String,
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let mut opts = FaultsOptions::new(args.actions, benchkit::sibling_operator_binary()?);
    opts.seed = args.seed;
    opts.transition = Duration::from_millis(args.transition_ms);
    if let Some(o) = args.objects {
        opts.objects = o;
    }
    if let Some(k) = args.kills {
        opts.kills = k;
    }
    opts.apiserver_restart = !args.no_apiserver_restart;
    opts.leader_change = !args.no_leader_change;
    opts.sim_faults = !args.no_sim_faults;
    opts.settle_deadline = Duration::from_secs(args.settle_seconds);
    opts.log_level = args.controller_log_level;
    opts.fleet_instances = args.fleet_instances;
    opts.fleet_max_concurrent = args.fleet_max_concurrent;
    let report = benchkit::run_faults(&opts).await?;
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        benchkit::write_json(path, &report)?;
        println!("wrote {}", path.display());
    }
    Ok(report.passed)
}

#[tokio::main]
async fn main() -> ExitCode {
    compute_operator::telemetry::init("warn", compute_operator::config::LogFormat::Text);
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("faults: {e:#}");
            ExitCode::from(2)
        }
    }
}
