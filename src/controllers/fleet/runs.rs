//! Which run a fleet's spec asks for, purely: one-shots once per (desiredState, requestId) for the fleet's life,
//! `once` levels once per selector, continuous levels always; the snapshot a run is written with before any
//! child exists, and whether the fleet as read again still asks for what was decided.

use std::collections::BTreeSet;

use super::children::ChildView;
use super::plan::{FleetSettings, NewChild, Selection};
use crate::crd::fleet_action::{ComputeFleetActionSpec, ComputeFleetActionStatus, Snapshot};
use crate::crd::instance_action::{DesiredState, Enforcement, SENT_ONE_SHOTS_LIMIT};
use chrono::{DateTime, Utc};

/// What kind of run the spec asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// `restarted`/`reset`: once per (desiredState, requestId), for life.
    OneShot,
    /// `running`/`stopped` with `enforcement: once`: converge what matched when the run started.
    OnceLevel,
    /// `running`/`stopped` with `enforcement: continuous`: follow the selection.
    Level,
}

pub fn run_kind(spec: &ComputeFleetActionSpec) -> RunKind {
    match (spec.desired_state.is_level(), spec.enforcement) {
        (false, _) => RunKind::OneShot,
        (true, Enforcement::Once) => RunKind::OnceLevel,
        (true, Enforcement::Continuous) => RunKind::Level,
    }
}

/// The requestId children carry (one-shots only).
pub(super) fn request_id(spec: &ComputeFleetActionSpec) -> Option<&str> {
    match run_kind(spec) {
        RunKind::OneShot => spec.request_id.as_deref(),
        _ => None,
    }
}

/// The digest `status.ranRuns` remembers for a one-shot run.
pub fn run_digest(desired: DesiredState, request_id: Option<&str>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{}\0{}", desired.as_str(), request_id.unwrap_or("")).bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Does this reconcile need the selection listed from the admin API?
pub fn needs_selection(
    spec: &ComputeFleetActionSpec,
    status: &ComputeFleetActionStatus,
    listed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    settings: FleetSettings,
) -> bool {
    if spec.suspend || already_ran(spec, status) {
        return false;
    }
    let fresh = listed_at.is_some_and(|t| (now - t).to_std().is_ok_and(|age| age < settings.relist));
    if run_kind(spec) == RunKind::Level || spec.dry_run {
        // Paused: nothing starts, so nothing is listed again (a paused fleet spends no list budget after the
        // one listing that shows what it holds).
        return if spec.paused { listed_at.is_none() } else { !fresh };
    }
    // A new run's snapshot is taken from a listing made for it, never from an older cache.
    !(has_snapshot(spec, status) || past_not_after(spec, now))
}

/// The status holds the snapshot of the run the spec asks for.
pub(super) fn has_snapshot(spec: &ComputeFleetActionSpec, status: &ComputeFleetActionStatus) -> bool {
    let kind = run_kind(spec);
    kind != RunKind::Level
        && status.snapshot.as_ref().is_some_and(|s| {
            s.desired_state == Some(spec.desired_state)
                && s.request_id == request_id(spec).unwrap_or_default()
                && (kind == RunKind::OneShot || s.selector.as_ref() == Some(&spec.selector))
        })
}

/// A one-shot run this fleet has run before (its snapshot replaced since): it never runs again.
pub(super) fn already_ran(spec: &ComputeFleetActionSpec, status: &ComputeFleetActionStatus) -> bool {
    run_kind(spec) == RunKind::OneShot
        && !has_snapshot(spec, status)
        && status
            .ran_runs
            .contains(&run_digest(spec.desired_state, request_id(spec)))
}

pub(super) fn past_not_after(spec: &ComputeFleetActionSpec, now: DateTime<Utc>) -> bool {
    run_kind(spec) != RunKind::Level && spec.not_after.is_some_and(|t| now > t)
}

/// The snapshot of a new run, and for a one-shot its entry in `ranRuns` (kept for the fleet's life, bounded).
pub(super) fn take_snapshot(status: &mut ComputeFleetActionStatus, spec: &ComputeFleetActionSpec, sel: &Selection) {
    let kind = run_kind(spec);
    status.snapshot = Some(Snapshot {
        request_id: request_id(spec).unwrap_or_default().to_owned(),
        desired_state: Some(spec.desired_state),
        taken_at: sel.listed_at,
        instance_ids: sel.candidates.iter().map(|c| c.id.clone()).collect(),
        started_ids: Vec::new(),
        selector: (kind == RunKind::OnceLevel).then(|| spec.selector.clone()),
        incomplete: !sel.complete,
    });
    if kind == RunKind::OneShot {
        let digest = run_digest(spec.desired_state, request_id(spec));
        if !status.ran_runs.contains(&digest) {
            status.ran_runs.push(digest);
        }
        if status.ran_runs.len() > SENT_ONE_SHOTS_LIMIT {
            let excess = status.ran_runs.len() - SENT_ONE_SHOTS_LIMIT;
            status.ran_runs.drain(..excess);
        }
    }
}

/// Children that exist are started, even if a crash came between their creation and the status write.
pub(super) fn record_existing(status: &mut ComputeFleetActionStatus, current: &[&ChildView]) {
    if let Some(snap) = status.snapshot.as_mut() {
        let recorded: BTreeSet<String> = snap.started_ids.iter().cloned().collect();
        for c in current {
            if !recorded.contains(&c.instance_id) {
                snap.started_ids.push(c.instance_id.clone());
            }
        }
    }
}

/// Does the fleet as read again (`now`) still ask for what the plan made from `seen` decided? Same object and
/// generation, not paused, suspended or being deleted: otherwise no child is created.
pub fn still_asks(seen: &super::ComputeFleetAction, now: &super::ComputeFleetAction) -> bool {
    now.metadata.uid == seen.metadata.uid
        && now.metadata.generation == seen.metadata.generation
        && now.metadata.deletion_timestamp.is_none()
        && !now.spec.paused
        && !now.spec.suspend
        && now.spec.desired_state == seen.spec.desired_state
        && now.spec.request_id == seen.spec.request_id
}

/// Same object, same spec generation, not being deleted: the spec a round planned from is still the spec.
pub fn same_spec(seen: &super::ComputeFleetAction, now: &super::ComputeFleetAction) -> bool {
    now.metadata.uid == seen.metadata.uid
        && now.metadata.generation == seen.metadata.generation
        && now.metadata.deletion_timestamp.is_none()
}

/// Records children that were created (after the create calls succeeded) in the run's `startedIds`.
pub fn record_started(status: &mut ComputeFleetActionStatus, created: &[NewChild]) {
    if let Some(snap) = status.snapshot.as_mut() {
        for c in created {
            if !snap.started_ids.contains(&c.instance_id) {
                snap.started_ids.push(c.instance_id.clone());
            }
        }
    }
}
