//! What the controller holds in memory between reconciles of one object: the status it last wrote (read your
//! writes: the watch cache may lag behind our own write) and progress it chose not to write (polls of an open
//! action). Keyed by UID and tied to resourceVersions, so any change by someone else wins at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::crd::instance_action::{ActionState, ComputeInstanceAction, ComputeInstanceActionStatus};

#[derive(Clone, Debug)]
struct Held {
    /// The resourceVersion the cache showed when we decided (a cache still at it is stale, not foreign).
    base: String,
    /// The resourceVersion of the object this status belongs to (our write's answer, or `base` if not written).
    current: String,
    status: ComputeInstanceActionStatus,
    /// When the watch delivered our write. Kept a moment longer: a reconcile may already hold the object the
    /// store had just before (at `base`), and without this entry would write against it (a 409).
    seen: Option<Instant>,
}

/// How long a write the watch has shown is still held for reconciles that started from the older object.
pub const SEEN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct StatusMemory {
    held: Mutex<HashMap<String, Held>>,
}

impl StatusMemory {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object as this controller last left it: the cached one, or, when the cache still shows what we
    /// decided from (or what we wrote), the status we hold with the resourceVersion to write against.
    pub fn recall(&self, cached: &ComputeInstanceAction) -> ComputeInstanceAction {
        let uid = cached.uid().unwrap_or_default();
        let rv = cached.resource_version().unwrap_or_default();
        let mut held = self.held();
        match held.get(&uid) {
            // Our write is visible in the cache now: nothing left to hold (so nothing is held at rest).
            Some(h) if h.current == rv && h.base != rv => {
                held.remove(&uid);
                cached.clone()
            }
            Some(h) if h.base == rv || h.current == rv => {
                let mut obj = cached.clone();
                obj.metadata.resource_version = Some(h.current.clone());
                obj.status = Some(h.status.clone());
                obj
            }
            Some(_) => {
                // Someone else (a spec edit, another writer) changed the object: theirs wins.
                held.remove(&uid);
                cached.clone()
            }
            None => cached.clone(),
        }
    }

    /// Holds `status` for `obj` whose resourceVersion is now `current` (decided from `base`).
    pub fn hold(&self, obj: &ComputeInstanceAction, base: &str, current: &str, status: &ComputeInstanceActionStatus) {
        let uid = obj.uid().unwrap_or_default();
        self.held().insert(
            uid,
            Held {
                base: base.to_owned(),
                current: current.to_owned(),
                status: status.clone(),
                seen: None,
            },
        );
    }

    /// The watch delivered `obj`: a held write that it now shows is marked seen, and dropped by [`Self::sweep`]
    /// after [`SEEN_GRACE`] unless a reconcile from the new object drops it first (nothing is held at rest).
    pub fn observed(&self, obj: &ComputeInstanceAction) {
        let uid = obj.uid().unwrap_or_default();
        let rv = obj.resource_version().unwrap_or_default();
        let mut held = self.held();
        if let Some(h) = held.get_mut(&uid)
            && h.current == rv
            && h.base != rv
        {
            h.seen.get_or_insert_with(Instant::now);
        }
    }

    /// Drops held writes the watch showed more than `grace` ago.
    pub fn sweep(&self, now: Instant, grace: Duration) {
        self.held()
            .retain(|_, h| h.seen.is_none_or(|at| now.saturating_duration_since(at) < grace));
    }

