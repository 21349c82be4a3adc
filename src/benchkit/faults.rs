//! The fault run, top to bottom: start the stack, drive actions while injecting faults on a schedule, let
//! everything settle, then judge (duplicates, unresolved objects, OutcomeUnknown, leftover processes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::SIM_TOKEN;
use super::controller::{ControllerSpec, local_http};
use super::faults_drive::{Controllers, Tracked, drive};
use super::faults_fleet;
use super::faults_judge::{is_settled_for, judge};
use super::faults_report::{FaultCounts, FaultsReport};
use super::measure::process_present;
use super::objects::{create_namespace, instance};
use crate::api::{Instance, InstanceStatus};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::devenv::{Binaries, ControlPlane};
use crate::sim::{self, Faults, SimConfig, SimServer};

#[derive(Clone, Debug)]
pub struct FaultsOptions {
    /// Spec changes in all (object creations included).
    pub actions: usize,
    /// Objects (each on its own instance); half one-shot (restart/reset), half levels (start/stop).
    pub objects: usize,
    pub seed: u64,
    pub transition: Duration,
    /// kill -9 of the controller at random moments.
    pub kills: usize,
    pub apiserver_restart: bool,
    /// Drops after accept, 503 bursts, latency.
    pub sim_faults: bool,
    /// Two controllers with leader election; a graceful and a hard leader change.
    pub leader_change: bool,
    /// How long each simulator fault phase lasts.
    pub phase: Duration,
    pub operator_binary: PathBuf,
    /// How long objects may take to settle after the last action.
    pub settle_deadline: Duration,
    pub log_level: String,
    /// A ComputeFleetAction restarting this many more instances, rolling out through every fault (0: none).
    pub fleet_instances: usize,
    pub fleet_max_concurrent: u32,
}

impl FaultsOptions {
    pub fn new(actions: usize, operator_binary: PathBuf) -> Self {
        Self {
            actions,
            objects: (actions / 8).clamp(4, 32),
            seed: 1,
            transition: Duration::from_millis(300),
            kills: (actions / 15).clamp(3, 20),
            apiserver_restart: true,
            sim_faults: true,
            leader_change: true,
            phase: Duration::from_secs(4),
            operator_binary,
            settle_deadline: Duration::from_secs(120),
            log_level: "info".into(),
            fleet_instances: 0,
            fleet_max_concurrent: 2,
        }
    }
}

/// A fault the schedule injects.
#[derive(Clone, Copy, Debug)]
enum FaultEvent {
    Kill,
    Drops,
    ErrorBursts,
    Latency,
    ApiServerRestart,
    LeaderElection,
    GracefulLeaderChange,
    HardLeaderChange,
}

