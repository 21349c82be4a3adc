//! The pure decision of a power schedule: (spec, status, children, now) -> which child fleet to create, which
//! older ones to suspend or delete, the status to hold and the exact time to come back. No I/O.
//!
//! - `events` enforcement: the latest event after the last one handled (or after the schedule's creation) is
//!   run if it is younger than `startingDeadline`, otherwise recorded as `Skipped` and reported. Older missed
//!   events are superseded by it (the schedule sets levels, so only the latest matters).
//! - `continuous` enforcement: the state of the last event is always held; a missed event is run however late.
//! - An override in effect holds its state (one child when it starts); when it ends (expired, or removed from
//!   the spec) the schedule resumes with the calendar's state at that moment (one more child).
//! - Only the newest child may act: older children that could still act (continuous, or not finished) are
//!   suspended before a new one is created, so two children never fight over an instance.

use chrono::{DateTime, TimeDelta, Utc};

use super::children::{ChildCause, ChildOutcome, ChildRequest, ChildView, child_name};
use crate::controllers::calendar::{Calendar, CalendarError, parse_deadline};
use crate::controllers::conditions::{Verdict, apply_verdict};
use crate::crd::power_schedule::{
    ComputePowerScheduleSpec, ComputePowerScheduleStatus, EventResult, LastEvent, NextEvent, OverrideStatus,
    ScheduleEnforcement,
};

/// Children kept per schedule (newest first), like a CronJob's history limits.
pub const HISTORY_LIMIT: usize = 3;
/// An event run later than this after its time is reported as caught up rather than on time.
pub const LATE_AFTER: TimeDelta = TimeDelta::seconds(60);
/// How far in the future a recorded last event may be before it counts as a clock error.
pub const CLOCK_TOLERANCE: TimeDelta = TimeDelta::seconds(60);

pub struct PlanInput<'a> {
    pub name: &'a str,
    pub spec: &'a ComputePowerScheduleSpec,
    pub status: &'a ComputePowerScheduleStatus,
    pub generation: Option<i64>,
    /// When the schedule was created: `events` enforcement never runs an event from before it.
    pub created_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// The schedule's child fleets, in any order.
    pub children: &'a [ChildView],
}
pub use crate::controllers::events::Note;

/// What to do, in this order: suspend, create, delete; then write the status and come back at `requeue_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub suspend: Vec<String>,
    pub create: Option<ChildRequest>,
    pub delete: Vec<String>,
    pub status: ComputePowerScheduleStatus,
    /// The next event or the override's end; `None` when only a spec change can help.
    pub requeue_at: Option<DateTime<Utc>>,
    pub notes: Vec<Note>,
}

