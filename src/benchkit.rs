//! Proof under load and faults: the harness behind the `bench` and `faults` binaries and their tests.
//!
//! Both run the operator the way it runs in production, as its own `compute-operator run` process, against
//! a real local control plane (kube-apiserver + etcd) and the admin API simulator.
//! - [`run_bench`] creates many objects, measures throughput, creation->Ready latency, admin API requests and
//!   status writes per action, the controller's CPU and memory (from `/proc`), idle CPU, RSS at rest, and
//!   compares the throughput with a minimal client doing the same status writes (the "limit").
//! - [`run_faults`] runs restart/reset/start/stop actions while killing the controller, restarting the API
//!   server, dropping connections after the admin API accepted an action, injecting 503 bursts and latency,
//!   and changing the leader; then checks that no one-shot ran twice for one requestId, that every object
//!   settles (Ready, or Stalled with a reason), and that no process is left behind.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::api::{Instance, InstanceStatus};
use crate::devenv::controlplane::free_port;
use crate::devenv::process::Guarded;
use crate::devenv::{Binaries, ControlPlane};
use crate::resource::{ActionState, ComputeInstanceAction, ComputeInstanceActionSpec, DesiredState, Enforcement};
use crate::sim::{self, Faults, SimConfig, SimServer};

/// The simulator's admin token (its default), handed to the controller as `COMPUTE_API_TOKEN`.
pub const SIM_TOKEN: &str = "dev-admin-token";

// ---------------------------------------------------------------------------------------------------------
// Processes, /proc and metrics
// ---------------------------------------------------------------------------------------------------------

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds a process has used (`utime` + `stime` of `/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the last ')' start with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmHWM` (peak RSS) or `VmRSS`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Is a process with this pid still running a command line that mentions `name`? (A reaped process has no
/// `/proc` entry; a zombie has an empty command line.)
pub fn process_present(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| String::from_utf8_lossy(&cmd).contains(name))
        .unwrap_or(false)
}

/// Sum of every sample of a metric in Prometheus/OpenMetrics text (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `apiserver_request_total` of kube-apiserver's `/metrics`, summed by `"<VERB> <resource>[/<subresource>]"`.
pub async fn apiserver_requests(client: &Client) -> BTreeMap<String, f64> {
    let Ok(req) = axum::http::Request::get("/metrics").body(Vec::new()) else {
        return BTreeMap::new();
    };
    let Ok(text) = client.request_text(req).await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let mut key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        // Failed requests (409 conflicts above all) are counted apart.
        let code = label("code");
        if !code.starts_with('2') {
            key = format!("{key} {code}");
        }
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// What changed between two [`apiserver_requests`] readings (requests in between).
fn diff_requests(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)).max(0.0) as u64))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn is_write(key: &str) -> bool {
    ["POST ", "PUT ", "PATCH ", "DELETE "]
        .iter()
        .any(|v| key.starts_with(v))
}

/// How to start `compute-operator run`.
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_url: String,
    pub token: String,
    pub concurrency: u16,
    pub api_rate: f64,
    pub api_max_in_flight: usize,
    pub api_timeout: String,
    pub resync: String,
    pub restart_settle: String,
    pub namespaces: Vec<String>,
    /// `Some(namespace)`: `--leader-election --lease-namespace <namespace>`.
    pub lease_namespace: Option<String>,
    pub lease_duration: String,
    pub log_level: String,
    /// Where each process's stdout/stderr go (`<name>.log`).
    pub log_dir: PathBuf,
}

/// The operator binary next to the running executable (`target/<profile>/compute-operator`).
pub fn sibling_operator_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()
        .context("locating this executable")?
        .with_file_name("compute-operator");
    if !path.is_file() {
        bail!(
            "{} not found: build the operator first with `cargo build --release` (bench/faults run it as its own process)",
            path.display()
        );
    }
    Ok(path)
}

/// `compute-operator run --help`, once per binary (to pass only flags the build knows).
fn run_help(binary: &Path) -> String {
    static HELP: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);
    let mut cached = lock(&HELP);
    if let Some((path, text)) = cached.as_ref()
        && path == binary
    {
        return text.clone();
    }
    let text = Command::new(binary)
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    *cached = Some((binary.to_path_buf(), text.clone()));
    text
}

/// One `compute-operator run` process, killed when dropped.
#[derive(Debug)]
pub struct ControllerProcess {
    pub name: String,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
    pub leader_election: bool,
    proc: Guarded,
}

