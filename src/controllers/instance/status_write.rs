//! The instance controller's status writer: the shared PUT with a resourceVersion precondition
//! ([`runtime::put_status`], bounded, one field manager), plus the read-your-writes memory: every status
//! written, or held back on purpose, is remembered until the watch shows it, so the next reconcile decides from
//! it and not from a cache that lags. A write that answers 409 is explained by its cause
//! ([`conflict_cause`], from the object read again), counted in `compute_operator_status_conflicts_total`.

use kube::ResourceExt;
use kube::api::Api;

use super::reconcile::{Error, FIELD_MANAGER};
use super::{Context, memory, plan};
use crate::controllers::runtime;
use crate::crd::instance_action::{ComputeInstanceAction, ComputeInstanceActionStatus};

/// After a POST the answer must be recorded even if the object changed meanwhile (a spec edit). On a
/// conflict the object is re-read and only this action's record is merged, and only if nobody (a successor
/// after a lease change) recorded an outcome for it meanwhile: their record is never overwritten.
pub(super) async fn write_after_post(
    api: &Api<ComputeInstanceAction>,
    written: &ComputeInstanceAction,
    status: &ComputeInstanceActionStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let mut base = written.clone();
    let mut next = status.clone();
    for attempt in 0..5 {
        match replace_status(api, &base, &next, ctx).await {
            Ok(o) => {
                let rv = o.resource_version().unwrap_or_default();
                ctx.memory
                    .hold(&o, &base.resource_version().unwrap_or_default(), &rv, &next);
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 4 => {
                base = runtime::bounded(api.get_status(&base.name_any()))
                    .await
                    .map_err(Error::ReadObject)?;
                let current = base.status.clone().unwrap_or_default();
                match plan::merge_action_record(&current, status) {
                    Some(merged) => next = merged,
                    None => {
                        tracing::info!("the action's record was updated by someone else meanwhile; leaving it");
                        ctx.memory.forget(written);
                        return Ok(());
                    }
                }
            }
            Err(e) => return Err(Error::WriteStatus(e)),
        }
    }
    Ok(())
}

/// Whether a planned status reached the API server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StatusWrite {
    Unchanged,
    Written,
    /// The cached object was stale (409): the plan was made from old data and is dropped.
    Stale,
}

pub(super) async fn write_if_changed(
    api: &Api<ComputeInstanceAction>,
    obj: &ComputeInstanceAction,
    base_rv: &str,
    old: &ComputeInstanceActionStatus,
    new: &ComputeInstanceActionStatus,
    ctx: &Context,
) -> Result<StatusWrite, Error> {
    let rv = obj.resource_version().unwrap_or_default();
    if obj.status.is_some() && !memory::needs_write(old, new) {
        if old != new {
            ctx.memory.hold(obj, base_rv, &rv, new);
        }
        return Ok(StatusWrite::Unchanged);
    }
    match replace_status(api, obj, new, ctx).await {
        Ok(o) => {
            ctx.memory
                .hold(&o, base_rv, &o.resource_version().unwrap_or_default(), new);
            Ok(StatusWrite::Written)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Not our stale cache (we read our writes): someone else changed the object. Decide again.
            ctx.memory.forget(obj);
            Ok(StatusWrite::Stale)
        }
        Err(e) => Err(Error::WriteStatus(e)),
    }
}

/// PUT on the status subresource carrying the object's resourceVersion: fails with 409 if it is stale.
pub(super) async fn replace_status(
    api: &Api<ComputeInstanceAction>,
    obj: &ComputeInstanceAction,
    status: &ComputeInstanceActionStatus,
    ctx: &Context,
) -> Result<ComputeInstanceAction, kube::Error> {
    let result = runtime::put_status(api, obj, FIELD_MANAGER, |o| o.status = Some(status.clone())).await;
    match &result {
        Ok(o) => {
            ctx.metrics.status_writes.inc();
            ctx.writes.wrote(o);
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // One read to tell why (only on a conflict); a failed read is counted as such.
            let current = runtime::bounded(api.get(&obj.name_any())).await.ok();
            let cause = conflict_cause(obj, current.as_ref(), &ctx.writes);
            tracing::debug!(cause, write = write_kind(status), "status write answered 409");
            ctx.metrics
                .status_conflicts
                .get_or_create(&crate::metrics::ConflictLabels {
                    write: write_kind(status).into(),
                    cause: cause.into(),
                })
                .inc();
        }
        Err(_) => {}
    }
    result
}

