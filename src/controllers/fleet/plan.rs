//! The fleet's decision, purely: from the spec, the last status, the selection (listed instances with policy
//! verdicts), the existing children and the time, decide which children to create, delete or bring in step,
//! and the status to write. No I/O.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::children::{ChildKey, ChildView, Outcome, SyncedFields, child_name};
use super::resource::{ComputeFleetActionSpec, ComputeFleetActionStatus, DryRunReport, SAMPLE_IDS, Snapshot};
use crate::api::InstanceStatus;
use crate::controllers::conditions::{Verdict, apply_verdict};
use crate::resource::DesiredState;

/// One instance the selector matched, with the access policy's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Its status when listed (`None` when not known, e.g. an explicit ID that was not found).
    pub status: Option<InstanceStatus>,
    pub denied: bool,
}

/// The selection as listed from the admin API (all pages), in list order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub listed_at: DateTime<Utc>,
    pub candidates: Vec<Candidate>,
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

pub struct PlanInput<'a> {
    pub fleet_name: &'a str,
    pub fleet_uid: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a ComputeFleetActionSpec,
    pub status: &'a ComputeFleetActionStatus,
    /// `None` when nothing was listed for this reconcile (suspended, or a one-shot with its snapshot).
    pub selection: Option<&'a Selection>,
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

/// An Event to publish about the fleet (a run started, finished or stopped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: ComputeFleetActionStatus,
    /// Published only when the status that carries the change is written.
    pub events: Vec<FleetEvent>,
    pub create: Vec<NewChild>,
    /// Children of an earlier run or desired state, finished: removed (deleting a child never acts).
    pub delete: Vec<String>,
    /// Children whose `suspend`/`dryRun`/`enforcement` differ from the fleet's.
    pub sync: Vec<String>,
    pub requeue: Duration,
}

/// Does this reconcile need the selection listed from the admin API?
pub fn needs_selection(
    spec: &ComputeFleetActionSpec,
    status: &ComputeFleetActionStatus,
    listed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    settings: FleetSettings,
) -> bool {
    if spec.suspend {
        return false;
    }
    let fresh = listed_at.is_some_and(|t| (now - t).to_std().is_ok_and(|age| age < settings.relist));
    if spec.desired_state.is_level() || spec.dry_run {
        return !fresh;
    }
    if has_snapshot(spec, status) || past_not_after(spec, now) {
        return false;
    }
    // A new one-shot run: its snapshot is taken from a listing made for it, never from an older cache.
    true
}

fn has_snapshot(spec: &ComputeFleetActionSpec, status: &ComputeFleetActionStatus) -> bool {
    status
        .snapshot
        .as_ref()
        .is_some_and(|s| Some(&s.request_id) == spec.request_id.as_ref() && s.desired_state == Some(spec.desired_state))
}

fn past_not_after(spec: &ComputeFleetActionSpec, now: DateTime<Utc>) -> bool {
    !spec.desired_state.is_level() && spec.not_after.is_some_and(|t| now > t)
}

/// The status an instance reaches when a level is done (used by the dry run to tell who would be acted on).
fn level_target(desired: DesiredState) -> Option<InstanceStatus> {
    match desired {
        DesiredState::Running => Some(InstanceStatus::Running),
        DesiredState::Stopped => Some(InstanceStatus::Stopped),
        _ => None,
    }
}

