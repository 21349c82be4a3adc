//! The fleet's decision, purely: from the spec, the last status, the selection (already narrowed to what the
//! namespace may power), the existing children and the time, decide which children to create, delete or bring
//! in step, and the status to write. No I/O. Named steps: [`sort_children`], [`members_of`], [`count`],
//! [`dry_run`], [`starts`], [`rollout_verdict`].
//!
//! Runs: a one-shot (`restarted`/`reset`) runs once per (desiredState, requestId) for the fleet's whole life
//! (`status.ranRuns`), and a level with `enforcement: once` converges once per selector; both act on a
//! snapshot of the selection, written to status *before* any child is created (write-ahead, so a lost status
//! write can never start a second run). A continuous level follows the selection as it is relisted.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::children::{ChildKey, ChildView, Outcome, SyncedFields, child_name};
pub use super::runs::{RunKind, needs_selection, record_started, run_digest, run_kind, same_spec, still_asks};
use super::runs::{already_ran, has_snapshot, past_not_after, record_existing, request_id, take_snapshot};
pub use super::verdict::events_between;
use super::verdict::{dry_run_message, policy_denied_message, rollout_verdict};
use crate::api::InstanceStatus;
use crate::controllers::conditions::{Verdict, apply_verdict};
use crate::crd::fleet_action::{ComputeFleetActionSpec, ComputeFleetActionStatus, DryRunReport, SAMPLE_IDS};

/// One instance of the selection (only instances the namespace may power are ever candidates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Its status when listed (`None` when not known, e.g. an explicit ID that was not found).
    pub status: Option<InstanceStatus>,
    /// A maintenance window held its action back when listed (reported by a dry run).
    pub held: bool,
}

/// The selection as listed from the admin API (all pages), in list order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub listed_at: DateTime<Utc>,
    pub candidates: Vec<Candidate>,
    /// False when the selection kept changing while it was walked (the snapshot says so).
    pub complete: bool,
}

/// Timings the planner needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    /// How often a level fleet lists its selection again (instances that appear later are brought to the level).
    pub relist: Duration,
    /// Safety net: look again this often while children are in flight even without a child event.
    pub poll: Duration,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            relist: Duration::from_secs(60),
            poll: Duration::from_secs(30),
        }
    }
}

/// Why nothing was listed although the plan needed a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlisted {
    /// No access policy could allow the namespace this desired state: nothing is asked of the admin API.
    PolicyDenied,
    /// Another fleet of the namespace is walking the list endpoint (one walk per namespace at a time).
    WaitingForListBudget,
}

pub struct PlanInput<'a> {
    pub fleet_name: &'a str,
    pub fleet_uid: &'a str,
    pub namespace: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a ComputeFleetActionSpec,
    pub status: &'a ComputeFleetActionStatus,
    /// `None` when nothing was listed for this reconcile (suspended, or a run with its snapshot).
    pub selection: Option<&'a Selection>,
    pub unlisted: Option<Unlisted>,
    pub children: &'a [ChildView],
    pub now: DateTime<Utc>,
    pub settings: FleetSettings,
}

/// A child to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChild {
    pub name: String,
    pub instance_id: String,
}

pub use crate::controllers::events::Note;

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: ComputeFleetActionStatus,
    /// Published only when the status that carries the change is written.
    pub events: Vec<Note>,
    pub create: Vec<NewChild>,
    /// Children of an earlier run or desired state, finished: removed (deleting a child never acts).
    pub delete: Vec<String>,
    /// Children whose `suspend`/`dryRun`/`enforcement` differ from the fleet's.
    pub sync: Vec<String>,
    pub requeue: Duration,
}