/// Decides the next step.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut status = input.status.clone();
    status.observed_generation = input.generation;
    let mut plan = Plan {
        suspend: Vec::new(),
        create: None,
        delete: Vec::new(),
        status,
        requeue_at: None,
        notes: Vec::new(),
    };
    let calendar = match Calendar::from_spec(input.spec) {
        Ok(c) => c,
        Err(e) => {
            let reason = match e {
                CalendarError::UnknownTimeZone(_) => "InvalidTimeZone",
                CalendarError::BadTime { .. } | CalendarError::NoEvents => "InvalidEvents",
            };
            return stalled(plan, input, reason, e.to_string());
        }
    };
    let Some(deadline) = parse_deadline(&input.spec.starting_deadline) else {
        let message = format!(
            "startingDeadline {:?} is not a duration such as 1h, 30m or 90s",
            input.spec.starting_deadline
        );
        return stalled(plan, input, "InvalidStartingDeadline", message);
    };
    let now = input.now;
    let next = calendar.next_event(now);

    if input.spec.suspend {
        plan.status.next_event = next.map(|o| NextEvent {
            time: o.at,
            state: o.state,
        });
        plan.requeue_at = next.map(|o| o.at);
        refresh_result(&mut plan.status, input.children);
        // Settled like a suspended ComputeInstanceAction: `kubectl wait` and GitOps health do not hang on it, and
        // Argo CD's health check answers `Suspended`.
        let verdict = Verdict::ready(
            "Suspended",
            "spec.suspend is true: no child fleet is created; events missed meanwhile are caught up within startingDeadline when it is false",
        );
        return finish(plan, input, verdict);
    }

    clock_check(&mut plan, now);
    let active_override = input.spec.power_override.as_ref().filter(|o| o.until > now);
    let mut baseline = match input.spec.enforcement {
        // Never an event from before the schedule existed (what a CronJob does).
        ScheduleEnforcement::Events => plan.status.last_event.as_ref().map_or(input.created_at, |l| l.time),
        // Hold the last event's state whenever it is not known to be held.
        ScheduleEnforcement::Continuous => plan
            .status
            .last_event
            .as_ref()
            .map_or(DateTime::<Utc>::MIN_UTC, |l| l.time),
    };

    if let Some(o) = active_override {
        let held = plan.status.power_override.as_ref();
        if let Some(held) =
            held.filter(|h| h.state == o.state && h.child.as_deref().is_some_and(|c| acting(c, input.children)))
        {
            // Same state held already: a new `until` only moves the end.
            let child = held.child.clone();
            plan.status.power_override = Some(OverrideStatus {
                state: o.state,
                until: o.until,
                child,
            });
        } else {
            let name = child_name(
                input.name,
                ChildCause::OverrideStart,
                o.until,
                o.state,
                input.generation,
            );
            plan.notes.push(Note {
                warning: false,
                reason: "OverrideStarted".into(),
                message: format!(
                    "holding {} until {} (spec.override): created {name}",
                    o.state.as_str(),
                    o.until.to_rfc3339()
                ),
            });
            plan.status.power_override = Some(OverrideStatus {
                state: o.state,
                until: o.until,
                child: Some(name.clone()),
            });
            plan.create = Some(ChildRequest {
                name,
                state: o.state,
                scheduled_at: now,
                cause: ChildCause::OverrideStart,
            });
        }
        // The calendar waits: after the override it resumes from its end, not from events held off meanwhile.
        let end_state = calendar.last_event(o.until).map(|e| e.state);
        plan.status.next_event = end_state.map(|state| NextEvent { time: o.until, state });
        plan.requeue_at = Some(o.until);
    } else {
        if let Some(held) = plan.status.power_override.take() {
            // Expired, or removed from the spec early: back to the calendar's state at the end.
            let end = held.until.min(now);
            if let Some(state) = calendar.last_event(end).map(|e| e.state) {
                let name = child_name(input.name, ChildCause::OverrideEnd, held.until, state, input.generation);
                plan.notes.push(Note {
                    warning: false,
                    reason: "OverrideEnded".into(),
                    message: format!(
                        "the override holding {} ended at {}: back to the schedule ({}), created {name}",
                        held.state.as_str(),
                        end.to_rfc3339(),
                        state.as_str()
                    ),
                });
                plan.status.last_event = Some(LastEvent {
                    time: end,
                    state,
                    result: EventResult::InProgress,
                    child: Some(name.clone()),
                    message: Some(format!("the override holding {} ended", held.state.as_str())),
                });
                plan.create = Some(ChildRequest {
                    name,
                    state,
                    scheduled_at: end,
                    cause: ChildCause::OverrideEnd,
                });
                baseline = end;
            }
        }
        due_event(&mut plan, input, &calendar, baseline, deadline);
        plan.status.next_event = next.map(|o| NextEvent {
            time: o.at,
            state: o.state,
        });
        plan.requeue_at = next.map(|o| o.at);
    }

    if input.spec.enforcement == ScheduleEnforcement::Continuous && plan.create.is_none() {
        recreate_missing_holder(&mut plan, input);
    }
    housekeeping(&mut plan, input);
    refresh_result(&mut plan.status, input.children);
    let verdict = verdict(&plan.status, input.spec.starting_deadline.as_str());
    finish(plan, input, verdict)
}

/// A `lastEvent` in the future means the clock moved back (or was wrong when it was written): counting from
/// it would silently suppress every event until the clock caught up. It is reported, and events are counted
/// from now on (the last event's record is kept, moved to now).
fn clock_check(plan: &mut Plan, now: DateTime<Utc>) {
    let Some(last) = plan
        .status
        .last_event
        .as_mut()
        .filter(|l| l.time > now + CLOCK_TOLERANCE)
    else {
        return;
    };
    let message = format!(
        "clock error: the last event was recorded at {}, after the current time {}; events are run from now on",
        last.time.to_rfc3339(),
        now.to_rfc3339()
    );
    plan.notes.push(Note {
        warning: true,
        reason: "ClockSkew".into(),
        message: message.clone(),
    });
    last.time = now;
    last.message = Some(message);
}

