//! Carries out one planned step: GET the instance, persist the intent, POST, record the answer. Thin on purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::Context;
use super::cached::CachedAction;
use super::peers::peers_of;
use super::plan::{self, Note, Observation, Plan, PlanInput, Requeue};
use super::status_write::{StatusWrite, replace_status, write_after_post, write_if_changed};
use crate::api::{ApiError, PowerAction, Repeat};
use crate::controllers::events;
use crate::controllers::object_key;
use crate::controllers::runtime::STALE_RETRY;
use crate::crd::instance_action::{ActionState, ComputeInstanceAction, ComputeInstanceActionStatus};

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
    #[error("{0}")]
    Cache(#[source] super::cached::CacheError),
}

impl crate::controllers::runtime::ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::WriteStatus(_) => "WriteStatus",
            Self::ReadObject(_) => "ReadObject",
            Self::AdminApi(e) => e.reason(),
            Self::NoNamespace => "NoNamespace",
            Self::Cache(_) => "Cache",
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::AdminApi(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Records what a GET sent at `sent` showed; a change wakes every object on the instance (a settled
/// `continuous` peer that would otherwise trust the view until its next round corrects the drift now).
fn seen(ctx: &Context, instance: &crate::api::Instance, sent: std::time::Instant) {
    if ctx.view.record_at(instance, sent) {
        ctx.index.wake_instance(&instance.id);
    }
}

/// The reconcile entry point handed to kube-rs.
pub async fn reconcile(obj: Arc<CachedAction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = object_key(obj.as_ref());
    let span = tracing::info_span!("reconcile", object = %key, instance = %obj.facts().instance_id);
    // One concurrency limit across every watched namespace.
    let Ok(_slot) = ctx.slots.clone().acquire_owned().await else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    // The wait for a slot may be long (a burst): decide from the newest cached object, not the one handed over
    // when the reconcile was scheduled (our own write may have arrived meanwhile, and the memory covering it is
    // let go soon after the watch shows it: deciding from the older object was the burst's 409s).
    let obj = ctx.newest(&obj).map_err(Error::Cache)?;
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&obj, &ctx, &key).instrument(span).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

/// kube-rs error policy: the runtime's one policy ([`crate::controllers::runtime::errors`]).
pub fn error_policy(obj: Arc<CachedAction>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_backoff
        .back_off("instance", obj.as_ref(), err, &ctx.config.error_backoff, &ctx.metrics)
}

async fn reconcile_inner(cached: &ComputeInstanceAction, ctx: &Context, key: &str) -> Result<Action, Error> {
    let ns = cached.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ComputeInstanceAction> = Api::namespaced(ctx.kube.clone(), &ns);
    // Read your writes: the cache may not show our last write yet, nor progress we chose not to write.
    let base_rv = cached.resource_version().unwrap_or_default();
    let recalled = ctx.memory.recall(cached);
    let obj = &recalled;
    let generation = obj.metadata.generation.unwrap_or(0);
    let now = Utc::now();
    let mut status = obj.status.clone().unwrap_or_default();
    let instance_id = obj.spec.instance_id.clone();

    if obj.spec.suspend {
        let next = plan::plan_suspended(&status, generation, now);
        if write_if_changed(&api, obj, &base_rv, &status, &next, ctx).await? == StatusWrite::Stale {
            return Ok(Action::requeue(STALE_RETRY));
        }
        ctx.locks.release(&instance_id, key);
        return Ok(Action::await_change());
    }

    // An acceptance this process saw but could not persist (e.g. the API server was briefly away).
    recall_acceptance(&mut status, obj, ctx);

    // Denied whatever the instance is (no policy covers this namespace and state): no request at all.
    let early_denial = ctx.policy.denial_for_any_instance(obj);
    let observation = match &early_denial {
        Some(_) => Observation::Failed(crate::api::ApiError::Forbidden),
        None => match observe(ctx, obj, &status, generation).await {
            Looked::Now(o) => o,
            // Nothing decided and nothing written: the poll comes back after the page it waits for.
            Looked::OnNextPage => return Ok(Action::requeue(super::hot::HOT_TICK)),
        },
    };
    let instance = match &observation {
        Observation::Instance(i) => Some(i),
        Observation::Failed(_) => None,
    };
    let denial = match (&early_denial, &observation) {
        (Some(d), _) => Some(d.clone()),
        (None, Observation::Instance(i)) => ctx.policy.denial(obj, Some(i)),
        // Under enforce a missing instance looks the same as a denied one, unless a policy names its ID.
        (None, Observation::Failed(crate::api::ApiError::NotFound)) => ctx.policy.denial(obj, None),
        (None, Observation::Failed(_)) => None,
    };
    let (peers, recent_one_shots) = peers_of(ctx, obj, &status, instance, now);
    let holds = window_holds(ctx, obj, &ns, instance, now);
    let input = PlanInput {
        spec: &obj.spec,
        generation,
        status: &status,
        observation: &observation,
        peers: &peers,
        now,
        settings: &ctx.config.plan,
        policy_denial: denial.as_deref(),
        recent_one_shots,
        holds: &holds,
    };
    let mut plan = plan::plan(&input);
    // A disruption budget is asked only for an action about to be sent, and atomically: of two reconciles
    // racing for its last unit, one waits.
    if let Some(action) = plan.post {
        let intent_at = plan.status.action.as_ref().map_or(now, |a| a.intent_at);
        let show_counts = ctx.config.policy_mode == crate::crd::access_policy::PolicyMode::Off;
        if let Err(hold) = ctx
            .change
            .reserve(key, &instance_id, instance, action, intent_at, show_counts)
        {
            let mut with_budget = holds.clone();
            with_budget.0.push((action, hold));
            plan = plan::plan(&PlanInput {
                holds: &with_budget,
                ..input.clone()
            });
        }
    }
    if plan.status.conditions.iter().any(|c| {
        c.type_ == "Reconciling" && c.status == "True" && c.reason == crate::controllers::change::WAITING_FOR_BUDGET
    }) {
        ctx.index.wait_for_budget(key);
    }

    let Some(action) = plan.post else {
        if write_if_changed(&api, obj, &base_rv, &status, &plan.status, ctx).await? == StatusWrite::Stale {
            tracing::debug!("stale object in the cache; deciding again shortly");
            return Ok(Action::requeue(STALE_RETRY));
        }
        publish(ctx, obj, &plan.events).await;
        note_finished(ctx, obj, &status, &plan.status);
        if !holds_open_action(&plan.status) {
            ctx.locks.release(&instance_id, key);
            ctx.view.cool(&instance_id);
        }
        let watched_by_view =
            !holds_open_action(&plan.status) && ctx.view.fresh(&instance_id, ctx.config.plan.resync).is_some();
        return Ok(match plan.requeue {
            // The shared view looks at this instance every interval and wakes the object when it changes (or
            // is gone): the object keeps no timer of its own (a timer per object is ~1 KiB at 10,000 objects);
            // the controller's sweep (SETTLED_SWEEP_FACTOR intervals) is the safety net.
            Requeue::After(d) if watched_by_view && d >= ctx.config.plan.resync => {
                ctx.error_backoff.reset(key);
                Action::await_change()
            }
            r => requeue(ctx, key, r),
        });
    };
    act(obj, ctx, key, &api, plan, action, generation, &base_rv).await
}

/// What maintenance windows hold back now, for each action this object may send (its own, and the reset it
/// may escalate to). Only with the instance known: a window may select by its attributes.
fn window_holds(
    ctx: &Context,
    obj: &ComputeInstanceAction,
    ns: &str,
    instance: Option<&crate::api::Instance>,
    now: DateTime<Utc>,
) -> plan::Holds {
    let Some(instance) = instance else {
        return plan::Holds::default();
    };
    let labels = ctx.policy.labels_of(ns);
    let view = crate::crd::access_policy::NamespaceView {
        name: ns,
        labels: &labels,
    };
    let mut actions = vec![obj.spec.desired_state.action()];
    if obj.spec.escalation.is_some() {
        actions.push(PowerAction::Reset);
    }
    plan::Holds(
        actions
            .into_iter()
            .filter_map(|a| {
                ctx.change
                    .window_hold(&view, &obj.spec.instance_id, Some(instance), a, now)
                    .map(|h| (a, h))
            })
            .collect(),
    )
}

/// What [`observe`] found.
// Returned once per reconcile and matched at once, never stored: boxing the observation would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Looked {
    Now(Observation),
    /// An open action's instance is on a page the hot loop reads every tick, and no page has shown it since the
    /// acceptance yet: the next tick will (a GET now would only duplicate it).
    OnNextPage,
}

/// The instance as this reconcile sees it: a settled object (nothing open, this generation already judged) is
/// checked against the shared view with no request of its own; an open action follows the hot pages; anything
/// else GETs (and feeds the view).
async fn observe(
    ctx: &Context,
    obj: &ComputeInstanceAction,
    status: &ComputeInstanceActionStatus,
    generation: i64,
) -> Looked {
    let id = &obj.spec.instance_id;
    let settled = status.observed_generation == Some(generation)
        && !holds_open_action(status)
        && !matches!(
            status.phase,
            None | Some(crate::crd::instance_action::Phase::InProgress)
                | Some(crate::crd::instance_action::Phase::Pending)
        );
    if settled && let Some(seen) = ctx.view.fresh(id, ctx.config.plan.resync * 2) {
        return Looked::Now(Observation::Instance(seen));
    }
    // Following an open action: what the hot pages showed since its acceptance; not settled: a fresh entry.
    let sent = std::time::Instant::now();
    let recent = match super::hot::follow_since(status, Utc::now(), sent) {
        Some(since) => match ctx.view.following(id, since) {
            // Only for an acceptance of the last moments by this clock: one skewed into the future (another
            // replica's clock) or long past that no page showed is looked at with a GET.
            None if since <= sent && sent - since <= super::view::FOLLOW_FRESH && ctx.view.on_read_page(id) => {
                return Looked::OnNextPage;
            }
            seen => seen,
        },
        None if !settled => ctx.view.fresh(id, super::view::FOLLOW_FRESH),
        None => None,
    };
    if let Some(seen) = recent {
        return Looked::Now(Observation::Instance(seen));
    }
    tracing::debug!(instance = %id, settled, "GET to observe: the view holds nothing fresh enough");
    Looked::Now(match ctx.api.get_instance(id).await {
        Ok(i) => {
            seen(ctx, &i, sent);
            Observation::Instance(i)
        }
        Err(e) => {
            if matches!(e, crate::api::ApiError::NotFound) {
                ctx.view.forget(id);
            }
            Observation::Failed(e)
        }
    })
}

/// Write-ahead intent, POST, record the answer.
// The steps of one action in order; splitting it would only scatter them.
#[allow(clippy::too_many_arguments)]
async fn act(
    obj: &ComputeInstanceAction,
    ctx: &Context,
    key: &str,
    api: &Api<ComputeInstanceAction>,
    plan: Plan,
    action: PowerAction,
    generation: i64,
    base_rv: &str,
) -> Result<Action, Error> {
    let instance_id = &obj.spec.instance_id;
    if !ctx
        .locks
        .try_acquire(instance_id, key, |holder| ctx.index.contains(holder))
    {
        tracing::debug!(holder = ?ctx.locks.holder(instance_id), "instance busy in this process; waiting");
        ctx.change.release(key);
        return Ok(Action::requeue(ctx.config.plan.poll_min));
    }
    // A replica that lost its lease must not act (checked again right before the POST).
    if !ctx.fence.may_act() {
        ctx.locks.release(instance_id, key);
        ctx.change.release(key);
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // The intent write fails if the object changed since we read it (resourceVersion precondition).
    let written = match replace_status(api, obj, &plan.status, ctx).await {
        Ok(o) => {
            ctx.memory
                .hold(&o, base_rv, &o.resource_version().unwrap_or_default(), &plan.status);
            o
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            ctx.memory.forget(obj);
            ctx.locks.release(instance_id, key);
            ctx.change.release(key);
            tracing::debug!("the object changed meanwhile; not acting on it");
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        Err(e) => {
            ctx.locks.release(instance_id, key);
            ctx.change.release(key);
            return Err(Error::WriteStatus(e));
        }
    };
    publish(ctx, obj, &plan.events).await;
    // Last look right before the POST: the lease (a paused leader resumes here with its fence closed) and
    // notAfter. Not sent, so the record says so, written only over our own intent (never a successor's).
    if let Some(why) = not_sending_now(ctx, obj) {
        return Ok(record_not_sent(api, ctx, obj, &written, &plan.status, why, key).await);
    }
    let repeat = if action.is_one_shot() {
        Repeat::Never
    } else {
        Repeat::SafeToRepeat
    };
    // The fence and notAfter are asked again after the client's rate-limit wait, right before the request
    // leaves (the wait may be long when many objects act at once).
    let last_word = std::sync::Mutex::new(None);
    let result = ctx
        .api
        .act_gated(instance_id, action, repeat, &|| {
            let why = not_sending_now(ctx, obj);
            let clear = why.is_none();
            *last_word.lock().unwrap_or_else(|p| p.into_inner()) = why;
            clear
        })
        .await;
    if result == Err(ApiError::NotSent) {
        let why = last_word
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or("NotLeader");
        return Ok(record_not_sent(api, ctx, obj, &written, &plan.status, why, key).await);
    }
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
    let mut next = plan::after_post(
        &plan.status,
        &obj.spec,
        generation,
        &result,
        Utc::now(),
        &ctx.config.plan,
    );
    // A restart/reset can be over before the first poll: one look now, before the acceptance is written.
    // Not needed when the hot pages, which show this instance every tick, are known to catch the departure.
    let sent = std::time::Instant::now();
    if action.is_one_shot()
        && result.is_ok()
        && !ctx.view.departure_visible(instance_id)
        && let Ok(seen) = {
            tracing::debug!(instance = %instance_id, "GET for the first look: the hot pages may miss the departure");
            ctx.api.get_instance(instance_id).await
        }
    {
        self::seen(ctx, &seen, sent);
        next.status = plan::first_look(&next.status, &seen.status);
    }
    // A level's acceptance stays in memory (resending a level is harmless); a one-shot's is written.
    if action.is_one_shot() || !matches!(result, Ok(())) {
        write_after_post(api, &written, &next.status, ctx).await?;
    } else {
        let rv = written.resource_version().unwrap_or_default();
        ctx.memory.hold(&written, &rv, &rv, &next.status);
    }
    publish(ctx, obj, &next.events).await;
    if !holds_open_action(&next.status) {
        ctx.locks.release(instance_id, key);
    }
    Ok(requeue(ctx, key, next.requeue))
}

/// Records that the intent just written was not sent (`why`), only over that intent (never over a successor's
/// record), and lets go of the instance.
async fn record_not_sent(
    api: &Api<ComputeInstanceAction>,
    ctx: &Context,
    obj: &ComputeInstanceAction,
    written: &ComputeInstanceAction,
    intent: &ComputeInstanceActionStatus,
    why: &'static str,
    key: &str,
) -> Action {
    let not_sent = plan::not_sent(intent, why, Utc::now());
    match replace_status(api, written, &not_sent, ctx).await {
        Ok(o) => ctx.memory.hold(
            &o,
            &written.resource_version().unwrap_or_default(),
            &o.resource_version().unwrap_or_default(),
            &not_sent,
        ),
        Err(kube::Error::Api(s)) if s.code == 409 => ctx.memory.forget(obj),
        Err(e) => tracing::warn!(error = %e, "could not record an action that was not sent"),
    }
    ctx.locks.release(&obj.spec.instance_id, key);
    ctx.change.release(key);
    tracing::info!(reason = why, "action not sent");
    Action::requeue(Duration::from_secs(1))
}

/// Why an action planned a moment ago must not be sent now, if it must not.
fn not_sending_now(ctx: &Context, obj: &ComputeInstanceAction) -> Option<&'static str> {
    if !ctx.fence.may_act() {
        return Some("NotLeader");
    }
    if obj.spec.not_after.is_some_and(|t| Utc::now() > t) {
        return Some("Expired");
    }
    None
}

/// Every object is re-checked once every this many resync intervals (a settled object whose instance the
/// shared view watches has no timer of its own; this sweep is its safety net).
pub const SETTLED_SWEEP_FACTOR: u32 = 10;

pub(super) fn holds_open_action(status: &ComputeInstanceActionStatus) -> bool {
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
        Requeue::Exactly(d) => {
            ctx.error_backoff.reset(key);
            Action::requeue(d)
        }
        Requeue::Backoff { retry_after } => {
            Action::requeue(ctx.error_backoff.next(key, &ctx.config.error_backoff, retry_after))
        }
    }
}

/// Publishes the plan's Events off the reconcile path (see [`crate::controllers::events`]).
async fn publish(ctx: &Context, obj: &ComputeInstanceAction, events: &[Note]) {
    let notes = events.to_vec();
    events::publish(
        &ctx.recorder,
        Some(&ctx.event_slots),
        obj.object_ref(&()),
        "Reconcile",
        notes,
    )
    .await;
}

pub(crate) type AcceptanceMemory = Mutex<HashMap<(String, DateTime<Utc>), DateTime<Utc>>>;
