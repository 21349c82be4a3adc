//! The fleet and schedule figures of the benchmark: one ComputeFleetAction restarting N instances at
//! `maxConcurrent` M, and one ComputePowerSchedule stop event over N instances with its default strategy, on
//! the same stack as the burst (the operator as its own process, a real API server, the simulator), with
//! admin API requests counted at the simulator and the time split from the children's action records.

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike as _, Utc};
use kube::api::{Api, ListParams, PostParams};

use super::fleet_report::{FleetBenchReport, FleetRun};
use super::objects::instance;
use super::stack::{BENCH_NAMESPACE, Stack, StackOptions};
use crate::api::{Instance, InstanceStatus, PowerAction};
use crate::controllers::fleet::children::FLEET_LABEL;
use crate::controllers::schedule::children::SCHEDULE_LABEL;
use crate::crd::fleet_action::{ComputeFleetAction, fleet_label_value};
use crate::crd::instance_action::{ActionRecord, ComputeInstanceAction};
use crate::crd::power_schedule::ComputePowerSchedule;
use crate::crd::selector::SCHEDULE_DEFAULTS;
use crate::sim::audit::{AuditEntry, SimStats};

const FLEET_ZONE: &str = "bench-fleet";
const SCHEDULE_ZONE: &str = "bench-schedule";
const FLEET_NAME: &str = "bench-restart";
const SCHEDULE_NAME: &str = "bench-stop";

#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Instances the fleet restarts (0: no fleet run).
    pub fleet_instances: usize,
    pub fleet_max_concurrent: u32,
    /// Instances the schedule's stop event covers (0: no schedule run).
    pub schedule_instances: usize,
    pub transition: Duration,
    pub stack: StackOptions,
    /// How long one run may take before it is given up.
    pub timeout: Duration,
}

/// Runs the fleet and then the schedule figure; see the module documentation.
pub async fn run_fleet_bench(opts: &FleetOptions) -> anyhow::Result<FleetBenchReport> {
    crate::api::client::install_crypto_provider();
    anyhow::ensure!(
        opts.fleet_instances > 0 || opts.schedule_instances > 0,
        "nothing to run: --fleet-instances or --schedule-instances"
    );
    anyhow::ensure!(
        opts.fleet_max_concurrent > 0,
        "--fleet-max-concurrent must be at least 1"
    );
    let mut sim_fleet = zone_instances("f", FLEET_ZONE, opts.fleet_instances);
    sim_fleet.extend(zone_instances("s", SCHEDULE_ZONE, opts.schedule_instances));
    let mut report = FleetBenchReport {
        transition_ms: opts.transition.as_millis() as u64,
        concurrency: opts.stack.concurrency,
        load_average_start: super::runs::load_average(),
        ..FleetBenchReport::default()
    };
    let stack = Stack::start(&opts.stack, sim_fleet).await?;
    report.controller_log = stack.ctl.log.display().to_string();
    let result = async {
        if opts.fleet_instances > 0 {
            eprintln!(
                "bench: fleet restarting {} instances at maxConcurrent {} ...",
                opts.fleet_instances, opts.fleet_max_concurrent
            );
            report.fleet = Some(fleet_run(&stack, opts).await?);
        }
        if opts.schedule_instances > 0 {
            report.schedule = Some(schedule_run(&stack, opts).await?);
        }
        anyhow::Ok(())
    }
    .await;
    report.controller_peak_rss_mib = stack.peak_rss_mib();
    report.load_average_end = super::runs::load_average();
    report.fill_keys();
    stack.shutdown().await;
    result.map(|()| report)
}

fn zone_instances(prefix: &str, zone: &str, count: usize) -> Vec<Instance> {
    (0..count)
        .map(|i| {
            let mut inst = instance(&format!("{prefix}-{i:04}"), InstanceStatus::Running);
            inst.zone = zone.into();
            inst
        })
        .collect()
}

async fn fleet_run(stack: &Stack, opts: &FleetOptions) -> anyhow::Result<FleetRun> {
    let fleets: Api<ComputeFleetAction> = Api::namespaced(stack.client.clone(), BENCH_NAMESPACE);
    let fleet: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": FLEET_NAME},
        "spec": {"selector": {"zone": FLEET_ZONE}, "desiredState": "restarted", "requestId": "bench-1",
            "strategy": {"maxConcurrent": opts.fleet_max_concurrent}},
    }))?;
    let (stats0, audit0) = (stack.sim.stats(), stack.sim.audit().len());
    let started = Instant::now();
    let started_at = Utc::now();
    fleets.create(&PostParams::default(), &fleet).await?;
    let (reason, max_reported) = wait_fleet(&fleets, FLEET_NAME, started + opts.timeout).await;
    let seconds = started.elapsed().as_secs_f64();
    let stats = stack.sim.stats();
    let audit: Vec<AuditEntry> = stack.sim.audit().into_iter().skip(audit0).collect();
    let records = child_records(stack, FLEET_LABEL, &fleet_label_value(FLEET_NAME)).await?;
    Ok(FleetRun::measured(
        opts.fleet_instances,
        opts.fleet_max_concurrent,
        opts.transition,
        seconds,
        started_at,
        reason,
        max_reported,
        &diff(&stats0, &stats),
        &audit,
        PowerAction::Restart,
        &records,
    ))
}