    pub fn forget(&self, obj: &ComputeInstanceAction) {
        self.held().remove(&obj.uid().unwrap_or_default());
    }

    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Must this change reach the API server, or is it progress that can stay in memory? Written: anything a
/// reader acts on (the action record's state, phase, which conditions hold and why, the generation judged,
/// history and the sent one-shots). Held: messages, observations and `sawTransition` while an action is open.
/// So a level action costs two writes (intent, result) and a restart/reset three (intent, acceptance, result).
pub fn needs_write(old: &ComputeInstanceActionStatus, new: &ComputeInstanceActionStatus) -> bool {
    let open = |s: &ComputeInstanceActionStatus| {
        s.action
            .as_ref()
            .is_some_and(|a| matches!(a.state, ActionState::Requested | ActionState::Accepted))
    };
    let key_conditions = |s: &ComputeInstanceActionStatus| {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect::<Vec<_>>()
    };
    let record_state = |s: &ComputeInstanceActionStatus| s.action.as_ref().map(|a| (a.action, a.state, a.intent_at));
    if !(open(old) && open(new)) {
        // Settled or settling: anything that differs is written (at rest nothing differs: no write).
        return old != new;
    }
    record_state(old) != record_state(new)
        || old.phase != new.phase
        || old.observed_generation != new.observed_generation
        || key_conditions(old) != key_conditions(new)
        || old.history != new.history
        || old.sent_one_shots != new.sent_one_shots
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PowerAction;
    use crate::crd::instance_action::{ActionRecord, Phase};
    use chrono::Utc;

    fn open(state: ActionState, message: &str, saw: bool) -> ComputeInstanceActionStatus {
        let now = chrono::DateTime::<Utc>::MIN_UTC;
        ComputeInstanceActionStatus {
            phase: Some(Phase::InProgress),
            message: Some(message.into()),
            action: Some(ActionRecord {
                action: PowerAction::Stop,
                request_id: None,
                generation: 1,
                state,
                intent_at: now,
                accepted_at: None,
                completed_at: None,
                attempts: 1,
                from_status: Some("running".into()),
                saw_transition: saw,
                reason: None,
                drift: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn progress_of_an_open_action_stays_in_memory() {
        let a = open(ActionState::Accepted, "instance is running", false);
        let b = open(ActionState::Accepted, "instance is stopping", true);
        assert!(!needs_write(&a, &b), "a poll's news is held, not written");
        let requested = open(ActionState::Requested, "x", false);
        assert!(needs_write(&requested, &a), "acceptance changes the record's state");
        let mut done = a.clone();
        done.action.as_mut().unwrap().state = ActionState::Succeeded;
        done.phase = Some(Phase::Succeeded);
        assert!(needs_write(&a, &done), "the result is written");
        assert!(!needs_write(&done, &done.clone()), "at rest: nothing to write");
    }

    #[test]
    fn memory_yields_to_anyone_elses_change() {
        let mut obj = ComputeInstanceAction::new(
            "o",
            serde_json::from_str(r#"{"instanceId":"i","desiredState":"running"}"#).unwrap(),
        );
        obj.metadata.uid = Some("u".into());
        obj.metadata.resource_version = Some("10".into());
        let mem = StatusMemory::default();
        let held = open(ActionState::Accepted, "held", true);
        mem.hold(&obj, "10", "11", &held);
        // The cache still shows 10 (stale) or already 11 (caught up): ours.
        assert_eq!(mem.recall(&obj).status.as_ref(), Some(&held));
        assert_eq!(mem.recall(&obj).resource_version().as_deref(), Some("11"));
        obj.metadata.resource_version = Some("11".into());
        obj.status = Some(held.clone());
        assert_eq!(mem.recall(&obj).status.as_ref(), Some(&held));
        assert!(mem.is_empty(), "once the cache shows our write, nothing is held");
        mem.hold(&obj, "11", "11", &held);
        // Someone else wrote 12: theirs, and the memory is dropped.
        obj.metadata.resource_version = Some("12".into());
        obj.status = None;
        assert_eq!(mem.recall(&obj).status, None);
        assert!(mem.is_empty());
    }

    #[test]
    fn a_reconcile_from_the_object_just_before_our_write_still_reads_it() {
        let mut obj = ComputeInstanceAction::new(
            "o",
            serde_json::from_str(r#"{"instanceId":"i","desiredState":"running"}"#).unwrap(),
        );
        obj.metadata.uid = Some("u".into());
        obj.metadata.resource_version = Some("10".into());
        let before = obj.clone();
        let mem = StatusMemory::default();
        let held = open(ActionState::Accepted, "held", true);
        mem.hold(&obj, "10", "11", &held);
        // The watch shows our write (11) while a reconcile already took the store's object at 10.
        obj.metadata.resource_version = Some("11".into());
        mem.observed(&obj);
        let recalled = mem.recall(&before);
        assert_eq!(
            recalled.resource_version().as_deref(),
            Some("11"),
            "written against 11, not a stale 10"
        );
        assert_eq!(recalled.status.as_ref(), Some(&held));
        // Nothing is held at rest: the sweep drops it after the grace time.
        let t0 = Instant::now();
        mem.sweep(t0, SEEN_GRACE);
        assert_eq!(mem.len(), 1, "within the grace time");
        mem.sweep(t0 + SEEN_GRACE + Duration::from_millis(1), SEEN_GRACE);
        assert!(mem.is_empty());
    }
}