/// Runs the fault scenario; see the module documentation.
pub async fn run_faults(opts: &FaultsOptions) -> anyhow::Result<FaultsReport> {
    crate::api::client::install_crypto_provider();
    anyhow::ensure!(opts.actions > 0, "--actions must be at least 1");
    let started = Instant::now();
    let http = local_http()?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let logs = tempfile::Builder::new()
        .prefix("compute-operator-faults-")
        .tempdir()?
        .keep();
    let binaries = Binaries::locate()?;
    let mut cp = ControlPlane::start(&binaries).await?;
    let mut cp_pids: Vec<(u32, &'static str)> = cp.pids().into_iter().zip(["etcd", "kube-apiserver"]).collect();
    let client = cp.client().await?;
    let ns = "faults";
    create_namespace(&client, ns).await?;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), ns);

    let objects = opts.objects.clamp(1, opts.actions);
    let mut fleet: Vec<Instance> = (0..objects)
        .map(|i| instance(&format!("flt-{i:03}"), InstanceStatus::Running))
        .collect();
    fleet.extend(faults_fleet::instances(opts.fleet_instances));
    let sim = Arc::new(
        sim::start(SimConfig {
            instances: 0,
            fleet: Some(fleet),
            seed: opts.seed,
            transition: opts.transition,
            ..SimConfig::default()
        })
        .await?,
    );
    let spec = ControllerSpec {
        binary: opts.operator_binary.clone(),
        kubeconfig: cp.kubeconfig.clone(),
        api_url: sim.base_url().to_owned(),
        token: SIM_TOKEN.into(),
        concurrency: 8,
        api_rate: 200.0,
        api_max_in_flight: 16,
        api_timeout: "2s".into(),
        resync: "30s".into(),
        restart_settle: "3s".into(),
        namespaces: vec![ns.into()],
        lease_namespace: None,
        lease_duration: "2s".into(),
        log_level: opts.log_level.clone(),
        // Single-tenant: no access policies in this run.
        policy_mode: "off".into(),
        log_dir: logs.clone(),
    };
    let mut ctls = Controllers {
        spec,
        procs: Vec::new(),
        spawned: 0,
        pids: Vec::new(),
        kills: Vec::new(),
        unexpected_exits: 0,
        lease_loss_exits: 0,
        startup_exits: Vec::new(),
    };
    ctls.spawn()?;
    ctls.procs[0].wait_ready(&http, Duration::from_secs(60)).await?;

    // The schedule: each fault fires once the driver has issued this fraction of the actions.
    let mut schedule: Vec<(f64, FaultEvent)> = Vec::new();
    for _ in 0..opts.kills {
        schedule.push((rng.random_range(0.05..0.95), FaultEvent::Kill));
    }
    if opts.sim_faults {
        schedule.push((0.2, FaultEvent::Drops));
        schedule.push((0.35, FaultEvent::ErrorBursts));
        schedule.push((0.5, FaultEvent::Latency));
    }
    if opts.apiserver_restart {
        schedule.push((0.62, FaultEvent::ApiServerRestart));
    }
    if opts.leader_change {
        schedule.push((0.72, FaultEvent::LeaderElection));
        schedule.push((0.8, FaultEvent::GracefulLeaderChange));
        schedule.push((0.9, FaultEvent::HardLeaderChange));
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));

    let tracked: Vec<Tracked> = (0..objects)
        .map(|i| Tracked {
            name: format!("obj-{i:03}"),
            instance: format!("flt-{i:03}"),
            one_shot: i % 2 == 0,
            issues: Vec::new(),
        })
        .collect();
    if opts.fleet_instances > 0 {
        faults_fleet::create(&client, ns, opts.fleet_max_concurrent).await?;
    }
    let progress = Arc::new(AtomicUsize::new(0));
    let driver = tokio::spawn(drive(api.clone(), tracked, opts.actions, progress.clone(), opts.seed));

    let mut counts = FaultCounts::default();
    let mut leader_change = if opts.leader_change {
        "pending".to_owned()
    } else {
        "skipped".to_owned()
    };
    let transition_ms = opts.transition.as_millis() as u64;
    let mut leader_mode = false;
    let mut leader_problems: Vec<String> = Vec::new();
    for (threshold, event) in schedule {
        // Wait for the moment, keeping the controllers alive.
        while (progress.load(Ordering::SeqCst) as f64) < threshold * opts.actions as f64 && !driver.is_finished() {
            ctls.reap()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ctls.reap()?;
        match event {
            FaultEvent::Kill => {
                // A random moment inside the action that was just issued.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..transition_ms + 300))).await;
                let pause = Duration::from_millis(rng.random_range(0..1000));
                ctls.kill_leader(&http, pause).await?;
                counts.controller_kills += 1;
                eprintln!("faults: killed the controller (kill -9)");
            }
            FaultEvent::Drops => {
                let drops = Faults {
                    drop_after_accept_rate: 0.3,
                    ..Faults::default()
                };
                fault_phase(&sim, &mut ctls, drops, opts.phase).await?;
                counts.drop_phases += 1;
                eprintln!("faults: dropped connections after accept for {:?}", opts.phase);
            }
            FaultEvent::ErrorBursts => {
                for _ in 0..2 {
                    let burst = Faults {
                        error_rate: 0.6,
                        error_status: 503,
                        retry_after_seconds: Some(1),
                        ..Faults::default()
                    };
                    fault_phase(&sim, &mut ctls, burst, opts.phase / 2).await?;
                    sleep_reaping(&mut ctls, Duration::from_millis(500)).await?;
                    counts.error_bursts += 1;
                }
                eprintln!("faults: two 503 bursts");
            }
            FaultEvent::Latency => {
                let slow = Faults {
                    latency_ms: 400,
                    ..Faults::default()
                };
                fault_phase(&sim, &mut ctls, slow, opts.phase).await?;
                counts.latency_phases += 1;
                eprintln!("faults: 400 ms latency for {:?}", opts.phase);
            }
            FaultEvent::ApiServerRestart => {
                eprintln!("faults: restarting kube-apiserver ...");
                cp.restart_apiserver().await?;
                for pid in cp.pids() {
                    if !cp_pids.iter().any(|(p, _)| *p == pid) {
                        cp_pids.push((pid, "kube-apiserver"));
                    }
                }
                counts.apiserver_restarts += 1;
            }
            FaultEvent::LeaderElection => {
                // Two replicas with leader election replace the single controller (stopped first, so that
                // never two act without a lease).
                ctls.stop_all();
                ctls.spec.lease_namespace = Some(ns.into());
                ctls.spawn()?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Some(status) = ctls.procs[0].exited() {
                    let tail = ctls.procs[0].log_tail(20);
                    ctls.procs.clear();
                    ctls.spec.lease_namespace = None;
                    leader_change = if tail.contains("not available") {
                        "unavailable".into()
                    } else {
                        format!("failed: exited ({status}): {}", tail.lines().last().unwrap_or(""))
                    };
                    eprintln!("faults: leader election {leader_change}; continuing with one controller");
                    ctls.spawn()?;
                    continue;
                }
                ctls.spawn()?;
                match ctls.wait_leader(&http, Duration::from_secs(30)).await {
                    Some(leader) => {
                        leader_mode = true;
                        eprintln!("faults: two replicas with leader election; {leader} leads");
                    }
                    None => {
                        leader_problems.push("no replica became leader within 30s".into());
                    }
                }
            }
            FaultEvent::GracefulLeaderChange | FaultEvent::HardLeaderChange if leader_mode => {
                // A kill may just have left the lease vacant: wait for the current leader first.
                ctls.wait_leader(&http, Duration::from_secs(30)).await;
                let Some(i) = ctls.leader_index(&http).await else {
                    leader_problems.push(format!("no leader before {event:?}"));
                    continue;
                };
                let old = ctls.procs[i].name.clone();
                if matches!(event, FaultEvent::HardLeaderChange) {
                    ctls.procs[i].kill_now();
                    ctls.kills.push(Utc::now());
                    counts.controller_kills += 1;
                } else {
                    ctls.procs[i].stop(Duration::from_secs(10));
                }
                ctls.procs.remove(i);
                ctls.spawn()?;
                match ctls.wait_leader(&http, Duration::from_secs(30)).await {
                    Some(new) if new != old => {
                        counts.leader_changes += 1;
                        eprintln!("faults: leader change {old} -> {new} ({event:?})");
                    }
                    _ => leader_problems.push(format!("no new leader within 30s after {event:?}")),
                }
            }
            FaultEvent::GracefulLeaderChange | FaultEvent::HardLeaderChange => {}
        }
    }
    if leader_change == "pending" {
        leader_change = if !leader_problems.is_empty() {
            format!("failed: {}", leader_problems.join("; "))
        } else if counts.leader_changes == 0 {
            "not-observed".into()
        } else {
            "ok".into()
        };
    }
    // Every action issued.
    while !driver.is_finished() {
        ctls.reap()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tracked = driver.await.context("the driver task failed")?;
    sim.set_faults(Faults::default());

    // Settle: every object Ready or Stalled for its last generation.
    let deadline = Instant::now() + opts.settle_deadline;
    let mut last: HashMap<String, ComputeInstanceAction> = HashMap::new();
    loop {
        ctls.reap()?;
        if let Ok(list) = api.list(&ListParams::default()).await {
            last = list.items.into_iter().map(|o| (o.name_any(), o)).collect();
            let open = tracked.iter().filter(|t| !is_settled_for(&last, t)).count();
            if open == 0 {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The fleet finishes too (its children are objects of the namespace, settled above).
    let fleet_outcome = if opts.fleet_instances > 0 {
        Some(faults_fleet::settle(&client, ns, deadline.max(Instant::now() + Duration::from_secs(60))).await)
    } else {
        None
    };

    let audit = sim.audit();
    let stats = sim.stats();
    counts.dropped_connections = stats.dropped;
    counts.injected_errors = stats.responses_with(503);
    counts.total = counts.controller_kills
        + counts.apiserver_restarts
        + counts.drop_phases
        + counts.error_bursts
        + counts.latency_phases
        + counts.leader_changes;
    let mut report = FaultsReport {
        actions: tracked.iter().map(|t| t.issues.len()).sum(),
        objects,
        seed: opts.seed,
        leader_change,
        unexpected_controller_exits: ctls.unexpected_exits,
        controller_startup_exits: ctls.startup_exits.clone(),
        lease_loss_exits: ctls.lease_loss_exits,
        logs: logs.display().to_string(),
        ..FaultsReport::default()
    };

    judge(&mut report, &tracked, &audit, &last, &logs, &ctls.kills);
    report.fleet = fleet_outcome.map(|reason| faults_fleet::judge(opts.fleet_instances, &audit, reason));
    report.faults_injected = counts;

    // Tear down, then nothing may be left.
    ctls.stop_all();
    report.processes_started = ctls.pids.len() + cp_pids.len();
    drop(api);
    drop(client);
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
    cp.stop();
    drop(cp);
    let mut leftover: Vec<u32> = ctls
        .pids
        .iter()
        .filter(|p| process_present(**p, "compute-operator"))
        .copied()
        .collect();
    leftover.extend(
        cp_pids
            .iter()
            .filter(|(p, name)| process_present(*p, name))
            .map(|(p, _)| *p),
    );
    report.leftover_processes = leftover;
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.passed = report.duplicates == 0
        && report.unresolved == 0
        && report.leftover_processes.is_empty()
        && report.fleet.as_ref().is_none_or(|f| f.duplicates == 0 && f.settled);
    if report.passed {
        let _ = std::fs::remove_dir_all(&logs);
    }
    Ok(report)
}

/// Injects `faults` for `d` (watching the controllers meanwhile), then clears them.
async fn fault_phase(sim: &SimServer, ctls: &mut Controllers, faults: Faults, d: Duration) -> anyhow::Result<()> {
    sim.set_faults(faults);
    let result = sleep_reaping(ctls, d).await;
    sim.set_faults(Faults::default());
    result
}

async fn sleep_reaping(ctls: &mut Controllers, d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        ctls.reap()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
