//! Fleet and schedule series: objects by Ready/Stalled reason per kind, fleet children by outcome, failure-budget
//! stops, schedule events by result and their lateness. Fed by one call per reconcile (after the status write).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::controllers::conditions::{READY, STALLED};
use crate::controllers::schedule::plan::LATE_AFTER;
use crate::crd::fleet_action::ComputeFleetActionStatus;
use crate::crd::instance_action::Condition;
use crate::crd::power_schedule::{ComputePowerScheduleStatus, EventResult, LastEvent};

pub const FLEET_KIND: &str = "ComputeFleetAction";
pub const SCHEDULE_KIND: &str = "ComputePowerSchedule";
/// The fleet's Stalled reason when more children failed than `maxFailures` allows.
const BUDGET_EXCEEDED: &str = "FailureBudgetExceeded";
/// `compute_operator_fleet_children{outcome}`, in the order of [`children_of`].
const OUTCOMES: [&str; 6] = ["succeeded", "failed", "denied", "in_progress", "pending", "expired"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindConditionLabels {
    pub kind: String,
    /// `Ready` or `Stalled`.
    pub condition: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// What one fleet or schedule contributes to the gauges (replaced at each observation).
#[derive(Clone, Debug, Default, PartialEq)]
struct Entry {
    conditions: Vec<KindConditionLabels>,
    children: [i64; OUTCOMES.len()],
}

pub struct KindMetrics {
    by_condition: Family<KindConditionLabels, Gauge>,
    fleet_children: Family<OutcomeLabel, Gauge>,
    budget_stops: Counter,
    schedule_events: Family<ResultLabel, Counter>,
    schedule_lateness: Histogram,
    /// By object UID.
    entries: Mutex<HashMap<String, Entry>>,
}

impl KindMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self {
            by_condition: Family::default(),
            fleet_children: Family::default(),
            budget_stops: Counter::default(),
            schedule_events: Family::default(),
            // 1 s .. ~1.5 days.
            schedule_lateness: Histogram::new([1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 86_400.0]),
            entries: Mutex::default(),
        };
        registry.register(
            "resources_by_condition",
            "ComputeFleetActions and ComputePowerSchedules whose Ready or Stalled condition is True, by kind and reason",
            this.by_condition.clone(),
        );
        registry.register(
            "fleet_children",
            "Instances of every fleet by outcome (succeeded, failed, denied, in_progress, pending, expired)",
            this.fleet_children.clone(),
        );
        registry.register(
            "fleet_failure_budget_stops",
            "Fleets that stopped starting instances because more than maxFailures failed",
            this.budget_stops.clone(),
        );
        registry.register(
            "schedule_events",
            "Schedule events by result: on_time, caught_up (run late, within startingDeadline), skipped (missed), failed (its fleet failed), late (its fleet finished, some instances not started within startingDeadline)",
            this.schedule_events.clone(),
        );
        registry.register(
            "schedule_event_lateness_seconds",
            "How late after its time a schedule event was handled (run or skipped)",
            this.schedule_lateness.clone(),
        );
        for outcome in OUTCOMES {
            this.fleet_children.get_or_create(&outcome_label(outcome)).set(0);
        }
        for result in ["on_time", "caught_up", "skipped", "failed", "late"] {
            let _ = this
                .schedule_events
                .get_or_create(&ResultLabel { result: result.into() });
        }
        this
    }

    /// One fleet reconcile: `after` is the status just written, `None` when nothing was written (then `before`
    /// is what the object holds). Counters move only on a written transition, so a retry never counts twice.
    pub fn observe_fleet(
        &self,
        uid: &str,
        before: &ComputeFleetActionStatus,
        after: Option<&ComputeFleetActionStatus>,
    ) {
        let now = after.unwrap_or(before);
        self.replace(
            uid,
            Entry {
                conditions: true_conditions(FLEET_KIND, &now.conditions),
                children: children_of(now),
            },
        );
        if after.is_some()
            && stalled_for(&now.conditions, BUDGET_EXCEEDED)
            && !stalled_for(&before.conditions, BUDGET_EXCEEDED)
        {
            self.budget_stops.inc();
        }
    }

    /// One schedule reconcile, as [`Self::observe_fleet`]; `at` is the controller's clock.
    pub fn observe_schedule(
        &self,
        uid: &str,
        before: &ComputePowerScheduleStatus,
        after: Option<&ComputePowerScheduleStatus>,
        at: DateTime<Utc>,
    ) {
        let now = after.unwrap_or(before);
        self.replace(
            uid,
            Entry {
                conditions: true_conditions(SCHEDULE_KIND, &now.conditions),
                children: [0; OUTCOMES.len()],
            },
        );
        let Some(after) = after else { return };
        for (result, lateness) in schedule_events(before.last_event.as_ref(), after.last_event.as_ref(), at) {
            self.schedule_events
                .get_or_create(&ResultLabel { result: result.into() })
                .inc();
            if let Some(secs) = lateness {
                self.schedule_lateness.observe(secs);
            }
        }
    }

    /// A deleted fleet or schedule no longer counts.
    pub fn forget(&self, uid: &str) {
        let old = self.lock().remove(uid);
        if let Some(old) = old {
            self.apply(&old, -1);
        }
    }

    fn replace(&self, uid: &str, entry: Entry) {
        let old = {
            let mut map = self.lock();
            if map.get(uid) == Some(&entry) {
                return;
            }
            map.insert(uid.to_owned(), entry.clone())
        };
        if let Some(old) = old {
            self.apply(&old, -1);
        }
        self.apply(&entry, 1);
    }

    fn apply(&self, entry: &Entry, sign: i64) {
        for label in &entry.conditions {
            self.by_condition.get_or_create(label).inc_by(sign);
        }
        for (outcome, n) in OUTCOMES.iter().zip(entry.children) {
            self.fleet_children
                .get_or_create(&outcome_label(outcome))
                .inc_by(sign * n);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn outcome_label(outcome: &str) -> OutcomeLabel {
    OutcomeLabel {
        outcome: outcome.into(),
    }
}

fn true_conditions(kind: &str, conditions: &[Condition]) -> Vec<KindConditionLabels> {
    conditions
        .iter()
        .filter(|c| c.status == "True" && (c.type_ == READY || c.type_ == STALLED))
        .map(|c| KindConditionLabels {
            kind: kind.into(),
            condition: c.type_.clone(),
            reason: c.reason.clone(),
        })
        .collect()
}

fn stalled_for(conditions: &[Condition], reason: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == STALLED && c.status == "True" && c.reason == reason)
}

fn children_of(s: &ComputeFleetActionStatus) -> [i64; OUTCOMES.len()] {
    [s.succeeded, s.failed, s.denied, s.in_progress, s.pending, s.expired].map(i64::from)
}

/// The events a status write records: a newly handled event (its result and lateness), and its child fleet
/// failing. Pure, so the table below pins it.
fn schedule_events(
    before: Option<&LastEvent>,
    after: Option<&LastEvent>,
    at: DateTime<Utc>,
) -> Vec<(&'static str, Option<f64>)> {
    let Some(after) = after else { return Vec::new() };
    let same_event = before.is_some_and(|b| b.time == after.time && b.state == after.state && b.child == after.child);
    let mut out = Vec::new();
    if !same_event {
        let late = at - after.time;
        let result = if after.result == EventResult::Skipped {
            "skipped"
        } else if late > LATE_AFTER {
            "caught_up"
        } else {
            "on_time"
        };
        out.push((result, Some(late.num_milliseconds().max(0) as f64 / 1000.0)));
    }
    let failed_before = same_event && before.is_some_and(|b| b.result == EventResult::Failed);
    if after.result == EventResult::Failed && !failed_before {
        out.push(("failed", None));
    }
    // Finished, but some instances were not started within startingDeadline (skipped as late).
    let late_before = same_event && before.is_some_and(|b| b.result == EventResult::Late);
    if after.result == EventResult::Late && !late_before {
        out.push(("late", None));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::power_schedule::ScheduledState;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    fn event(time: i64, result: EventResult, child: Option<&str>) -> LastEvent {
        LastEvent {
            time: t(time),
            state: ScheduledState::Stopped,
            result,
            child: child.map(str::to_owned),
            message: None,
        }
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            observed_generation: None,
            last_transition_time: t(0),
            reason: reason.into(),
            message: String::new(),
        }
    }

    #[test]
    fn schedule_events_by_result() {
        use EventResult::*;
        let started = event(0, InProgress, Some("c1"));
        type Case = (
            Option<LastEvent>,
            Option<LastEvent>,
            i64,
            Vec<(&'static str, Option<f64>)>,
        );
        let cases: Vec<Case> = vec![
            (None, None, 5, vec![]),
            (None, Some(started.clone()), 2, vec![("on_time", Some(2.0))]),
            (None, Some(started.clone()), 600, vec![("caught_up", Some(600.0))]),
            (
                None,
                Some(event(0, Skipped, None)),
                7200,
                vec![("skipped", Some(7200.0))],
            ),
            // The same event moving on is not a new one; its failure counts once.
            (Some(started.clone()), Some(event(0, Succeeded, Some("c1"))), 30, vec![]),
            (
                Some(started.clone()),
                Some(event(0, Failed, Some("c1"))),
                30,
                vec![("failed", None)],
            ),
            (
                Some(event(0, Failed, Some("c1"))),
                Some(event(0, Failed, Some("c1"))),
                40,
                vec![],
            ),
            // A new event whose child is already failed (re-created under the same name) counts both.
            (
                Some(started.clone()),
                Some(event(3600, Failed, Some("c2"))),
                3601,
                vec![("on_time", Some(1.0)), ("failed", None)],
            ),
        ];
        for (before, after, at, want) in cases {
            assert_eq!(
                schedule_events(before.as_ref(), after.as_ref(), t(at)),
                want,
                "{before:?} -> {after:?}"
            );
        }
    }

    fn scrape(m: &crate::metrics::Metrics, series: &str) -> Option<f64> {
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    #[test]
    fn fleet_gauges_follow_each_fleet_and_budget_stops_count_transitions() {
        let m = crate::metrics::Metrics::new();
        let rolling = ComputeFleetActionStatus {
            in_progress: 2,
            pending: 3,
            conditions: vec![cond(READY, "False", "RollingOut")],
            ..Default::default()
        };
        let stopped = ComputeFleetActionStatus {
            failed: 3,
            succeeded: 2,
            conditions: vec![
                cond(READY, "False", BUDGET_EXCEEDED),
                cond(STALLED, "True", BUDGET_EXCEEDED),
            ],
            ..Default::default()
        };
        let stalled = r#"compute_operator_resources_by_condition{kind="ComputeFleetAction",condition="Stalled",reason="FailureBudgetExceeded"}"#;
        m.observe_fleet_status("a", &ComputeFleetActionStatus::default(), Some(&rolling));
        m.observe_fleet_status("b", &ComputeFleetActionStatus::default(), Some(&rolling));
        assert_eq!(
            scrape(&m, r#"compute_operator_fleet_children{outcome="in_progress"}"#),
            Some(4.0)
        );
        m.observe_fleet_status("a", &rolling, Some(&stopped));
        // Observed again without a write (a resync): gauges unchanged, no second stop counted.
        m.observe_fleet_status("a", &stopped, None);
        assert_eq!(
            scrape(&m, r#"compute_operator_fleet_children{outcome="in_progress"}"#),
            Some(2.0)
        );
        assert_eq!(
            scrape(&m, r#"compute_operator_fleet_children{outcome="failed"}"#),
            Some(3.0)
        );
        assert_eq!(
            scrape(&m, "compute_operator_fleet_failure_budget_stops_total"),
            Some(1.0)
        );
        assert_eq!(scrape(&m, stalled), Some(1.0));
        m.forget_resource("a");
        assert_eq!(
            scrape(&m, stalled),
            Some(0.0),
            "a deleted fleet reads 0, the series stays"
        );
        assert_eq!(
            scrape(&m, r#"compute_operator_fleet_children{outcome="failed"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn schedule_series_are_exported_before_any_event() {
        let m = crate::metrics::Metrics::new();
        let text = m.encode();
        for s in [
            r#"compute_operator_schedule_events_total{result="skipped"} 0"#,
            r#"compute_operator_schedule_events_total{result="failed"} 0"#,
            "compute_operator_schedule_event_lateness_seconds_count 0",
            "compute_operator_fleet_failure_budget_stops_total 0",
        ] {
            assert!(text.contains(s), "missing {s} in\n{text}");
        }
        let waiting = ComputePowerScheduleStatus {
            conditions: vec![cond(READY, "True", "Waiting")],
            last_event: Some(event(0, EventResult::Skipped, None)),
            ..Default::default()
        };
        m.observe_schedule_status("s", &ComputePowerScheduleStatus::default(), Some(&waiting), t(7200));
        assert_eq!(
            scrape(&m, r#"compute_operator_schedule_events_total{result="skipped"}"#),
            Some(1.0)
        );
        assert_eq!(
            scrape(
                &m,
                r#"compute_operator_resources_by_condition{kind="ComputePowerSchedule",condition="Ready",reason="Waiting"}"#
            ),
            Some(1.0)
        );
    }
}