impl ControllerProcess {
    pub fn spawn(spec: &ControllerSpec, name: &str) -> anyhow::Result<Self> {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = spec.log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(&spec.binary);
        // Only what is set here counts: no COMPUTE_* or RUST_LOG from the caller's environment.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("COMPUTE_") || k == "RUST_LOG" || k == "POD_NAMESPACE" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("KUBECONFIG", &spec.kubeconfig)
            .env("COMPUTE_API_URL", &spec.api_url)
            .env("COMPUTE_API_TOKEN", &spec.token)
            .env("POD_NAME", name)
            .arg("run")
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .arg("--concurrency")
            .arg(spec.concurrency.to_string())
            .arg("--api-rate")
            .arg(spec.api_rate.to_string())
            .arg("--api-burst")
            .arg((spec.api_rate.ceil() as u64).max(1).to_string())
            .arg("--api-max-in-flight")
            .arg(spec.api_max_in_flight.to_string())
            .arg("--api-timeout")
            .arg(&spec.api_timeout)
            .arg("--resync-interval")
            .arg(&spec.resync)
            .arg("--restart-settle")
            .arg(&spec.restart_settle)
            .arg("--log-level")
            .arg(&spec.log_level);
        if !spec.namespaces.is_empty() {
            cmd.arg("--namespaces").arg(spec.namespaces.join(","));
        }
        // Flags newer builds have: no access policies in this single-tenant harness, and no loop protection
        // (these runs restart one instance many times on purpose).
        let help = run_help(&spec.binary);
        if help.contains("--policy-mode") {
            cmd.arg("--policy-mode").arg("off");
        }
        if help.contains("--max-one-shots") {
            cmd.arg("--max-one-shots").arg("100000");
        }
        if let Some(ns) = &spec.lease_namespace {
            cmd.arg("--leader-election")
                .arg("--lease-namespace")
                .arg(ns)
                .arg("--lease-duration")
                .arg(&spec.lease_duration);
        }
        cmd.stdout(out.try_clone()?).stderr(out);
        let proc =
            Guarded::spawn("compute-operator", cmd).with_context(|| format!("starting {}", spec.binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            metrics_addr,
            log,
            leader_election: spec.lease_namespace.is_some(),
            proc,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }

    /// SIGKILL at once.
    pub fn kill_now(&mut self) {
        self.proc.kill_now();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.proc.stop(grace);
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for `/readyz` to answer 200; fails with the log tail if the process exits first.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "controller {} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            let url = format!("http://{}/readyz", self.metrics_addr);
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "controller {} not ready after {limit:?}:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let resp = http.get(&url).send().await?.error_for_status()?;
        Ok(resp.text().await?)
    }

    /// `compute_operator_leader` (1 on the replica holding the lease), if the endpoint answers.
    pub async fn is_leader(&self, http: &reqwest::Client) -> Option<bool> {
        let text = self.metrics(http).await.ok()?;
        Some(metric_sum(&text, "compute_operator_leader") >= 1.0)
    }
}

/// A plain HTTP client for `/metrics` and `/readyz` on loopback.
pub fn local_http() -> anyhow::Result<reqwest::Client> {
    crate::api::client::install_crypto_provider();
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?)
}

// ---------------------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------------------

/// Ready or Stalled for the object's current generation, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Ready(String),
    Stalled(String),
}

/// Whether the object's status describes its current generation and says Ready or Stalled.
pub fn settled(o: &ComputeInstanceAction) -> Option<Settled> {
    let generation = o.metadata.generation?;
    let status = o.status.as_ref()?;
    if status.observed_generation != Some(generation) {
        return None;
    }
    let holds = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True" && c.observed_generation.is_none_or(|g| g == generation))
    };
    if let Some(c) = holds("Ready") {
        return Some(Settled::Ready(c.reason.clone()));
    }
    holds("Stalled").map(|c| Settled::Stalled(c.reason.clone()))
}

pub fn new_object(
    name: &str,
    instance: &str,
    desired: DesiredState,
    request_id: Option<String>,
    timeout_seconds: u32,
) -> ComputeInstanceAction {
    ComputeInstanceAction::new(
        name,
        ComputeInstanceActionSpec {
            instance_id: instance.into(),
            desired_state: desired,
            request_id,
            timeout_seconds,
            enforcement: Enforcement::Continuous,
            dry_run: false,
            suspend: false,
            not_after: None,
        },
    )
}

