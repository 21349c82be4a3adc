//! The objects of a run: how they are built and created, and a watch that records when each one settles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};

use super::lock;
use crate::api::{Instance, InstanceStatus};
use crate::crd::instance_action::{ComputeInstanceAction, ComputeInstanceActionSpec, DesiredState, Enforcement};

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
            escalation: None,
        },
    )
}

/// The zone of every bench instance (but those the policy change denies).
pub const BENCH_ZONE: &str = "us-central1-a";

/// An instance record for the simulator's fleet.
pub fn instance(id: &str, status: InstanceStatus) -> Instance {
    Instance {
        id: id.into(),
        user_id: "5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        customer_id: "a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        name: format!("vm-{id}"),
        zone: BENCH_ZONE.into(),
        machine_type: "n2-standard-4".into(),
        external_ip: "203.0.113.10".into(),
        internal_ip: "10.128.0.10".into(),
        status,
        template_id: "ubuntu-22-standard".into(),
        created_at: "2026-03-14T15:02:17Z".into(),
    }
}

pub(super) async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
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
pub(super) async fn create_all(
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
pub(super) struct Tracker {
    /// First time seen Ready.
    pub(super) ready_at: HashMap<String, Instant>,
    /// Stalled now, with the reason, and since when (with that reason).
    pub(super) stalled: HashMap<String, String>,
    pub(super) stalled_at: HashMap<String, Instant>,
}

pub(super) fn spawn_tracker(api: Api<ComputeInstanceAction>) -> (Arc<Mutex<Tracker>>, tokio::task::JoinHandle<()>) {
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
                    t.stalled_at.remove(&o.name_any());
                }
                Some(Settled::Stalled(reason)) => {
                    // Since when stalled for this reason.
                    let changed = t.stalled.insert(o.name_any(), reason.clone()) != Some(reason);
                    if changed {
                        t.stalled_at.insert(o.name_any(), now);
                    }
                }
                None => {}
            }
        }
    });
    (tracker, task)
}

/// Waits until `names` are all Ready or Stalled (per the tracker), or the deadline passes.
pub(super) async fn wait_settled(tracker: &Mutex<Tracker>, names: &[String], limit: Duration) -> bool {
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
