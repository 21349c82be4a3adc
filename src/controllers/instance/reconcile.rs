//! Carries out one planned step: GET the instance, persist the intent, POST, record the answer. Thin on purpose.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::Context;
use super::plan::{self, EventNote, Observation, Peer, Plan, PlanInput, Requeue};
use crate::api::{ApiError, PowerAction, Repeat};
use crate::resource::{ActionState, ComputeInstanceAction, ComputeInstanceActionStatus};

/// Field manager of every status write: one owner of `.status`.
pub const FIELD_MANAGER: &str = "compute-operator";

/// Errors of one reconcile. Named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("reading the object back: {0}")]
    ReadObject(#[source] kube::Error),
    #[error("admin API: {0}")]
    AdminApi(#[from] ApiError),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::WriteStatus(_) => "WriteStatus",
            Self::ReadObject(_) => "ReadObject",
            Self::AdminApi(e) => e.reason(),
            Self::NoNamespace => "NoNamespace",
        }
    }
}

/// Per-object error counts for exponential backoff (kube-rs requeues errors at a fixed delay otherwise).
#[derive(Debug, Default)]
pub struct ErrorBackoff {
    attempts: Mutex<HashMap<String, u32>>,
}

impl ErrorBackoff {
    /// The next delay for `key`, counting this failure.
    pub fn next(&self, key: &str, backoff: &crate::api::backoff::Backoff, retry_after: Option<Duration>) -> Duration {
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        let delay = backoff.delay(*n, rand::random::<f64>(), retry_after);
        *n = n.saturating_add(1);
        delay
    }

    pub fn reset(&self, key: &str) {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

pub(crate) fn object_key(obj: &ComputeInstanceAction) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The reconcile entry point handed to kube-rs.
pub async fn reconcile(obj: Arc<ComputeInstanceAction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = object_key(&obj);
    let span = tracing::info_span!("reconcile", object = %key, instance = %obj.spec.instance_id);
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&obj, &ctx, &key).instrument(span).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

/// kube-rs error policy: per-object jittered exponential backoff honouring `Retry-After`.
pub fn error_policy(obj: Arc<ComputeInstanceAction>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(&obj);
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: err.reason().into(),
        })
        .inc();
    let retry_after = match err {
        Error::AdminApi(e) => e.retry_after(),
        _ => None,
    };
    let delay = ctx.error_backoff.next(&key, &ctx.config.error_backoff, retry_after);
    tracing::warn!(object = %key, error = %err, delay_ms = delay.as_millis() as u64, "reconcile failed; backing off");
    Action::requeue(delay)
}

async fn reconcile_inner(obj: &ComputeInstanceAction, ctx: &Context, key: &str) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ComputeInstanceAction> = Api::namespaced(ctx.kube.clone(), &ns);
    let generation = obj.metadata.generation.unwrap_or(0);
    let now = Utc::now();
    let mut status = obj.status.clone().unwrap_or_default();
    let instance_id = obj.spec.instance_id.clone();

    if obj.spec.suspend {
        let next = plan::plan_suspended(&status, generation, now);
        if write_if_changed(&api, obj, &status, &next, ctx).await? == StatusWrite::Stale {
            return Ok(Action::requeue(STALE_RETRY));
        }
        ctx.locks.release(&instance_id, key);
        return Ok(Action::await_change());
    }

    // An acceptance this process saw but could not persist (e.g. the API server was briefly away).
    recall_acceptance(&mut status, obj, ctx);

    let observation = match ctx.api.get_instance(&instance_id).await {
        Ok(i) => Observation::Instance(i),
        Err(e) => Observation::Failed(e),
    };
    let (peers, recent_one_shots) = peers_of(&ctx.stores, obj, &status, now, ctx.config.plan.one_shot_window);
    let denial = match &observation {
        Observation::Instance(i) => ctx.policy.denial(&ctx.kube, obj, i).await,
        Observation::Failed(_) => None,
    };
    let plan = plan::plan(&PlanInput {
        spec: &obj.spec,
        generation,
        status: &status,
        observation: &observation,
        peers: &peers,
        now,
        settings: &ctx.config.plan,
        policy_denial: denial.as_deref(),
        recent_one_shots,
    });

    let Some(action) = plan.post else {
        if write_if_changed(&api, obj, &status, &plan.status, ctx).await? == StatusWrite::Stale {
            tracing::debug!("stale object in the cache; deciding again shortly");
            return Ok(Action::requeue(STALE_RETRY));
        }
        publish(ctx, obj, &plan.events).await;
        note_finished(ctx, obj, &status, &plan.status);
        if !holds_open_action(&plan.status) {
            ctx.locks.release(&instance_id, key);
        }
        return Ok(requeue(ctx, key, plan.requeue));
    };
    act(obj, ctx, key, &api, plan, action, generation).await
}