/// The schedule's event at the next whole minute at least 10 s away (UTC); measured from that minute.
async fn schedule_run(stack: &Stack, opts: &FleetOptions) -> anyhow::Result<FleetRun> {
    let now = Utc::now();
    let event = next_minute(now + chrono::Duration::seconds(10));
    let at = format!("{:02}:{:02}", event.hour(), event.minute());
    eprintln!(
        "bench: schedule stopping {} instances at {at} UTC (default strategy, maxConcurrent {}) ...",
        opts.schedule_instances, SCHEDULE_DEFAULTS.max_concurrent
    );
    let schedule: ComputePowerSchedule = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputePowerSchedule",
        "metadata": {"name": SCHEDULE_NAME},
        "spec": {"selector": {"zone": SCHEDULE_ZONE}, "timeZone": "UTC",
            "events": [{"at": at, "state": "stopped"}]},
    }))?;
    let schedules: Api<ComputePowerSchedule> = Api::namespaced(stack.client.clone(), BENCH_NAMESPACE);
    schedules.create(&PostParams::default(), &schedule).await?;
    let until_event = (event - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_event).await;
    let (stats0, audit0) = (stack.sim.stats(), stack.sim.audit().len());
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let fleets: Api<ComputeFleetAction> = Api::namespaced(stack.client.clone(), BENCH_NAMESPACE);
    let lp = ListParams::default().labels(&format!("{SCHEDULE_LABEL}={SCHEDULE_NAME}"));
    let child = loop {
        if let Some(f) = fleets.list(&lp).await?.items.into_iter().next() {
            break f;
        }
        anyhow::ensure!(Instant::now() < deadline, "the schedule created no child fleet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let child_name = kube::ResourceExt::name_any(&child);
    let (reason, max_reported) = wait_fleet(&fleets, &child_name, deadline).await;
    // From the event's minute (the sleep above ends on it, give or take the timer's slack).
    let seconds = (Utc::now() - event).num_milliseconds().max(0) as f64 / 1000.0;
    let stats = stack.sim.stats();
    let audit: Vec<AuditEntry> = stack.sim.audit().into_iter().skip(audit0).collect();
    let records = child_records(stack, FLEET_LABEL, &fleet_label_value(&child_name)).await?;
    Ok(FleetRun::measured(
        opts.schedule_instances,
        SCHEDULE_DEFAULTS.max_concurrent,
        opts.transition,
        seconds,
        event,
        reason,
        max_reported,
        &diff(&stats0, &stats),
        &audit,
        PowerAction::Stop,
        &records,
    ))
}

/// The first whole minute at or after `t`.
pub fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = t.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(t);
    if floor == t {
        t
    } else {
        floor + chrono::Duration::minutes(1)
    }
}

/// Polls the fleet until it is Ready or Stalled for its generation: its condition reason (`None` at the
/// deadline) and the most children it ever reported in progress.
async fn wait_fleet(api: &Api<ComputeFleetAction>, name: &str, deadline: Instant) -> (Option<String>, u32) {
    let mut max_reported = 0;
    loop {
        if let Ok(f) = api.get(name).await
            && let Some(s) = f.status.as_ref()
        {
            max_reported = max_reported.max(s.in_progress);
            let settled = (s.observed_generation == f.metadata.generation)
                .then(|| {
                    s.conditions
                        .iter()
                        .find(|c| c.status == "True" && (c.type_ == "Ready" || c.type_ == "Stalled"))
                })
                .flatten();
            if let Some(c) = settled {
                return (Some(format!("{}/{}", c.type_, c.reason)), max_reported);
            }
        }
        if Instant::now() > deadline {
            return (None, max_reported);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every child's action record (the current one, else the newest in its history).
async fn child_records(stack: &Stack, label: &str, value: &str) -> anyhow::Result<Vec<ActionRecord>> {
    let cias: Api<ComputeInstanceAction> = Api::namespaced(stack.client.clone(), BENCH_NAMESPACE);
    let listed = cias
        .list(&ListParams::default().labels(&format!("{label}={value}")))
        .await?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|c| {
            let s = c.status?;
            s.action.or_else(|| s.history.into_iter().last())
        })
        .collect())
}

fn diff(before: &SimStats, after: &SimStats) -> SimStats {
    let (b, a) = (&before.requests, &after.requests);
    let mut d = SimStats {
        total: after.total.saturating_sub(before.total),
        ..SimStats::default()
    };
    d.requests.list = a.list.saturating_sub(b.list);
    d.requests.get = a.get.saturating_sub(b.get);
    d.requests.stop = a.stop.saturating_sub(b.stop);
    d.requests.start = a.start.saturating_sub(b.start);
    d.requests.restart = a.restart.saturating_sub(b.restart);
    d.requests.reset = a.reset.saturating_sub(b.reset);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_the_next_whole_minute() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let rows = [
            ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z"),
            ("2026-01-01T10:00:00.5Z", "2026-01-01T10:01:00Z"),
            ("2026-01-01T10:59:59Z", "2026-01-01T11:00:00Z"),
            ("2026-01-01T23:59:30Z", "2026-01-02T00:00:00Z"),
        ];
        for (now, want) in rows {
            assert_eq!(next_minute(t(now)), t(want), "{now}");
        }
    }
}
