//! Which other objects on the same instance count as peers, and which status records this controller trusts:
//! a record written by another field manager (a tenant who can write status) never blocks anyone.

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::Context;
use super::plan::{self, Peer};
use super::reconcile::{FIELD_MANAGER, holds_open_action};
use crate::controllers::object_key;
use crate::crd::instance_action::{ComputeInstanceAction, ComputeInstanceActionStatus};

/// Other objects naming the same instance that count as peers, from the caches, and the restart/reset
/// actions sent to the instance (by this object or its peers) within the loop-protection window.
///
/// Denied, suspended and dry-run objects are not peers: they cannot block, conflict with or rate-limit an
/// allowed object. A record claiming an action in flight counts only if this controller wrote the status
/// (see [`FOREIGN_STATUS`]), so a tenant who can write status cannot forge a block.
pub(crate) fn peers_of(
    ctx: &Context,
    obj: &ComputeInstanceAction,
    own_status: &ComputeInstanceActionStatus,
    instance: Option<&crate::api::Instance>,
    now: DateTime<Utc>,
) -> (Vec<Peer>, u32) {
    let uid = obj.uid();
    let others: Vec<_> = ctx
        .index
        .on_instance(&obj.spec.instance_id)
        .into_iter()
        .filter(|o| o.uid() != uid && !o.spec.suspend && !o.spec.dry_run && !ctx.config.plan.dry_run)
        .filter(|o| ctx.policy.denial(o, instance).is_none())
        .collect();
    let trusted = |o: &ComputeInstanceAction| !o.annotations().contains_key(FOREIGN_STATUS);
    let statuses = others
        .iter()
        .filter(|o| trusted(o))
        .filter_map(|o| o.status.as_ref())
        .chain(std::iter::once(own_status));
    let recent = plan::count_recent_one_shots(statuses, now, ctx.config.plan.one_shot_window);
    let peers = others
        .iter()
        .map(|o| Peer {
            key: object_key(o),
            desired: o.spec.desired_state,
            enforcement: o.spec.enforcement,
            suspended: o.spec.suspend,
            acting: trusted(o) && o.status.as_ref().is_some_and(holds_open_action),
        })
        .collect();
    (peers, recent)
}

/// Marks, in the controller's cache only, an object whose status was written by another field manager.
pub const FOREIGN_STATUS: &str = "compute-operator.internal/foreign-status";

/// Whether a field manager other than this controller wrote any part of the object's status.
pub fn status_written_by_others(obj: &ComputeInstanceAction) -> bool {
    obj.managed_fields().iter().any(|m| {
        m.subresource.as_deref() == Some("status") && m.manager.as_deref().is_some_and(|who| who != FIELD_MANAGER)
    })
}
