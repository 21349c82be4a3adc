//! `bench`: throughput, latency, API cost and footprint of the operator under load, against the limit of the
//! API server. Runs the operator as its own process (`cargo build --release` first).
//!
//! `cargo run --release --bin bench -- --objects 1000 --json bench.json`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use compute_operator::benchkit::{self, BenchOptions, BenchReport, DesiredMix};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Load benchmark of compute-operator against a real kube-apiserver and the simulator"
)]
struct Args {
    /// Objects to create, each on its own instance.
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
    /// How long to measure idle CPU with every object settled.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Extra objects that need no action, to measure memory at rest (e.g. 10000).
    #[arg(long, default_value_t = 0)]
    rest_objects: usize,
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
}

fn check(ok: bool) -> &'static str {
    if ok { "hit" } else { "MISS" }
}

fn print_table(r: &BenchReport) {
    let transition_s = r.transition_ms as f64 / 1000.0;
    let rows: Vec<(String, String, String)> = vec![
        (
            "objects".into(),
            format!("{} ({})", r.objects, r.desired),
            String::new(),
        ),
        (
            "completed / stalled".into(),
            format!("{} / {}", r.completed, r.stalled),
            String::new(),
        ),
        ("create all (s)".into(), format!("{:.2}", r.create_s), String::new()),
        (
            "time to all Ready (s)".into(),
            format!("{:.2}", r.time_to_all_ready_s),
            String::new(),
        ),
        (
            "throughput (actions/s)".into(),
            format!("{:.1}", r.throughput_per_s),
            String::new(),
        ),
        (
            "limit (actions/s)".into(),
            format!("{:.1} ({:.0} writes/s)", r.limit_throughput_per_s, r.limit_writes_per_s),
            String::new(),
        ),
        (
            "limit incl. Event writes (actions/s)".into(),
            format!(
                "{:.1} (ratio {:.2})",
                r.limit_with_events_throughput_per_s, r.ratio_with_events
            ),
            String::new(),
        ),
        (
            "ratio controller/limit".into(),
            format!("{:.2}", r.ratio),
            format!("{} (>= 0.80 at N=1000)", check(r.ratio >= 0.8)),
        ),
        (
            "latency p50 (s)".into(),
            format!("{:.3}", r.latency_p50_s),
            String::new(),
        ),
        (
            "latency p95 (s)".into(),
            format!("{:.3}", r.latency_p95_s),
            String::new(),
        ),
        (
            "latency p99 (s)".into(),
            format!("{:.3}", r.latency_p99_s),
            format!(
                "{} (<= {:.1})",
                check(r.latency_p99_s <= transition_s + 1.0),
                transition_s + 1.0
            ),
        ),
        (
            "latency max (s)".into(),
            format!("{:.3}", r.latency_max_s),
            String::new(),
        ),
        (
            "admin API requests/action".into(),
            format!("{:.2}", r.api_requests_per_action),
            format!("{} (<= 6 at 1 s transitions)", check(r.api_requests_per_action <= 6.0)),
        ),
        (
            "status writes/action".into(),
            format!("{:.2}", r.status_writes_per_action),
            String::new(),
        ),
        (
            "reconciles/action".into(),
            format!("{:.2}", r.reconciles_per_action),
            String::new(),
        ),
        (
            "kube-apiserver writes/action".into(),
            format!(
                "{:.2} (of which Events {:.2})",
                r.apiserver_writes_per_action, r.event_writes_per_action
            ),
            String::new(),
        ),
        (
            "reconcile mean (s) / slots busy".into(),
            format!("{:.3} / {:.0}%", r.reconcile_mean_s, r.reconcile_slots_busy * 100.0),
            String::new(),
        ),
        (
            "admin API mean latency (s)".into(),
            format!("{:.4}", r.admin_api_mean_latency_s),
            String::new(),
        ),
        (
            "controller CPU (s)".into(),
            format!(
                "{:.2} ({:.2} ms/action under load)",
                r.controller_cpu_s, r.controller_cpu_ms_per_action
            ),
            String::new(),
        ),
        (
            "controller peak RSS (MiB)".into(),
            format!("{:.1}", r.controller_peak_rss_mib),
            String::new(),
        ),
        (
            "idle CPU (fraction of a core)".into(),
            format!(
                "{:.4} over {:.0}s ({} writes, {} API requests)",
                r.idle_cpu_fraction, r.idle_seconds, r.idle_status_writes, r.idle_api_requests
            ),
            format!("{} (< 0.01)", check(r.idle_cpu_fraction < 0.01)),
        ),
    ];
    let mut rows = rows;
    if let Some(rss) = r.rest_rss_mib {
        rows.push((
            format!("RSS at rest, {} + {} objects (MiB)", r.objects, r.rest_objects),
            format!("{:.1} (peak {:.1})", rss, r.rest_peak_rss_mib.unwrap_or(f64::NAN)),
            format!("{} (<= 64)", check(rss <= 64.0)),
        ));
        rows.push((
            "objects at rest Ready after (s)".into(),
            format!("{:.1}", r.rest_ready_s.unwrap_or(f64::NAN)),
            String::new(),
        ));
        rows.push((
            "idle CPU at rest".into(),
            format!("{:.4}", r.rest_idle_cpu_fraction.unwrap_or(f64::NAN)),
            format!("{} (< 0.01)", check(r.rest_idle_cpu_fraction.is_some_and(|c| c < 0.01))),
        ));
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let v = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    println!("{:w$}  {:v$}  target", "metric", "value");
    println!("{}", "-".repeat(w + v + 30));
    for (name, value, target) in rows {
        println!("{name:w$}  {value:v$}  {target}");
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    if !r.stalled_by_reason.is_empty() {
        println!("stalled by reason: {:?}", r.stalled_by_reason);
    }
    println!("admin API requests by endpoint: {:?}", r.api_requests);
    println!(
        "kube-apiserver requests during the load: {:?}",
        r.apiserver_requests_during_load
    );
    println!(
        "kube-apiserver requests during the limit run: {:?}",
        r.apiserver_requests_during_limit
    );
    println!("latency by desired state (s):");
    for (k, v) in &r.latency_by_desired {
        println!(
            "  {k:10} n={:5} p50={:.3} p95={:.3} p99={:.3} max={:.3}",
            v.n, v.p50, v.p95, v.p99, v.max
        );
    }
    println!(
        "where the time goes (s): queue = created->intent, post = intent->202, converge = 202->done, report = done->Ready seen"
    );
    println!("  completions seen 30 s or more after the 202: {}", r.converge_over_30s);
    for (k, v) in &r.phases {
        println!(
            "  {k:10} n={:5} p50={:.3} p95={:.3} p99={:.3} max={:.3}",
            v.n, v.p50, v.p95, v.p99, v.max
        );
    }
    println!("controller log: {}", r.controller_log);
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opts = BenchOptions {
        objects: args.objects,
        transition: Duration::from_millis(args.transition_ms),
        concurrency: args.concurrency,
        api_rate: args.api_rate,
        idle: Duration::from_secs(args.idle_seconds),
        rest_objects: args.rest_objects,
        desired: args.desired,
        operator_binary: benchkit::sibling_operator_binary()?,
        create_concurrency: args.create_concurrency,
        log_level: args.controller_log_level,
        ready_timeout: Duration::from_secs(args.ready_timeout_seconds),
    };
    let report = benchkit::run_bench(&opts).await?;
    print_table(&report);
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
