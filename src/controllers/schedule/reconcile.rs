//! Carries out one schedule plan: list the children, suspend superseded ones, create the event's child (only
//! while the schedule, read again, still asks for it), trim the history, write the status, come back at the
//! next event. Every write to a child passes the lease fence. Thin on purpose.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};

use crate::controllers::runtime::{self, Written, bounded};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::Context;
use super::fleet_child::{child_fleet, child_view, is_child_of, schedule_label_value, to_chrono};
use super::plan::{self, Note, Plan, PlanInput};
use crate::controllers::schedule::children::SCHEDULE_LABEL;
use crate::crd::fleet_action::ComputeFleetAction;
use crate::crd::power_schedule::ComputePowerSchedule;

/// Field manager of every write: one owner of `.status` and of the children.
pub const FIELD_MANAGER: &str = "compute-operator-schedule";

/// Errors of one reconcile, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the child fleets: {0}")]
    ListChildren(#[source] kube::Error),
    #[error("reading the schedule again before creating a child: {0}")]
    ReadSchedule(#[source] kube::Error),
    #[error("creating the child fleet {name}: {source}")]
    CreateChild {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("suspending the superseded child fleet {name}: {source}")]
    SuspendChild {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting the old child fleet {name}: {source}")]
    DeleteChild {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

impl crate::controllers::runtime::ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::ListChildren(_) => "ListChildren",
            Self::ReadSchedule(_) => "ReadSchedule",
            Self::CreateChild { .. } => "CreateChild",
            Self::SuspendChild { .. } => "SuspendChild",
            Self::DeleteChild { .. } => "DeleteChild",
            Self::WriteStatus(_) => "WriteStatus",
            Self::NoNamespace => "NoNamespace",
        }
    }
}

/// The time the controller reads. Production uses the system clock as it is; tests shift it so that "now" can
/// be seconds before an event of a fixed calendar (the offset is applied to every time the controller reads,
/// the schedule's creation timestamp included, so the view stays consistent). Not settable from the CLI.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    pub offset: TimeDelta,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// The reconcile entry point handed to kube-rs.
pub async fn reconcile(obj: Arc<ComputePowerSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = crate::controllers::object_key(obj.as_ref());
    let span = tracing::info_span!("reconcile", schedule = %key);
    reconcile_inner(&obj, &ctx).instrument(span).await
}

/// kube-rs error policy: the runtime's one policy ([`crate::controllers::runtime::errors`]).
pub fn error_policy(obj: Arc<ComputePowerSchedule>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_backoff.back_off(
        "schedule",
        obj.as_ref(),
        err,
        &ctx.config.run.error_backoff,
        &ctx.shared.metrics,
    )
}

async fn reconcile_inner(obj: &ComputePowerSchedule, ctx: &Context) -> Result<Action, Error> {
    // Being deleted: its children go with it (garbage collection); nothing may be created for it any more.
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let schedules: Api<ComputePowerSchedule> = Api::namespaced(ctx.shared.kube.clone(), &ns);
    let fleets: Api<ComputeFleetAction> = Api::namespaced(ctx.shared.kube.clone(), &ns);
    let selector = format!("{SCHEDULE_LABEL}={}", schedule_label_value(&obj.name_any()));
    let children: Vec<ComputeFleetAction> = bounded(fleets.list(&ListParams::default().labels(&selector)))
        .await
        .map_err(Error::ListChildren)?
        .items
        .into_iter()
        .filter(|f| is_child_of(f, obj))
        .collect();
    let views: Vec<_> = children.iter().map(child_view).collect();
    let now = ctx.config.clock.now();
    let created_at = obj
        .creation_timestamp()
        .and_then(|t| to_chrono(&t))
        .map_or(now, |t| t + ctx.config.clock.offset);
    let status = obj.status.clone().unwrap_or_default();
    let name = obj.name_any();
    let plan = plan::plan(&PlanInput {
        name: &name,
        spec: &obj.spec,
        status: &status,
        generation: obj.metadata.generation,
        created_at,
        now,
        children: &views,
    });
    if !ctx.shared.fence.may_act() {
        // A replica without the lease writes nothing to a child; the leader does it.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if execute(obj, &schedules, &fleets, &plan, ctx).await? == Executed::Interrupted {
        // The status would name a child that was not created (and an Event would say it was): write nothing;
        // the next reconcile decides again.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }

    if obj.status.as_ref() != Some(&plan.status) {
        let status = plan.status.clone();
        match runtime::write_status(&schedules, obj, FIELD_MANAGER, |s| s.status = Some(status))
            .await
            .map_err(Error::WriteStatus)?
        {
            Written::Stale => {
                tracing::debug!("stale schedule in the cache; deciding again shortly");
                return Ok(Action::requeue(runtime::STALE_RETRY));
            }
            Written::Written | Written::Unchanged => {}
        }
        publish(ctx, obj, &plan.notes).await;
    }
    let written = (obj.status.as_ref() != Some(&plan.status)).then_some(&plan.status);
    ctx.shared
        .metrics
        .observe_schedule_status(&obj.uid().unwrap_or_default(), &status, written, now);
    ctx.error_backoff.reset(&crate::controllers::object_key(obj));
    Ok(match plan.requeue_at {
        // Exactly at the next event (or the override's end); a timer that fires a hair early finds nothing
        // due and comes back for the rest.
        Some(at) => Action::requeue((at - ctx.config.clock.now()).to_std().unwrap_or(Duration::ZERO)),
        None => Action::await_change(),
    })
}

/// Whether [`execute`] carried out the whole plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Executed {
    Done,
    /// The fence closed, or the schedule changed before the create: the plan's status is not true.
    Interrupted,
}

/// Suspend first (so two children never act at once), then create, then trim the history; each write only
/// while the fence is open, the create only while the schedule, read again, is unchanged and not suspended.
async fn execute(
    obj: &ComputePowerSchedule,
    schedules: &Api<ComputePowerSchedule>,
    fleets: &Api<ComputeFleetAction>,
    plan: &Plan,
    ctx: &Context,
) -> Result<Executed, Error> {
    let fence = &ctx.shared.fence;
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for name in &plan.suspend {
        if !fence.may_act() {
            return Ok(Executed::Interrupted);
        }
        let patch = Patch::Merge(serde_json::json!({"spec": {"suspend": true}}));
        match bounded(fleets.patch(name, &pp, &patch)).await {
            Ok(_) => tracing::info!(child = %name, "suspended a superseded child fleet"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::SuspendChild {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    if let Some(request) = &plan.create {
        let now = bounded(schedules.get(&obj.name_any()))
            .await
            .map_err(Error::ReadSchedule)?;
        if !super::plan::still_asks(obj, &now) {
            tracing::debug!(child = %request.name, "the schedule changed since it was read; deciding again");
            return Ok(Executed::Interrupted);
        }
        // After the read (which may take seconds), right before the create.
        if !fence.may_act() {
            return Ok(Executed::Interrupted);
        }
        let mut child = child_fleet(obj, request);
        // The child's deadline is read by the fleet controller on the real clock (tests shift this one).
        child.spec.not_after = child.spec.not_after.map(|t| t - ctx.config.clock.offset);
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        match bounded(fleets.create(&pp, &child)).await {
            Ok(_) => tracing::info!(child = %request.name, state = request.state.as_str(), "created a child fleet"),
            // Deterministic names: it was created by an earlier attempt whose status write was lost.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::debug!(child = %request.name, "child fleet exists already")
            }
            Err(source) => {
                return Err(Error::CreateChild {
                    name: request.name.clone(),
                    source,
                });
            }
        }
    }
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in &plan.delete {
        if !fence.may_act() {
            return Ok(Executed::Interrupted);
        }
        match bounded(fleets.delete(name, &dp)).await {
            Ok(_) => tracing::debug!(child = %name, "deleted an old child fleet (history limit)"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::DeleteChild {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    Ok(Executed::Done)
}

/// Publishes Events in the background (see [`crate::controllers::events`]).
async fn publish(ctx: &Context, obj: &ComputePowerSchedule, notes: &[Note]) {
    crate::controllers::events::publish(
        &ctx.recorder,
        Some(&ctx.event_slots),
        obj.object_ref(&()),
        "Schedule",
        notes.to_vec(),
    )
    .await;
}