/// An instance record for the simulator's fleet.
pub fn instance(id: &str, status: InstanceStatus) -> Instance {
    Instance {
        id: id.into(),
        user_id: "5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        customer_id: "a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        name: format!("vm-{id}"),
        zone: "us-central1-a".into(),
        machine_type: "n2-standard-4".into(),
        external_ip: "203.0.113.10".into(),
        internal_ip: "10.128.0.10".into(),
        status,
        template_id: "ubuntu-22-standard".into(),
        created_at: "2026-03-14T15:02:17Z".into(),
    }
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Creates objects with at most `concurrency` requests in flight; returns (name, time the create returned).
async fn create_all(
    api: &Api<ComputeInstanceAction>,
    objects: Vec<ComputeInstanceAction>,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, Instant, DateTime<Utc>)>> {
    let pp = PostParams::default();
    let results: Vec<anyhow::Result<(String, Instant, DateTime<Utc>)>> = futures::stream::iter(objects)
        .map(|o| {
            let pp = &pp;
            async move {
                let name = o.name_any();
                api.create(pp, &o).await.with_context(|| format!("creating {name}"))?;
                Ok((name, Instant::now(), Utc::now()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Watches a namespace and records when each object is first seen settled for its current generation.
#[derive(Default)]
struct Tracker {
    ready_at: HashMap<String, Instant>,
    stalled: HashMap<String, String>,
}

fn spawn_tracker(api: Api<ComputeInstanceAction>) -> (Arc<Mutex<Tracker>>, tokio::task::JoinHandle<()>) {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let t = tracker.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            let now = Instant::now();
            let (watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                continue;
            };
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            match settled(&o) {
                Some(Settled::Ready(_)) => {
                    t.ready_at.entry(o.name_any()).or_insert(now);
                    t.stalled.remove(&o.name_any());
                }
                Some(Settled::Stalled(reason)) => {
                    t.stalled.insert(o.name_any(), reason);
                }
                None => {}
            }
        }
    });
    (tracker, task)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// p50 / p95 / p99 / max of a set of durations, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            n: values.len(),
            p50: percentile(&values, 50.0),
            p95: percentile(&values, 95.0),
            p99: percentile(&values, 99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Waits until `names` are all Ready or Stalled (per the tracker), or the deadline passes.
async fn wait_settled(tracker: &Mutex<Tracker>, names: &[String], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        {
            let t = lock(tracker);
            if names
                .iter()
                .all(|n| t.ready_at.contains_key(n) || t.stalled.contains_key(n))
            {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Fills in latency by desired state and the phase breakdown from the objects' action records.
async fn phase_breakdown(
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

/// `writes` status replacements over `names` (each worker owns its own objects, so no conflicts), with
/// `concurrency` in flight; returns the seconds taken. The objects' current status is written back with a
/// changed message, so the payloads are as large as the controller's.
async fn limit_run(
    api: &Api<ComputeInstanceAction>,
    names: &[String],
    writes: u64,
    events: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let concurrency = concurrency.max(1);
    let mut names = names.to_vec();
    // Fewer objects than workers: add dummies so every worker has its own.
    let template = api.get(&names[0]).await?;
    let mut i = 0;
    while names.len() < concurrency {
        let name = format!("limit-dummy-{i}");
        let o = new_object(
            &name,
            &template.spec.instance_id,
            template.spec.desired_state,
            None,
            600,
        );
        api.create(&PostParams::default(), &o).await?;
        names.push(name);
        i += 1;
    }
    let status = template.status.clone().unwrap_or_default();
    let mut owned: Vec<Vec<ComputeInstanceAction>> = vec![Vec::new(); concurrency];
    for (i, name) in names.iter().enumerate() {
        let mut o = api.get(name).await?;
        if o.status.is_none() {
            o.status = Some(status.clone());
        }
        owned[i % concurrency].push(o);
    }
    let tickets = Arc::new(AtomicU64::new(0));
    let total = writes + events;
    let started = Instant::now();
    let workers = owned.into_iter().map(|mut objs| {
        let api = api.clone();
        let event_api: Api<K8sEvent> = Api::namespaced(
            api.clone().into_client(),
            objs.first().and_then(|o| o.namespace()).as_deref().unwrap_or("default"),
        );
        let tickets = tickets.clone();
        async move {
            let pp = PostParams {
                dry_run: false,
                field_manager: Some("bench-limit".into()),
            };
            let mut next = 0usize;
            loop {
                let k = tickets.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let idx = next % objs.len();
                next += 1;
                let current = &objs[idx];
                // Events spread evenly among the status writes.
                if (k + 1) * events / total > k * events / total {
                    event_api
                        .create(&PostParams::default(), &limit_event(current, k))
                        .await?;
                    continue;
                }
                let mut body = ComputeInstanceAction::new(&current.name_any(), current.spec.clone());
                body.metadata.namespace = current.namespace();
                body.metadata.resource_version = current.resource_version();
                let mut st = current.status.clone().unwrap_or_default();
                st.message = Some(format!("limit write {k}"));
                body.status = Some(st);
                match api.replace_status(&current.name_any(), &pp, &body).await {
                    Ok(o) => objs[idx] = o,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        objs[idx] = api.get(&current.name_any()).await?;
                        tickets.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// An Event like the controller's (events.k8s.io/v1, regarding the object).
fn limit_event(o: &ComputeInstanceAction, k: u64) -> K8sEvent {
    use kube::Resource as _;
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{}.limit-{k}", o.name_any())),
            namespace: o.namespace(),
            ..Default::default()
        },
        action: Some("Reconcile".into()),
        reason: Some("LimitRun".into()),
        note: Some(format!("limit write {k} of instance {}", o.spec.instance_id)),
        type_: Some("Normal".into()),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        )),
        regarding: Some(o.object_ref(&())),
        reporting_controller: Some("bench-limit".into()),
        reporting_instance: Some("bench-limit".into()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------------------

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
        }
    }
}

/// Faults injected, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultCounts {
    pub controller_kills: usize,
    pub apiserver_restarts: usize,
    pub drop_phases: usize,
    /// Accepted actions whose connection the simulator closed without an answer.
    pub dropped_connections: u64,
    pub error_bursts: usize,
    /// Injected 503 answers.
    pub injected_errors: u64,
    pub latency_phases: usize,
    pub leader_changes: usize,
    pub total: usize,
}

/// One object's record of an OutcomeUnknown, and what explains it.
#[derive(Clone, Debug, Serialize)]
pub struct UnknownOutcome {
    pub object: String,
    pub request_id: Option<String>,
    pub action: String,
    pub intent_at: DateTime<Utc>,
    /// Whether the simulator carried it out (an accepted restart/reset attributed to this requestId).
    pub executed: bool,
    /// `lost-answer` (the controller logged that the POST's answer was lost: a dropped connection or a
    /// timeout), `kill` (a controller was killed while the intent was open), or `unexplained`.
    pub explained_by: String,
}

/// A one-shot executed more often than requested.
#[derive(Clone, Debug, Serialize)]
pub struct Duplicate {
    pub object: String,
    pub instance: String,
    pub request_id: String,
    pub executed: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultsReport {
    pub actions: usize,
    pub objects: usize,
    pub seed: u64,
    pub faults_injected: FaultCounts,
    /// "ok", "unavailable", "not-observed", "skipped" or "failed: ...".
    pub leader_change: String,
    pub one_shot_requests: usize,
    pub one_shot_executed: usize,
    pub level_actions_executed: usize,
    /// One-shots run more than once for one (object, requestId).
    pub duplicates: usize,
    pub duplicate_details: Vec<Duplicate>,
    /// Objects neither Ready nor Stalled (with a reason) for their last generation at the deadline.
    pub unresolved: usize,
    pub unresolved_objects: Vec<String>,
    pub ready: usize,
    pub stalled_by_reason: BTreeMap<String, usize>,
    pub outcome_unknown: usize,
    pub outcome_unknown_after_kill: usize,
    pub outcome_unknown_lost_answer: usize,
    pub outcome_unknown_unexplained: usize,
    pub outcome_unknown_details: Vec<UnknownOutcome>,
    /// Controller exits we did not cause (lease losses excluded).
    pub unexpected_controller_exits: usize,
    /// Controllers (re)started while the API server was away, which gave up at once.
    pub controller_startup_exits: Vec<String>,
    /// Leader-elected replicas that exited after losing the lease (expected, restarted as followers).
    pub lease_loss_exits: usize,
    pub processes_started: usize,
    /// Controller, etcd or kube-apiserver processes still present at the end.
    pub leftover_processes: Vec<u32>,
    pub elapsed_s: f64,
    pub logs: String,
    pub passed: bool,
}

/// One spec change the driver made.
#[derive(Clone, Debug)]
struct Issue {
    desired: DesiredState,
    request_id: Option<String>,
    generation: i64,
    at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Tracked {
    name: String,
    instance: String,
    one_shot: bool,
    issues: Vec<Issue>,
}

impl Tracked {
    fn next_spec(&self, rng: &mut StdRng) -> (DesiredState, Option<String>) {
        let n = self.issues.len();
        if self.one_shot {
            let d = if rng.random_bool(0.5) {
                DesiredState::Restarted
            } else {
                DesiredState::Reset
            };
            (d, Some(format!("{}-r{n}", self.name)))
        } else {
            let last = self.issues.last().map(|i| i.desired);
            let d = if last == Some(DesiredState::Stopped) {
                DesiredState::Running
            } else {
                DesiredState::Stopped
            };
            (d, None)
        }
    }
}

/// Makes sure a spec change landed even if the answer was lost (API server restart): returns its generation.
async fn confirm_spec(
    api: &Api<ComputeInstanceAction>,
    name: &str,
    desired: DesiredState,
    request_id: &Option<String>,
) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match api.get_opt(name).await {
            Ok(Some(o)) => {
                return (o.spec.desired_state == desired && &o.spec.request_id == request_id)
                    .then(|| o.metadata.generation.unwrap_or(0));
            }
            Ok(None) => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

/// Issues spec changes: each object gets its next one once it settled for the previous one.
async fn drive(
    api: Api<ComputeInstanceAction>,
    mut tracked: Vec<Tracked>,
    actions: usize,
    progress: Arc<AtomicUsize>,
    seed: u64,
) -> Vec<Tracked> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xD21E);
    let pp = PostParams::default();
    // Creation is the first action of every object.
    for t in &mut tracked {
        let (desired, rid) = t.next_spec(&mut rng);
        let obj = new_object(&t.name, &t.instance, desired, rid.clone(), 60);
        let at = Utc::now();
        let generation = match api.create(&pp, &obj).await {
            Ok(o) => o.metadata.generation,
            Err(_) => confirm_spec(&api, &t.name, desired, &rid).await,
        };
        if let Some(generation) = generation {
            t.issues.push(Issue {
                desired,
                request_id: rid,
                generation,
                at,
            });
            progress.fetch_add(1, Ordering::SeqCst);
        }
    }
    let quota = actions.div_ceil(tracked.len().max(1));
    while progress.load(Ordering::SeqCst) < actions {
        let list = match tokio::time::timeout(Duration::from_secs(5), api.list(&ListParams::default())).await {
            Ok(Ok(l)) => l,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let by_name: HashMap<String, ComputeInstanceAction> =
            list.items.into_iter().map(|o| (o.name_any(), o)).collect();
        let mut order: Vec<usize> = (0..tracked.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        for i in order {
            if progress.load(Ordering::SeqCst) >= actions {
                break;
            }
            let t = &mut tracked[i];
            // An even share per object, so that slow one-shots get as many turns as quick levels.
            if t.issues.len() >= quota {
                continue;
            }
            let Some(o) = by_name.get(&t.name) else {
                continue;
            };
            let Some(last) = t.issues.last() else {
                continue;
            };
            if o.metadata.generation != Some(last.generation) || settled(o).is_none() {
                continue;
            }
            let (desired, rid) = t.next_spec(&mut rng);
            let patch = serde_json::json!({"spec": {"desiredState": desired, "requestId": rid}});
            let at = Utc::now();
            let generation = match api.patch(&t.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(o) => o.metadata.generation,
                Err(_) => confirm_spec(&api, &t.name, desired, &rid).await,
            };
            if let Some(generation) = generation {
                t.issues.push(Issue {
                    desired,
                    request_id: rid,
                    generation,
                    at,
                });
                progress.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
    }
    tracked
}

/// The controllers of a faults run: one without leader election, or several with it.
struct Controllers {
    spec: ControllerSpec,
    procs: Vec<ControllerProcess>,
    spawned: usize,
    pids: Vec<u32>,
    kills: Vec<DateTime<Utc>>,
    unexpected_exits: usize,
    lease_loss_exits: usize,
    startup_exits: Vec<String>,
}

impl Controllers {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let name = format!("ctl-{}", self.spawned);
        self.spawned += 1;
        let p = ControllerProcess::spawn(&self.spec, &name)?;
        self.pids.push(p.pid());
        self.procs.push(p);
        Ok(())
    }

    /// Restarts processes that exited by themselves.
    fn reap(&mut self) -> anyhow::Result<()> {
        let mut respawn = 0;
        self.procs.retain_mut(|p| match p.exited() {
            None => true,
            Some(status) => {
                let tail = p.log_tail(5);
                if p.leader_election && tail.contains("lost leadership") {
                    self.lease_loss_exits += 1;
                } else if tail.contains("is not installed (or not readable)")
                    || tail.contains("cannot reach Kubernetes")
                {
                    // Started while the API server was away: it gives up at once (a pod would be
                    // restarted by the kubelet, as we do here).
                    self.startup_exits.push(format!(
                        "{} ({status}): {}",
                        p.name,
                        tail.lines().last().unwrap_or_default()
                    ));
                } else {
                    self.unexpected_exits += 1;
                    eprintln!("faults: controller {} exited unexpectedly ({status}):\n{tail}", p.name);
                }
                respawn += 1;
                false
            }
        });
        for _ in 0..respawn {
            self.spawn()?;
        }
        Ok(())
    }

    /// The replica holding the lease (or the only one).
    async fn leader_index(&self, http: &reqwest::Client) -> Option<usize> {
        if self.spec.lease_namespace.is_none() {
            return (!self.procs.is_empty()).then_some(0);
        }
        for (i, p) in self.procs.iter().enumerate() {
            if p.is_leader(http).await == Some(true) {
                return Some(i);
            }
        }
        None
    }

    async fn wait_leader(&mut self, http: &reqwest::Client, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let _ = self.reap();
            if let Some(i) = self.leader_index(http).await {
                return Some(self.procs[i].name.clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// kill -9 of the acting controller; it is started again after `pause`.
    async fn kill_leader(&mut self, http: &reqwest::Client, pause: Duration) -> anyhow::Result<()> {
        if self.spec.lease_namespace.is_some() {
            // Right after a leader change the lease may be vacant for a moment: kill the next leader.
            self.wait_leader(http, Duration::from_secs(30)).await;
        }
        let i = self.leader_index(http).await.unwrap_or(0);
        if let Some(p) = self.procs.get_mut(i) {
            p.kill_now();
            self.kills.push(Utc::now());
            self.procs.remove(i);
        }
        tokio::time::sleep(pause).await;
        self.spawn()
    }

    fn stop_all(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(10));
        }
        self.procs.clear();
    }
}

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
    let fleet: Vec<Instance> = (0..objects)
        .map(|i| instance(&format!("flt-{i:03}"), InstanceStatus::Running))
        .collect();
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

    // POSTs whose answer the controller lost (it logs `outcome="unknown"`), from every controller's log.
    let lost_answers = lost_answers_in_logs(&logs);

    // At most once: attribute each accepted restart/reset to the requestId in force when it was accepted.
    for t in &tracked {
        let entries: Vec<_> = audit.iter().filter(|e| e.instance_id == t.instance).collect();
        let one_shots: Vec<_> = entries.iter().filter(|e| e.action.is_one_shot()).collect();
        report.level_actions_executed += entries.len() - one_shots.len();
        report.one_shot_executed += one_shots.len();
        let requested: Vec<&Issue> = t.issues.iter().filter(|i| i.request_id.is_some()).collect();
        report.one_shot_requests += requested.len();
        let mut per_request: BTreeMap<String, usize> = BTreeMap::new();
        for e in &one_shots {
            let rid = t
                .issues
                .iter()
                .rev()
                .find(|i| i.at <= e.at)
                .and_then(|i| i.request_id.clone())
                .unwrap_or_else(|| "<before any request>".into());
            *per_request.entry(rid).or_default() += 1;
        }
        let by_rid: usize = per_request.values().map(|n| n.saturating_sub(1)).sum();
        let by_count = one_shots.len().saturating_sub(requested.len());
        if by_rid.max(by_count) > 0 {
            for (rid, n) in per_request.iter().filter(|(_, n)| **n > 1) {
                report.duplicate_details.push(Duplicate {
                    object: t.name.clone(),
                    instance: t.instance.clone(),
                    request_id: rid.clone(),
                    executed: *n,
                });
            }
        }
        report.duplicates += by_rid.max(by_count);

        // Final state.
        match last.get(&t.name) {
            Some(o) if is_settled_for(&last, t) => match settled(o) {
                Some(Settled::Ready(_)) => report.ready += 1,
                Some(Settled::Stalled(reason)) => {
                    *report.stalled_by_reason.entry(reason).or_default() += 1;
                }
                None => {}
            },
            _ => {
                report.unresolved += 1;
                let status = last
                    .get(&t.name)
                    .and_then(|o| o.status.as_ref())
                    .and_then(|s| s.message.clone())
                    .unwrap_or_else(|| "no status".into());
                report.unresolved_objects.push(format!("{}: {status}", t.name));
            }
        }
        // OutcomeUnknown records, and what explains them.
        if let Some(st) = last.get(&t.name).and_then(|o| o.status.as_ref()) {
            for rec in st.history.iter().chain(st.action.iter()) {
                if rec.state != ActionState::OutcomeUnknown {
                    continue;
                }
                // From the intent until the answer could have been recorded: the API timeout (2 s), the
                // injected latency and two status writes.
                let window = |at: DateTime<Utc>| {
                    at >= rec.intent_at - chrono::Duration::milliseconds(200)
                        && at <= rec.intent_at + chrono::Duration::seconds(4)
                };
                let lost_answer = lost_answers.iter().any(|(object, at)| object == &t.name && window(*at));
                let explained_by = if lost_answer {
                    report.outcome_unknown_lost_answer += 1;
                    "lost-answer"
                } else if ctls.kills.iter().any(|k| window(*k)) {
                    report.outcome_unknown_after_kill += 1;
                    "kill"
                } else {
                    report.outcome_unknown_unexplained += 1;
                    "unexplained"
                };
                report.outcome_unknown += 1;
                report.outcome_unknown_details.push(UnknownOutcome {
                    object: t.name.clone(),
                    request_id: rec.request_id.clone(),
                    action: rec.action.as_str().into(),
                    intent_at: rec.intent_at,
                    executed: rec
                        .request_id
                        .as_ref()
                        .is_some_and(|rid| per_request.get(rid).is_some_and(|n| *n > 0)),
                    explained_by: explained_by.into(),
                });
            }
        }
    }
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
    report.passed = report.duplicates == 0 && report.unresolved == 0 && report.leftover_processes.is_empty();
    if report.passed {
        let _ = std::fs::remove_dir_all(&logs);
    }
    Ok(report)
}

/// (object name, time) of every `action sent ... outcome="unknown"` line in the controllers' logs.
fn lost_answers_in_logs(dir: &Path) -> Vec<(String, DateTime<Utc>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            if !(line.contains("action sent") && line.contains("outcome=\"unknown\"")) {
                continue;
            }
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            let object = line
                .split("object=")
                .nth(2)
                .or_else(|| line.split("object=").nth(1))
                .and_then(|rest| rest.split([' ', '}', ':']).next())
                .and_then(|key| key.rsplit('/').next())
                .map(str::to_owned);
            if let (Some(at), Some(object)) = (at, object) {
                out.push((object, at));
            }
        }
    }
    out
}

fn is_settled_for(last: &HashMap<String, ComputeInstanceAction>, t: &Tracked) -> bool {
    let Some(o) = last.get(&t.name) else {
        return false;
    };
    let Some(issue) = t.issues.last() else {
        return true;
    };
    o.metadata.generation == Some(issue.generation) && settled(o).is_some()
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

/// Writes a report as pretty JSON.
pub fn write_json(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets_and_skips_prefixes() {
        let text = "# TYPE x counter\ncompute_operator_status_writes_total 12\ncompute_operator_status_writes_totalx 5\ncompute_operator_api_requests_total{endpoint=\"get\",code=\"200\"} 3\ncompute_operator_api_requests_total{endpoint=\"stop\",code=\"202\"} 4\n";
        assert_eq!(metric_sum(text, "compute_operator_status_writes_total"), 12.0);
        assert_eq!(metric_sum(text, "compute_operator_api_requests_total"), 7.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn proc_readers_see_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(status_kib(me, "VmHWM").is_some_and(|k| k > 0));
        assert!(status_kib(me, "VmNope").is_none());
    }
}