/// Which write it was, from what it records.
pub fn write_kind(status: &ComputeInstanceActionStatus) -> &'static str {
    use crate::crd::instance_action::ActionState as S;
    match status.action.as_ref().map(|a| a.state) {
        Some(S::Requested) => "intent",
        Some(S::Accepted) => "acceptance",
        Some(S::Succeeded | S::Failed | S::OutcomeUnknown) => "result",
        Some(S::Rejected) => "refusal",
        None => "other",
    }
}

/// How long this process remembers the resourceVersion of each status write it made.
const RECENT_WRITES: std::time::Duration = std::time::Duration::from_secs(30);

/// The resourceVersion of this process's last status write per object UID, for a few seconds.
#[derive(Debug, Default)]
pub struct RecentWrites {
    by_uid: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl RecentWrites {
    fn locked(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, std::time::Instant)>> {
        self.by_uid.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wrote(&self, obj: &ComputeInstanceAction) {
        let now = std::time::Instant::now();
        let mut map = self.locked();
        map.retain(|_, (_, at)| now.duration_since(*at) < RECENT_WRITES);
        map.insert(
            obj.uid().unwrap_or_default(),
            (obj.resource_version().unwrap_or_default(), now),
        );
    }

    /// Drops writes older than the window (at rest nothing is kept).
    pub fn sweep(&self) {
        let now = std::time::Instant::now();
        let mut map = self.locked();
        map.retain(|_, (_, at)| now.duration_since(*at) < RECENT_WRITES);
        crate::controllers::shrink_if_sparse(&mut map);
    }

    /// The resourceVersion of our last recent write of the object.
    pub fn last(&self, uid: &str) -> Option<String> {
        self.locked().get(uid).map(|(rv, _)| rv.clone())
    }
}

/// Why a status write against `ours` answered 409, from the object as read right after (`None`: not read):
/// - `own_write_not_in_cache`: the object is at our own last write (the decision was made from an object older
///   than what this process wrote: the read-your-writes memory did not cover it);
/// - `spec_changed`: someone changed the spec (a new generation);
/// - `status_written_elsewhere`: the status changed, not by our last write (another replica, a leader change,
///   a second reconcile path);
/// - `metadata_changed`: only labels, annotations, finalizers or owners changed;
/// - `deleted` / `unread`: gone, or the read failed.
pub fn conflict_cause(
    ours: &ComputeInstanceAction,
    current: Option<&ComputeInstanceAction>,
    writes: &RecentWrites,
) -> &'static str {
    let Some(current) = current else {
        return "unread";
    };
    if current.uid() != ours.uid() {
        return "deleted";
    }
    let uid = current.uid().unwrap_or_default();
    if writes
        .last(&uid)
        .is_some_and(|rv| Some(rv) == current.resource_version())
    {
        return "own_write_not_in_cache";
    }
    if current.metadata.generation != ours.metadata.generation {
        return "spec_changed";
    }
    if current.status != ours.status {
        return "status_written_elsewhere";
    }
    "metadata_changed"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(uid: &str, rv: &str, generation: i64, phase: Option<&str>) -> ComputeInstanceAction {
        let mut o: ComputeInstanceAction = serde_json::from_value(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
            "metadata": {"name": "o", "uid": uid, "resourceVersion": rv, "generation": generation},
            "spec": {"instanceId": "i-1", "desiredState": "running"},
        }))
        .unwrap();
        o.status = phase.map(|p| serde_json::from_value(serde_json::json!({ "phase": p })).unwrap());
        o
    }

    #[test]
    fn every_conflict_has_a_cause() {
        let writes = RecentWrites::default();
        writes.wrote(&obj("u", "7", 1, Some("InProgress")));
        let ours = obj("u", "5", 1, Some("Pending"));
        // (object read after the 409, cause)
        let rows = [
            (None, "unread"),
            (Some(obj("other", "9", 1, None)), "deleted"),
            (Some(obj("u", "7", 1, Some("InProgress"))), "own_write_not_in_cache"),
            (Some(obj("u", "8", 2, Some("Pending"))), "spec_changed"),
            (Some(obj("u", "8", 1, Some("Succeeded"))), "status_written_elsewhere"),
            (Some(obj("u", "8", 1, Some("Pending"))), "metadata_changed"),
        ];
        for (current, want) in rows {
            assert_eq!(conflict_cause(&ours, current.as_ref(), &writes), want, "{current:?}");
        }
    }
}
