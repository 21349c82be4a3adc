//! What the controller holds in memory between reconciles of one object: the status it last wrote (read your
//! writes: the watch cache may lag behind our own write) and progress it chose not to write (polls of an open
//! action). Keyed by UID and tied to resourceVersions, so any change by someone else wins at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::crd::instance_action::{ActionState, ComputeInstanceAction, ComputeInstanceActionStatus};

/// How many of our own earlier resourceVersions an entry remembers (writes that follow each other faster than
/// the watch delivers them).
const BASES: usize = 4;

#[derive(Clone, Debug)]
struct Held {
    /// The resourceVersions a cache may still show that are ours (what we decided from, and our own earlier
    /// writes this one followed): a cache at one of them is stale, not foreign.
    bases: Vec<String>,
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
            Some(h) if h.current == rv && !h.bases.contains(&rv) => {
                held.remove(&uid);
                cached.clone()
            }
            Some(h) if h.bases.contains(&rv) || h.current == rv => {
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

    /// Holds `status` for `obj` whose resourceVersion is now `current` (decided from `base`). A write that
    /// followed our own held one (decided from a cache still at one of its bases) keeps those bases and the
    /// earlier write's resourceVersion: the watch may still deliver them, and they are ours, not foreign.
    pub fn hold(&self, obj: &ComputeInstanceAction, base: &str, current: &str, status: &ComputeInstanceActionStatus) {
        let uid = obj.uid().unwrap_or_default();
        let mut held = self.held();
        let bases = next_bases(held.get(&uid).map(|h| (h.bases.as_slice(), h.current.as_str())), base);
        held.insert(
            uid,
            Held {
                bases,
                current: current.to_owned(),
                status: status.clone(),
                seen: None,
            },
        );
    }

    /// The watch delivered `obj`: a held write that it now shows is marked seen, and dropped by [`Self::sweep`]
    /// after [`SEEN_GRACE`] unless a reconcile from the new object drops it first (nothing is held at rest).
    pub fn observed(&self, obj: &impl kube::Resource) {
        let uid = obj.uid().unwrap_or_default();
        let rv = obj.resource_version().unwrap_or_default();
        let mut held = self.held();
        if let Some(h) = held.get_mut(&uid)
            && h.current == rv
            && !h.bases.contains(&rv)
        {
            h.seen.get_or_insert_with(Instant::now);
        }
    }

    /// Drops held writes the watch showed more than `grace` ago.
    pub fn sweep(&self, now: Instant, grace: Duration) {
        let mut held = self.held();
        held.retain(|_, h| h.seen.is_none_or(|at| now.saturating_duration_since(at) < grace));
        crate::controllers::shrink_if_sparse(&mut held);
    }

    pub fn forget(&self, obj: &impl kube::Resource) {
        self.held().remove(&obj.uid().unwrap_or_default());
    }

    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bases of a new held write decided from `base` (its resourceVersion now `current`), given the entry held
/// before (its bases and current): when `base` is ours (one of them), the chain is kept, newest last, bounded.
pub fn next_bases(previous: Option<(&[String], &str)>, base: &str) -> Vec<String> {
    let mut bases = match previous {
        Some((bases, prev_current)) if bases.iter().any(|b| b == base) || prev_current == base => {
            let mut chain = bases.to_vec();
            chain.push(prev_current.to_owned());
            chain
        }
        _ => Vec::new(),
    };
    bases.push(base.to_owned());
    let mut seen = std::collections::HashSet::new();
    bases.retain(|b| seen.insert(b.clone()));
    let excess = bases.len().saturating_sub(BASES);
    bases.drain(..excess);
    bases
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
    fn writes_in_a_row_keep_their_own_earlier_versions() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Before<'a> = Option<(Vec<String>, &'a str)>;
        // (held before: bases and current, base of the new write, bases after)
        let rows: [(Before, &str, Vec<String>); 5] = [
            (None, "10", v(&["10"])),
            (Some((v(&["10"]), "11")), "10", v(&["10", "11"])),
            (Some((v(&["10"]), "11")), "11", v(&["10", "11"])),
            (Some((v(&["10"]), "11")), "20", v(&["20"])),
            (Some((v(&["1", "2", "3", "4"]), "5")), "5", v(&["2", "3", "4", "5"])),
        ];
        for (before, base, want) in rows {
            let got = next_bases(before.as_ref().map(|(b, c)| (b.as_slice(), *c)), base);
            assert_eq!(got, want, "{before:?} then {base}");
        }
        // The burst's 409: a write decided from a cache at 10 while our write 11 was held (so against 11)
        // answers 12; the cache then shows 11, which is ours: the memory still serves 12.
        let mut obj = ComputeInstanceAction::new(
            "o",
            serde_json::from_str(r#"{"instanceId":"i","desiredState":"running"}"#).unwrap(),
        );
        obj.metadata.uid = Some("u".into());
        let mem = StatusMemory::default();
        let held = open(ActionState::Accepted, "held", true);
        mem.hold(&obj, "10", "11", &held);
        mem.hold(&obj, "10", "12", &held);
        obj.metadata.resource_version = Some("11".into());
        assert_eq!(mem.recall(&obj).resource_version().as_deref(), Some("12"));
        obj.metadata.resource_version = Some("12".into());
        mem.recall(&obj);
        assert!(mem.is_empty(), "our last write is in the cache: nothing held");
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
