//! The bench run, top to bottom: start the stack, the burst (throughput, latency, cost per action), idle,
//! the limits against the same API server, the open loop, the objects at rest and a policy change.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::ResourceExt as _;

use super::limit::measure_limits;
use super::load::{DesiredMix, acting_object, minimum_status_writes, open_loop, resting_object};
use super::lock;
use super::measure::{Spread, apiserver_requests, diff_requests, is_write, metric_by_label, metric_sum, percentile};
use super::objects::{create_all, wait_settled};
use super::report::{BenchReport, phase_breakdown};
use super::rest::{measure_rest, policy_change};
use super::stack::{Stack, StackOptions};
use crate::crd::instance_action::ComputeInstanceAction;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Objects of the burst, each on its own instance.
    pub objects: usize,
    pub transition: Duration,
    pub concurrency: u16,
    pub api_rate: f64,
    /// Controller `--resync-interval`.
    pub resync: Duration,
    /// `off` or `enforce` (then a policy allows every object, and the rest run ends with a policy change).
    pub policy_mode: String,
    /// Idle measurement after the burst.
    pub idle: Duration,
    /// Open loop: how long objects arrive (zero: no open loop), and at which rate (default half the limit).
    pub open_loop: Duration,
    pub open_loop_rate: Option<f64>,
    /// Objects at rest created after the open loop (zero: no rest run).
    pub rest_objects: usize,
    /// How long the rest is measured (default and minimum: one resync interval).
    pub rest_window: Option<Duration>,
    pub desired: DesiredMix,
    pub operator_binary: PathBuf,
    /// Creates in flight at once.
    pub create_concurrency: usize,
    pub log_level: String,
    /// How long to wait for everything to be Ready.
    pub ready_timeout: Duration,
}

/// `/proc/loadavg`'s three load averages.
pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs one benchmark; see the module documentation.
pub async fn run_bench(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    crate::api::client::install_crypto_provider();
    anyhow::ensure!(opts.objects > 0, "--objects must be at least 1");
    let rest_window = opts.rest_window.unwrap_or(opts.resync);
    anyhow::ensure!(
        rest_window >= opts.resync,
        "the rest must be measured over at least one resync interval ({:?})",
        opts.resync
    );
    let load_average_start = load_average();
    // The simulator holds exactly one instance per object: the burst's and the rest's now, the open loop's as
    // they arrive.
    let (burst, mut fleet): (Vec<_>, Vec<_>) = (0..opts.objects)
        .map(|i| acting_object("bench", opts.desired, i))
        .unzip();
    let (rest, rest_fleet): (Vec<_>, Vec<_>) = (0..opts.rest_objects).map(resting_object).unzip();
    fleet.extend(rest_fleet);
    let stack = Stack::start(
        &StackOptions {
            operator_binary: opts.operator_binary.clone(),
            transition: opts.transition,
            concurrency: opts.concurrency,
            api_rate: opts.api_rate,
            resync: opts.resync,
            policy_mode: opts.policy_mode.clone(),
            log_level: opts.log_level.clone(),
        },
        fleet,
    )
    .await?;
    let mut report = BenchReport {
        objects: opts.objects,
        desired: format!("{:?}", opts.desired).to_lowercase(),
        transition_ms: opts.transition.as_millis() as u64,
        concurrency: opts.concurrency,
        policy_mode: opts.policy_mode.clone(),
        resync_interval_s: opts.resync.as_secs_f64(),
        load_average_start,
        idle_seconds: opts.idle.as_secs_f64(),
        rest_objects: opts.rest_objects,
        controller_log: stack.ctl.log.display().to_string(),
        ..BenchReport::default()
    };
    let result = run_phases(&stack, opts, burst, rest, rest_window, &mut report).await;
    report.controller_peak_rss_mib = stack.peak_rss_mib();
    report.load_average_end = load_average();
    stack.shutdown().await;
    result.map(|()| report)
}

async fn run_phases(
    stack: &Stack,
    opts: &BenchOptions,
    burst: Vec<ComputeInstanceAction>,
    rest: Vec<ComputeInstanceAction>,
    rest_window: Duration,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    eprintln!("bench: burst of {} objects ...", opts.objects);
    measure_burst(stack, opts, burst, report).await?;
    eprintln!("bench: idle for {:?} ...", opts.idle);
    measure_idle(stack, opts.idle, report).await;
    eprintln!("bench: limit runs ...");
    measure_limits(stack, opts, report).await?;
    if !opts.open_loop.is_zero() {
        let rate = opts.open_loop_rate.unwrap_or(report.limit_throughput_per_s / 2.0);
        eprintln!("bench: open loop at {rate:.1}/s for {:?} ...", opts.open_loop);
        measure_open_loop(stack, opts, rate, report).await?;
    }
    if !rest.is_empty() {
        eprintln!(
            "bench: {} objects at rest, measured for {rest_window:?} ...",
            rest.len()
        );
        let denied = measure_rest(stack, opts, rest, rest_window, report).await?;
        if opts.policy_mode == "enforce" {
            eprintln!("bench: policy change ...");
            policy_change(stack, &denied, report).await?;
        } else {
            report.notes.push("no policy change: --policy-mode off".into());
        }
    }
    Ok(())
}

