//! The bench report (the JSON of `bench --json`) and the breakdown of where the time between creation and
//! Ready goes, from the objects' action records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::lock;
use super::measure::Spread;
use super::objects::Tracker;
use crate::resource::ComputeInstanceAction;

/// The measured numbers (the JSON of `bench --json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub objects: usize,
    pub desired: String,
    pub transition_ms: u64,
    pub concurrency: u16,
    pub completed: usize,
    pub stalled: usize,
    pub stalled_by_reason: BTreeMap<String, usize>,
    /// Completed actions per second, from the first create to the last Ready.
    pub throughput_per_s: f64,
    /// The same status writes by a minimal client, converted to actions/s.
    pub limit_throughput_per_s: f64,
    pub limit_writes_per_s: f64,
    pub limit_writes: u64,
    /// throughput / limit.
    pub ratio: f64,
    /// The limit when the minimal client also writes as many Events as the controller did.
    pub limit_with_events_throughput_per_s: f64,
    pub ratio_with_events: f64,
    pub create_s: f64,
    pub time_to_all_ready_s: f64,
    pub latency_p50_s: f64,
    pub latency_p95_s: f64,
    pub latency_p99_s: f64,
    pub latency_max_s: f64,
    pub api_requests_per_action: f64,
    pub api_requests: BTreeMap<String, u64>,
    pub api_responses: BTreeMap<String, u64>,
    pub actions_accepted: usize,
    pub status_writes_per_action: f64,
    pub status_writes: u64,
    pub reconciles_per_action: f64,
    /// Controller CPU (user + system) from its start until everything was Ready.
    pub controller_cpu_s: f64,
    /// CPU during the load only (from the first create to the last Ready).
    pub controller_load_cpu_s: f64,
    pub controller_cpu_ms_per_action: f64,
    pub controller_peak_rss_mib: f64,
    pub idle_seconds: f64,
    /// CPU seconds per second (fraction of one core) with the objects settled.
    pub idle_cpu_fraction: f64,
    pub idle_status_writes: u64,
    pub idle_api_requests: u64,
    pub rest_objects: usize,
    pub rest_ready_s: Option<f64>,
    pub rest_rss_mib: Option<f64>,
    pub rest_peak_rss_mib: Option<f64>,
    pub rest_idle_cpu_fraction: Option<f64>,
    /// kube-apiserver requests while the controller worked (first create to last Ready), by verb and
    /// resource, the creates of the objects themselves included.
    pub apiserver_requests_during_load: BTreeMap<String, u64>,
    /// Writes (POST/PUT/PATCH/DELETE) to kube-apiserver per action, the object's own create excluded.
    pub apiserver_writes_per_action: f64,
    /// Of those, Event writes.
    pub event_writes_per_action: f64,
    /// kube-apiserver requests during the limit run.
    pub apiserver_requests_during_limit: BTreeMap<String, u64>,
    /// Mean reconcile duration, and the share of the concurrency slots busy during the load.
    pub reconcile_mean_s: f64,
    pub reconcile_slots_busy: f64,
    /// Mean admin API request latency seen by the controller.
    pub admin_api_mean_latency_s: f64,
    /// Latency by desired state.
    pub latency_by_desired: BTreeMap<String, Spread>,
    /// Where the time between creation and Ready goes, from the action records: `queue` (created -> intent
    /// written), `post` (intent -> 202 recorded), `converge` (202 -> completion seen), `report` (completion ->
    /// Ready seen by the watch).
    pub phases: BTreeMap<String, Spread>,
    /// Objects whose completion was seen only 30 s or more after the 202 (e.g. at a resync).
    pub converge_over_30s: usize,
    pub controller_log: String,
    pub notes: Vec<String>,
}

/// Fills in latency by desired state and the phase breakdown from the objects' action records.
pub(super) async fn phase_breakdown(
    api: &Api<ComputeInstanceAction>,
    created: &[(String, Instant, DateTime<Utc>)],
    tracker: &Mutex<Tracker>,
    report: &mut BenchReport,
) {
    let Ok(list) = api.list(&ListParams::default()).await else {
        report
            .notes
            .push("could not list the objects for the phase breakdown".into());
        return;
    };
    let objects: HashMap<String, ComputeInstanceAction> = list.items.into_iter().map(|o| (o.name_any(), o)).collect();
    let t = lock(tracker);
    let secs = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let mut by_desired: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (name, made, made_utc) in created {
        let (Some(o), Some(ready)) = (objects.get(name), t.ready_at.get(name)) else {
            continue;
        };
        let latency = ready.saturating_duration_since(*made);
        by_desired
            .entry(o.spec.desired_state.as_str().to_owned())
            .or_default()
            .push(latency.as_secs_f64());
        let ready_utc = *made_utc + chrono::Duration::from_std(latency).unwrap_or_default();
        let Some(a) = o.status.as_ref().and_then(|s| s.action.as_ref()) else {
            continue;
        };
        let desired = o.spec.desired_state.as_str();
        let mut push = |k: &str, v: f64| {
            phases.entry(k.to_owned()).or_default().push(v);
            phases.entry(format!("{k} ({desired})")).or_default().push(v);
        };
        push("queue", secs(*made_utc, a.intent_at));
        if let Some(acc) = a.accepted_at {
            push("post", secs(a.intent_at, acc));
            if let Some(done) = a.completed_at {
                push("converge", secs(acc, done));
                if secs(acc, done) >= 30.0 {
                    report.converge_over_30s += 1;
                }
                push("report", secs(done, ready_utc));
            }
        }
    }
    report.latency_by_desired = by_desired.into_iter().map(|(k, v)| (k, Spread::of(v))).collect();
    report.phases = phases.into_iter().map(|(k, v)| (k, Spread::of(v))).collect();
}
