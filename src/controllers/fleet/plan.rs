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
use super::resource::{ComputeFleetActionSpec, ComputeFleetActionStatus, DryRunReport, SAMPLE_IDS, Snapshot};
use crate::api::InstanceStatus;
use crate::controllers::conditions::{Verdict, apply_verdict};
use crate::resource::{DesiredState, Enforcement, SENT_ONE_SHOTS_LIMIT};

/// One instance of the selection (only instances the namespace may power are ever candidates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Its status when listed (`None` when not known, e.g. an explicit ID that was not found).
    pub status: Option<InstanceStatus>,
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

/// An Event to publish about the fleet (a run started, finished or stopped).
pub type FleetEvent = crate::controllers::events::Note;

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

/// How long a denied fleet waits before looking again by itself (a policy change wakes it at once).
const DENIED_RECHECK: Duration = Duration::from_secs(300);
/// How soon a fleet waiting for its namespace's list walk tries again.
const LIST_WAIT: Duration = Duration::from_secs(1);

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
fn request_id(spec: &ComputeFleetActionSpec) -> Option<&str> {
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
        return !fresh;
    }
    // A new run's snapshot is taken from a listing made for it, never from an older cache.
    !(has_snapshot(spec, status) || past_not_after(spec, now))
}

/// The status holds the snapshot of the run the spec asks for.
fn has_snapshot(spec: &ComputeFleetActionSpec, status: &ComputeFleetActionStatus) -> bool {
    let kind = run_kind(spec);
    kind != RunKind::Level
        && status.snapshot.as_ref().is_some_and(|s| {
            s.desired_state == Some(spec.desired_state)
                && s.request_id == request_id(spec).unwrap_or_default()
                && (kind == RunKind::OneShot || s.selector.as_ref() == Some(&spec.selector))
        })
}

/// A one-shot run this fleet has run before (its snapshot replaced since): it never runs again.
fn already_ran(spec: &ComputeFleetActionSpec, status: &ComputeFleetActionStatus) -> bool {
    run_kind(spec) == RunKind::OneShot
        && !has_snapshot(spec, status)
        && status
            .ran_runs
            .contains(&run_digest(spec.desired_state, request_id(spec)))
}

fn past_not_after(spec: &ComputeFleetActionSpec, now: DateTime<Utc>) -> bool {
    run_kind(spec) != RunKind::Level && spec.not_after.is_some_and(|t| now > t)
}

/// The status an instance reaches when a level is done (used by the dry run to tell who would be acted on).
fn level_target(desired: DesiredState) -> Option<InstanceStatus> {
    match desired {
        DesiredState::Running => Some(InstanceStatus::Running),
        DesiredState::Stopped => Some(InstanceStatus::Stopped),
        _ => None,
    }
}

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

