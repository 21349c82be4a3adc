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
use crate::crd::instance_action::ComputeInstanceAction;

/// The measured numbers (the JSON of `bench --json`). README "Benchmark" documents every key.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub objects: usize,
    pub desired: String,
    pub transition_ms: u64,
    pub concurrency: u16,
    pub policy_mode: String,
    pub resync_interval_s: f64,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started and ended: the machine is shared.
    pub load_average_start: String,
    pub load_average_end: String,

    // The burst.
    pub completed: usize,
    pub stalled: usize,
    pub stalled_by_reason: BTreeMap<String, usize>,
    /// Completed actions per second, from the first create to the last Ready.
    pub throughput_per_s: f64,
    /// The strict limit: the protocol minimum (creates + 2/3 status writes) by a minimal client, actions/s.
    pub limit_throughput_per_s: f64,
    pub limit_status_writes: u64,
    pub limit_s: f64,
    /// throughput / strict limit.
    pub ratio: f64,
    /// The older yardstick: the controller's own number of status writes by a minimal client (no creates).
    pub status_write_limit_throughput_per_s: f64,
    pub status_write_limit_writes_per_s: f64,
    pub ratio_vs_status_write_limit: f64,
    /// The same plus as many Event writes as the controller made.
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
    /// The protocol minimum for this mix (2 per level object, 3 per one-shot), per action.
    pub status_writes_minimum_per_action: f64,
    pub status_writes: u64,
    /// Status writes of the burst that answered 409, by cause (`compute_operator_status_conflicts_total`).
    pub status_conflicts_by_cause: BTreeMap<String, u64>,
    pub status_conflicts_by_write: BTreeMap<String, u64>,
    /// Event writes (creates and series updates) to kube-apiserver per action.
    pub events_per_action: f64,
    pub reconciles_per_action: f64,
    /// Controller CPU (user + system) from its start until the burst was Ready.
    pub controller_cpu_s: f64,
    /// CPU during the burst only (from the first create to the last Ready).
    pub controller_load_cpu_s: f64,
    pub controller_cpu_ms_per_action: f64,
    /// VmHWM when the burst was Ready.
    pub burst_peak_rss_mib: f64,
    /// VmHWM at the end of the run (burst, open loop, rest and policy change).
    pub controller_peak_rss_mib: f64,
    pub idle_seconds: f64,
    /// CPU seconds per second (fraction of one core) with the burst settled.
    pub idle_cpu_fraction: f64,
    pub idle_status_writes: u64,
    pub idle_api_requests: u64,
    /// kube-apiserver requests during the burst (first create to last Ready), by verb and resource, the
    /// creates of the objects themselves included.
    pub apiserver_requests_during_load: BTreeMap<String, u64>,
    /// Writes (POST/PUT/PATCH/DELETE) to kube-apiserver per action, the object's own create excluded.
    pub apiserver_writes_per_action: f64,
    /// kube-apiserver requests during the strict limit run.
    pub apiserver_requests_during_limit: BTreeMap<String, u64>,
    /// Mean reconcile duration, and the share of the concurrency slots busy during the burst.
    pub reconcile_mean_s: f64,
    pub reconcile_slots_busy: f64,
    /// Mean admin API request latency seen by the controller.
    pub admin_api_mean_latency_s: f64,
    pub latency_by_desired: BTreeMap<String, Spread>,
    /// Where the time between creation and Ready goes, from the action records: `queue` (created -> intent
    /// written), `post` (intent -> 202 recorded), `converge` (202 -> completion seen), `report` (completion ->
    /// Ready seen by the watch).
    pub phases: BTreeMap<String, Spread>,
    /// Objects whose completion was seen only 30 s or more after the 202 (e.g. at a resync).
    pub converge_over_30s: usize,

    // The open loop.
    pub open_loop_rate_per_s: Option<f64>,
    pub open_loop_seconds: Option<f64>,
    pub open_loop_objects: Option<usize>,
    pub open_loop_completed: Option<usize>,
    pub open_loop_p50_s: Option<f64>,
    pub open_loop_p95_s: Option<f64>,
    pub open_loop_p99_s: Option<f64>,
    pub open_loop_max_s: Option<f64>,
    pub open_loop_by_desired: BTreeMap<String, Spread>,
    pub open_loop_api_requests_per_action: Option<f64>,
    pub open_loop_status_writes_per_action: Option<f64>,

    // The rest run.
    pub rest_objects: usize,
    /// Every object the controller holds at rest (burst, open loop and rest objects); the simulator holds as
    /// many instances.
    pub rest_total_objects: Option<usize>,
    pub rest_ready_s: Option<f64>,
    /// How long the rest was measured (at least one resync interval).
    pub rest_seconds: Option<f64>,
    pub rest_rss_mib: Option<f64>,
    /// `/proc` RssAnon (the allocator's pages) and RssFile (code and mapped files) at the same moment.
    pub rest_rss_anon_mib: Option<f64>,
    pub rest_rss_file_mib: Option<f64>,
    pub rest_idle_cpu_fraction: Option<f64>,
    pub rest_api_requests: Option<u64>,
    pub rest_api_requests_by_endpoint: BTreeMap<String, u64>,
    pub rest_api_requests_per_object_per_resync: Option<f64>,
    pub rest_status_writes: Option<u64>,
    pub rest_reconciles: Option<u64>,

    // The policy change.
    /// From the policy update until the last object it denies was seen Stalled (PolicyDenied).
    pub policy_change_s: Option<f64>,
    /// Admin API requests from the update until 2 s after the last denial.
    pub policy_change_api_requests: Option<u64>,
    pub policy_change_api_requests_per_100_objects: Option<f64>,
    pub policy_change_api_requests_by_endpoint: BTreeMap<String, u64>,
    /// What the rest traffic alone would have made in the same time (included above).
    pub policy_change_background_api_requests: Option<f64>,
    pub policy_change_denied: Option<usize>,
    pub policy_change_reconciles: Option<u64>,
    pub policy_change_status_writes: Option<u64>,

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