/// Write-ahead intent, POST, record the answer.
async fn act(
    obj: &ComputeInstanceAction,
    ctx: &Context,
    key: &str,
    api: &Api<ComputeInstanceAction>,
    plan: Plan,
    action: PowerAction,
    generation: i64,
) -> Result<Action, Error> {
    let instance_id = &obj.spec.instance_id;
    let stores = ctx.stores.clone();
    if !ctx
        .locks
        .try_acquire(instance_id, key, |holder| object_exists(&stores, holder))
    {
        tracing::debug!(holder = ?ctx.locks.holder(instance_id), "instance busy in this process; waiting");
        return Ok(Action::requeue(ctx.config.plan.poll_min));
    }
    // A replica that lost its lease must not act.
    if !ctx.may_act.load(Ordering::SeqCst) {
        ctx.locks.release(instance_id, key);
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // The intent write fails if the object changed since we read it (resourceVersion precondition).
    let written = match replace_status(api, obj, &plan.status, ctx).await {
        Ok(o) => o,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            ctx.locks.release(instance_id, key);
            tracing::debug!("stale object; not acting on it");
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        Err(e) => {
            ctx.locks.release(instance_id, key);
            return Err(Error::WriteStatus(e));
        }
    };
    publish(ctx, obj, &plan.events).await;
    let repeat = if action.is_one_shot() {
        Repeat::Never
    } else {
        Repeat::SafeToRepeat
    };
    let result = ctx.api.act(instance_id, action, repeat).await;
    let outcome = match &result {
        Ok(()) => "accepted",
        Err(e) if e.may_have_reached_server() => "unknown",
        Err(_) => "refused",
    };
    ctx.metrics.count_action(action.as_str(), outcome);
    tracing::info!(
        action = action.as_str(),
        outcome,
        error = result.as_ref().err().map(tracing::field::display),
        "action sent"
    );
    let intent_at = plan.status.action.as_ref().map(|a| a.intent_at);
    if result.is_ok()
        && let Some(at) = intent_at
    {
        ctx.remember_acceptance(obj, at, Utc::now());
    }
    let next = plan::after_post(
        &plan.status,
        &obj.spec,
        generation,
        &result,
        Utc::now(),
        &ctx.config.plan,
    );
    write_after_post(api, &written, &next.status, ctx).await?;
    publish(ctx, obj, &next.events).await;
    if !holds_open_action(&next.status) {
        ctx.locks.release(instance_id, key);
    }
    Ok(requeue(ctx, key, next.requeue))
}

/// After a POST the answer must be recorded even if the object changed meanwhile (a spec edit): re-read and
/// retry a few times, since status is ours alone.
async fn write_after_post(
    api: &Api<ComputeInstanceAction>,
    written: &ComputeInstanceAction,
    status: &ComputeInstanceActionStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let mut base = written.clone();
    for attempt in 0..5 {
        match replace_status(api, &base, status, ctx).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => {
                base = api.get_status(&base.name_any()).await.map_err(Error::ReadObject)?;
            }
            Err(e) => return Err(Error::WriteStatus(e)),
        }
    }
    Ok(())
}

/// Whether a planned status reached the API server.
#[derive(Debug, PartialEq, Eq)]
enum StatusWrite {
    Unchanged,
    Written,
    /// The cached object was stale (409): the plan was made from old data and is dropped.
    Stale,
}

/// Retry delay after a stale read: our own status writes do not trigger a reconcile (generation predicate),
/// so waiting for the watch would mean waiting for the next resync.
const STALE_RETRY: Duration = Duration::from_millis(250);

async fn write_if_changed(
    api: &Api<ComputeInstanceAction>,
    obj: &ComputeInstanceAction,
    old: &ComputeInstanceActionStatus,
    new: &ComputeInstanceActionStatus,
    ctx: &Context,
) -> Result<StatusWrite, Error> {
    if old == new && obj.status.is_some() {
        return Ok(StatusWrite::Unchanged);
    }
    match replace_status(api, obj, new, ctx).await {
        Ok(_) => Ok(StatusWrite::Written),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(StatusWrite::Stale),
        Err(e) => Err(Error::WriteStatus(e)),
    }
}

/// PUT on the status subresource carrying the object's resourceVersion: fails with 409 if it is stale.
async fn replace_status(
    api: &Api<ComputeInstanceAction>,
    obj: &ComputeInstanceAction,
    status: &ComputeInstanceActionStatus,
    ctx: &Context,
) -> Result<ComputeInstanceAction, kube::Error> {
    let mut body = ComputeInstanceAction::new(&obj.name_any(), obj.spec.clone());
    body.metadata.namespace = obj.namespace();
    body.metadata.resource_version = obj.resource_version();
    body.status = Some(status.clone());
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let result = api.replace_status(&obj.name_any(), &pp, &body).await;
    if result.is_ok() {
        ctx.metrics.status_writes.inc();
    }
    result
}