/// The snapshot of a new run, and for a one-shot its entry in `ranRuns` (kept for the fleet's life, bounded).
fn take_snapshot(status: &mut ComputeFleetActionStatus, spec: &ComputeFleetActionSpec, sel: &Selection) {
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
fn record_existing(status: &mut ComputeFleetActionStatus, current: &[&ChildView]) {
    if let Some(snap) = status.snapshot.as_mut() {
        let recorded: BTreeSet<String> = snap.started_ids.iter().cloned().collect();
        for c in current {
            if !recorded.contains(&c.instance_id) {
                snap.started_ids.push(c.instance_id.clone());
            }
        }
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
        match by_instance.get(id.as_str()).map(|c| &c.outcome) {
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
    let statuses: HashMap<&str, Option<&InstanceStatus>> = input
        .selection
        .map(|s| {
            s.candidates
                .iter()
                .map(|c| (c.id.as_str(), c.status.as_ref()))
                .collect()
        })
        .unwrap_or_default();
    let target = level_target(input.spec.desired_state);
    let would: Vec<String> = pending
        .iter()
        .filter(|id| match (&target, statuses.get(id.as_str()).copied().flatten()) {
            (Some(t), Some(now)) => now != t,
            _ => true,
        })
        .cloned()
        .collect();
    DryRunReport {
        would_act: would.len() as u32,
        first_ids: would.into_iter().take(SAMPLE_IDS).collect(),
    }
}

fn dry_run_message(spec: &ComputeFleetActionSpec, report: &DryRunReport, selected: u32) -> String {
    let shown = report.first_ids.join(", ");
    let more = if report.would_act as usize > report.first_ids.len() {
        ", ..."
    } else {
        ""
    };
    format!(
        "dry run: would {} {} of {selected} selected instances{}",
        spec.desired_state.action(),
        report.would_act,
        if shown.is_empty() {
            String::new()
        } else {
            format!(": {shown}{more}")
        }
    )
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

fn rollout_verdict(
    spec: &ComputeFleetActionSpec,
    status: &ComputeFleetActionStatus,
    c: Counts,
    cap: usize,
    done: bool,
    budget_exceeded: bool,
) -> Verdict {
    let selected = status.selected;
    let denied = if c.denied > 0 {
        format!(" ({} denied by policy since selected)", c.denied)
    } else {
        String::new()
    };
    let incomplete = if status.snapshot.as_ref().is_some_and(|s| s.incomplete) {
        format!(
            "; the selection kept changing over {} walks: the snapshot may miss instances",
            super::walk::WALK_ATTEMPTS
        )
    } else {
        String::new()
    };
    let progress = format!(
        "{} succeeded, {} failed, {} in progress, {} pending of {selected} selected{denied}; maxConcurrent {cap}{incomplete}",
        c.succeeded, c.failed, c.in_progress, c.pending
    );
    if budget_exceeded {
        Verdict::stalled(
            "FailureBudgetExceeded",
            format!(
                "{} failed, more than maxFailures {}: no new instance is started ({}); {progress}",
                c.failed,
                spec.strategy.max_failures(),
                status.failed_ids.join(", ")
            ),
        )
    } else if spec.suspend {
        // Settled like a suspended ComputeInstanceAction (kubectl wait and Argo CD's `Suspended` do not hang).
        Verdict::ready(
            "Suspended",
            format!("spec.suspend is true: no admin API calls; {progress}"),
        )
    } else if done && c.expired > 0 {
        Verdict::ready(
            "Expired",
            format!(
                "{} instances were not started before notAfter (skipped as late); {progress}",
                c.expired
            ),
        )
    } else if done && selected == 0 {
        Verdict::ready("NothingSelected", "the selector matches no instance")
    } else if done && c.failed > 0 {
        Verdict::ready(
            "CompletedWithFailures",
            format!(
                "{} failed (within maxFailures {}): {}; {progress}",
                c.failed,
                spec.strategy.max_failures(),
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
    }
}

/// Names the namespace and what the fleet asked for, nothing about any instance.
fn policy_denied_message(namespace: &str, spec: &ComputeFleetActionSpec) -> String {
    format!(
        "no ComputeAccessPolicy allows namespace {namespace} to set instances to `{}` (this fleet asked for {}); nothing is listed or sent: a cluster administrator must add or widen one",
        spec.desired_state.as_str(),
        spec.selector.describe()
    )
}

fn set_counts(status: &mut ComputeFleetActionStatus, c: Counts) {
    status.succeeded = c.succeeded;
    status.failed = c.failed;
    status.denied = c.denied;
    status.in_progress = c.in_progress;
    status.pending = c.pending;
    status.expired = c.expired;
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
    let key = |s: &Snapshot| (s.request_id.clone(), s.desired_state, s.selector.clone(), s.taken_at);
    if let Some(snap) = new.snapshot.as_ref()
        && old.snapshot.as_ref().map(key) != Some(key(snap))
    {
        let run = if snap.request_id.is_empty() {
            "run".to_owned()
        } else {
            format!("requestId {}", snap.request_id)
        };
        events.push(FleetEvent {
            warning: snap.incomplete,
            reason: "RunStarted".into(),
            message: format!(
                "{run}: {} instances selected{}",
                snap.instance_ids.len(),
                if snap.incomplete {
                    " (the selection kept changing while it was walked: it may miss instances)"
                } else {
                    ""
                }
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
            warning: reason == "CompletedWithFailures" || reason == "Expired",
            reason,
            message: message.clone(),
        });
    }
    if let Some(reason) = became(crate::controllers::conditions::STALLED) {
        events.push(FleetEvent {
            warning: true,
            reason,
            message,
        });
    }
    events
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
