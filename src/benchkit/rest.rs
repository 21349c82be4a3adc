//! The objects at rest: many objects that need nothing, what holding them costs over at least one whole resync
//! interval (admin API requests, CPU, memory, writes), and what a policy change over all of them costs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::lock;
use super::objects::{BENCH_ZONE, create_all, wait_settled};
use super::report::BenchReport;
use super::runs::BenchOptions;
use super::stack::{BENCH_POLICY, Stack};
use crate::crd::access_policy::ComputeAccessPolicy;
use crate::crd::instance_action::ComputeInstanceAction;
use crate::sim::SimStats;

/// Admin API requests by endpoint between two readings of the simulator's counters.
fn requests_between(before: &SimStats, after: &SimStats) -> BTreeMap<String, u64> {
    let (b, a) = (&before.requests, &after.requests);
    [
        ("list", a.list - b.list),
        ("get", a.get - b.get),
        ("stop", a.stop - b.stop),
        ("start", a.start - b.start),
        ("restart", a.restart - b.restart),
        ("reset", a.reset - b.reset),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_owned(), n))
    .collect()
}

/// Creates `rest` (already in their desired state), waits until they are Ready and the controller stopped
/// writing, then measures for `window`. Returns the rest objects the policy change will deny (those on
/// instances outside [`BENCH_ZONE`]).
pub(super) async fn measure_rest(
    stack: &Stack,
    opts: &BenchOptions,
    rest: Vec<ComputeInstanceAction>,
    window: Duration,
    report: &mut BenchReport,
) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = rest.iter().map(|o| o.name_any()).collect();
    let to_deny: Vec<String> = names.iter().step_by(100).cloned().collect();
    let started = Instant::now();
    create_all(&stack.api, rest, opts.create_concurrency).await?;
    if !wait_settled(&stack.tracker, &names, opts.ready_timeout.max(Duration::from_secs(300))).await {
        report.notes.push("not every object at rest settled".into());
    }
    report.rest_ready_s = Some(started.elapsed().as_secs_f64());
    // Settled means the controller is done too: no status write for 5 s.
    stack.wait_quiet(Duration::from_secs(5), Duration::from_secs(120)).await;

    let total = stack.api.list_metadata(&ListParams::default()).await?.items.len();
    let (cpu0, stats0) = (stack.cpu_s(), stack.sim.stats());
    let writes0 = stack.metric("compute_operator_status_writes_total").await;
    let reconciles0 = stack.metric("compute_operator_reconciles_total").await;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, stats1) = (stack.cpu_s(), stack.sim.stats());
    let requests = stats1.total.saturating_sub(stats0.total);
    report.rest_total_objects = Some(total);
    report.rest_seconds = Some(secs);
    report.rest_idle_cpu_fraction = Some((cpu1 - cpu0) / secs);
    report.rest_rss_mib = Some(stack.rss_mib());
    report.rest_rss_anon_mib = Some(stack.rss_part_mib("RssAnon"));
    report.rest_rss_file_mib = Some(stack.rss_part_mib("RssFile"));
    report.rest_api_requests = Some(requests);
    report.rest_api_requests_by_endpoint = requests_between(&stats0, &stats1);
    report.rest_api_requests_per_object_per_resync =
        Some(requests as f64 / total.max(1) as f64 / (secs / report.resync_interval_s));
    report.rest_status_writes =
        Some((stack.metric("compute_operator_status_writes_total").await - writes0).max(0.0) as u64);
    report.rest_reconciles =
        Some((stack.metric("compute_operator_reconciles_total").await - reconciles0).max(0.0) as u64);
    let instances = stack.sim.instances().len();
    if instances != total {
        report.notes.push(format!(
            "at rest the simulator held {instances} instances for {total} objects"
        ));
    }
    Ok(to_deny)
}

/// Narrows the allowing policy to instances in [`BENCH_ZONE`]: every object must be re-evaluated, and the
/// ones in `to_deny` (every 100th rest object, spread over the whole set) become Stalled (PolicyDenied).
/// Measures until the last of them was seen so, and the admin API requests it cost.
pub(super) async fn policy_change(stack: &Stack, to_deny: &[String], report: &mut BenchReport) -> anyhow::Result<()> {
    let policies: Api<ComputeAccessPolicy> = Api::all(stack.client.clone());
    let total = report.rest_total_objects.unwrap_or(0).max(1) as f64;
    let rest_rate = report.rest_api_requests.unwrap_or(0) as f64 / report.rest_seconds.unwrap_or(f64::NAN);
    let stats0 = stack.sim.stats();
    let reconciles0 = stack.metric("compute_operator_reconciles_total").await;
    let writes0 = stack.metric("compute_operator_status_writes_total").await;
    let t0 = Instant::now();
    let patch = serde_json::json!({ "spec": { "instances": { "zones": [BENCH_ZONE] } } });
    policies
        .patch(BENCH_POLICY, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let deadline = t0 + Duration::from_secs(300);
    let all_denied = loop {
        let denied = {
            let t = lock(&stack.tracker);
            to_deny
                .iter()
                .filter(|n| t.stalled.get(*n).is_some_and(|r| r == "PolicyDenied"))
                .count()
        };
        if denied == to_deny.len() {
            break true;
        }
        if Instant::now() > deadline {
            report.notes.push(format!(
                "policy change: only {denied} of {} objects were denied after 300 s",
                to_deny.len()
            ));
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = if all_denied {
        let t = lock(&stack.tracker);
        to_deny
            .iter()
            .filter_map(|n| t.stalled_at.get(n))
            .max()
            .map_or(0.0, |at| at.saturating_duration_since(t0).as_secs_f64())
    } else {
        t0.elapsed().as_secs_f64()
    };
    // Stragglers: requests the change still causes right after the last denial.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats1 = stack.sim.stats();
    let requests = stats1.total.saturating_sub(stats0.total);
    report.policy_change_api_requests_by_endpoint = requests_between(&stats0, &stats1);
    report.policy_change_s = Some(done);
    report.policy_change_denied = Some(to_deny.len());
    report.policy_change_api_requests = Some(requests);
    report.policy_change_api_requests_per_100_objects = Some(requests as f64 * 100.0 / total);
    report.policy_change_background_api_requests = Some(rest_rate * t0.elapsed().as_secs_f64());
    report.policy_change_reconciles =
        Some((stack.metric("compute_operator_reconciles_total").await - reconciles0).max(0.0) as u64);
    report.policy_change_status_writes =
        Some((stack.metric("compute_operator_status_writes_total").await - writes0).max(0.0) as u64);
    Ok(())
}