/// How long a denied fleet waits before looking again by itself (a policy change wakes it at once).
const DENIED_RECHECK: Duration = Duration::from_secs(300);
/// How soon a fleet waiting for its namespace's list walk tries again.
const LIST_WAIT: Duration = Duration::from_secs(1);

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let spec = input.spec;
    let mut status = input.status.clone();
    status.observed_generation = input.generation;
    if let Some(sel) = input.selection {
        status.last_listed_at = Some(sel.listed_at);
    }
    let sorted = sort_children(input);
    let mut plan = Plan {
        status: ComputeFleetActionStatus::default(),
        events: Vec::new(),
        create: Vec::new(),
        delete: sorted.delete.clone(),
        sync: sorted.sync.clone(),
        requeue: input.settings.poll,
    };
    if input.unlisted == Some(Unlisted::PolicyDenied) {
        status.snapshot = status.snapshot.take().filter(|_| has_snapshot(spec, input.status));
        set_counts(&mut status, Counts::default());
        status.selected = 0;
        status.failed_ids.clear();
        status.dry_run = None;
        let verdict = Verdict::stalled("PolicyDenied", policy_denied_message(input.namespace, spec));
        finish(&mut plan, status, &verdict, input);
        plan.requeue = DENIED_RECHECK;
        return plan;
    }
    if already_ran(spec, &status) {
        let rid = spec.request_id.as_deref().unwrap_or_default();
        let verdict = Verdict::ready(
            "AlreadyRun",
            format!(
                "{} with requestId {rid} already ran on this fleet; a run never runs twice: set a new spec.requestId to run it again",
                spec.desired_state.as_str()
            ),
        );
        finish(&mut plan, status, &verdict, input);
        plan.requeue = DENIED_RECHECK;
        return plan;
    }
    let kind = run_kind(spec);
    if kind != RunKind::Level && !has_snapshot(spec, &status) && past_not_after(spec, input.now) {
        let what = match request_id(spec) {
            Some(rid) => format!("requestId {rid} was"),
            None => format!("the {} run was", spec.desired_state.as_str()),
        };
        let verdict = Verdict::ready(
            "Expired",
            format!("{what} not started before notAfter; no instance is acted on"),
        );
        status.selected = 0;
        set_counts(&mut status, Counts::default());
        status.failed_ids.clear();
        finish(&mut plan, status, &verdict, input);
        plan.requeue = input.settings.relist;
        return plan;
    }
    if input.unlisted == Some(Unlisted::WaitingForListBudget) {
        let verdict = Verdict::reconciling(
            "WaitingForListBudget",
            "another fleet of this namespace is listing its instances; this one lists next",
        );
        finish(&mut plan, status, &verdict, input);
        plan.requeue = LIST_WAIT;
        return plan;
    }
    // A new run: its snapshot is written before any child is created.
    let mut write_ahead = false;
    if kind != RunKind::Level
        && !spec.dry_run
        && !has_snapshot(spec, &status)
        && let Some(sel) = input.selection
    {
        take_snapshot(&mut status, spec, sel);
        write_ahead = true;
    }
    let members = members_of(input, &status, &sorted);
    if kind != RunKind::Level && has_snapshot(spec, &status) {
        record_existing(&mut status, &sorted.current);
    }
    let started: BTreeSet<String> = match (kind, status.snapshot.as_ref()) {
        (RunKind::OneShot, Some(s)) if has_snapshot(spec, &status) => s.started_ids.iter().cloned().collect(),
        _ => BTreeSet::new(),
    };
    let mut counted = count(&members, &sorted, &started);
    status.selected = members.len() as u32;
    status.failed_ids = counted.failed_ids.iter().take(SAMPLE_IDS).cloned().collect();
    let expired_now = past_not_after(spec, input.now);
    if expired_now {
        counted.counts.expired += counted.pending.len() as u32;
    }

    if spec.dry_run {
        let report = dry_run(input, &counted.pending);
        let verdict = Verdict::ready("DryRun", dry_run_message(spec, &report, status.selected));
        status.dry_run = Some(report);
        let mut counts = counted.counts;
        counts.pending = counted.pending.len() as u32;
        set_counts(&mut status, counts);
        finish(&mut plan, status, &verdict, input);
        plan.requeue = input.settings.relist;
        return plan;
    }
    status.dry_run = None;

    let cap = spec.strategy.max_concurrent().resolve(members.len()).unwrap_or(1);
    let budget_exceeded = counted.counts.failed > spec.strategy.max_failures();
    let may_start = !write_ahead && !spec.suspend && !spec.paused && !budget_exceeded && !expired_now;
    if may_start {
        plan.create = starts(input, &counted.pending, &sorted, cap, counted.counts.in_progress);
    }
    let mut counts = counted.counts;
    counts.in_progress += plan.create.len() as u32;
    counts.pending = if expired_now {
        0
    } else {
        counted.pending.len() as u32 - plan.create.len() as u32
    };
    set_counts(&mut status, counts);
    let done = counts.in_progress == 0 && counts.pending == 0;
    let verdict = rollout_verdict(spec, &status, counts, cap, done, budget_exceeded);
    finish(&mut plan, status, &verdict, input);
    plan.requeue = if write_ahead {
        // Come back at once: the snapshot is written, the children are created from it.
        Duration::ZERO
    } else if done && kind == RunKind::Level {
        input.settings.relist
    } else if done {
        // A finished run waits for a new requestId or selector (a spec change wakes it).
        input.settings.relist.max(Duration::from_secs(300))
    } else {
        input.settings.poll
    };
    plan
}

