//! Carries out one fleet plan: read the children (a consistent list), list the selection when the plan needs
//! it, then delete/sync/create children and write the fleet's status. Thin on purpose: decisions are in plan.rs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::Context;
use super::children::{self, ChildView, FLEET_LABEL, SyncedFields};
use super::plan::{self, Candidate, PlanInput, Selection};
use super::resource::{ComputeFleetAction, ComputeFleetActionStatus};
use crate::api::{ApiError, Instance};
use crate::resource::ComputeInstanceAction;
use crate::selection::InstanceSelector;

/// Field manager of the fleet's writes (its status and its children).
pub const FIELD_MANAGER: &str = "compute-operator-fleet";
/// Bound on one Kubernetes call.
const KUBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on walking every page of the selection (paced by the admin client's rate limit).
const LIST_TIMEOUT: Duration = Duration::from_secs(300);

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
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("object has no namespace")]
    NoNamespace,
}

/// Runs a Kubernetes call with a bound.
async fn bounded<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, Error> {
    tokio::time::timeout(KUBE_TIMEOUT, fut)
        .await
        .map_err(|_| Error::Timeout(what))
}

pub async fn reconcile(fleet: Arc<ComputeFleetAction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", fleet.namespace().unwrap_or_default(), fleet.name_any());
    let span = tracing::info_span!("reconcile_fleet", fleet = %key);
    reconcile_inner(&fleet, &ctx).instrument(span).await
}

pub fn error_policy(_fleet: Arc<ComputeFleetAction>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "fleet reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2) + Duration::from_millis(rand::random::<u64>() % 2000))
}

async fn reconcile_inner(cached: &ComputeFleetAction, ctx: &Context) -> Result<Action, Error> {
    let ns = cached.namespace().ok_or(Error::NoNamespace)?;
    let name = cached.name_any();
    let fleets: Api<ComputeFleetAction> = Api::namespaced(ctx.kube.clone(), &ns);
    // The cache may not have our last status write yet (its snapshot, the instances started): read it fresh.
    let fleet = match bounded("reading the fleet", fleets.get(&name)).await? {
        Ok(f) => f,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
        Err(e) => return Err(Error::ReadFleet(e)),
    };
    let fleet = &fleet;
    if fleet.meta().deletion_timestamp.is_some() || fleet.uid() != cached.uid() {
        // Garbage collection removes the children; nothing here acts on an instance.
        return Ok(Action::await_change());
    }
    let uid = fleet.uid().unwrap_or_default();
    let cias: Api<ComputeInstanceAction> = Api::namespaced(ctx.kube.clone(), &ns);

    // A consistent read (not a cache): children created by the last round are always counted, so the
    // in-flight cap holds even when the watch lags.
    let lp = ListParams::default().labels(&format!("{FLEET_LABEL}={}", children::fleet_label_value(&name)));
    let listed = bounded("listing children", cias.list(&lp))
        .await?
        .map_err(Error::ListChildren)?;
    let children: Vec<ChildView> = listed
        .items
        .iter()
        .filter(|c| c.owner_references().iter().any(|o| o.uid == uid))
        .map(ChildView::of)
        .collect();

    let status = fleet.status.clone().unwrap_or_default();
    let now = Utc::now();
    // The operator-wide `--dry-run` reads as the fleet's own.
    let mut spec = fleet.spec.clone();
    spec.dry_run |= ctx.config.dry_run;
    let spec = &spec;
    let settings = ctx.config.settings;
    let remembered = ctx.cached_selection(&uid, &fleet.spec.selector);
    let selection = if plan::needs_selection(
        spec,
        &status,
        remembered.as_ref().map(|(listed_at, _)| *listed_at),
        now,
        settings,
    ) {
        let fresh = list_selection(ctx, fleet).await?;
        ctx.store_selection(&uid, &fleet.spec.selector, fresh.clone());
        Some(fresh)
    } else {
        remembered
    };
    let selection = selection.map(|raw| judge(ctx, fleet, raw));

    let planned = plan::plan(&PlanInput {
        fleet_name: &name,
        fleet_uid: &uid,
        generation: fleet.meta().generation,
        spec,
        status: &status,
        selection: selection.as_ref(),
        children: &children,
        now,
        settings,
    });

    for child in &planned.delete {
        match bounded("deleting a child", cias.delete(child, &DeleteParams::background())).await? {
            Ok(_) => tracing::info!(child, "deleted a finished child of an earlier run"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::DeleteChild(child.clone(), e)),
        }
    }
    if !planned.sync.is_empty() {
        let fields = SyncedFields::of_fleet(spec);
        let patch = serde_json::json!({ "spec": fields });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        for child in &planned.sync {
            match bounded("updating a child", cias.patch(child, &pp, &Patch::Merge(&patch))).await? {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::SyncChild(child.clone(), e)),
            }
        }
    }
    let mut created = Vec::new();
    // Only the leader starts anything (a replica that lost its lease stops here).
    let may_act = ctx.fence.may_act();
    let mut create_error = None;
    for new in planned.create.iter().filter(|_| may_act) {
        let obj = children::child_object(fleet, &new.name, &new.instance_id);
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        match bounded("creating a child", cias.create(&pp, &obj)).await? {
            Ok(_) => created.push(new.clone()),
            Err(kube::Error::Api(s)) if s.code == 409 => created.push(new.clone()),
            Err(e) => {
                create_error = Some(Error::CreateChild(new.name.clone(), e));
                break;
            }
        }
    }
    if !created.is_empty() {
        tracing::info!(count = created.len(), "created children");
    }
    let mut new_status = planned.status.clone();
    plan::record_started(&mut new_status, &created);
    // What was planned but not created is still pending.
    let not_created = (planned.create.len() - created.len()) as u32;
    new_status.in_progress -= not_created;
    new_status.pending += not_created;
    let written = write_status(&fleets, fleet, &status, new_status.clone()).await?;
    ctx.config
        .metrics
        .observe_fleet_status(&uid, &status, written.then_some(&new_status));
    if written {
        publish(ctx, fleet, &planned.events).await;
    }
    if let Some(e) = create_error {
        return Err(e);
    }
    Ok(Action::requeue(planned.requeue))
}

