//! The fault run's verdict: from the simulator's audit log, the objects' last state and the controllers' logs,
//! which one-shots ran twice, which objects did not settle, and what explains each OutcomeUnknown.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};

use super::faults_drive::{Issue, Tracked};
use super::faults_report::{Duplicate, FaultsReport, UnknownOutcome};
use super::objects::{Settled, settled};
use crate::crd::instance_action::{ActionState, ComputeInstanceAction};
use crate::sim::AuditEntry;

/// Fills in duplicates, final states and OutcomeUnknown records of `report`. `logs` holds every controller's
/// log; `kills` are the moments a controller was killed.
pub(super) fn judge(
    report: &mut FaultsReport,
    tracked: &[Tracked],
    audit: &[AuditEntry],
    last: &HashMap<String, ComputeInstanceAction>,
    logs: &Path,
    kills: &[DateTime<Utc>],
) {
    // POSTs whose answer the controller lost (it logs `outcome="unknown"`), from every controller's log.
    let lost_answers = lost_answers_in_logs(logs);

    // At most once: attribute each accepted restart/reset to the requestId in force when it was accepted.
    for t in tracked {
        let entries: Vec<_> = audit.iter().filter(|e| e.instance_id == t.instance).collect();
        let one_shots: Vec<_> = entries.iter().filter(|e| e.action.is_one_shot()).collect();
        report.level_actions_executed += entries.len() - one_shots.len();
        report.one_shot_executed += one_shots.len();
        let requested: Vec<&Issue> = t.issues.iter().filter(|i| i.request_id.is_some()).collect();
        report.one_shot_requests += requested.len();
        let mut per_request: BTreeMap<String, usize> = BTreeMap::new();
        for e in &one_shots {
            let rid = t
                .issues
                .iter()
                .rev()
                .find(|i| i.at <= e.at)
                .and_then(|i| i.request_id.clone())
                .unwrap_or_else(|| "<before any request>".into());
            *per_request.entry(rid).or_default() += 1;
        }
        let by_rid: usize = per_request.values().map(|n| n.saturating_sub(1)).sum();
        let by_count = one_shots.len().saturating_sub(requested.len());
        if by_rid.max(by_count) > 0 {
            for (rid, n) in per_request.iter().filter(|(_, n)| **n > 1) {
                report.duplicate_details.push(Duplicate {
                    object: t.name.clone(),
                    instance: t.instance.clone(),
                    request_id: rid.clone(),
                    executed: *n,
                });
            }
        }
        report.duplicates += by_rid.max(by_count);

        // Final state.
        match last.get(&t.name) {
            Some(o) if is_settled_for(last, t) => match settled(o) {
                Some(Settled::Ready(_)) => report.ready += 1,
                Some(Settled::Stalled(reason)) => {
                    *report.stalled_by_reason.entry(reason).or_default() += 1;
                }
                None => {}
            },
            _ => {
                report.unresolved += 1;
                let status = last
                    .get(&t.name)
                    .and_then(|o| o.status.as_ref())
                    .and_then(|s| s.message.clone())
                    .unwrap_or_else(|| "no status".into());
                report.unresolved_objects.push(format!("{}: {status}", t.name));
            }
        }
        // OutcomeUnknown records, and what explains them.
        if let Some(st) = last.get(&t.name).and_then(|o| o.status.as_ref()) {
            for rec in st.history.iter().chain(st.action.iter()) {
                if rec.state != ActionState::OutcomeUnknown {
                    continue;
                }
                // From the intent until the answer could have been recorded: the API timeout (2 s), the
                // injected latency and two status writes.
                let window = |at: DateTime<Utc>| {
                    at >= rec.intent_at - chrono::Duration::milliseconds(200)
                        && at <= rec.intent_at + chrono::Duration::seconds(4)
                };
                let lost_answer = lost_answers.iter().any(|(object, at)| object == &t.name && window(*at));
                let explained_by = if lost_answer {
                    report.outcome_unknown_lost_answer += 1;
                    "lost-answer"
                } else if kills.iter().any(|k| window(*k)) {
                    report.outcome_unknown_after_kill += 1;
                    "kill"
                } else {
                    report.outcome_unknown_unexplained += 1;
                    "unexplained"
                };
                report.outcome_unknown += 1;
                report.outcome_unknown_details.push(UnknownOutcome {
                    object: t.name.clone(),
                    request_id: rec.request_id.clone(),
                    action: rec.action.as_str().into(),
                    intent_at: rec.intent_at,
                    executed: rec
                        .request_id
                        .as_ref()
                        .is_some_and(|rid| per_request.get(rid).is_some_and(|n| *n > 0)),
                    explained_by: explained_by.into(),
                });
            }
        }
    }
}

/// (object name, time) of every `action sent ... outcome="unknown"` line in the controllers' logs.
fn lost_answers_in_logs(dir: &Path) -> Vec<(String, DateTime<Utc>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            if !(line.contains("action sent") && line.contains("outcome=\"unknown\"")) {
                continue;
            }
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            let object = line
                .split("object=")
                .nth(2)
                .or_else(|| line.split("object=").nth(1))
                .and_then(|rest| rest.split([' ', '}', ':']).next())
                .and_then(|key| key.rsplit('/').next())
                .map(str::to_owned);
            if let (Some(at), Some(object)) = (at, object) {
                out.push((object, at));
            }
        }
    }
    out
}

pub(super) fn is_settled_for(last: &HashMap<String, ComputeInstanceAction>, t: &Tracked) -> bool {
    let Some(o) = last.get(&t.name) else {
        return false;
    };
    let Some(issue) = t.issues.last() else {
        return true;
    };
    o.metadata.generation == Some(issue.generation) && settled(o).is_some()
}