/// 409s on status writes this controller could have avoided: deciding from an object older than its own write,
/// a status someone else wrote (there is no one else in a bench), or a cause not known.
pub fn avoidable_conflicts(by_cause: &BTreeMap<String, u64>) -> u64 {
    by_cause
        .iter()
        .filter(|(cause, _)| !matches!(cause.as_str(), "spec_changed" | "metadata_changed" | "deleted"))
        .map(|(_, n)| n)
        .sum()
}

pub(super) fn check(ok: bool) -> &'static str {
    if ok { "hit" } else { "MISS" }
}

/// `12.345` or `-` when the run did not measure it.
pub(super) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl BenchReport {
    /// The figures as a table with the targets of issue 12 next to them, then the details.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let transition_s = self.transition_ms as f64 / 1000.0;
        let target = |measured: Option<f64>, ok: fn(f64) -> bool, text: &str| match measured {
            Some(v) if v.is_finite() => format!("{} ({text})", check(ok(v))),
            _ => format!("- ({text})"),
        };
        let mut rows: Vec<(String, String, String)> = vec![
            (
                "objects (burst)".into(),
                format!("{} ({}), policy {}", self.objects, self.desired, self.policy_mode),
                String::new(),
            ),
            (
                "completed / stalled".into(),
                format!("{} / {}", self.completed, self.stalled),
                String::new(),
            ),
            ("create all (s)".into(), format!("{:.2}", self.create_s), String::new()),
            (
                "time to all Ready (s)".into(),
                format!("{:.2}", self.time_to_all_ready_s),
                String::new(),
            ),
            (
                "throughput (actions/s)".into(),
                format!("{:.1}", self.throughput_per_s),
                String::new(),
            ),
            (
                "strict limit (actions/s)".into(),
                format!(
                    "{:.1} ({} status writes + {} creates in {:.2} s)",
                    self.limit_throughput_per_s, self.limit_status_writes, self.objects, self.limit_s
                ),
                String::new(),
            ),
            (
                "ratio (vs strict limit)".into(),
                format!("{:.2}", self.ratio),
                target(Some(self.ratio), |v| v >= 0.9, ">= 0.90 at 1,000 mixed"),
            ),
            (
                "ratio vs status-write limit".into(),
                format!(
                    "{:.2} (limit {:.1} actions/s, {:.0} writes/s)",
                    self.ratio_vs_status_write_limit,
                    self.status_write_limit_throughput_per_s,
                    self.status_write_limit_writes_per_s
                ),
                String::new(),
            ),
            (
                "ratio vs limit incl. Events".into(),
                format!(
                    "{:.2} (limit {:.1} actions/s)",
                    self.ratio_with_events, self.limit_with_events_throughput_per_s
                ),
                String::new(),
            ),
            (
                "status writes/action".into(),
                format!("{:.2}", self.status_writes_per_action),
                target(
                    Some(self.status_writes_per_action - self.status_writes_minimum_per_action),
                    |v| v <= 1e-9,
                    &format!(
                        "<= {:.2}: 2 per level, 3 per one-shot",
                        self.status_writes_minimum_per_action
                    ),
                ),
            ),
            (
                "status 409s by cause".into(),
                format!("{:?}", self.status_conflicts_by_cause),
                target(
                    Some(avoidable_conflicts(&self.status_conflicts_by_cause) as f64),
                    |v| v == 0.0,
                    "none avoidable: only spec_changed, metadata_changed, deleted",
                ),
            ),
            (
                "events/action".into(),
                format!("{:.2}", self.events_per_action),
                target(Some(self.events_per_action), |v| v <= 2.0, "<= 2"),
            ),
            (
                "latency p50 / p99 / max (s)".into(),
                format!(
                    "{:.3} / {:.3} / {:.3}",
                    self.latency_p50_s, self.latency_p99_s, self.latency_max_s
                ),
                String::new(),
            ),
            (
                "admin API requests/action".into(),
                format!("{:.2}", self.api_requests_per_action),
                String::new(),
            ),
            (
                "reconciles/action".into(),
                format!("{:.2}", self.reconciles_per_action),
                String::new(),
            ),
            (
                "kube-apiserver writes/action".into(),
                format!(
                    "{:.2} (of which Events {:.2})",
                    self.apiserver_writes_per_action, self.events_per_action
                ),
                String::new(),
            ),
            (
                "reconcile mean (s) / slots busy".into(),
                format!(
                    "{:.3} / {:.0}%",
                    self.reconcile_mean_s,
                    self.reconcile_slots_busy * 100.0
                ),
                String::new(),
            ),
            (
                "controller CPU under load".into(),
                format!(
                    "{:.2} s ({:.2} ms/action)",
                    self.controller_load_cpu_s, self.controller_cpu_ms_per_action
                ),
                String::new(),
            ),
            (
                "idle CPU after the burst".into(),
                format!(
                    "{:.4} over {:.0}s ({} writes, {} API requests)",
                    self.idle_cpu_fraction, self.idle_seconds, self.idle_status_writes, self.idle_api_requests
                ),
                String::new(),
            ),
        ];
        if self.open_loop_objects.is_some() {
            rows.push((
                "open loop rate (objects/s)".into(),
                format!(
                    "{} for {} s ({} objects, {} Ready)",
                    opt(self.open_loop_rate_per_s, 1),
                    opt(self.open_loop_seconds, 0),
                    self.open_loop_objects.unwrap_or(0),
                    self.open_loop_completed.unwrap_or(0)
                ),
                String::new(),
            ));
            rows.push((
                "open loop p50 / p99 / max (s)".into(),
                format!(
                    "{} / {} / {}",
                    opt(self.open_loop_p50_s, 3),
                    opt(self.open_loop_p99_s, 3),
                    opt(self.open_loop_max_s, 3)
                ),
                format!(
                    "{} (p99 <= {:.1}: transition + 1 s)",
                    check(self.open_loop_p99_s.is_some_and(|p| p <= transition_s + 1.0)),
                    transition_s + 1.0
                ),
            ));
        }
        if self.rest_total_objects.is_some() {
            rows.push((
                "objects at rest".into(),
                format!(
                    "{} rest + others = {} (Ready after {} s)",
                    self.rest_objects,
                    self.rest_total_objects.unwrap_or(0),
                    opt(self.rest_ready_s, 1)
                ),
                String::new(),
            ));
            rows.push((
                "rest API requests/object/resync".into(),
                format!(
                    "{} ({} requests in {} s, resync {:.0} s)",
                    opt(self.rest_api_requests_per_object_per_resync, 4),
                    self.rest_api_requests.unwrap_or(0),
                    opt(self.rest_seconds, 0),
                    self.resync_interval_s
                ),
                target(self.rest_api_requests_per_object_per_resync, |v| v <= 0.05, "<= 0.05"),
            ));
            rows.push((
                "rest idle CPU (fraction of a core)".into(),
                format!(
                    "{} ({} status writes)",
                    opt(self.rest_idle_cpu_fraction, 4),
                    self.rest_status_writes.unwrap_or(0)
                ),
                target(self.rest_idle_cpu_fraction, |v| v < 0.01, "< 0.01"),
            ));
            rows.push((
                "rest RSS (MiB)".into(),
                format!(
                    "{} (allocator/anonymous {}, code and files {})",
                    opt(self.rest_rss_mib, 1),
                    opt(self.rest_rss_anon_mib, 1),
                    opt(self.rest_rss_file_mib, 1)
                ),
                target(self.rest_rss_mib, |v| v <= 40.0, "<= 40"),
            ));
        }
        rows.push((
            "controller peak RSS (MiB)".into(),
            format!(
                "{:.1} (burst {:.1})",
                self.controller_peak_rss_mib, self.burst_peak_rss_mib
            ),
            target(Some(self.controller_peak_rss_mib), |v| v <= 56.0, "<= 56"),
        ));
        if self.policy_change_denied.is_some() {
            rows.push((
                "policy change (s)".into(),
                format!(
                    "{} ({} objects denied, {} reconciles, {} status writes)",
                    opt(self.policy_change_s, 2),
                    self.policy_change_denied.unwrap_or(0),
                    self.policy_change_reconciles.unwrap_or(0),
                    self.policy_change_status_writes.unwrap_or(0)
                ),
                target(self.policy_change_s, |v| v <= 10.0, "<= 10"),
            ));
            rows.push((
                "policy change API requests".into(),
                format!(
                    "{} ({} per 100 objects; rest traffic meanwhile ~{})",
                    self.policy_change_api_requests.unwrap_or(0),
                    opt(self.policy_change_api_requests_per_100_objects, 2),
                    opt(self.policy_change_background_api_requests, 0)
                ),
                target(
                    self.policy_change_api_requests_per_100_objects,
                    |v| v <= 2.0,
                    "<= 2 per 100",
                ),
            ));
        }
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let v = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{:w$}  {:v$}  target", "metric", "value");
        let _ = writeln!(out, "{}", "-".repeat(w + v + 30));
        for (name, value, target) in rows {
            let _ = writeln!(out, "{name:w$}  {value:v$}  {target}");
        }
        let _ = writeln!(
            out,
            "load average (1/5/15 min): {} at start, {} at end",
            self.load_average_start, self.load_average_end
        );
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if !self.stalled_by_reason.is_empty() {
            let _ = writeln!(out, "stalled by reason: {:?}", self.stalled_by_reason);
        }
        let _ = writeln!(out, "admin API requests by endpoint (burst): {:?}", self.api_requests);
        if !self.rest_api_requests_by_endpoint.is_empty() {
            let _ = writeln!(
                out,
                "admin API requests by endpoint (rest): {:?}",
                self.rest_api_requests_by_endpoint
            );
        }
        if !self.policy_change_api_requests_by_endpoint.is_empty() {
            let _ = writeln!(
                out,
                "admin API requests by endpoint (policy change): {:?}",
                self.policy_change_api_requests_by_endpoint
            );
        }
        let _ = writeln!(
            out,
            "kube-apiserver requests during the burst: {:?}",
            self.apiserver_requests_during_load
        );
        let _ = writeln!(
            out,
            "kube-apiserver requests during the strict limit run: {:?}",
            self.apiserver_requests_during_limit
        );
        let _ = writeln!(out, "latency by desired state (s):");
        for (k, v) in &self.latency_by_desired {
            let _ = writeln!(
                out,
                "  {k:10} n={:5} p50={:.3} p95={:.3} p99={:.3} max={:.3}",
                v.n, v.p50, v.p95, v.p99, v.max
            );
        }
        if !self.open_loop_by_desired.is_empty() {
            let _ = writeln!(out, "open-loop latency by desired state (s):");
            for (k, v) in &self.open_loop_by_desired {
                let _ = writeln!(
                    out,
                    "  {k:10} n={:5} p50={:.3} p95={:.3} p99={:.3} max={:.3}",
                    v.n, v.p50, v.p95, v.p99, v.max
                );
            }
        }
        let _ = writeln!(
            out,
            "where the time goes (s): queue = created->intent, post = intent->202, converge = 202->done, report = done->Ready seen"
        );
        let _ = writeln!(
            out,
            "  completions seen 30 s or more after the 202: {}",
            self.converge_over_30s
        );
        for (k, v) in &self.phases {
            let _ = writeln!(
                out,
                "  {k:10} n={:5} p50={:.3} p95={:.3} p99={:.3} max={:.3}",
                v.n, v.p50, v.p95, v.p99, v.max
            );
        }
        let _ = writeln!(out, "controller log: {}", self.controller_log);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_targets_and_what_was_not_measured() {
        let r = BenchReport {
            ratio: 0.9,
            status_writes_per_action: 2.5,
            status_writes_minimum_per_action: 2.5,
            events_per_action: 3.0,
            rest_total_objects: Some(100),
            rest_rss_mib: Some(50.0),
            ..BenchReport::default()
        };
        let t = r.table();
        assert!(t.contains("hit (>= 0.90"), "{t}");
        assert!(t.contains("hit (none avoidable"), "{t}");
        assert!(t.contains("hit (<= 2.50"), "{t}");
        assert!(t.contains("MISS (<= 2)"), "{t}");
        assert!(t.contains("MISS (<= 40)"), "{t}");
        assert!(t.contains("- (< 0.01)"), "{t}");
        assert!(!t.contains("open loop"), "no open loop was run:\n{t}");
    }
}
