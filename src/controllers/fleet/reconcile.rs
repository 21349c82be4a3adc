//! Carries out one fleet plan: read the fleet and its children fresh, list the selection (narrowed by the
//! namespace's policies, within the list budget) when the plan needs it, then delete/sync/create children
//! through the fence, each create only while the fleet, read again, still asks for it, and write the status.
//! Thin on purpose: decisions are in plan.rs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::Context;
use super::children::{self, ChildView, FLEET_LABEL, SyncedFields};
use super::plan::{self, Candidate, PlanInput, Selection, Unlisted};
use crate::api::ApiError;
use crate::controllers::runtime::lookups;
use crate::controllers::runtime::walk::{self, Listed, WalkRules};
use crate::controllers::runtime::{self, Written, bounded};
use crate::crd::access_policy::Coverage;
use crate::crd::fleet_action::ComputeFleetAction;
use crate::crd::instance_action::ComputeInstanceAction;

/// Field manager of the fleet's writes (its status and its children).
pub const FIELD_MANAGER: &str = "compute-operator-fleet";

/// Errors of one fleet reconcile, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the fleet: {0}")]
    ReadFleet(#[source] kube::Error),
    #[error("listing the fleet's children: {0}")]
    ListChildren(#[source] kube::Error),
    #[error("creating child {0}: {1}")]
    CreateChild(String, #[source] kube::Error),
    #[error("deleting child {0}: {1}")]
    DeleteChild(String, #[source] kube::Error),
    #[error("updating child {0}: {1}")]
    SyncChild(String, #[source] kube::Error),
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("listing the selection from the admin API: {0}")]
    ListSelection(#[source] ApiError),
    #[error("listing the selection timed out")]
    ListTimeout,
    #[error("object has no namespace")]
    NoNamespace,
}

impl crate::controllers::runtime::ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Self::ReadFleet(_) => "ReadFleet",
            Self::ListChildren(_) => "ListChildren",
            Self::CreateChild(..) => "CreateChild",
            Self::DeleteChild(..) => "DeleteChild",
            Self::SyncChild(..) => "SyncChild",
            Self::WriteStatus(_) => "WriteStatus",
            Self::ListSelection(e) => e.reason(),
            Self::ListTimeout => "ListTimeout",
            Self::NoNamespace => "NoNamespace",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::ListSelection(e) => e.retry_after(),
            _ => None,
        }
    }
}

pub async fn reconcile(fleet: Arc<ComputeFleetAction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = crate::controllers::object_key(fleet.as_ref());
    let span = tracing::info_span!("reconcile_fleet", fleet = %key);
    let result = reconcile_inner(&fleet, &ctx).instrument(span).await;
    if result.is_ok() {
        ctx.errors.reset(&key);
    }
    result
}

/// kube-rs error policy: the runtime's one policy ([`crate::controllers::runtime::errors`]).
pub fn error_policy(fleet: Arc<ComputeFleetAction>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.errors.back_off(
        "fleet",
        fleet.as_ref(),
        error,
        &ctx.config.run.error_backoff,
        &ctx.shared.metrics,
    )
}

async fn reconcile_inner(cached: &ComputeFleetAction, ctx: &Context) -> Result<Action, Error> {
    if !ctx.shared.fence.may_act() {
        // Only the leader walks, creates and writes: a replica without the lease (or a leader paused past
        // it) spends no admin API budget and writes nothing.
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    }
    let ns = cached.namespace().ok_or(Error::NoNamespace)?;
    let name = cached.name_any();
    let fleets: Api<ComputeFleetAction> = Api::namespaced(ctx.shared.kube.clone(), &ns);
    // The cache may not have our last status write yet (its snapshot, the instances started): read it fresh.
    let read_at = std::time::Instant::now();
    let fleet = match bounded(fleets.get(&name)).await {
        Ok(f) => f,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            ctx.forget(cached);
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::ReadFleet(e)),
    };
    let fleet = &fleet;
    if fleet.meta().deletion_timestamp.is_some() || fleet.uid() != cached.uid() {
        // Garbage collection removes the children; nothing here acts on an instance.
        ctx.forget(cached);
        return Ok(Action::await_change());
    }
    let uid = fleet.uid().unwrap_or_default();
    let cias: Api<ComputeInstanceAction> = Api::namespaced(ctx.shared.kube.clone(), &ns);

    // A consistent read (not a cache): children created by the last round are always counted, so the
    // in-flight cap holds even when the watch lags.
    // Between consistent reads, the children's projection plus the children created here (child_cache.rs).
    let label = children::fleet_label_value(&name);
    let began = std::time::Instant::now();
    let cached = ctx.children.children(&ns, &uid);
    let consistent = cached.is_none();
    let children: Vec<ChildView> = match cached {
        Some(c) => c,
        None => {
            let lp = ListParams::default().labels(&format!("{FLEET_LABEL}={label}"));
            let listed = bounded(cias.list(&lp)).await.map_err(Error::ListChildren)?;
            ctx.children.read_consistently(&uid);
            listed
                .items
                .iter()
                .filter(|c| c.owner_references().iter().any(|o| o.uid == uid))
                .map(ChildView::of)
                .collect()
        }
    };
    let list_ms = began.elapsed().as_millis() as u64;

    let status = fleet.status.clone().unwrap_or_default();
    let now = Utc::now();
    // The operator-wide `--dry-run` reads as the fleet's own.
    let mut spec = fleet.spec.clone();
    spec.dry_run |= ctx.config.dry_run;
    let spec = &spec;
    let settings = ctx.config.settings;
    let coverage = ctx.shared.gate.coverage(&ns, spec.desired_state);
    let remembered = ctx.cached_selection(&uid, &fleet.spec.selector);
    let mut unlisted = None;
    let mut listing_walked = false;
    let listing = if coverage.is_nothing() && !spec.suspend {
        // No policy could allow it: nothing is asked of the admin API, whatever the selector says.
        unlisted = Some(Unlisted::PolicyDenied);
        None
    } else if plan::needs_selection(spec, &status, remembered.as_ref().map(|l| l.listed_at), now, settings) {
        match ctx.shared.lists.turn(&ns) {
            // A level fleet that listed before goes on from that listing while another walk of its namespace
            // runs (it relists next round): a settled fleet does not flap to Reconciling for its routine relist.
            None if remembered.is_some() && plan::run_kind(spec) == plan::RunKind::Level => remembered,
            None => {
                unlisted = Some(Unlisted::WaitingForListBudget);
                None
            }
            Some(_turn) => {
                listing_walked = true;
                let fresh = list_selection(ctx, fleet, &coverage).await?;
                ctx.store_selection(&uid, &fleet.spec.selector, fresh.clone());
                Some(fresh)
            }
        }
    } else {
        remembered
    };
    let selection = listing.map(|l| Selection {
        listed_at: l.listed_at,
        candidates: l
            .members
            .into_iter()
            .map(|(id, status)| Candidate {
                held: l.held.contains(&id),
                id,
                status,
            })
            .collect(),
        complete: l.complete,
    });

    let planned = plan::plan(&PlanInput {
        fleet_name: &name,
        fleet_uid: &uid,
        namespace: &ns,
        generation: fleet.meta().generation,
        spec,
        status: &status,
        selection: selection.as_ref(),
        unlisted,
        children: &children,
        now,
        settings,
    });

    // A walk can take long (slow pages): deletes and spec syncs, like creates, are for the fleet as it is now.
    if (!planned.delete.is_empty() || !planned.sync.is_empty()) && !same_spec_now(&fleets, fleet).await? {
        tracing::debug!("the fleet changed during the round; deciding again");
        return Ok(Action::requeue(runtime::STALE_RETRY));
    }
    let fence = &ctx.shared.fence;
    for child in &planned.delete {
        if !fence.may_act() {
            break;
        }
        match bounded(cias.delete(child, &DeleteParams::background())).await {
            Ok(_) => tracing::info!(child, "deleted a finished child of an earlier run"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::DeleteChild(child.clone(), e)),
        }
    }
    if !planned.sync.is_empty() {
        let patch = serde_json::json!({ "spec": SyncedFields::of_fleet(spec) });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        for child in &planned.sync {
            if !fence.may_act() {
                break;
            }
            match bounded(cias.patch(child, &pp, &Patch::Merge(&patch))).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::SyncChild(child.clone(), e)),
            }
        }
    }
    let planned_at = began.elapsed().as_millis() as u64;
    // The round's own read stands for the first batch's when nothing but planning came between.
    let only_planned = !consistent && !listing_walked && planned.delete.is_empty() && planned.sync.is_empty();
    let read_now = only_planned.then_some(read_at);
    let (created, create_error) = create_children(ctx, fleet, &fleets, &cias, &planned.create, read_now).await;
    if ctx.is_gone(&uid) {
        // Deleted during the round: what it created goes with it (garbage collection); keep nothing.
        return Ok(Action::await_change());
    }
    ctx.children.created(
        &uid,
        created
            .iter()
            .map(|new| ChildView::of(&children::child_object(fleet, &new.name, &new.instance_id))),
    );
    let created_at = began.elapsed().as_millis() as u64;
    if !created.is_empty() {
        tracing::info!(count = created.len(), "created children");
    }
    let mut new_status = planned.status.clone();
    plan::record_started(&mut new_status, &created);
    // What was planned but not created is still pending.
    let not_created = (planned.create.len() - created.len()) as u32;
    new_status.in_progress -= not_created;
    new_status.pending += not_created;
    let written = if fleet.status.is_some() && status == new_status {
        Written::Unchanged
    } else if !ctx.shared.fence.may_act() {
        // A replica that lost the lease writes nothing; the leader's next round writes this round's truth.
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    } else {
        let body = new_status.clone();
        runtime::write_status(&fleets, fleet, FIELD_MANAGER, |f| f.status = Some(body))
            .await
            .map_err(Error::WriteStatus)?
    };
    tracing::debug!(
        children = children.len(),
        consistent,
        list_ms,
        planned_ms = planned_at,
        created_ms = created_at,
        written_ms = began.elapsed().as_millis() as u64,
        "fleet round timed"
    );
    if !ctx.is_gone(&uid) {
        ctx.shared
            .metrics
            .observe_fleet_status(&uid, &status, (written == Written::Written).then_some(&new_status));
    }
    match written {
        Written::Written => publish(ctx, fleet, planned.events).await,
        // Stale: the fleet changed meanwhile; the change wakes another reconcile.
        Written::Stale => return Ok(Action::requeue(runtime::STALE_RETRY)),
        Written::Unchanged => {}
    }
    if let Some(e) = create_error {
        return Err(e);
    }
    Ok(Action::requeue(planned.requeue))
}