fn sample(ids: impl Iterator<Item = String>) -> Vec<String> {
    ids.take(SAMPLE_IDS).collect()
}

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let spec = input.spec;
    let one_shot = !spec.desired_state.is_level();
    let mut status = input.status.clone();
    status.observed_generation = input.generation;
    if let Some(sel) = input.selection {
        status.last_listed_at = Some(sel.listed_at);
    }
    let request_id = if one_shot { spec.request_id.as_deref() } else { None };
    let name_of = |instance_id: &str| {
        child_name(
            input.fleet_name,
            &ChildKey {
                fleet_uid: input.fleet_uid,
                instance_id,
                desired_state: spec.desired_state,
                request_id,
            },
        )
    };
    let wanted_sync = SyncedFields::of_fleet(spec);
    let sync: Vec<String> = input
        .children
        .iter()
        .filter(|c| c.synced != wanted_sync)
        .map(|c| c.name.clone())
        .collect();
    let is_current = |c: &ChildView| {
        c.desired_state == spec.desired_state
            && c.request_id.as_deref() == request_id
            && c.name == name_of(&c.instance_id)
    };
    let (current, stale): (Vec<&ChildView>, Vec<&ChildView>) = input.children.iter().partition(|c| is_current(c));
    // Stale children go once finished; while in flight they still count against maxConcurrent and block a new
    // child for their instance (two objects must never contend for one instance).
    let delete: Vec<String> = stale
        .iter()
        .filter(|c| !c.outcome.in_flight())
        .map(|c| c.name.clone())
        .collect();
    let stale_in_flight: Vec<&&ChildView> = stale.iter().filter(|c| c.outcome.in_flight()).collect();
    let blocked: BTreeSet<&str> = stale_in_flight.iter().map(|c| c.instance_id.as_str()).collect();
    let mut plan = Plan {
        status: ComputeFleetActionStatus::default(),
        events: Vec::new(),
        create: Vec::new(),
        delete,
        sync,
        requeue: input.settings.poll,
    };

    // Members: the instances this run is about, in order, and the denied count.
    let mut members: Vec<String> = Vec::new();
    let mut denied: u32 = 0;
    if one_shot {
        if !has_snapshot(spec, &status) {
            if past_not_after(spec, input.now) {
                let rid = request_id.unwrap_or_default();
                let verdict = Verdict::ready(
                    "Expired",
                    format!("requestId {rid} was not started before notAfter; no instance is acted on"),
                );
                status.selected = 0;
                set_counts(&mut status, 0, 0, 0, 0, 0, 0);
                status.failed_ids.clear();
                status.message = Some(verdict.message().to_owned());
                apply_verdict(&mut status.conditions, &verdict, input.generation, input.now);
                plan.events = events_between(input.status, &status);
                plan.status = status;
                plan.requeue = input.settings.relist;
                return plan;
            }
            match (input.selection, spec.dry_run) {
                (Some(sel), false) => {
                    status.snapshot = Some(Snapshot {
                        request_id: request_id.unwrap_or_default().to_owned(),
                        desired_state: Some(spec.desired_state),
                        taken_at: sel.listed_at,
                        instance_ids: sel
                            .candidates
                            .iter()
                            .filter(|c| !c.denied)
                            .map(|c| c.id.clone())
                            .collect(),
                        denied: sel.candidates.iter().filter(|c| c.denied).count() as u32,
                        started_ids: Vec::new(),
                    });
                }
                (Some(sel), true) => {
                    members = sel
                        .candidates
                        .iter()
                        .filter(|c| !c.denied)
                        .map(|c| c.id.clone())
                        .collect();
                    denied = sel.candidates.iter().filter(|c| c.denied).count() as u32;
                }
                (None, _) => {}
            }
        }
        if let Some(snap) = status.snapshot.as_ref().filter(|_| has_snapshot(spec, &status)) {
            members = snap.instance_ids.clone();
            denied = snap.denied;
        }
    } else if let Some(sel) = input.selection {
        members = sel
            .candidates
            .iter()
            .filter(|c| !c.denied)
            .map(|c| c.id.clone())
            .collect();
        denied = sel.candidates.iter().filter(|c| c.denied).count() as u32;
    }
    if !one_shot || (input.selection.is_none() && !has_snapshot(spec, &status)) {
        // Levels keep every instance they already have a child for, even if it left the selection (a
        // `status: running` selector stops matching an instance once it is stopped).
        let known: BTreeSet<String> = members.iter().cloned().collect();
        let mut extra: Vec<String> = current
            .iter()
            .map(|c| c.instance_id.clone())
            .filter(|id| !known.contains(id))
            .collect();
        extra.sort();
        extra.dedup();
        members.extend(extra);
    }
    if !one_shot {
        status.snapshot = None;
    }
    // Children that exist are started, even if a crash came between their creation and the status write.
    if one_shot
        && has_snapshot(spec, &status)
        && let Some(snap) = status.snapshot.as_mut()
    {
        let recorded: BTreeSet<String> = snap.started_ids.iter().cloned().collect();
        for c in &current {
            if !recorded.contains(&c.instance_id) {
                snap.started_ids.push(c.instance_id.clone());
            }
        }
    }
    let by_instance: HashMap<&str, &ChildView> = current.iter().map(|c| (c.instance_id.as_str(), *c)).collect();
    let started: BTreeSet<String> = status
        .snapshot
        .as_ref()
        .filter(|_| one_shot && has_snapshot(spec, &status))
        .map(|s| s.started_ids.iter().cloned().collect())
        .unwrap_or_default();

    // Count.
    let (mut succeeded, mut failed, mut in_progress, mut expired) = (0u32, 0u32, 0u32, 0u32);
    let mut failed_ids = Vec::new();
    let mut pending: Vec<&str> = Vec::new();
    for id in &members {
        match by_instance.get(id.as_str()).map(|c| &c.outcome) {
            Some(Outcome::Succeeded) => succeeded += 1,
            Some(Outcome::Failed { .. }) => {
                failed += 1;
                failed_ids.push(id.clone());
            }
            Some(Outcome::Denied) => denied += 1,
            Some(Outcome::Expired) => expired += 1,
            Some(Outcome::InProgress) => in_progress += 1,
            None if started.contains(id) => {
                // Its child was deleted by someone: a one-shot is never sent twice, so it is not re-created.
                failed += 1;
                failed_ids.push(id.clone());
            }
            None => pending.push(id),
        }
    }
    let selected = members.len() as u32 + denied;
    status.selected = selected;
    failed_ids.truncate(SAMPLE_IDS);
    status.failed_ids = failed_ids;
    let budget_exceeded = failed > spec.strategy.max_failures;
    let expired_now = past_not_after(spec, input.now);
    if expired_now {
        expired += pending.len() as u32;
    }

    // Dry run: report, create nothing.
    if spec.dry_run {
        let statuses: HashMap<&str, Option<&InstanceStatus>> = input
            .selection
            .map(|s| {
                s.candidates
                    .iter()
                    .map(|c| (c.id.as_str(), c.status.as_ref()))
                    .collect()
            })
            .unwrap_or_default();
        let target = level_target(spec.desired_state);
        let would: Vec<String> = pending
            .iter()
            .filter(|id| match (&target, statuses.get(*id).copied().flatten()) {
                (Some(t), Some(now)) => now != t,
                _ => true,
            })
            .map(|id| id.to_string())
            .collect();
        let report = DryRunReport {
            would_act: would.len() as u32,
            denied,
            first_ids: sample(would.iter().cloned()),
        };
        let shown = report.first_ids.join(", ");
        let more = if would.len() > report.first_ids.len() {
            ", ..."
        } else {
            ""
        };
        let verdict = Verdict::ready(
            "DryRun",
            format!(
                "dry run: would {} {} of {selected} selected instances ({denied} denied by policy){}",
                spec.desired_state.action(),
                report.would_act,
                if shown.is_empty() {
                    String::new()
                } else {
                    format!(": {shown}{more}")
                }
            ),
        );
        status.dry_run = Some(report);
        set_counts(
            &mut status,
            succeeded,
            failed,
            denied,
            in_progress,
            pending.len() as u32,
            expired,
        );
        finish(&mut plan, status, &verdict, input);
        plan.requeue = input.settings.relist;
        return plan;
    }
    status.dry_run = None;

    // Create up to the cap.
    let cap = spec.strategy.max_concurrent.resolve(members.len()).unwrap_or(1);
    let in_flight = in_progress as usize + stale_in_flight.len();
    let may_start = !spec.suspend && !spec.paused && !budget_exceeded && !expired_now;
    if may_start {
        let room = cap.saturating_sub(in_flight);
        plan.create = pending
            .iter()
            .filter(|id| !blocked.contains(**id))
            .take(room)
            .map(|id| NewChild {
                name: name_of(id),
                instance_id: id.to_string(),
            })
            .collect();
    }
    let created = plan.create.len() as u32;
    in_progress += created;
    let waiting = if expired_now { 0 } else { pending.len() as u32 - created };
    set_counts(&mut status, succeeded, failed, denied, in_progress, waiting, expired);

    let done = in_progress == 0 && waiting == 0;
    let progress = format!(
        "{succeeded} succeeded, {failed} failed, {in_progress} in progress, {waiting} pending of {selected} selected ({denied} denied); maxConcurrent {cap}"
    );
    let verdict = if budget_exceeded {
        Verdict::stalled(
            "FailureBudgetExceeded",
            format!(
                "{failed} failed, more than maxFailures {}: no new instance is started ({}); {progress}",
                spec.strategy.max_failures,
                status.failed_ids.join(", ")
            ),
        )
    } else if spec.suspend {
        // Settled like a suspended ComputeInstanceAction (kubectl wait and Argo CD's `Suspended` do not hang).
        Verdict::ready(
            "Suspended",
            format!("spec.suspend is true: no admin API calls; {progress}"),
        )
    } else if done && expired > 0 {
        Verdict::ready(
            "Expired",
            format!("{expired} instances were not started before notAfter; {progress}"),
        )
    } else if done && selected == 0 {
        Verdict::ready("NothingSelected", "the selector matches no instance")
    } else if done && failed > 0 {
        Verdict::ready(
            "CompletedWithFailures",
            format!(
                "{failed} failed (within maxFailures {}): {}; {progress}",
                spec.strategy.max_failures,
                status.failed_ids.join(", ")
            ),
        )
    } else if done {
        Verdict::ready("Succeeded", progress)
    } else if spec.paused {
        Verdict::reconciling(
            "Paused",
            format!("spec.paused is true: no new instance is started; {progress}"),
        )
    } else {
        Verdict::reconciling("RollingOut", progress)
    };
    finish(&mut plan, status, &verdict, input);
    plan.requeue = if done && !one_shot {
        input.settings.relist
    } else if done {
        // A finished one-shot waits for a new requestId (a spec change wakes it).
        input.settings.relist.max(Duration::from_secs(300))
    } else {
        input.settings.poll
    };
    plan
}

