//! `bench`: throughput, latency, API cost and footprint of the operator under load, against the limit of the
//! API server: a burst, an open loop, objects at rest and a policy change (README "Benchmark"). Runs the
//! operator as its own process (`cargo build --release` first).
//!
//! `cargo run --release --bin bench -- --objects 1000 --rest-objects 10000 --json bench.json`
//!
//! With `--fleet-instances` and/or `--schedule-instances` it measures a fleet rollout and a schedule event
//! instead (no burst): `bench --fleet-instances 1000 --fleet-max-concurrent 50 --json fleet.json`.
//! `bench --fleet-memory` sizes what the fleet controller keeps for 10 fleets over 2,000 instances each
//! (in-process, with this binary's counting allocator).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use compute_operator::benchkit::{self, BenchOptions, DesiredMix};

/// Counts the bytes held, for `--fleet-memory` (the operator's own process is measured from `/proc`).
#[global_allocator]
static ALLOCATOR: benchkit::fleet_memory::LiveBytes = benchkit::fleet_memory::LiveBytes;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Load benchmark of compute-operator against a real kube-apiserver and the simulator"
)]
struct Args {
    /// Objects of the burst, created at once, each on its own instance.
    #[arg(long, default_value_t = 100)]
    objects: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Simulator transition time.
    #[arg(long, default_value_t = 200)]
    transition_ms: u64,
    /// Controller `--concurrency` (also the limit client's).
    #[arg(long, default_value_t = 32)]
    concurrency: u16,
    /// Controller `--api-rate` (and burst).
    #[arg(long, default_value_t = 1000.0)]
    api_rate: f64,
    /// Controller `--resync-interval` (short, so that the rest run can average over a whole one).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Controller `--policy-mode`; with `enforce` a policy allows every object and the rest run ends with a
    /// policy change.
    #[arg(long, value_parser = ["enforce", "off"], default_value = "enforce")]
    policy_mode: String,
    /// How long to measure idle CPU after the burst.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Open loop after the burst: how long objects arrive (0: no open loop).
    #[arg(long, default_value_t = 60)]
    open_loop_seconds: u64,
    /// Open-loop arrivals per second (default: half the measured strict limit).
    #[arg(long)]
    open_loop_rate: Option<f64>,
    /// Objects at rest after the open loop (`--rest-objects` alone: 10000; 0: no rest run).
    #[arg(long, default_value_t = 0, num_args = 0..=1, default_missing_value = "10000")]
    rest_objects: usize,
    /// How long the rest is measured, at least one resync interval (default: one).
    #[arg(long, value_parser = humantime::parse_duration)]
    rest_seconds: Option<Duration>,
    /// What the objects ask for.
    #[arg(long, value_enum, default_value = "mixed")]
    desired: DesiredMix,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Controller log level.
    #[arg(long, default_value = "info")]
    controller_log_level: String,
    /// Give up waiting for Ready after this many seconds.
    #[arg(long, default_value_t = 600)]
    ready_timeout_seconds: u64,
    /// The operator binary to measure (default: `compute-operator` next to this executable). Point it at the
    /// lean production build (`--no-default-features --features jemalloc`) to measure what the image runs.
    #[arg(long)]
    operator_binary: Option<PathBuf>,
    /// Fleet figure instead of the burst: one ComputeFleetAction restarting this many instances.
    #[arg(long, default_value_t = 0)]
    fleet_instances: usize,
    /// The fleet's `strategy.maxConcurrent`.
    #[arg(long, default_value_t = 50)]
    fleet_max_concurrent: u32,
    /// Schedule figure instead of the burst: one ComputePowerSchedule stop event (at the next whole minute)
    /// over this many instances, with the schedule's default strategy.
    #[arg(long, default_value_t = 0)]
    schedule_instances: usize,
    /// Simulator transition time of the fleet and schedule runs.
    #[arg(long, default_value_t = 1000)]
    fleet_transition_ms: u64,
    /// Fleet memory figure instead of a run: what the fleet controller keeps for `--memory-fleets` fleets over
    /// `--memory-fleet-instances` instances each.
    #[arg(long)]
    fleet_memory: bool,
    #[arg(long, default_value_t = 10)]
    memory_fleets: usize,
    #[arg(long, default_value_t = 2000)]
    memory_fleet_instances: usize,
}

async fn run_fleets(args: Args, operator_binary: PathBuf) -> anyhow::Result<()> {
    let transition = Duration::from_millis(args.fleet_transition_ms);
    let opts = benchkit::FleetOptions {
        fleet_instances: args.fleet_instances,
        fleet_max_concurrent: args.fleet_max_concurrent,
        schedule_instances: args.schedule_instances,
        transition,
        stack: benchkit::stack::StackOptions {
            operator_binary,
            transition,
            concurrency: args.concurrency,
            api_rate: args.api_rate,
            resync: args.resync_interval,
            policy_mode: args.policy_mode,
            log_level: args.controller_log_level,
        },
        timeout: Duration::from_secs(args.ready_timeout_seconds),
    };
    let report = benchkit::run_fleet_bench(&opts).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        benchkit::write_json(path, &report)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.fleet_memory {
        let report = benchkit::fleet_memory::measure(args.memory_fleets, args.memory_fleet_instances);
        print!("{}", report.table());
        if let Some(path) = &args.json {
            benchkit::write_json(path, &report)?;
            println!("wrote {}", path.display());
        }
        return Ok(());
    }
    if args.fleet_instances > 0 || args.schedule_instances > 0 {
        let binary = match args.operator_binary.clone() {
            Some(path) => path,
            None => benchkit::sibling_operator_binary()?,
        };
        return run_fleets(args, binary).await;
    }
    let opts = BenchOptions {
        objects: args.objects,
        transition: Duration::from_millis(args.transition_ms),
        concurrency: args.concurrency,
        api_rate: args.api_rate,
        resync: args.resync_interval,
        policy_mode: args.policy_mode,
        idle: Duration::from_secs(args.idle_seconds),
        open_loop: Duration::from_secs(args.open_loop_seconds),
        open_loop_rate: args.open_loop_rate,
        rest_objects: args.rest_objects,
        rest_window: args.rest_seconds,
        desired: args.desired,
        operator_binary: match args.operator_binary {
            Some(path) => path,
            None => benchkit::sibling_operator_binary()?,
        },
        create_concurrency: args.create_concurrency,
        log_level: args.controller_log_level,
        ready_timeout: Duration::from_secs(args.ready_timeout_seconds),
    };
    let report = benchkit::run_bench(&opts).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        benchkit::write_json(path, &report)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    compute_operator::telemetry::init("warn", compute_operator::config::LogFormat::Text);
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
