//! Condition bookkeeping: kstatus `Ready`, `Reconciling`, `Stalled`, with transition times that move only on a flip.

use chrono::{DateTime, Utc};

use crate::crd::instance_action::Condition;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// What the object's conditions should say, in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Desired state reached (or one-shot done).
    Ready { reason: String, message: String },
    /// Work under way or waiting for something that will come by itself.
    Reconciling { reason: String, message: String },
    /// Cannot make progress without a change by someone.
    Stalled { reason: String, message: String },
}

impl Verdict {
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Self::Ready {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn reconciling(reason: &str, message: impl Into<String>) -> Self {
        Self::Reconciling {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Self::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Ready { reason, .. } | Self::Reconciling { reason, .. } | Self::Stalled { reason, .. } => reason,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Ready { message, .. } | Self::Reconciling { message, .. } | Self::Stalled { message, .. } => message,
        }
    }
}

/// Sets one condition, keeping `lastTransitionTime` unless the status flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
                c.status = status.into();
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            observed_generation: generation,
            last_transition_time: now,
            reason: reason.into(),
            message: message.into(),
        }),
    }
}

/// Writes all three kstatus conditions from a verdict. Ready is False while reconciling or stalled, with the
/// same reason, so `kubectl wait --for=condition=Ready` and kstatus readers agree.
pub fn apply_verdict(conditions: &mut Vec<Condition>, verdict: &Verdict, generation: Option<i64>, now: DateTime<Utc>) {
    let (ready, reconciling, stalled) = match verdict {
        Verdict::Ready { .. } => (true, false, false),
        Verdict::Reconciling { .. } => (false, true, false),
        Verdict::Stalled { .. } => (false, false, true),
    };
    let (reason, message) = (verdict.reason(), verdict.message());
    set_condition(conditions, READY, ready, reason, message, generation, now);
    let (r_reason, r_message) = if reconciling { (reason, message) } else { ("Idle", "") };
    set_condition(
        conditions,
        RECONCILING,
        reconciling,
        r_reason,
        r_message,
        generation,
        now,
    );
    let (s_reason, s_message) = if stalled {
        (reason, message)
    } else {
        ("Progressing", "")
    };
    set_condition(conditions, STALLED, stalled, s_reason, s_message, generation, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut c = Vec::new();
        apply_verdict(
            &mut c,
            &Verdict::reconciling("ActionAccepted", "stopping"),
            Some(1),
            t(0),
        );
        assert_eq!(c.len(), 3);
        assert_eq!(get(&c, RECONCILING).status, "True");
        // Same status, new message: time stays.
        apply_verdict(
            &mut c,
            &Verdict::reconciling("Polling", "still stopping"),
            Some(1),
            t(5),
        );
        assert_eq!(get(&c, RECONCILING).last_transition_time, t(0));
        assert_eq!(get(&c, RECONCILING).message, "still stopping");
        // Flip to ready: Ready and Reconciling move, Stalled (False -> False) does not.
        apply_verdict(&mut c, &Verdict::ready("Succeeded", "stopped"), Some(2), t(9));
        assert_eq!(get(&c, READY).status, "True");
        assert_eq!(get(&c, READY).last_transition_time, t(9));
        assert_eq!(get(&c, RECONCILING).last_transition_time, t(9));
        assert_eq!(get(&c, STALLED).last_transition_time, t(0));
        assert!(c.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn verdict_table() {
        let table = [
            (Verdict::ready("A", "m"), ["True", "False", "False"]),
            (Verdict::reconciling("B", "m"), ["False", "True", "False"]),
            (Verdict::stalled("C", "m"), ["False", "False", "True"]),
        ];
        for (v, want) in table {
            let mut c = Vec::new();
            apply_verdict(&mut c, &v, None, t(0));
            let got = [READY, RECONCILING, STALLED].map(|k| get(&c, k).status.clone());
            assert_eq!(got, want, "{v:?}");
            assert_eq!(get(&c, READY).reason, v.reason());
        }
    }
}
