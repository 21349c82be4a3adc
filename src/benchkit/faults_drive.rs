//! The fault run's actors: the driver that issues spec changes once objects settled, and the set of
//! controller processes that are killed, restarted and replaced.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::controller::{ControllerProcess, ControllerSpec};
use super::objects::{new_object, settled};
use crate::crd::instance_action::{ComputeInstanceAction, DesiredState};

/// One spec change the driver made.
#[derive(Clone, Debug)]
pub(super) struct Issue {
    pub(super) desired: DesiredState,
    pub(super) request_id: Option<String>,
    pub(super) generation: i64,
    pub(super) at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub(super) struct Tracked {
    pub(super) name: String,
    pub(super) instance: String,
    pub(super) one_shot: bool,
    pub(super) issues: Vec<Issue>,
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
pub(super) async fn drive(
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
pub(super) struct Controllers {
    pub(super) spec: ControllerSpec,
    pub(super) procs: Vec<ControllerProcess>,
    pub(super) spawned: usize,
    pub(super) pids: Vec<u32>,
    pub(super) kills: Vec<DateTime<Utc>>,
    pub(super) unexpected_exits: usize,
    pub(super) lease_loss_exits: usize,
    pub(super) startup_exits: Vec<String>,
}

impl Controllers {
    pub(super) fn spawn(&mut self) -> anyhow::Result<()> {
        let name = format!("ctl-{}", self.spawned);
        self.spawned += 1;
        let p = ControllerProcess::spawn(&self.spec, &name)?;
        self.pids.push(p.pid());
        self.procs.push(p);
        Ok(())
    }

    /// Restarts processes that exited by themselves.
    pub(super) fn reap(&mut self) -> anyhow::Result<()> {
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
    pub(super) async fn leader_index(&self, http: &reqwest::Client) -> Option<usize> {
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

    pub(super) async fn wait_leader(&mut self, http: &reqwest::Client, limit: Duration) -> Option<String> {
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
    pub(super) async fn kill_leader(&mut self, http: &reqwest::Client, pause: Duration) -> anyhow::Result<()> {
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

    pub(super) fn stop_all(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(10));
        }
        self.procs.clear();
    }
}