/// Is the fleet, read again, the one this round planned for (same object and spec generation, not being
/// deleted)? Unlike [`plan::still_asks`] a pause or suspend does not stop it: that change bumps the generation
/// and is planned (and synced) by the next round.
async fn same_spec_now(fleets: &Api<ComputeFleetAction>, fleet: &ComputeFleetAction) -> Result<bool, Error> {
    match bounded(fleets.get(&fleet.name_any())).await {
        Ok(now) => Ok(plan::same_spec(fleet, &now)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::ReadFleet(e)),
    }
}

/// Creates at most this many children at once.
const CREATE_CONCURRENCY: usize = 8;

/// How recent the round's own read of the fleet must be to stand for the first batch's read.
const FRESH_READ: std::time::Duration = std::time::Duration::from_millis(50);

/// Creates the planned children, [`CREATE_CONCURRENCY`] at a time, each batch only while the fence is open and
/// the fleet, read again right before the batch, still asks for it: a pause, suspend, spec change or delete
/// that landed during the walk (or an earlier batch) creates nothing more. The created ones (or found
/// existing), and the first error. `read_at`: when the round read the fleet, if only planning came after;
/// within [`FRESH_READ`] of it that read is the first batch's.
async fn create_children(
    ctx: &Context,
    fleet: &ComputeFleetAction,
    fleets: &Api<ComputeFleetAction>,
    cias: &Api<ComputeInstanceAction>,
    planned: &[plan::NewChild],
    read_at: Option<std::time::Instant>,
) -> (Vec<plan::NewChild>, Option<Error>) {
    let name = fleet.name_any();
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let mut created = Vec::new();
    for (n, batch) in planned.chunks(CREATE_CONCURRENCY).enumerate() {
        // Only the leader starts anything, and only for the fleet as it is now: the fence is checked after
        // the read (which may take seconds), right before the creates.
        let just_read = n == 0 && read_at.is_some_and(|t| t.elapsed() < FRESH_READ);
        if !just_read {
            match bounded(fleets.get(&name)).await {
                Ok(now_seen) if plan::still_asks(fleet, &now_seen) => {}
                Ok(_) | Err(kube::Error::Api(_)) => return (created, None),
                Err(e) => return (created, Some(Error::ReadFleet(e))),
            }
        }
        if !ctx.shared.fence.may_act() {
            return (created, None);
        }
        let results = futures::future::join_all(batch.iter().map(|new| {
            let obj = children::child_object(fleet, &new.name, &new.instance_id);
            let pp = &pp;
            async move {
                match bounded(cias.create(pp, &obj)).await {
                    Ok(_) => Ok(new.clone()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(new.clone()),
                    Err(e) => Err(Error::CreateChild(new.name.clone(), e)),
                }
            }
        }))
        .await;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(new) => created.push(new),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_some() {
            return (created, first_error);
        }
    }
    (created, None)
}

/// Publishes the plan's Events in the background (see [`crate::controllers::events`]).
async fn publish(ctx: &Context, fleet: &ComputeFleetAction, events: Vec<plan::Note>) {
    crate::controllers::events::publish(&ctx.recorder, None, fleet.object_ref(&()), "Rollout", events).await;
}

/// Walks the selection, narrowed by what the namespace may power: only instances the namespace may power are
/// kept, and (under a policy) an explicit ID that is missing reads like one that is not the namespace's.
async fn list_selection(ctx: &Context, fleet: &ComputeFleetAction, coverage: &Coverage) -> Result<Listed, Error> {
    let selector = &fleet.spec.selector;
    let plan = lookups::lookups(selector, coverage);
    let policy = &ctx.shared.gate;
    let keep = |i: &crate::api::Instance| {
        lookups::selected(selector, i) && {
            let probe = children::child_object(fleet, "policy-probe", &i.id);
            policy.denial(&probe, Some(i)).is_none()
        }
    };
    // A dry run reports what a maintenance window would hold back now (children ask the gate themselves).
    let labels = policy.labels_of(&fleet.namespace().unwrap_or_default());
    let ns = fleet.namespace().unwrap_or_default();
    let view = crate::crd::access_policy::NamespaceView {
        name: &ns,
        labels: &labels,
    };
    let action = fleet.spec.desired_state.action();
    let now = Utc::now();
    let held = |i: &crate::api::Instance| {
        ctx.shared
            .change
            .window_hold(&view, &i.id, Some(i), action, now)
            .is_some()
    };
    let dry_run = fleet.spec.dry_run || ctx.config.dry_run;
    let rules = WalkRules {
        held: dry_run.then_some(&held as &(dyn Fn(&crate::api::Instance) -> bool + Sync)),
        keep: &keep,
        keep_missing: matches!(coverage, Coverage::Everything),
        attempts: if plan::run_kind(&fleet.spec) == plan::RunKind::Level {
            1
        } else {
            walk::WALK_ATTEMPTS
        },
    };
    let walked = walk::walk(&ctx.shared.api, &ctx.shared.lists, &plan, &rules);
    tokio::time::timeout(walk::SELECTION_TIMEOUT, walked)
        .await
        .map_err(|_| Error::ListTimeout)?
        .map_err(Error::ListSelection)
}