/// Creates every object at once and measures until all are Ready (or Stalled).
async fn measure_burst(
    stack: &Stack,
    opts: &BenchOptions,
    objects: Vec<ComputeInstanceAction>,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
    let minimum_writes: u64 = objects
        .iter()
        .map(|o| minimum_status_writes(o.spec.desired_state))
        .sum();
    let cpu_before_load = stack.cpu_s();
    let apiserver_before = apiserver_requests(&stack.client).await;
    eprintln!("bench: creating {} objects ...", opts.objects);
    let start = Instant::now();
    let created = create_all(&stack.api, objects, opts.create_concurrency).await?;
    report.create_s = start.elapsed().as_secs_f64();
    let all_settled = wait_settled(&stack.tracker, &names, opts.ready_timeout).await;
    let cpu_after_load = stack.cpu_s();
    let metrics_at_ready = stack.ctl.metrics(&stack.http).await.unwrap_or_default();
    let stats_at_ready = stack.sim.stats();
    let audit_at_ready = stack.sim.audit().len();
    let peak_at_ready = stack.peak_rss_mib();
    let load_elapsed = start.elapsed().as_secs_f64();
    let apiserver_at_ready = apiserver_requests(&stack.client).await;
    report.apiserver_requests_during_load = diff_requests(&apiserver_before, &apiserver_at_ready);
    if !all_settled {
        report.notes.push(format!(
            "not every object settled within {:?}; numbers cover the completed ones",
            opts.ready_timeout
        ));
    }
    {
        let t = lock(&stack.tracker);
        let created_at: HashMap<&str, Instant> = created.iter().map(|(n, at, _)| (n.as_str(), *at)).collect();
        let mut latencies: Vec<f64> = names
            .iter()
            .filter_map(|n| {
                let ready = t.ready_at.get(n)?;
                let made = created_at.get(n.as_str())?;
                Some(ready.saturating_duration_since(*made).as_secs_f64())
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        report.completed = latencies.len();
        report.stalled = names.iter().filter(|n| t.stalled.contains_key(*n)).count();
        for n in &names {
            if let Some(reason) = t.stalled.get(n) {
                *report.stalled_by_reason.entry(reason.clone()).or_default() += 1;
            }
        }
        report.latency_p50_s = percentile(&latencies, 50.0);
        report.latency_p95_s = percentile(&latencies, 95.0);
        report.latency_p99_s = percentile(&latencies, 99.0);
        report.latency_max_s = latencies.last().copied().unwrap_or(f64::NAN);
        let last_ready = names.iter().filter_map(|n| t.ready_at.get(n)).max().copied();
        let all_ready = last_ready.map_or(f64::NAN, |l| l.duration_since(start).as_secs_f64());
        report.time_to_all_ready_s = all_ready;
        report.throughput_per_s = report.completed as f64 / all_ready;
    }
    phase_breakdown(&stack.api, &created, &stack.tracker, report).await;
    let n = opts.objects as f64;
    report.api_requests_per_action = stats_at_ready.total as f64 / n;
    let r = &stats_at_ready.requests;
    report.api_requests = BTreeMap::from([
        ("list".to_owned(), r.list),
        ("get".to_owned(), r.get),
        ("stop".to_owned(), r.stop),
        ("start".to_owned(), r.start),
        ("restart".to_owned(), r.restart),
        ("reset".to_owned(), r.reset),
    ]);
    report.api_responses = stats_at_ready
        .responses
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    report.actions_accepted = audit_at_ready;
    report.status_writes = metric_sum(&metrics_at_ready, "compute_operator_status_writes_total") as u64;
    report.status_writes_per_action = report.status_writes as f64 / n;
    let conflicts = "compute_operator_status_conflicts_total";
    report.status_conflicts_by_cause = metric_by_label(&metrics_at_ready, conflicts, "cause");
    report.status_conflicts_by_write = metric_by_label(&metrics_at_ready, conflicts, "write");
    report.status_writes_minimum_per_action = minimum_writes as f64 / n;
    report.reconciles_per_action = metric_sum(&metrics_at_ready, "compute_operator_reconciles_total") / n;
    report.controller_cpu_s = cpu_after_load;
    report.controller_load_cpu_s = cpu_after_load - cpu_before_load;
    report.controller_cpu_ms_per_action = report.controller_load_cpu_s * 1000.0 / n;
    report.burst_peak_rss_mib = peak_at_ready;
    let writes_total: u64 = report
        .apiserver_requests_during_load
        .iter()
        .filter(|(k, _)| is_write(k))
        .map(|(_, v)| *v)
        .sum();
    let creates = report
        .apiserver_requests_during_load
        .get("POST computeinstanceactions")
        .copied()
        .unwrap_or(0);
    report.apiserver_writes_per_action = writes_total.saturating_sub(creates) as f64 / n;
    report.events_per_action = report
        .apiserver_requests_during_load
        .iter()
        .filter(|(k, _)| is_write(k) && k.ends_with(" events"))
        .map(|(_, v)| *v as f64)
        .sum::<f64>()
        / n;
    let m = &metrics_at_ready;
    let rec_sum = metric_sum(m, "compute_operator_reconcile_duration_seconds_sum");
    let rec_count = metric_sum(m, "compute_operator_reconcile_duration_seconds_count");
    report.reconcile_mean_s = rec_sum / rec_count;
    report.reconcile_slots_busy = rec_sum / (load_elapsed * f64::from(opts.concurrency));
    report.admin_api_mean_latency_s = metric_sum(m, "compute_operator_api_request_duration_seconds_sum")
        / metric_sum(m, "compute_operator_api_request_duration_seconds_count");
    Ok(())
}

/// Everything settled: CPU, status writes and admin API requests while nothing is to be done.
async fn measure_idle(stack: &Stack, idle: Duration, report: &mut BenchReport) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, writes0, req0) = (
        stack.cpu_s(),
        stack.metric("compute_operator_status_writes_total").await,
        stack.api_requests(),
    );
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_elapsed = idle_started.elapsed().as_secs_f64();
    report.idle_cpu_fraction = (stack.cpu_s() - cpu0) / idle_elapsed;
    report.idle_status_writes = (stack.metric("compute_operator_status_writes_total").await - writes0).max(0.0) as u64;
    report.idle_api_requests = stack.api_requests().saturating_sub(req0);
}

