//! `kubectl compute status`: the objects acting on an instance, their condition, and their last actions.

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use crate::crd::instance_action::{ActionRecord, ComputeInstanceAction, Condition};

/// How many actions per object the report lists (newest first).
const ACTIONS_SHOWN: usize = 3;

/// The report for `objects` (already filtered to one instance when one was named), sorted by namespace and name.
pub fn render(objects: &[ComputeInstanceAction], instance: Option<&str>, scope: &str) -> String {
    if objects.is_empty() {
        return match instance {
            Some(id) => format!("no ComputeInstanceAction in {scope} acts on instance {id}\n"),
            None => format!("no ComputeInstanceAction in {scope}\n"),
        };
    }
    let mut sorted: Vec<&ComputeInstanceAction> = objects.iter().collect();
    sorted.sort_by_key(|o| (o.namespace().unwrap_or_default(), o.name_any()));
    let mut out = String::new();
    for o in sorted {
        out.push_str(&object_line(o));
        out.push('\n');
        for record in last_actions(o) {
            out.push_str("  ");
            out.push_str(&action_line(record));
            out.push('\n');
        }
    }
    out
}

/// The condition that holds, as `Ready (Succeeded): message`, or `no status yet`.
pub fn condition_summary(conditions: &[Condition]) -> String {
    let condition = ["Ready", "Stalled", "Reconciling"]
        .iter()
        .find_map(|t| conditions.iter().find(|c| c.type_ == *t && c.status == "True"));
    match condition {
        Some(c) if c.message.is_empty() => format!("{} ({})", c.type_, c.reason),
        Some(c) => format!("{} ({}): {}", c.type_, c.reason, c.message),
        None => "no status yet".to_owned(),
    }
}

fn object_line(o: &ComputeInstanceAction) -> String {
    let status = o.status.clone().unwrap_or_default();
    let state = condition_summary(&status.conditions);
    let mut flags = Vec::new();
    if o.spec.dry_run {
        flags.push("dryRun");
    }
    if o.spec.suspend {
        flags.push("suspended");
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", flags.join(", "))
    };
    let observed = status
        .instance
        .map(|i| format!("; instance {}", i.status))
        .unwrap_or_default();
    format!(
        "{}/{}: {} {}{flags} - {state}{observed}",
        o.namespace().unwrap_or_default(),
        o.name_any(),
        o.spec.instance_id,
        o.spec.desired_state.as_str(),
    )
}

/// The current record and the finished ones, newest first, each once (a finished current record is also the
/// newest history entry).
fn last_actions(o: &ComputeInstanceAction) -> Vec<&ActionRecord> {
    let Some(status) = o.status.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<&ActionRecord> = Vec::new();
    for r in status.action.iter().chain(status.history.iter().rev()) {
        let seen = out
            .iter()
            .any(|s| s.intent_at == r.intent_at && s.action == r.action && s.request_id == r.request_id);
        if !seen {
            out.push(r);
        }
        if out.len() == ACTIONS_SHOWN {
            break;
        }
    }
    out
}

fn action_line(r: &ActionRecord) -> String {
    let mut parts = vec![format!("{} {:?}", r.action, r.state)];
    if let Some(rid) = &r.request_id {
        parts.push(format!("requestId {rid}"));
    }
    parts.push(format!("requested {}", clock(r.intent_at)));
    if let Some(t) = r.accepted_at {
        parts.push(format!("accepted {}", clock(t)));
    }
    if let Some(t) = r.completed_at {
        let took = (t - r.intent_at).num_milliseconds().max(0) as f64 / 1000.0;
        parts.push(format!("completed {} (took {took:.1}s)", clock(t)));
    }
    if r.saw_transition {
        parts.push("transition seen".to_owned());
    }
    if r.drift {
        parts.push("drift correction".to_owned());
    }
    if let Some(reason) = &r.reason {
        parts.push(format!("reason {reason}"));
    }
    parts.join(", ")
}

fn clock(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PowerAction;
    use crate::crd::instance_action::{
        ActionState, ComputeInstanceActionSpec, ComputeInstanceActionStatus, DesiredState, Enforcement,
        ObservedInstance,
    };
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn record(action: PowerAction, rid: &str, at: i64, state: ActionState) -> ActionRecord {
        ActionRecord {
            action,
            request_id: Some(rid.into()),
            generation: 1,
            state,
            intent_at: t(at),
            accepted_at: Some(t(at + 1)),
            completed_at: state.is_terminal().then_some(t(at + 5)),
            attempts: 1,
            from_status: Some("running".into()),
            saw_transition: state == ActionState::Succeeded,
            reason: None,
            drift: false,
        }
    }

    fn cia(ns: &str, name: &str, history: Vec<ActionRecord>, action: Option<ActionRecord>) -> ComputeInstanceAction {
        let mut o = ComputeInstanceAction::new(
            name,
            ComputeInstanceActionSpec {
                instance_id: "i-1".into(),
                desired_state: DesiredState::Restarted,
                request_id: Some("r3".into()),
                timeout_seconds: 600,
                enforcement: Enforcement::Continuous,
                dry_run: true,
                suspend: false,
                not_after: None,
                escalation: None,
            },
        );
        o.metadata.namespace = Some(ns.into());
        o.status = Some(ComputeInstanceActionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                observed_generation: Some(1),
                last_transition_time: t(0),
                reason: "Succeeded".into(),
                message: "instance i-1 restarted".into(),
            }],
            instance: Some(ObservedInstance {
                status: "running".into(),
                ..Default::default()
            }),
            action,
            history,
            ..Default::default()
        });
        o
    }

    #[test]
    fn objects_and_their_last_actions_newest_first_each_once() {
        let done = record(PowerAction::Restart, "r3", 300, ActionState::Succeeded);
        let history = vec![
            record(PowerAction::Restart, "r0", 0, ActionState::Succeeded),
            record(PowerAction::Restart, "r1", 100, ActionState::OutcomeUnknown),
            record(PowerAction::Restart, "r2", 200, ActionState::Succeeded),
            done.clone(),
        ];
        let objects = vec![cia("b", "second", vec![], None), cia("a", "first", history, Some(done))];
        let text = render(&objects, Some("i-1"), "all namespaces");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "a/first: i-1 restarted [dryRun] - Ready (Succeeded): instance i-1 restarted; instance running"
        );
        assert!(
            lines[1].starts_with("  restart Succeeded, requestId r3, requested "),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("(took 5.0s), transition seen"), "{}", lines[1]);
        assert!(lines[2].contains("requestId r2"), "{}", lines[2]);
        assert!(lines[3].contains("OutcomeUnknown, requestId r1"), "{}", lines[3]);
        assert!(lines[4].starts_with("b/second: "), "{}", lines[4]);
        assert_eq!(lines.len(), 5, "{text}");
    }

    #[test]
    fn nothing_found_says_where_it_looked() {
        assert_eq!(
            render(&[], Some("i-9"), "namespace ns"),
            "no ComputeInstanceAction in namespace ns acts on instance i-9\n"
        );
        assert_eq!(
            render(&[], None, "namespace ns"),
            "no ComputeInstanceAction in namespace ns\n"
        );
    }
}
