//! The instance controller's status writer: the shared PUT with a resourceVersion precondition
//! ([`runtime::put_status`], bounded, one field manager), plus the read-your-writes memory: every status
//! written, or held back on purpose, is remembered until the watch shows it, so the next reconcile decides from
//! it and not from a cache that lags.

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
    if result.is_ok() {
        ctx.metrics.status_writes.inc();
    }
    result
}