/// Objects arrive at `rate` for the open-loop time; creation-to-Ready latency of each.
async fn measure_open_loop(
    stack: &Stack,
    opts: &BenchOptions,
    rate: f64,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let (req0, writes0) = (
        stack.api_requests(),
        stack.metric("compute_operator_status_writes_total").await,
    );
    let arrivals = open_loop(&stack.api, &stack.sim, opts.desired, rate, opts.open_loop).await?;
    let names: Vec<String> = arrivals.created.iter().map(|(n, _, _)| n.clone()).collect();
    if !wait_settled(&stack.tracker, &names, opts.ready_timeout).await {
        report.notes.push("not every open-loop object settled".into());
    }
    if arrivals.failed > 0 {
        report
            .notes
            .push(format!("{} open-loop creates failed", arrivals.failed));
    }
    let n = names.len().max(1) as f64;
    let mut latencies = Vec::with_capacity(names.len());
    let mut by_desired: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    {
        let t = lock(&stack.tracker);
        for (name, desired, made) in &arrivals.created {
            if let Some(ready) = t.ready_at.get(name) {
                let latency = ready.saturating_duration_since(*made).as_secs_f64();
                latencies.push(latency);
                by_desired.entry(desired.as_str().to_owned()).or_default().push(latency);
            }
        }
    }
    report.open_loop_by_desired = by_desired.into_iter().map(|(k, v)| (k, Spread::of(v))).collect();
    let spread = Spread::of(latencies);
    report.open_loop_rate_per_s = Some(names.len() as f64 / opts.open_loop.as_secs_f64());
    report.open_loop_seconds = Some(arrivals.seconds);
    report.open_loop_objects = Some(names.len());
    report.open_loop_completed = Some(spread.n);
    report.open_loop_p50_s = Some(spread.p50);
    report.open_loop_p95_s = Some(spread.p95);
    report.open_loop_p99_s = Some(spread.p99);
    report.open_loop_max_s = Some(spread.max);
    report.open_loop_api_requests_per_action = Some(stack.api_requests().saturating_sub(req0) as f64 / n);
    report.open_loop_status_writes_per_action =
        Some((stack.metric("compute_operator_status_writes_total").await - writes0) / n);
    Ok(())
}
