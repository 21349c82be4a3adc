//! Fleet test helpers: simulator fleets, one namespace with both controllers, waiting on fleet conditions,
//! and reading the simulator's audit.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use compute_operator::api::{Instance, PowerAction};
use compute_operator::controllers::fleet::{ComputeFleetAction, ComputeFleetActionStatus};
use compute_operator::crd::access_policy::PolicyMode;
use compute_operator::crd::fleet_action::FLEET_LABEL;
use compute_operator::crd::instance_action::ComputeInstanceAction;
use compute_operator::sim::{SimConfig, SimServer};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::*;

pub const TOKEN: &str = "dev-admin-token";

pub fn inst(id: &str, customer: &str, user: &str, zone: &str, template: &str, status: &str) -> Instance {
    serde_json::from_value(serde_json::json!({
        "id": id, "customerId": customer, "userId": user, "zone": zone, "templateId": template,
        "status": status, "name": id,
    }))
    .unwrap()
}

/// `count` running instances `<prefix>-00..` in `zone`.
pub fn zone_fleet(prefix: &str, zone: &str, count: usize) -> Vec<Instance> {
    (0..count)
        .map(|n| inst(&format!("{prefix}-{n:02}"), "c1", "u1", zone, "t1", "running"))
        .collect()
}

pub struct Env {
    pub client: Client,
    pub ns: String,
    pub sim: SimServer,
    pub fleets: Api<ComputeFleetAction>,
    pub cias: Api<ComputeInstanceAction>,
    pub controllers: Vec<RunningController>,
}

pub async fn env(prefix: &str, instances: Vec<Instance>, transition_ms: u64, mode: PolicyMode) -> Env {
    let mut env = unstarted_env(prefix, instances, transition_ms).await;
    env.start(mode).await;
    env
}

/// A namespace and a simulator, no controller yet (a test starts them as it needs, e.g. fenced).
pub async fn unstarted_env(prefix: &str, instances: Vec<Instance>, transition_ms: u64) -> Env {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let sim = simulator(SimConfig {
        fleet: Some(instances),
        transition: Duration::from_millis(transition_ms),
        ..SimConfig::default()
    })
    .await;
    Env {
        fleets: Api::namespaced(client.clone(), &ns),
        cias: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        sim,
        controllers: Vec::new(),
    }
}

impl Env {
    pub async fn start(&mut self, mode: PolicyMode) {
        self.start_fenced(mode, compute_operator::leader::Fence::always_open())
            .await;
    }

    /// Both controllers on one shared runtime whose fence is `fence` (a test may close it).
    pub async fn start_fenced(&mut self, mode: PolicyMode, fence: std::sync::Arc<compute_operator::leader::Fence>) {
        let mut config = test_controller_config(&self.ns);
        config.policy_mode = mode;
        let fleet_config = test_fleet_config(&self.ns);
        self.controllers
            .push(start_fleet_operator(&self.sim, TOKEN, config, fleet_config, fence).await);
    }

    pub async fn create(&self, name: &str, spec: serde_json::Value) -> ComputeFleetAction {
        let obj: ComputeFleetAction = serde_json::from_value(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.fleets
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"))
    }

    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.fleets
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .unwrap_or_else(|e| panic!("patch {name}: {e}"));
    }

    pub async fn wait(
        &self,
        name: &str,
        limit: Duration,
        what: &str,
        check: impl Fn(&ComputeFleetAction) -> bool,
    ) -> ComputeFleetAction {
        let deadline = Instant::now() + limit;
        loop {
            let f = self.fleets.get(name).await.expect("get fleet");
            if check(&f) {
                return f;
            }
            if Instant::now() > deadline {
                // The children's conditions say why a fleet stalled; the fleet's own status only counts.
                let children: Vec<String> = self
                    .children(name)
                    .await
                    .iter()
                    .map(|c| format!("{}: {:?}", c.name_any(), c.status.as_ref().map(|s| &s.conditions)))
                    .collect();
                panic!(
                    "{name}: not {what} within {limit:?}; status: {}\nchildren:\n{}",
                    serde_json::to_string_pretty(&f.status).unwrap_or_default(),
                    children.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_reason(&self, name: &str, type_: &str, reason: &str, limit: Duration) -> ComputeFleetAction {
        self.wait(name, limit, &format!("{type_}={reason}"), |f| has(f, type_, reason))
            .await
    }

    pub async fn children(&self, fleet: &str) -> Vec<ComputeInstanceAction> {
        self.cias
            .list(&ListParams::default().labels(&format!("{FLEET_LABEL}={fleet}")))
            .await
            .expect("list children")
            .items
    }

    pub fn actions(&self) -> Vec<(String, PowerAction, DateTime<Utc>)> {
        self.sim
            .audit()
            .into_iter()
            .map(|e| (e.instance_id, e.action, e.at))
            .collect()
    }

    pub fn acted_on(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.actions().into_iter().map(|(id, _, _)| id).collect();
        ids.sort();
        ids
    }
}

pub fn has(f: &ComputeFleetAction, type_: &str, reason: &str) -> bool {
    f.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
    })
}

pub fn status(f: &ComputeFleetAction) -> ComputeFleetActionStatus {
    f.status.clone().unwrap_or_default()
}

/// The most actions accepted within any window of `transition` (each keeps its instance busy that long, and
/// its child in flight at least that long): a lower bound of what was in flight at once.
pub fn max_in_flight(actions: &[(String, PowerAction, DateTime<Utc>)], transition: Duration) -> usize {
    let window = chrono::Duration::from_std(transition).unwrap() - chrono::Duration::milliseconds(20);
    let mut times: Vec<DateTime<Utc>> = actions.iter().map(|(_, _, at)| *at).collect();
    times.sort();
    (0..times.len())
        .map(|i| times[..=i].iter().filter(|t| **t > times[i] - window).count())
        .max()
        .unwrap_or(0)
}

impl Env {
    /// Waits (briefly: Events are published in the background) for an Event with `reason` about `name`.
    pub async fn wait_event(&self, name: &str, reason: &str) {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.ns);
        for _ in 0..50 {
            let seen = api.list(&Default::default()).await.is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.reason.as_deref() == Some(reason)
                })
            });
            if seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {reason} Event about {name}");
    }
}
