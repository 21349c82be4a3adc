//! The operator under test as its own `compute-operator run` process: how it is started, its `/metrics` and
//! `/readyz`, and how it is stopped or killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::lock;
use super::measure::metric_sum;
use crate::devenv::controlplane::free_port;
use crate::devenv::process::Guarded;

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
    /// `--policy-mode` (`off` or `enforce`) for builds that know the flag.
    pub policy_mode: String,
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
        // Flags newer builds have: the access policy mode the run asks for, and no loop protection (these runs
        // restart one instance many times on purpose).
        let help = run_help(&spec.binary);
        if help.contains("--policy-mode") {
            cmd.arg("--policy-mode").arg(&spec.policy_mode);
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