/// The latest event after `baseline`, if any: run it (a new child) or record it as skipped.
fn due_event(
    plan: &mut Plan,
    input: &PlanInput<'_>,
    calendar: &Calendar,
    baseline: DateTime<Utc>,
    deadline: TimeDelta,
) {
    let now = input.now;
    let Some(last) = calendar.last_event(now).filter(|e| e.at > baseline) else {
        return;
    };
    let late = now - last.at;
    let continuous = input.spec.enforcement == ScheduleEnforcement::Continuous;
    if !continuous && late > deadline {
        let message = format!(
            "missed by {}, more than startingDeadline {}: not run",
            human(late),
            input.spec.starting_deadline
        );
        plan.notes.push(Note {
            warning: true,
            reason: "MissedEvent".into(),
            message: format!(
                "the {} event at {} was {message}",
                last.state.as_str(),
                last.at.to_rfc3339()
            ),
        });
        plan.status.last_event = Some(LastEvent {
            time: last.at,
            state: last.state,
            result: EventResult::Skipped,
            child: None,
            message: Some(message),
        });
        return;
    }
    let name = child_name(input.name, ChildCause::Event, last.at, last.state, input.generation);
    let message = (late > LATE_AFTER).then(|| format!("caught up {} late", human(late)));
    plan.notes.push(Note {
        warning: false,
        reason: if message.is_some() { "CaughtUp" } else { "EventStarted" }.into(),
        message: format!(
            "the {} event at {}{}: created {name}",
            last.state.as_str(),
            last.at.to_rfc3339(),
            message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default()
        ),
    });
    plan.status.last_event = Some(LastEvent {
        time: last.at,
        state: last.state,
        result: EventResult::InProgress,
        child: Some(name.clone()),
        message,
    });
    plan.create = Some(ChildRequest {
        name,
        state: last.state,
        scheduled_at: last.at,
        cause: ChildCause::Event,
    });
}

/// `continuous` holds the state at all times: a child that holds it and was deleted (by hand, by a cleanup) is
/// created again under its own name. (`events` children converge once; deleting one is the user's call.)
fn recreate_missing_holder(plan: &mut Plan, input: &PlanInput<'_>) {
    let holder = match (&plan.status.power_override, &plan.status.last_event) {
        (Some(o), _) => o
            .child
            .clone()
            .map(|name| (name, o.state, input.now, ChildCause::OverrideStart)),
        (None, Some(l)) if l.result != EventResult::Skipped => {
            l.child.clone().map(|name| (name, l.state, l.time, ChildCause::Event))
        }
        _ => None,
    };
    let Some((name, state, scheduled_at, cause)) = holder else {
        return;
    };
    if input.children.iter().any(|c| c.name == name) {
        return;
    }
    plan.notes.push(Note {
        warning: true,
        reason: "ChildRecreated".into(),
        message: format!(
            "{name}, which holds {} (continuous enforcement), was missing: created again",
            state.as_str()
        ),
    });
    plan.create = Some(ChildRequest {
        name,
        state,
        scheduled_at,
        cause,
    });
}

/// Whether the child the status names still acts: not suspended and not superseded by a newer child. A
/// status write lost after a newer child was created (the spec changed between the create and the write)
/// leaves the status naming a child that was suspended since; holding "the same state" through it would hold
/// nothing. A child missing from the list still counts (continuous enforcement creates it again).
fn acting(name: &str, children: &[ChildView]) -> bool {
    let key = |c: &ChildView| (c.scheduled_at, c.name.clone());
    match children.iter().find(|c| c.name == name) {
        None => true,
        Some(held) => !held.suspended && children.iter().all(|c| key(c) <= key(held)),
    }
}

/// Only the newest child acts; the history is bounded. Children the status names are never deleted.
fn housekeeping(plan: &mut Plan, input: &PlanInput<'_>) {
    let mut children: Vec<&ChildView> = input.children.iter().collect();
    children.sort_by(|a, b| (a.scheduled_at, &a.name).cmp(&(b.scheduled_at, &b.name)));
    let current = match &plan.create {
        Some(c) => Some(c.name.clone()),
        None => children.last().map(|c| c.name.clone()),
    };
    let older: Vec<&ChildView> = children
        .into_iter()
        .filter(|c| Some(&c.name) != current.as_ref())
        .collect();
    plan.suspend = older
        .iter()
        .filter(|c| !c.suspended && (c.continuous || c.outcome == ChildOutcome::InProgress))
        .map(|c| c.name.clone())
        .collect();
    let named = [
        plan.status.last_event.as_ref().and_then(|l| l.child.clone()),
        plan.status.power_override.as_ref().and_then(|o| o.child.clone()),
    ];
    let keep_older = HISTORY_LIMIT.saturating_sub(usize::from(current.is_some()));
    let excess = older.len().saturating_sub(keep_older);
    plan.delete = older
        .iter()
        .take(excess)
        .filter(|c| !named.iter().flatten().any(|n| *n == c.name))
        .map(|c| c.name.clone())
        .collect();
    // A child about to be deleted need not be suspended first.
    plan.suspend.retain(|n| !plan.delete.contains(n));
}