/// Publishes the plan's Events in the background (see [`crate::controllers::events`]).
async fn publish(ctx: &Context, fleet: &ComputeFleetAction, events: &[plan::FleetEvent]) {
    let notes = events
        .iter()
        .map(|e| crate::controllers::events::Note {
            warning: e.warning,
            reason: e.reason.clone(),
            message: e.note.clone(),
        })
        .collect();
    crate::controllers::events::publish(&ctx.recorder, None, fleet.object_ref(&()), "Rollout", notes).await;
}

/// PUT on the status subresource carrying the object's resourceVersion (fails with 409 if it is stale);
/// nothing is written when nothing changed. True when a new status was written.
async fn write_status(
    api: &Api<ComputeFleetAction>,
    fleet: &ComputeFleetAction,
    old: &ComputeFleetActionStatus,
    new: ComputeFleetActionStatus,
) -> Result<bool, Error> {
    if fleet.status.is_some() && *old == new {
        return Ok(false);
    }
    let mut body = ComputeFleetAction::new(&fleet.name_any(), fleet.spec.clone());
    body.metadata.namespace = fleet.namespace();
    body.metadata.resource_version = fleet.resource_version();
    body.status = Some(new);
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match bounded("writing status", api.replace_status(&fleet.name_any(), &pp, &body)).await? {
        Ok(_) => Ok(true),
        // Stale: the fleet changed meanwhile; the change wakes another reconcile.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(Error::WriteStatus(e)),
    }
}

/// The selection as listed: (instance id, the instance when found).
pub type RawSelection = (chrono::DateTime<Utc>, Vec<(String, Option<Instance>)>);

/// Walks the list endpoint (all pages) for the selector's filters, or GETs explicit IDs when there are none.
async fn list_selection(ctx: &Context, fleet: &ComputeFleetAction) -> Result<RawSelection, Error> {
    let selector: &InstanceSelector = &fleet.spec.selector;
    let listed_at = Utc::now();
    if selector.is_empty() {
        // The API server rejects an empty selector; never read one as "every instance".
        return Ok((listed_at, Vec::new()));
    }
    if selector.has_filters() {
        let walk = ctx.api.list_all(selector.list_filter()).try_collect::<Vec<Instance>>();
        let all = tokio::time::timeout(LIST_TIMEOUT, walk)
            .await
            .map_err(|_| Error::Timeout("listing the selection"))?
            .map_err(Error::ListSelection)?;
        let wanted: HashSet<&str> = selector.instance_ids.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let picked = all
            .into_iter()
            .filter(|i| wanted.is_empty() || wanted.contains(i.id.as_str()))
            // A page boundary that moved during the walk may repeat an instance.
            .filter(|i| seen.insert(i.id.clone()))
            .map(|i| (i.id.clone(), Some(i)))
            .collect();
        return Ok((listed_at, picked));
    }
    let mut picked = Vec::with_capacity(selector.instance_ids.len());
    let mut seen = HashSet::new();
    for id in selector.instance_ids.iter().filter(|id| seen.insert(id.as_str())) {
        match ctx.api.get_instance(id).await {
            Ok(i) => picked.push((id.clone(), Some(i))),
            Err(ApiError::NotFound) => picked.push((id.clone(), None)),
            Err(e) => return Err(Error::ListSelection(e)),
        }
    }
    Ok((listed_at, picked))
}

/// The access policy's verdict for each selected instance. An explicit ID that does not exist counts as denied
/// under `--policy-mode enforce` unless a policy names it (a missing ID must look the same as a denied one).
fn judge(ctx: &Context, fleet: &ComputeFleetAction, raw: RawSelection) -> Selection {
    let (listed_at, items) = raw;
    let enforce = ctx.config.policy_mode == crate::policy::PolicyMode::Enforce;
    let mut candidates = Vec::with_capacity(items.len());
    for (id, instance) in items {
        // The same verdict the child would get (a missing ID is denied unless a policy names it).
        let denied = enforce && {
            let probe = children::child_object(fleet, "policy-probe", &id);
            ctx.policy.denial(&probe, instance.as_ref()).is_some()
        };
        candidates.push(Candidate {
            id,
            status: instance.map(|i| i.status),
            denied,
        });
    }
    Selection { listed_at, candidates }
}