/// The existing children, sorted: those of the current run, and those of an earlier run or desired state.
struct SortedChildren<'a> {
    current: Vec<&'a ChildView>,
    /// Stale children still in flight: they count against maxConcurrent and block their instance.
    stale_in_flight: usize,
    blocked: BTreeSet<&'a str>,
    /// Stale children that finished: removed (deleting a child never acts).
    delete: Vec<String>,
    sync: Vec<String>,
}

fn child_name_for(input: &PlanInput<'_>, instance_id: &str) -> String {
    child_name(
        input.fleet_name,
        &ChildKey {
            fleet_uid: input.fleet_uid,
            instance_id,
            desired_state: input.spec.desired_state,
            request_id: request_id(input.spec),
        },
    )
}

fn sort_children<'a>(input: &PlanInput<'a>) -> SortedChildren<'a> {
    let spec = input.spec;
    let wanted_sync = SyncedFields::of_fleet(spec);
    let sync = input
        .children
        .iter()
        .filter(|c| c.synced != wanted_sync)
        .map(|c| c.name.clone())
        .collect();
    let is_current = |c: &ChildView| {
        c.desired_state == spec.desired_state
            && c.request_id.as_deref() == request_id(spec)
            && c.name == child_name_for(input, &c.instance_id)
    };
    let (current, stale): (Vec<&ChildView>, Vec<&ChildView>) = input.children.iter().partition(|c| is_current(c));
    let delete = stale
        .iter()
        .filter(|c| !c.outcome.in_flight())
        .map(|c| c.name.clone())
        .collect();
    let in_flight: Vec<&&ChildView> = stale.iter().filter(|c| c.outcome.in_flight()).collect();
    SortedChildren {
        current,
        stale_in_flight: in_flight.len(),
        blocked: in_flight.iter().map(|c| c.instance_id.as_str()).collect(),
        delete,
        sync,
    }
}

/// The instances this run is about, in order: a run's snapshot, or a level's selection; levels also keep every
/// instance they already have a child for (a `status: running` selector stops matching a stopped instance).
fn members_of(input: &PlanInput<'_>, status: &ComputeFleetActionStatus, sorted: &SortedChildren<'_>) -> Vec<String> {
    let spec = input.spec;
    let kind = run_kind(spec);
    let mut members: Vec<String> = match (status.snapshot.as_ref(), input.selection) {
        (Some(snap), _) if kind != RunKind::Level && has_snapshot(spec, status) => snap.instance_ids.clone(),
        (_, Some(sel)) if kind == RunKind::Level || spec.dry_run => {
            sel.candidates.iter().map(|c| c.id.clone()).collect()
        }
        _ => Vec::new(),
    };
    let keep_extra = kind != RunKind::OneShot || (input.selection.is_none() && !has_snapshot(spec, status));
    if keep_extra {
        let known: BTreeSet<String> = members.iter().cloned().collect();
        let mut extra: Vec<String> = sorted
            .current
            .iter()
            .map(|c| c.instance_id.clone())
            .filter(|id| !known.contains(id))
            .collect();
        extra.sort();
        extra.dedup();
        members.extend(extra);
    }
    members
}