fn holds_open_action(status: &ComputeInstanceActionStatus) -> bool {
    status
        .action
        .as_ref()
        .is_some_and(|a| matches!(a.state, ActionState::Requested | ActionState::Accepted))
}

/// Metrics for an action that just finished.
fn note_finished(
    ctx: &Context,
    obj: &ComputeInstanceAction,
    before: &ComputeInstanceActionStatus,
    after: &ComputeInstanceActionStatus,
) {
    let (Some(b), Some(a)) = (before.action.as_ref(), after.action.as_ref()) else {
        return;
    };
    if !b.state.is_terminal() && a.state.is_terminal() {
        let result = match a.state {
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            _ => "unknown",
        };
        ctx.metrics.count_action(a.action.as_str(), result);
        if let Some(done) = a.completed_at {
            let secs = (done - a.intent_at).to_std().unwrap_or_default().as_secs_f64();
            ctx.metrics
                .action_duration
                .get_or_create(&crate::metrics::ActionLabel {
                    action: a.action.as_str().into(),
                })
                .observe(secs);
        }
        ctx.forget_acceptance(obj);
    }
}

fn recall_acceptance(status: &mut ComputeInstanceActionStatus, obj: &ComputeInstanceAction, ctx: &Context) {
    if let Some(a) = status.action.as_mut()
        && a.state == ActionState::Requested
        && let Some(accepted_at) = ctx.recalled_acceptance(obj, a.intent_at)
    {
        a.state = ActionState::Accepted;
        a.accepted_at = Some(accepted_at);
    }
}

fn requeue(ctx: &Context, key: &str, r: Requeue) -> Action {
    match r {
        Requeue::After(d) => {
            ctx.error_backoff.reset(key);
            // Spread long requeues (resyncs) so they do not all land at once.
            if d >= Duration::from_secs(30) {
                Action::requeue(d.mul_f64(0.9 + 0.2 * rand::random::<f64>()))
            } else {
                Action::requeue(d)
            }
        }
        Requeue::Backoff { retry_after } => {
            Action::requeue(ctx.error_backoff.next(key, &ctx.config.error_backoff, retry_after))
        }
    }
}

/// Publishes Events off the reconcile path (they are best-effort and cost API server round trips), in order,
/// with a bound on how many batches are in flight.
async fn publish(ctx: &Context, obj: &ComputeInstanceAction, events: &[EventNote]) {
    if events.is_empty() {
        return;
    }
    let permit = ctx
        .event_slots
        .clone()
        .acquire_owned()
        .await
        .expect("the event semaphore is never closed");
    let reference = obj.object_ref(&());
    let recorder = ctx.recorder.clone();
    let events: Vec<KubeEvent> = events
        .iter()
        .map(|e| KubeEvent {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(e.note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        })
        .collect();
    tokio::spawn(async move {
        for event in &events {
            if let Err(err) = recorder.publish(event, &reference).await {
                tracing::warn!(error = %err, reason = %event.reason, "could not publish event");
            }
        }
        drop(permit);
    });
}

/// Does `namespace/name` still exist in any watched store?
fn object_exists(stores: &[kube::runtime::reflector::Store<ComputeInstanceAction>], key: &str) -> bool {
    let Some((ns, name)) = key.split_once('/') else {
        return false;
    };
    let r = ObjectRef::<ComputeInstanceAction>::new(name).within(ns);
    stores.iter().any(|s| s.get(&r).is_some())
}

/// Other objects naming the same instance, from the caches, and the restart/reset actions sent to the
/// instance (by this object or its peers) within the loop-protection window.
pub(crate) fn peers_of(
    stores: &[kube::runtime::reflector::Store<ComputeInstanceAction>],
    obj: &ComputeInstanceAction,
    own_status: &ComputeInstanceActionStatus,
    now: DateTime<Utc>,
    window: Duration,
) -> (Vec<Peer>, u32) {
    let uid = obj.uid();
    let others: Vec<_> = stores
        .iter()
        .flat_map(|s| s.state_filter(|o| o.spec.instance_id == obj.spec.instance_id && o.uid() != uid))
        .collect();
    let statuses = others
        .iter()
        .filter_map(|o| o.status.as_ref())
        .chain(std::iter::once(own_status));
    let recent = plan::count_recent_one_shots(statuses, now, window);
    let peers = others
        .iter()
        .map(|o| Peer {
            key: object_key(o),
            desired: o.spec.desired_state,
            enforcement: o.spec.enforcement,
            suspended: o.spec.suspend,
            acting: o.status.as_ref().is_some_and(holds_open_action),
        })
        .collect();
    (peers, recent)
}

pub(crate) type AcceptanceMemory = Mutex<HashMap<(String, DateTime<Utc>), DateTime<Utc>>>;
