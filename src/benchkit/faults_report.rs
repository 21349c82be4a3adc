//! The fault run's report (the JSON of `faults --json`) and its summary as text.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Faults injected, by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultCounts {
    pub controller_kills: usize,
    pub apiserver_restarts: usize,
    pub drop_phases: usize,
    /// Accepted actions whose connection the simulator closed without an answer.
    pub dropped_connections: u64,
    pub error_bursts: usize,
    /// Injected 503 answers.
    pub injected_errors: u64,
    pub latency_phases: usize,
    pub leader_changes: usize,
    pub total: usize,
}

/// One object's record of an OutcomeUnknown, and what explains it.
#[derive(Clone, Debug, Serialize)]
pub struct UnknownOutcome {
    pub object: String,
    pub request_id: Option<String>,
    pub action: String,
    pub intent_at: DateTime<Utc>,
    /// Whether the simulator carried it out (an accepted restart/reset attributed to this requestId).
    pub executed: bool,
    /// `lost-answer` (the controller logged that the POST's answer was lost: a dropped connection or a
    /// timeout), `kill` (a controller was killed while the intent was open), or `unexplained`.
    pub explained_by: String,
}

/// A one-shot executed more often than requested.
#[derive(Clone, Debug, Serialize)]
pub struct Duplicate {
    pub object: String,
    pub instance: String,
    pub request_id: String,
    pub executed: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultsReport {
    pub actions: usize,
    pub objects: usize,
    pub seed: u64,
    pub faults_injected: FaultCounts,
    /// "ok", "unavailable", "not-observed", "skipped" or "failed: ...".
    pub leader_change: String,
    pub one_shot_requests: usize,
    pub one_shot_executed: usize,
    pub level_actions_executed: usize,
    /// One-shots run more than once for one (object, requestId).
    pub duplicates: usize,
    pub duplicate_details: Vec<Duplicate>,
    /// Objects neither Ready nor Stalled (with a reason) for their last generation at the deadline.
    pub unresolved: usize,
    pub unresolved_objects: Vec<String>,
    pub ready: usize,
    pub stalled_by_reason: BTreeMap<String, usize>,
    pub outcome_unknown: usize,
    pub outcome_unknown_after_kill: usize,
    pub outcome_unknown_lost_answer: usize,
    pub outcome_unknown_unexplained: usize,
    pub outcome_unknown_details: Vec<UnknownOutcome>,
    /// Controller exits we did not cause (lease losses excluded).
    pub unexpected_controller_exits: usize,
    /// Controllers (re)started while the API server was away, which gave up at once.
    pub controller_startup_exits: Vec<String>,
    /// Leader-elected replicas that exited after losing the lease (expected, restarted as followers).
    pub lease_loss_exits: usize,
    pub processes_started: usize,
    /// Controller, etcd or kube-apiserver processes still present at the end.
    pub leftover_processes: Vec<u32>,
    pub elapsed_s: f64,
    pub logs: String,
    pub passed: bool,
    /// The fleet rolled out through the faults, when the run had one.
    pub fleet: Option<super::faults_fleet::FleetFaults>,
}

impl FaultsReport {
    /// What the run found, one line per check, with details under the failed ones.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let r = self;
        let mut out = String::new();

        let f = &r.faults_injected;
        let _ = writeln!(
            out,
            "actions                 {} on {} objects (seed {})",
            r.actions, r.objects, r.seed
        );
        let _ = writeln!(
            out,
            "faults injected         {} (kills {}, API server restarts {}, drop phases {} with {} dropped connections, 503 bursts {} with {} errors, latency phases {}, leader changes {})",
            f.total,
            f.controller_kills,
            f.apiserver_restarts,
            f.drop_phases,
            f.dropped_connections,
            f.error_bursts,
            f.injected_errors,
            f.latency_phases,
            f.leader_changes
        );
        let _ = writeln!(out, "leader change           {}", r.leader_change);
        let _ = writeln!(
            out,
            "one-shots               {} requested, {} executed; level actions executed {}",
            r.one_shot_requests, r.one_shot_executed, r.level_actions_executed
        );
        let _ = writeln!(out, "duplicates              {}", r.duplicates);
        for d in &r.duplicate_details {
            let _ = writeln!(
                out,
                "  {} ({}): requestId {} executed {} times",
                d.object, d.instance, d.request_id, d.executed
            );
        }
        if let Some(f) = &r.fleet {
            let _ = writeln!(
                out,
                "fleet                   {} instances: {} restarted once, {} twice or more, {} not restarted; ended {}",
                f.instances,
                f.restarted_once,
                f.duplicates,
                f.not_restarted,
                f.final_reason.as_deref().unwrap_or("UNSETTLED")
            );
        }
        let _ = writeln!(out, "unresolved              {}", r.unresolved);
        for u in &r.unresolved_objects {
            let _ = writeln!(out, "  {u}");
        }
        let _ = writeln!(out, "ready                   {}", r.ready);
        let _ = writeln!(out, "stalled by reason       {:?}", r.stalled_by_reason);
        let _ = writeln!(
            out,
            "OutcomeUnknown          {} (after a kill {}, after a lost answer (dropped connection) {}, unexplained {})",
            r.outcome_unknown,
            r.outcome_unknown_after_kill,
            r.outcome_unknown_lost_answer,
            r.outcome_unknown_unexplained
        );
        let _ = writeln!(
            out,
            "controller exits        {} unexpected, {} after losing the lease, {} at start-up",
            r.unexpected_controller_exits,
            r.lease_loss_exits,
            r.controller_startup_exits.len()
        );
        for e in &r.controller_startup_exits {
            let _ = writeln!(out, "  gave up at start-up (API server away): {e}");
        }
        for u in &r.outcome_unknown_details {
            let _ = writeln!(
                out,
                "  OutcomeUnknown {} {} {} at {}: {} ({})",
                u.object,
                u.action,
                u.request_id.as_deref().unwrap_or("-"),
                u.intent_at,
                if u.executed {
                    "was carried out"
                } else {
                    "was not carried out"
                },
                u.explained_by
            );
        }
        let _ = writeln!(
            out,
            "processes               {} started, {} left behind {:?}",
            r.processes_started,
            r.leftover_processes.len(),
            r.leftover_processes
        );
        let _ = writeln!(out, "elapsed                 {:.1}s", r.elapsed_s);
        if !r.passed {
            let _ = writeln!(out, "controller logs kept in {}", r.logs);
        }
        let _ = writeln!(
            out,
            "result                  {}",
            if r.passed { "PASS" } else { "FAIL" }
        );

        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_check_and_the_verdict() {
        let mut r = FaultsReport {
            duplicates: 1,
            duplicate_details: vec![Duplicate {
                object: "obj-001".into(),
                instance: "flt-001".into(),
                request_id: "obj-001-r3".into(),
                executed: 2,
            }],
            ..FaultsReport::default()
        };
        let s = r.summary();
        assert!(s.contains("duplicates              1\n"), "{s}");
        assert!(
            s.contains("obj-001 (flt-001): requestId obj-001-r3 executed 2 times"),
            "{s}"
        );
        assert!(s.ends_with("result                  FAIL\n"), "{s}");
        r.passed = true;
        assert!(r.summary().ends_with("result                  PASS\n"));
    }
}