/// Children by outcome, and the members without a child yet (in order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub succeeded: u32,
    pub failed: u32,
    pub denied: u32,
    pub in_progress: u32,
    pub pending: u32,
    pub expired: u32,
    /// In progress, but held back by a maintenance window or a disruption budget.
    pub waiting: u32,
}

struct Counted {
    counts: Counts,
    failed_ids: Vec<String>,
    pending: Vec<String>,
}

fn count(members: &[String], sorted: &SortedChildren<'_>, started: &BTreeSet<String>) -> Counted {
    let by_instance: HashMap<&str, &ChildView> = sorted.current.iter().map(|c| (c.instance_id.as_str(), *c)).collect();
    let mut counts = Counts::default();
    let mut failed_ids = Vec::new();
    let mut pending = Vec::new();
    for id in members {
        let child = by_instance.get(id.as_str());
        if child.is_some_and(|c| c.outcome.in_flight() && c.held) {
            counts.waiting += 1;
        }
        match child.map(|c| &c.outcome) {
            Some(Outcome::Succeeded) => counts.succeeded += 1,
            Some(Outcome::Failed { .. }) => {
                counts.failed += 1;
                failed_ids.push(id.clone());
            }
            // The child's own check denied it (a policy changed after the selection).
            Some(Outcome::Denied) => counts.denied += 1,
            Some(Outcome::Expired) => counts.expired += 1,
            Some(Outcome::InProgress) => counts.in_progress += 1,
            None if started.contains(id) => {
                // Its child was deleted by someone: a one-shot is never sent twice, so it is not re-created.
                counts.failed += 1;
                failed_ids.push(id.clone());
            }
            None => pending.push(id.clone()),
        }
    }
    Counted {
        counts,
        failed_ids,
        pending,
    }
}

/// What a dry run would act on: the pending members not already at the level.
fn dry_run(input: &PlanInput<'_>, pending: &[String]) -> DryRunReport {
    let statuses: HashMap<&str, (Option<&InstanceStatus>, bool)> = input
        .selection
        .map(|s| {
            s.candidates
                .iter()
                .map(|c| (c.id.as_str(), (c.status.as_ref(), c.held)))
                .collect()
        })
        .unwrap_or_default();
    let target = input.spec.desired_state.level_target();
    let would: Vec<String> = pending
        .iter()
        .filter(|id| match (&target, statuses.get(id.as_str()).and_then(|s| s.0)) {
            (Some(t), Some(now)) => now != t,
            _ => true,
        })
        .cloned()
        .collect();
    let held_back = would
        .iter()
        .filter(|id| statuses.get(id.as_str()).is_some_and(|s| s.1))
        .count();
    DryRunReport {
        would_act: would.len() as u32,
        held_back: held_back as u32,
        first_ids: would.into_iter().take(SAMPLE_IDS).collect(),
    }
}

/// The children to create now: pending members, in order, up to the room under the cap.
fn starts(
    input: &PlanInput<'_>,
    pending: &[String],
    sorted: &SortedChildren<'_>,
    cap: usize,
    in_progress: u32,
) -> Vec<NewChild> {
    let room = cap.saturating_sub(in_progress as usize + sorted.stale_in_flight);
    pending
        .iter()
        .filter(|id| !sorted.blocked.contains(id.as_str()))
        .take(room)
        .map(|id| NewChild {
            name: child_name_for(input, id),
            instance_id: id.clone(),
        })
        .collect()
}

fn set_counts(status: &mut ComputeFleetActionStatus, c: Counts) {
    status.succeeded = c.succeeded;
    status.failed = c.failed;
    status.denied = c.denied;
    status.in_progress = c.in_progress;
    status.pending = c.pending;
    status.expired = c.expired;
    status.waiting = c.waiting;
}

fn finish(plan: &mut Plan, mut status: ComputeFleetActionStatus, verdict: &Verdict, input: &PlanInput<'_>) {
    status.message = Some(verdict.message().to_owned());
    apply_verdict(&mut status.conditions, verdict, input.generation, input.now);
    plan.events = events_between(input.status, &status);
    plan.status = status;
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
