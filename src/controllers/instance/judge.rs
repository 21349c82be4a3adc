//! Pure rules for judging an action by what the instance reports: departure from the starting status,
//! completion, and the bounded memories (history, sent one-shots, loop protection) the planner keeps.
//!
//! The admin API may be slow, quiet and behind a gateway. So:
//! - an action is judged only after the instance **departed** from the status it had when the intent was
//!   written (any other status counts, transitional or not), or at the timeout;
//! - a one-shot whose answer proved nothing (5xx, dropped connection, timeout, crash) is confirmed by a
//!   departure seen within the settle time; only without such evidence is its outcome unknown;
//! - a restart/reset that never shows a departure is assumed complete once `running` was reported for the
//!   whole settle time (the message says so).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::{InstanceStatus, PowerAction};
use crate::crd::instance_action::{
    ActionRecord, ActionState, ComputeInstanceActionStatus, HISTORY_LIMIT, SENT_ONE_SHOTS_LIMIT,
};

/// Has the instance left the status it had when the intent was written? Records written before
/// `fromStatus` existed fall back to "a transitional status was seen".
pub fn departed(from: Option<&str>, now: &InstanceStatus) -> bool {
    match from {
        Some(from) => now.as_str() != from || now.is_transitional(),
        None => now.is_transitional(),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Done; `assumed` when no departure was ever visible and the settle rule decided.
    Done {
        assumed: bool,
    },
    Pending,
    Failed(String),
}

/// Has an accepted action completed, given what the instance reports now?
pub fn completion(record: &ActionRecord, now: &InstanceStatus, since_accept: Duration, settle: Duration) -> Completion {
    use InstanceStatus as S;
    let moved = record.saw_transition || departed(record.from_status.as_deref(), now);
    match (record.action, now) {
        (_, S::Deleting) => Completion::Failed("instance is being deleted".into()),
        (_, s) if s.is_transitional() => Completion::Pending,
        (PowerAction::Stop, S::Stopped) | (PowerAction::Start, S::Running) => Completion::Done { assumed: false },
        (PowerAction::Restart | PowerAction::Reset, S::Running) => {
            if moved {
                Completion::Done { assumed: false }
            } else if since_accept >= settle {
                Completion::Done { assumed: true }
            } else {
                Completion::Pending
            }
        }
        // Still in the status it started from (a queued action): wait until it moves or the timeout.
        (_, S::Error) if !moved => Completion::Pending,
        (_, S::Error) => Completion::Failed("instance reports error".into()),
        // Accepted but not there yet (a stop still seen as running, a restart passing through stopped).
        _ => Completion::Pending,
    }
}

/// A short, stable digest of (action, requestId): FNV-1a 64, hex. Collisions are irrelevant at 1024 entries.
pub fn one_shot_digest(action: PowerAction, request_id: Option<&str>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let key = format!("{}\0{}", action.as_str(), request_id.unwrap_or(""));
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Was this (action, requestId) ever sent (or possibly sent) by the object?
pub fn one_shot_was_sent(status: &ComputeInstanceActionStatus, action: PowerAction, request_id: Option<&str>) -> bool {
    let digest = one_shot_digest(action, request_id);
    status.sent_one_shots.contains(&digest)
}

/// Remembers a one-shot as sent, keeping the newest [`SENT_ONE_SHOTS_LIMIT`].
pub fn remember_one_shot(status: &mut ComputeInstanceActionStatus, action: PowerAction, request_id: Option<&str>) {
    let digest = one_shot_digest(action, request_id);
    if status.sent_one_shots.contains(&digest) {
        return;
    }
    status.sent_one_shots.push(digest);
    if status.sent_one_shots.len() > SENT_ONE_SHOTS_LIMIT {
        let excess = status.sent_one_shots.len() - SENT_ONE_SHOTS_LIMIT;
        status.sent_one_shots.drain(..excess);
    }
}

pub fn push_history(history: &mut Vec<ActionRecord>, record: ActionRecord) {
    history.push(record);
    if history.len() > HISTORY_LIMIT {
        let excess = history.len() - HISTORY_LIMIT;
        history.drain(..excess);
    }
}

/// Restart/reset actions that were (or may have been) carried out since `now - window`, from status records.
pub fn count_recent_one_shots<'s>(
    statuses: impl IntoIterator<Item = &'s ComputeInstanceActionStatus>,
    now: DateTime<Utc>,
    window: Duration,
) -> u32 {
    let since = chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| now.checked_sub_signed(w))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut n = 0;
    for st in statuses {
        for a in st.action.iter().chain(st.history.iter()) {
            let sent = matches!(
                a.state,
                ActionState::Requested | ActionState::Accepted | ActionState::Succeeded | ActionState::OutcomeUnknown
            ) || (a.state == ActionState::Failed && a.accepted_at.is_some());
            if a.action.is_one_shot() && sent && a.intent_at >= since {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::instance_action::ActionState;

    fn record(action: PowerAction, from: Option<&str>, saw: bool) -> ActionRecord {
        ActionRecord {
            action,
            request_id: Some("r".into()),
            generation: 1,
            state: ActionState::Accepted,
            intent_at: DateTime::<Utc>::MIN_UTC,
            accepted_at: None,
            completed_at: None,
            attempts: 1,
            from_status: from.map(Into::into),
            saw_transition: saw,
            reason: None,
            drift: false,
        }
    }

    #[test]
    fn departure_is_any_other_status() {
        let rows: &[(Option<&str>, &str, bool)] = &[
            (Some("running"), "running", false),
            (Some("running"), "restarting", true),
            (Some("running"), "stopped", true),
            (Some("running"), "provisioning", true),
            (Some("running"), "error", true),
            (Some("running"), "hibernating", true),
            (Some("error"), "error", false),
            (Some("error"), "running", true),
            (Some("stopped"), "stopped", false),
            (None, "running", false),
            (None, "restarting", true),
            (None, "stopped", false),
        ];
        for &(from, now, want) in rows {
            assert_eq!(departed(from, &InstanceStatus::parse(now)), want, "{from:?} -> {now}");
        }
    }

    #[test]
    fn completion_table() {
        use Completion as C;
        use PowerAction as A;
        let s = Duration::from_secs(15);
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(20);
        let failed = || C::Failed("instance reports error".into());
        // (action, fromStatus, sawTransition, now, since accept, expected)
        type Row<'a> = (A, Option<&'a str>, bool, &'a str, Duration, C);
        let rows: Vec<Row> = vec![
            // Queued start/reset of an instance in error: still error is not a failure.
            (A::Start, Some("error"), false, "error", early, C::Pending),
            (A::Start, Some("error"), false, "error", late, C::Pending),
            (A::Reset, Some("error"), false, "error", early, C::Pending),
            (A::Reset, Some("error"), false, "error", late, C::Pending),
            (
                A::Start,
                Some("error"),
                false,
                "running",
                early,
                C::Done { assumed: false },
            ),
            (
                A::Reset,
                Some("error"),
                false,
                "running",
                early,
                C::Done { assumed: false },
            ),
            // Error after a departure is a failure.
            (A::Start, Some("stopped"), false, "error", early, failed()),
            (A::Reset, Some("error"), true, "error", early, failed()),
            (A::Restart, Some("running"), false, "error", early, failed()),
            // Restart: a departure proves it; none means the settle rule, said so.
            (
                A::Restart,
                Some("running"),
                true,
                "running",
                early,
                C::Done { assumed: false },
            ),
            (A::Restart, Some("running"), false, "running", early, C::Pending),
            (
                A::Restart,
                Some("running"),
                false,
                "running",
                late,
                C::Done { assumed: true },
            ),
            (A::Restart, Some("running"), false, "stopped", early, C::Pending),
            (A::Restart, Some("running"), false, "provisioning", early, C::Pending),
            (A::Restart, Some("running"), false, "restarting", late, C::Pending),
            // Levels.
            (A::Stop, Some("running"), false, "running", late, C::Pending),
            (
                A::Stop,
                Some("running"),
                false,
                "stopped",
                early,
                C::Done { assumed: false },
            ),
            (
                A::Stop,
                Some("running"),
                false,
                "deleting",
                early,
                C::Failed("instance is being deleted".into()),
            ),
            // Old records without fromStatus.
            (A::Restart, None, false, "running", early, C::Pending),
            (A::Restart, None, true, "running", early, C::Done { assumed: false }),
        ];
        for (action, from, saw, now, since, want) in rows {
            let got = completion(&record(action, from, saw), &InstanceStatus::parse(now), since, s);
            assert_eq!(got, want, "{action} from {from:?} saw={saw} now={now} after {since:?}");
        }
    }

    #[test]
    fn sent_one_shots_are_keyed_by_action_and_request_id_and_bounded() {
        let mut st = ComputeInstanceActionStatus::default();
        remember_one_shot(&mut st, PowerAction::Restart, Some("a"));
        assert!(one_shot_was_sent(&st, PowerAction::Restart, Some("a")));
        assert!(
            !one_shot_was_sent(&st, PowerAction::Reset, Some("a")),
            "a reset with a restart's id is new"
        );
        assert!(!one_shot_was_sent(&st, PowerAction::Restart, Some("b")));
        remember_one_shot(&mut st, PowerAction::Restart, Some("a"));
        assert_eq!(st.sent_one_shots.len(), 1, "no duplicates");
        for i in 0..SENT_ONE_SHOTS_LIMIT + 10 {
            remember_one_shot(&mut st, PowerAction::Reset, Some(&format!("r{i}")));
        }
        assert_eq!(st.sent_one_shots.len(), SENT_ONE_SHOTS_LIMIT);
        assert!(one_shot_was_sent(
            &st,
            PowerAction::Reset,
            Some(&format!("r{}", SENT_ONE_SHOTS_LIMIT + 9))
        ));
        assert!(
            !one_shot_was_sent(&st, PowerAction::Restart, Some("a")),
            "the oldest is forgotten first"
        );
        assert_eq!(one_shot_digest(PowerAction::Restart, Some("a")).len(), 16);
    }
}