fn set_counts(
    status: &mut ComputeFleetActionStatus,
    succeeded: u32,
    failed: u32,
    denied: u32,
    in_progress: u32,
    pending: u32,
    expired: u32,
) {
    status.succeeded = succeeded;
    status.failed = failed;
    status.denied = denied;
    status.in_progress = in_progress;
    status.pending = pending;
    status.expired = expired;
}

fn finish(plan: &mut Plan, mut status: ComputeFleetActionStatus, verdict: &Verdict, input: &PlanInput<'_>) {
    status.message = Some(verdict.message().to_owned());
    apply_verdict(&mut status.conditions, verdict, input.generation, input.now);
    plan.events = events_between(input.status, &status);
    plan.status = status;
}

/// The Events a status change deserves: a new run's snapshot, and a run that finished or stopped.
pub fn events_between(old: &ComputeFleetActionStatus, new: &ComputeFleetActionStatus) -> Vec<FleetEvent> {
    let mut events = Vec::new();
    if let Some(snap) = new.snapshot.as_ref()
        && old.snapshot.as_ref().map(|s| (&s.request_id, s.desired_state))
            != Some((&snap.request_id, snap.desired_state))
    {
        events.push(FleetEvent {
            warning: false,
            reason: "RunStarted".into(),
            note: format!(
                "requestId {}: {} instances selected ({} denied by policy)",
                snap.request_id,
                snap.instance_ids.len(),
                snap.denied
            ),
        });
    }
    let reason_of = |s: &ComputeFleetActionStatus, type_: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.reason.clone())
    };
    let message = new.message.clone().unwrap_or_default();
    let became = |type_: &str| {
        let now = reason_of(new, type_);
        (now.is_some() && now != reason_of(old, type_)).then_some(now).flatten()
    };
    if let Some(reason) = became(crate::controllers::conditions::READY) {
        events.push(FleetEvent {
            warning: reason == "CompletedWithFailures",
            reason,
            note: message.clone(),
        });
    }
    if let Some(reason) = became(crate::controllers::conditions::STALLED) {
        events.push(FleetEvent {
            warning: true,
            reason,
            note: message,
        });
    }
    events
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

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
