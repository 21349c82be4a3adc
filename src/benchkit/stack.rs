//! The stack a bench run measures: kube-apiserver + etcd, the admin API simulator, the operator as its own
//! process, and the bench's own watch that records when each object settles.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};

use super::SIM_TOKEN;
use super::controller::{ControllerProcess, ControllerSpec, local_http};
use super::measure::{cpu_seconds, metric_sum, mib, status_kib};
use super::objects::{Tracker, create_namespace, spawn_tracker};
use crate::api::Instance;
use crate::crd::access_policy::ComputeAccessPolicy;
use crate::crd::instance_action::ComputeInstanceAction;
use crate::devenv::{Binaries, ControlPlane};
use crate::sim::{self, SimConfig, SimServer};

/// The namespace the controller watches.
pub const BENCH_NAMESPACE: &str = "bench";
/// The access policy that allows every bench object (with `--policy-mode enforce`).
pub const BENCH_POLICY: &str = "bench-allow";
/// The customer of every bench instance; the policy grants it.
pub const BENCH_CUSTOMER: &str = "a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e";

/// How to start the stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub operator_binary: PathBuf,
    pub transition: Duration,
    pub concurrency: u16,
    pub api_rate: f64,
    pub resync: Duration,
    /// `off` or `enforce`.
    pub policy_mode: String,
    pub log_level: String,
}

pub(super) struct Stack {
    pub cp: ControlPlane,
    pub client: Client,
    pub api: Api<ComputeInstanceAction>,
    pub sim: SimServer,
    pub ctl: ControllerProcess,
    pub http: reqwest::Client,
    pub tracker: Arc<Mutex<Tracker>>,
    tracker_task: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Starts everything with `fleet` in the simulator; returns once the controller is ready and the bench's
    /// watch has listed.
    pub async fn start(opts: &StackOptions, fleet: Vec<Instance>) -> anyhow::Result<Self> {
        let http = local_http()?;
        let logs = tempfile::Builder::new()
            .prefix("compute-operator-bench-")
            .tempdir()?
            .keep();
        let binaries = Binaries::locate()?;
        eprintln!("bench: starting kube-apiserver + etcd ...");
        let cp = ControlPlane::start(&binaries).await?;
        let client = cp.client().await?;
        create_namespace(&client, BENCH_NAMESPACE).await?;
        if opts.policy_mode == "enforce" {
            // Before the controller starts, so that its first look already allows the objects.
            let policies: Api<ComputeAccessPolicy> = Api::all(client.clone());
            policies.create(&PostParams::default(), &allow_policy(None)?).await?;
        }
        let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), BENCH_NAMESPACE);
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
            resync: humantime::format_duration(opts.resync).to_string(),
            restart_settle: "15s".into(),
            namespaces: vec![BENCH_NAMESPACE.into()],
            lease_namespace: None,
            lease_duration: "15s".into(),
            log_level: opts.log_level.clone(),
            policy_mode: opts.policy_mode.clone(),
            log_dir: logs,
        };
        let mut ctl = ControllerProcess::spawn(&spec, "bench-controller")?;
        ctl.wait_ready(&http, Duration::from_secs(60)).await?;
        let (tracker, tracker_task) = spawn_tracker(api.clone());
        // Let the watch list (empty) before any clock starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self {
            cp,
            client,
            api,
            sim,
            ctl,
            http,
            tracker,
            tracker_task,
        })
    }

    /// A metric of the controller, summed over its label sets (NaN when `/metrics` does not answer).
    pub async fn metric(&self, name: &str) -> f64 {
        match self.ctl.metrics(&self.http).await {
            Ok(text) => metric_sum(&text, name),
            Err(_) => f64::NAN,
        }
    }

    pub fn cpu_s(&self) -> f64 {
        cpu_seconds(self.ctl.pid()).unwrap_or(f64::NAN)
    }

    pub fn rss_mib(&self) -> f64 {
        mib(status_kib(self.ctl.pid(), "VmRSS"))
    }

    /// One part of the RSS from `/proc/<pid>/status` (`RssAnon`, `RssFile`, `RssShmem`).
    pub fn rss_part_mib(&self, field: &str) -> f64 {
        mib(status_kib(self.ctl.pid(), field))
    }

    pub fn peak_rss_mib(&self) -> f64 {
        mib(status_kib(self.ctl.pid(), "VmHWM"))
    }

    /// Admin API requests the simulator received so far.
    pub fn api_requests(&self) -> u64 {
        self.sim.stats().total
    }

    /// Waits until the controller has made no status write for `quiet` (or `limit` passed): settled means
    /// the controller, not only the objects, is done.
    pub async fn wait_quiet(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = self.metric("compute_operator_status_writes_total").await;
        let mut since = Instant::now();
        while Instant::now() < deadline && since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.metric("compute_operator_status_writes_total").await;
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }

    pub async fn shutdown(mut self) {
        self.tracker_task.abort();
        self.ctl.stop(Duration::from_secs(10));
        self.sim.shutdown().await;
        self.cp.stop();
    }
}

/// The policy that lets namespace `bench` set instances of [`BENCH_CUSTOMER`] to any state; with `zone`, only
/// instances in that zone (the policy change of the rest run). Built from JSON so that fields the policy may
/// gain later keep their defaults.
pub(super) fn allow_policy(zone: Option<&str>) -> anyhow::Result<ComputeAccessPolicy> {
    let mut instances = serde_json::json!({ "customerIds": [BENCH_CUSTOMER] });
    if let Some(zone) = zone {
        instances["zones"] = serde_json::json!([zone]);
    }
    let policy: ComputeAccessPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputeAccessPolicy",
        "metadata": { "name": BENCH_POLICY },
        "spec": {
            "namespaces": { "names": [BENCH_NAMESPACE] },
            "instances": instances,
            "desiredStates": ["running", "stopped", "restarted", "reset"],
        }
    }))?;
    debug_assert_eq!(policy.name_any(), BENCH_POLICY);
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowing_policy_grants_the_bench_customer_and_narrows_to_a_zone() {
        let wide = allow_policy(None).unwrap();
        assert_eq!(wide.spec.instances.customer_ids, Some(vec![BENCH_CUSTOMER.to_owned()]));
        assert_eq!(wide.spec.instances.zones, None);
        assert_eq!(wide.spec.desired_states.len(), 4);
        let narrow = allow_policy(Some("z")).unwrap();
        assert_eq!(narrow.spec.instances.zones, Some(vec!["z".to_owned()]));
    }
}
