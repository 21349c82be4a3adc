//! The load a bench run applies: which objects (each on its own instance, in the status that makes it act),
//! created all at once (the burst) or arriving at a steady rate (the open loop), and the objects at rest.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use serde::Serialize;

use super::objects::{instance, new_object};
use crate::api::{Instance, InstanceStatus};
use crate::crd::instance_action::{ComputeInstanceAction, DesiredState};
use crate::sim::SimServer;

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
    pub fn pick(self, i: usize) -> (DesiredState, InstanceStatus) {
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

/// Status writes the protocol cannot avoid for one action: intent and result, plus acceptance for one-shots.
pub fn minimum_status_writes(desired: DesiredState) -> u64 {
    if desired.is_level() { 2 } else { 3 }
}

/// Object `i` of a load (`<prefix>-<i>` on instance `<prefix>-<i>`) and its instance, which needs the action.
pub fn acting_object(prefix: &str, mix: DesiredMix, i: usize) -> (ComputeInstanceAction, Instance) {
    let (desired, start) = mix.pick(i);
    let id = format!("{prefix}-{i:06}");
    let rid = (!desired.is_level()).then(|| format!("r-{prefix}-{i}"));
    (new_object(&id, &id, desired, rid, 600), instance(&id, start))
}

/// Zone of the instances at rest that the policy change denies: every 100th (so 1 %, spread evenly).
pub const DENIED_ZONE: &str = "us-central1-b";

/// Rest object `i` and its instance, already in the desired state (running and stopped in turn). Every 100th
/// instance lies in [`DENIED_ZONE`].
pub fn resting_object(i: usize) -> (ComputeInstanceAction, Instance) {
    let id = format!("rest-{i:06}");
    let (desired, status) = if i.is_multiple_of(2) {
        (DesiredState::Running, InstanceStatus::Running)
    } else {
        (DesiredState::Stopped, InstanceStatus::Stopped)
    };
    let mut inst = instance(&id, status);
    if i.is_multiple_of(100) {
        inst.zone = DENIED_ZONE.into();
    }
    (new_object(&id, &id, desired, None, 600), inst)
}

/// What an open-loop run created: (name, desired state, when its create returned), and how long arrivals
/// lasted.
pub struct Arrivals {
    pub created: Vec<(String, DesiredState, Instant)>,
    pub failed: usize,
    pub seconds: f64,
}

/// Objects arrive at `rate` per second for `duration`, each create started on its own schedule (a slow create
/// does not delay the next arrival); each instance is added to the simulator just before its object.
pub async fn open_loop(
    api: &Api<ComputeInstanceAction>,
    sim: &SimServer,
    mix: DesiredMix,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Arrivals> {
    anyhow::ensure!(rate.is_finite() && rate > 0.0, "the open-loop rate must be positive");
    let total = (rate * duration.as_secs_f64()).floor().max(1.0) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until((started + gap.mul_f64(i as f64)).into()).await;
        let (obj, inst) = acting_object("open", mix, i);
        sim.upsert_instance(inst);
        let api = api.clone();
        creates.spawn(async move {
            let name = obj.name_any();
            api.create(&PostParams::default(), &obj)
                .await
                .with_context(|| format!("creating {name}"))?;
            Ok::<_, anyhow::Error>((name, obj.spec.desired_state, Instant::now()))
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut arrivals = Arrivals {
        created: Vec::with_capacity(total),
        failed: 0,
        seconds,
    };
    while let Some(r) = creates.join_next().await {
        match r {
            Ok(Ok(c)) => arrivals.created.push(c),
            _ => arrivals.failed += 1,
        }
    }
    Ok(arrivals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_minimum_is_two_writes_per_level_and_three_per_one_shot() {
        assert_eq!(minimum_status_writes(DesiredState::Running), 2);
        assert_eq!(minimum_status_writes(DesiredState::Stopped), 2);
        assert_eq!(minimum_status_writes(DesiredState::Restarted), 3);
        assert_eq!(minimum_status_writes(DesiredState::Reset), 3);
    }

    #[test]
    fn acting_objects_need_their_action() {
        for i in 0..4 {
            let (o, inst) = acting_object("bench", DesiredMix::Mixed, i);
            assert_eq!(o.spec.instance_id, inst.id);
            let already = match o.spec.desired_state {
                DesiredState::Running => inst.status == InstanceStatus::Running,
                DesiredState::Stopped => inst.status == InstanceStatus::Stopped,
                _ => false,
            };
            assert!(!already, "object {i} would need nothing");
            assert_eq!(o.spec.request_id.is_some(), !o.spec.desired_state.is_level());
        }
    }

    #[test]
    fn every_hundredth_rest_instance_lies_in_the_denied_zone() {
        let denied: Vec<usize> = (0..1000).filter(|i| resting_object(*i).1.zone == DENIED_ZONE).collect();
        assert_eq!(denied, (0..1000).step_by(100).collect::<Vec<_>>());
        let (o, inst) = resting_object(1);
        assert_eq!(o.spec.desired_state, DesiredState::Stopped);
        assert_eq!(inst.status, InstanceStatus::Stopped);
    }
}