/// The last event's result follows its child: in progress, Ready, or Stalled.
fn refresh_result(status: &mut ComputePowerScheduleStatus, children: &[ChildView]) {
    let Some(last) = status.last_event.as_mut() else { return };
    if last.result == EventResult::Skipped {
        return;
    }
    let Some(child) = last.child.as_ref().and_then(|n| children.iter().find(|c| &c.name == n)) else {
        return;
    };
    last.result = match &child.outcome {
        ChildOutcome::InProgress => EventResult::InProgress,
        ChildOutcome::Succeeded => EventResult::Succeeded,
        ChildOutcome::Late(tally) => {
            last.message = Some(tally.clone());
            EventResult::Late
        }
        ChildOutcome::Failed(reason) => {
            last.message = Some(reason.clone());
            EventResult::Failed
        }
    };
}

fn verdict(status: &ComputePowerScheduleStatus, deadline: &str) -> Verdict {
    let next = status.next_event.as_ref().map_or("no further event".to_owned(), |n| {
        format!("next: {} at {}", n.state.as_str(), n.time.to_rfc3339())
    });
    if let Some(o) = &status.power_override {
        return Verdict::ready(
            "OverrideInEffect",
            format!(
                "holding {} until {} (spec.override); then the schedule resumes ({next})",
                o.state.as_str(),
                o.until.to_rfc3339()
            ),
        );
    }
    let Some(last) = &status.last_event else {
        return Verdict::ready("Waiting", next);
    };
    let child = last.child.as_deref().unwrap_or("-");
    let what = format!("the {} event at {}", last.state.as_str(), last.time.to_rfc3339());
    match last.result {
        EventResult::InProgress => Verdict::reconciling("EventInProgress", format!("{what}: {child} is rolling out")),
        EventResult::Failed => Verdict::stalled(
            "EventFailed",
            format!(
                "{what}: {child} failed ({}); the schedule acts again at the next event ({next})",
                last.message.as_deref().unwrap_or("see the fleet's status")
            ),
        ),
        EventResult::Skipped => Verdict::ready(
            "MissedEvent",
            format!("{what} was missed by more than startingDeadline {deadline} and not run; {next}"),
        ),
        EventResult::Succeeded => Verdict::ready("Waiting", format!("{what}: {child} succeeded; {next}")),
        EventResult::Late => Verdict::ready(
            "LateEvent",
            format!(
                "{what}: {child} finished late: {}; {next}",
                last.message
                    .as_deref()
                    .unwrap_or("some instances were not started within startingDeadline")
            ),
        ),
    }
}

fn stalled(mut plan: Plan, input: &PlanInput<'_>, reason: &str, message: String) -> Plan {
    plan.status.next_event = None;
    finish(plan, input, Verdict::stalled(reason, message))
}

fn finish(mut plan: Plan, input: &PlanInput<'_>, verdict: Verdict) -> Plan {
    plan.status.message = Some(verdict.message().to_owned());
    apply_verdict(&mut plan.status.conditions, &verdict, input.generation, input.now);
    plan
}

/// Does the schedule as read again (`now`) still ask for what the plan made from `seen` decided? Same object
/// and generation, not suspended or being deleted: otherwise no child is created.
pub fn still_asks(
    seen: &crate::crd::power_schedule::ComputePowerSchedule,
    now: &crate::crd::power_schedule::ComputePowerSchedule,
) -> bool {
    now.metadata.uid == seen.metadata.uid
        && now.metadata.generation == seen.metadata.generation
        && now.metadata.deletion_timestamp.is_none()
        && !now.spec.suspend
}

/// `3h2m`, `45s`: short and exact enough for a message.
pub fn human(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
