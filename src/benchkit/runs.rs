//! The bench run, top to bottom: start the stack, create the burst, wait for Ready, measure idle and rest,
//! then the limit run against the same API server.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::Serialize;

use super::SIM_TOKEN;
use super::controller::{ControllerProcess, ControllerSpec, local_http};
use super::limit::limit_run;
use super::lock;
use super::measure::{
    apiserver_requests, cpu_seconds, diff_requests, is_write, metric_sum, mib, percentile, status_kib,
};
use super::objects::{create_all, create_namespace, instance, new_object, spawn_tracker, wait_settled};
use super::report::{BenchReport, phase_breakdown};
use crate::api::InstanceStatus;
use crate::devenv::{Binaries, ControlPlane};
use crate::resource::{ComputeInstanceAction, DesiredState};
use crate::sim::{self, SimConfig};

// ---------------------------------------------------------------------------------------------------------
// Bench
// ---------------------------------------------------------------------------------------------------------

/// What the objects of a bench run ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredMix {
    Running,
    Stopped,
    Restarted,
    /// running, stopped, restarted and reset in turn.
    Mixed,
}

impl DesiredMix {
    /// The desired state of object `i` and the status its instance starts in (so that an action is needed).
    fn pick(self, i: usize) -> (DesiredState, InstanceStatus) {
        let d = match self {
            Self::Running => DesiredState::Running,
            Self::Stopped => DesiredState::Stopped,
            Self::Restarted => DesiredState::Restarted,
            Self::Mixed => [
                DesiredState::Running,
                DesiredState::Stopped,
                DesiredState::Restarted,
                DesiredState::Reset,
            ][i % 4],
        };
        let start = match d {
            DesiredState::Running => InstanceStatus::Stopped,
            _ => InstanceStatus::Running,
        };
        (d, start)
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub objects: usize,
    pub transition: Duration,
    pub concurrency: u16,
    pub api_rate: f64,
    pub idle: Duration,
    pub rest_objects: usize,
    pub desired: DesiredMix,
    pub operator_binary: PathBuf,
    /// Creates in flight at once.
    pub create_concurrency: usize,
    pub log_level: String,
    /// How long to wait for everything to be Ready.
    pub ready_timeout: Duration,
}

/// Runs one benchmark; see the module documentation.
pub async fn run_bench(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    crate::api::client::install_crypto_provider();
    anyhow::ensure!(opts.objects > 0, "--objects must be at least 1");
    let http = local_http()?;
    let logs = tempfile::Builder::new()
        .prefix("compute-operator-bench-")
        .tempdir()?
        .keep();
    let binaries = Binaries::locate()?;
    eprintln!("bench: starting kube-apiserver + etcd ...");
    let cp = ControlPlane::start(&binaries).await?;
    let client = cp.client().await?;
    let ns = "bench";
    create_namespace(&client, ns).await?;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), ns);

    // The fleet: one instance per object, in the status that makes the object act; plus instances already in
    // the desired state for the objects at rest; plus the demo ids.
    let mut fleet = crate::devenv::dev::demo_instances();
    let mut objects = Vec::with_capacity(opts.objects);
    for i in 0..opts.objects {
        let (desired, start) = opts.desired.pick(i);
        let id = format!("bench-{i:06}");
        fleet.push(instance(&id, start));
        let rid = (!desired.is_level()).then(|| format!("r-{i}"));
        objects.push(new_object(&format!("b-{i:06}"), &id, desired, rid, 600));
    }
    let mut rest = Vec::with_capacity(opts.rest_objects);
    for i in 0..opts.rest_objects {
        let id = format!("rest-{i:06}");
        let (desired, status) = if i % 2 == 0 {
            (DesiredState::Running, InstanceStatus::Running)
        } else {
            (DesiredState::Stopped, InstanceStatus::Stopped)
        };
        fleet.push(instance(&id, status));
        rest.push(new_object(&format!("rest-{i:06}"), &id, desired, None, 600));
    }
    let sim = sim::start(SimConfig {
        instances: 0,
        fleet: Some(fleet),
        transition: opts.transition,
        ..SimConfig::default()
    })
    .await?;

    let spec = ControllerSpec {
        binary: opts.operator_binary.clone(),
        kubeconfig: cp.kubeconfig.clone(),
        api_url: sim.base_url().to_owned(),
        token: SIM_TOKEN.into(),
        concurrency: opts.concurrency,
        api_rate: opts.api_rate,
        api_max_in_flight: usize::from(opts.concurrency).max(8) * 2,
        api_timeout: "10s".into(),
        resync: "60s".into(),
        restart_settle: "15s".into(),
        namespaces: vec![ns.into()],
        lease_namespace: None,
        lease_duration: "15s".into(),
        log_level: opts.log_level.clone(),
        log_dir: logs.clone(),
    };
    let mut ctl = ControllerProcess::spawn(&spec, "bench-controller")?;
    ctl.wait_ready(&http, Duration::from_secs(60)).await?;
    let pid = ctl.pid();
    let mut report = BenchReport {
        objects: opts.objects,
        desired: format!("{:?}", opts.desired).to_lowercase(),
        transition_ms: opts.transition.as_millis() as u64,
        concurrency: opts.concurrency,
        idle_seconds: opts.idle.as_secs_f64(),
        rest_objects: opts.rest_objects,
        controller_log: ctl.log.display().to_string(),
        ..BenchReport::default()
    };

    let (tracker, tracker_task) = spawn_tracker(api.clone());
    // Let the watch list (empty) before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
    let cpu_before_load = cpu_seconds(pid).unwrap_or(0.0);
    let apiserver_before = apiserver_requests(&client).await;
    eprintln!("bench: creating {} objects ...", opts.objects);
    let start = Instant::now();
    let created = create_all(&api, objects, opts.create_concurrency).await?;
    report.create_s = start.elapsed().as_secs_f64();
    let all_settled = wait_settled(&tracker, &names, opts.ready_timeout).await;
    let cpu_after_load = cpu_seconds(pid).unwrap_or(f64::NAN);
    let metrics_at_ready = ctl.metrics(&http).await.unwrap_or_default();
    let stats_at_ready = sim.stats();
    let audit_at_ready = sim.audit().len();
    let hwm_at_ready = status_kib(pid, "VmHWM");
    let load_elapsed = start.elapsed().as_secs_f64();
    let apiserver_at_ready = apiserver_requests(&client).await;
    report.apiserver_requests_during_load = diff_requests(&apiserver_before, &apiserver_at_ready);
    if !all_settled {
        report.notes.push(format!(
            "not every object settled within {:?}; numbers cover the completed ones",
            opts.ready_timeout
        ));
    }
    {
        let t = lock(&tracker);
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
    phase_breakdown(&api, &created, &tracker, &mut report).await;
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
    report.reconciles_per_action = metric_sum(&metrics_at_ready, "compute_operator_reconciles_total") / n;
    report.controller_cpu_s = cpu_after_load;
    report.controller_load_cpu_s = cpu_after_load - cpu_before_load;
    report.controller_cpu_ms_per_action = report.controller_load_cpu_s * 1000.0 / n;
    report.controller_peak_rss_mib = mib(hwm_at_ready);
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
    report.event_writes_per_action = report
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

    // Idle: everything settled, nothing to do until the resync.
    eprintln!("bench: idle for {:?} ...", opts.idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, writes0, req0) = (
        cpu_seconds(pid).unwrap_or(f64::NAN),
        metric_sum(
            &ctl.metrics(&http).await.unwrap_or_default(),
            "compute_operator_status_writes_total",
        ),
        sim.stats().total,
    );
    let idle_started = Instant::now();
    tokio::time::sleep(opts.idle).await;
    let idle_elapsed = idle_started.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid).unwrap_or(f64::NAN);
    let writes1 = metric_sum(
        &ctl.metrics(&http).await.unwrap_or_default(),
        "compute_operator_status_writes_total",
    );
    report.idle_cpu_fraction = (cpu1 - cpu0) / idle_elapsed;
    report.idle_status_writes = (writes1 - writes0).max(0.0) as u64;
    report.idle_api_requests = sim.stats().total.saturating_sub(req0);

    // At rest: many more objects that need nothing.
    if !rest.is_empty() {
        eprintln!("bench: creating {} objects at rest ...", rest.len());
        let rest_names: Vec<String> = rest.iter().map(|o| o.name_any()).collect();
        let rest_start = Instant::now();
        create_all(&api, rest, opts.create_concurrency).await?;
        if !wait_settled(&tracker, &rest_names, opts.ready_timeout.max(Duration::from_secs(300))).await {
            report.notes.push("not every object at rest settled".into());
        }
        report.rest_ready_s = Some(rest_start.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let c0 = cpu_seconds(pid).unwrap_or(f64::NAN);
        let t0 = Instant::now();
        let rest_idle = opts.idle.min(Duration::from_secs(10));
        tokio::time::sleep(rest_idle).await;
        let c1 = cpu_seconds(pid).unwrap_or(f64::NAN);
        report.rest_idle_cpu_fraction = Some((c1 - c0) / t0.elapsed().as_secs_f64());
        report.rest_rss_mib = Some(mib(status_kib(pid, "VmRSS")));
        report.rest_peak_rss_mib = Some(mib(status_kib(pid, "VmHWM")));
    }

    // The limit: the same status writes by a minimal client, with the controller stopped. The bench's own
    // watch keeps running, and a second watch stands in for the controller's, so the API server fans out
    // the same watch events as during the load.
    ctl.stop(Duration::from_secs(10));
    let stand_in = tokio::spawn({
        let api = api.clone();
        async move {
            let mut stream = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .boxed();
            while stream.next().await.is_some() {}
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("bench: limit run ({} status writes) ...", report.status_writes);
    let writes = report.status_writes.max(1);
    let before_limit = apiserver_requests(&client).await;
    let limit_secs = limit_run(&api, &names, writes, 0, usize::from(opts.concurrency)).await?;
    report.apiserver_requests_during_limit = diff_requests(&before_limit, &apiserver_requests(&client).await);
    // The same, plus as many Event writes as the controller made: the limit for its actual write mix.
    let events = (report.event_writes_per_action * n).round() as u64;
    let with_events_secs = limit_run(&api, &names, writes, events, usize::from(opts.concurrency)).await?;
    report.limit_with_events_throughput_per_s = n / with_events_secs;
    report.ratio_with_events = report.throughput_per_s / report.limit_with_events_throughput_per_s;
    stand_in.abort();
    tracker_task.abort();
    report.limit_writes = writes;
    report.limit_writes_per_s = writes as f64 / limit_secs;
    let writes_per_action = writes as f64 / n;
    report.limit_throughput_per_s = report.limit_writes_per_s / writes_per_action;
    report.ratio = report.throughput_per_s / report.limit_throughput_per_s;

    sim.shutdown().await;
    drop(ctl);
    drop(cp);
    Ok(report)
}
