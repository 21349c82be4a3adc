//! The instance index: which ComputeInstanceActions name which instance, kept from the watch streams, so a
//! reconcile finds its peers without scanning every cached object, and peers are woken when a neighbour
//! appears, changes its spec, finishes acting, or goes away.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::channel::mpsc;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::cached::CachedAction;
use crate::crd::instance_action::ComputeInstanceAction;

/// What the index remembers of one object: enough to tell whether its peers must be woken.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    instance_id: String,
    scope: usize,
    /// A hash of the object's UID: an object deleted and created again under its name, while the watch was
    /// down, is a new object even at the same generation.
    uid_hash: u64,
    generation: Option<i64>,
    acting: bool,
    /// Counts against disruption budgets (see `change::budgets::disrupts`).
    disrupting: bool,
    /// Held back by a window or budget: nothing to observe for it until it may act.
    held: bool,
}

#[derive(Default)]
struct Maps {
    /// `namespace/name` -> what we know of it.
    objects: HashMap<String, Entry>,
    /// instance ID -> `namespace/name` of every object naming it, sorted. A `Vec`, not a set: nearly every
    /// instance has one object, and a B-tree leaf costs ~300 bytes for it (10,000 objects at rest).
    by_instance: HashMap<String, Vec<String>>,
}

impl Maps {
    fn insert(&mut self, key: String, entry: Entry) -> Option<Entry> {
        let previous = self.remove(&key);
        // Almost always one object per instance: no room reserved for four.
        let keys = self
            .by_instance
            .entry(entry.instance_id.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        if let Err(at) = keys.binary_search(&key) {
            keys.insert(at, key.clone());
        }
        self.objects.insert(key, entry);
        previous
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let previous = self.objects.remove(key)?;
        if let Some(keys) = self.by_instance.get_mut(&previous.instance_id) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_instance.remove(&previous.instance_id);
            }
        }
        Some(previous)
    }
}

/// Shared by every reconcile; fed by one [`InstanceIndex::observe`] per watched scope.
pub struct InstanceIndex {
    maps: Mutex<Maps>,
    /// Objects listed during a scope's (re)list, swapped in at its `InitDone`.
    relisting: Mutex<BTreeMap<usize, Vec<(String, Entry)>>>,
    stores: Vec<Store<CachedAction>>,
    wakers: Vec<mpsc::Sender<ObjectRef<CachedAction>>>,
    /// Objects a disruption budget holds back (`namespace/name`), woken when any disruption ends.
    budget_waiters: Mutex<std::collections::HashSet<String>>,
}

fn entry_of(obj: &CachedAction, scope: usize) -> Entry {
    let facts = obj.facts();
    Entry {
        instance_id: facts.instance_id.to_string(),
        scope,
        uid_hash: uid_hash(obj),
        generation: obj.meta().generation,
        acting: facts.acting,
        disrupting: facts.disrupting,
        held: facts.held,
    }
}

fn uid_hash(obj: &CachedAction) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.meta().uid.hash(&mut hasher);
    hasher.finish()
}

/// Is `now` a generation the controller has not reconciled on? An object without a generation always is (as
/// kube's generation predicate treats it), and so is another object under the same name.
fn is_new_generation(held: &Entry, now: &Entry) -> bool {
    now.generation.is_none() || held.generation != now.generation || held.uid_hash != now.uid_hash
}

/// Did a disruption end (a budget's waiters may go)?
fn disruption_ended(before: Option<&Entry>, after: Option<&Entry>) -> bool {
    before.is_some_and(|b| b.disrupting) && after.is_none_or(|a| !a.disrupting)
}

/// Does a change from `before` to `after` concern the other objects on the instance?
fn concerns_peers(before: Option<&Entry>, after: Option<&Entry>) -> bool {
    match (before, after) {
        (None, Some(_)) | (Some(_), None) => true,
        (Some(b), Some(a)) => b.generation != a.generation || (b.acting && !a.acting) || b.instance_id != a.instance_id,
        (None, None) => false,
    }
}

impl InstanceIndex {
    /// One store and one waker channel per watched scope, in the same order as the scopes.
    pub fn new(stores: Vec<Store<CachedAction>>, wakers: Vec<mpsc::Sender<ObjectRef<CachedAction>>>) -> Self {
        Self {
            maps: Mutex::default(),
            relisting: Mutex::default(),
            stores,
            wakers,
            budget_waiters: Mutex::default(),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds one watch event of scope `scope`. Returns whether the event shows an object at a generation the
    /// index did not hold (a new object, or a spec change): what the controller reconciles on. A status write,
    /// the controller's own included, keeps the generation and wakes nobody through the watch.
    pub fn observe(&self, scope: usize, event: &watcher::Event<CachedAction>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(scope, Vec::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let key = crate::controllers::object_key(obj);
                let entry = entry_of(obj, scope);
                // Compared with what the index held before this re-list, swapped in at InitDone.
                let new_generation = self
                    .maps()
                    .objects
                    .get(&key)
                    .is_none_or(|held| is_new_generation(held, &entry));
                if let Some(list) = self.relisting.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&scope) {
                    list.push((key, entry));
                }
                new_generation
            }
            watcher::Event::InitDone => {
                let listed = self
                    .relisting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&scope)
                    .unwrap_or_default();
                let mut maps = self.maps();
                let stale: Vec<String> = maps
                    .objects
                    .iter()
                    .filter(|(_, e)| e.scope == scope)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    maps.remove(&key);
                }
                for (key, entry) in listed {
                    maps.insert(key, entry);
                }
                false
            }
            watcher::Event::Apply(obj) => {
                let key = crate::controllers::object_key(obj);
                let entry = entry_of(obj, scope);
                let instance = entry.instance_id.clone();
                let previous = self.maps().insert(key.clone(), entry.clone());
                if concerns_peers(previous.as_ref(), Some(&entry)) {
                    self.wake_peers(&instance, &key);
                }
                if disruption_ended(previous.as_ref(), Some(&entry)) {
                    self.wake_budget_waiters();
                }
                previous.is_none_or(|held| is_new_generation(&held, &entry))
            }
            watcher::Event::Delete(obj) => {
                let key = crate::controllers::object_key(obj);
                // Bound first: the lock must be released before waking (which takes it again).
                let removed = self.maps().remove(&key);
                if let Some(previous) = removed {
                    self.wake_peers(&previous.instance_id, &key);
                    if disruption_ended(Some(&previous), None) {
                        self.wake_budget_waiters();
                    }
                }
                self.budget_waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                // Nothing to reconcile: the object is gone (its peers were woken above).
                false
            }
        }
    }

    /// `key` waits for a disruption budget: it is woken when any disruption ends.
    pub fn wait_for_budget(&self, key: &str) {
        self.budget_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned());
    }

    /// Wakes every object a budget holds back (each decides again; those still held wait again).
    pub fn wake_budget_waiters(&self) {
        let waiting: Vec<String> = self
            .budget_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let targets: Vec<(usize, String)> = {
            let maps = self.maps();
            waiting
                .into_iter()
                .filter_map(|k| maps.objects.get(&k).map(|e| (e.scope, k)))
                .collect()
        };
        self.wake(targets);
    }

    /// What budgets count of the cached objects that disrupt their instance now (see
    /// `change::budgets::disrupts`), and of those `named` (`namespace/name`) whatever they do. Read from what
    /// the cache keeps beside each packed object: nothing is unpacked.
    pub fn disrupting_objects(
        &self,
        named: &std::collections::HashSet<String>,
    ) -> Vec<crate::controllers::change::CountedObject> {
        let refs: Vec<(usize, String)> = {
            let maps = self.maps();
            maps.objects
                .iter()
                .filter(|(k, e)| e.disrupting || named.contains(k.as_str()))
                .map(|(k, e)| (e.scope, k.clone()))
                .collect()
        };
        refs.into_iter()
            .filter_map(|(scope, key)| {
                let cached = self.cached(scope, &key)?;
                let facts = cached.facts();
                Some(crate::controllers::change::CountedObject {
                    instance_id: facts.instance_id.to_string(),
                    disrupts: facts.disrupting,
                    intent_at: facts.intent_at,
                    instance: facts
                        .disrupted
                        .as_ref()
                        .map(|seen| crate::controllers::change::observed_instance(&facts.instance_id, seen)),
                    key,
                })
            })
            .collect()
    }

    /// The cached object `namespace/name` of `scope`.
    fn cached(&self, scope: usize, key: &str) -> Option<std::sync::Arc<CachedAction>> {
        let (ns, name) = key.split_once('/')?;
        self.stores.get(scope)?.get(&ObjectRef::new(name).within(ns))
    }

    /// The cached objects of `(scope, namespace/name)`, unpacked (one that cannot be is logged and left out).
    fn unpacked(&self, refs: Vec<(usize, String)>) -> Vec<ComputeInstanceAction> {
        refs.into_iter()
            .filter_map(|(scope, key)| {
                self.cached(scope, &key)?
                    .unpack()
                    .inspect_err(|e| tracing::error!(object = %key, error = %e, "cached object unreadable"))
                    .ok()
            })
            .collect()
    }

    /// Asks for a reconcile of every other object on `instance_id`.
    fn wake_peers(&self, instance_id: &str, except: &str) {
        let targets: Vec<(usize, String)> = {
            let maps = self.maps();
            maps.by_instance
                .get(instance_id)
                .into_iter()
                .flatten()
                .filter(|k| k.as_str() != except)
                .filter_map(|k| maps.objects.get(k).map(|e| (e.scope, k.clone())))
                .collect()
        };
        self.wake(targets);
    }

    /// Asks for a reconcile of each `(scope, namespace/name)`.
    fn wake(&self, targets: Vec<(usize, String)>) {
        for (scope, key) in targets {
            let Some((ns, name)) = key.split_once('/') else {
                continue;
            };
            if let Some(waker) = self.wakers.get(scope) {
                // A full channel means reconciles are already queued; the resync catches anything dropped.
                let _ = waker.clone().try_send(ObjectRef::new(name).within(ns));
            }
        }
    }

    /// Asks for a reconcile of every object on `instance_id` (the instance changed under them).
    pub fn wake_instance(&self, instance_id: &str) {
        self.wake_peers(instance_id, "");
    }

    /// Every instance ID some object names, but those whose every object a window or budget holds back
    /// (the instance view does not look at them: nothing is asked while they wait).
    pub fn instance_ids(&self) -> std::collections::HashSet<String> {
        let maps = self.maps();
        maps.by_instance
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| maps.objects.get(k).is_none_or(|e| !e.held)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Is `instance_id` named by some object that is not held back (see [`Self::instance_ids`])?
    pub fn wants(&self, instance_id: &str) -> bool {
        let maps = self.maps();
        maps.by_instance
            .get(instance_id)
            .is_some_and(|keys| keys.iter().any(|k| maps.objects.get(k).is_none_or(|e| !e.held)))
    }

    /// Every cached object naming `instance_id`, unpacked.
    pub fn on_instance(&self, instance_id: &str) -> Vec<ComputeInstanceAction> {
        let refs: Vec<(usize, String)> = {
            let maps = self.maps();
            maps.by_instance
                .get(instance_id)
                .into_iter()
                .flatten()
                .filter_map(|k| maps.objects.get(k).map(|e| (e.scope, k.clone())))
                .collect()
        };
        self.unpacked(refs)
    }

    /// Whether `namespace/name` is still known.
    pub fn contains(&self, key: &str) -> bool {
        self.maps().objects.contains_key(key)
    }

    /// How many objects the index holds.
    pub fn len(&self) -> usize {
        self.maps().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::instance_action::{ComputeInstanceActionSpec, DesiredState, Enforcement};

    fn obj(name: &str, instance: &str, generation: i64) -> CachedAction {
        CachedAction::from(&full(name, instance, generation))
    }

    fn full(name: &str, instance: &str, generation: i64) -> ComputeInstanceAction {
        let mut o = ComputeInstanceAction::new(
            name,
            ComputeInstanceActionSpec {
                instance_id: instance.into(),
                desired_state: DesiredState::Running,
                request_id: None,
                timeout_seconds: 60,
                enforcement: Enforcement::Continuous,
                dry_run: false,
                suspend: false,
                not_after: None,
                escalation: None,
            },
        );
        o.metadata.namespace = Some("ns".into());
        o.metadata.generation = Some(generation);
        o
    }

    fn index() -> (InstanceIndex, mpsc::Receiver<ObjectRef<CachedAction>>) {
        let (tx, rx) = mpsc::channel(16);
        let (reader, _writer) = kube::runtime::reflector::store();
        (InstanceIndex::new(vec![reader], vec![tx]), rx)
    }

    fn woken(rx: &mut mpsc::Receiver<ObjectRef<CachedAction>>) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(r) = rx.try_recv() {
            names.push(r.name);
        }
        names
    }

    #[test]
    fn peers_are_woken_by_creation_spec_change_and_deletion_only() {
        let (idx, mut rx) = index();
        idx.observe(0, &watcher::Event::Apply(obj("a", "i-1", 1)));
        idx.observe(0, &watcher::Event::Apply(obj("other", "i-2", 1)));
        assert!(woken(&mut rx).is_empty(), "alone on its instance");
        idx.observe(0, &watcher::Event::Apply(obj("b", "i-1", 1)));
        assert_eq!(woken(&mut rx), vec!["a"], "a newcomer wakes its peer");
        idx.observe(0, &watcher::Event::Apply(obj("b", "i-1", 1)));
        assert!(woken(&mut rx).is_empty(), "a status-only change wakes nobody");
        idx.observe(0, &watcher::Event::Apply(obj("b", "i-1", 2)));
        assert_eq!(woken(&mut rx), vec!["a"], "a spec change wakes the peer");
        idx.observe(0, &watcher::Event::Delete(obj("a", "i-1", 1)));
        assert_eq!(woken(&mut rx), vec!["b"], "a deletion wakes the survivor");
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn only_a_new_object_or_generation_is_reconciled_on() {
        let (idx, _rx) = index();
        let with_uid = |generation, uid: &str| {
            let mut o = full("a", "i-1", generation);
            o.metadata.uid = Some(uid.into());
            o
        };
        let cached = |o: ComputeInstanceAction| CachedAction::from(&o);
        let apply = |o| idx.observe(0, &watcher::Event::Apply(cached(o)));
        assert!(apply(with_uid(1, "u1")), "first sight");
        assert!(!apply(with_uid(1, "u1")), "a status write keeps the generation");
        assert!(apply(with_uid(2, "u1")), "a spec change");
        assert!(apply(with_uid(2, "u2")), "another object under the same name");
        let mut no_generation = with_uid(1, "u2");
        no_generation.metadata.generation = None;
        assert!(
            apply(no_generation.clone()) && apply(no_generation),
            "no generation: always"
        );
        // A re-list compares with what was held before it.
        assert!(apply(with_uid(3, "u2")));
        assert!(!idx.observe(0, &watcher::Event::Init));
        assert!(
            !idx.observe(0, &watcher::Event::InitApply(cached(with_uid(3, "u2")))),
            "unchanged while the watch was down"
        );
        assert!(
            idx.observe(0, &watcher::Event::InitApply(obj("new", "i-2", 1))),
            "created meanwhile"
        );
        assert!(!idx.observe(0, &watcher::Event::InitDone));
        assert!(
            !idx.observe(0, &watcher::Event::Delete(cached(with_uid(3, "u2")))),
            "gone: nothing to reconcile"
        );
        assert!(apply(with_uid(3, "u3")), "re-created after the delete");
    }

    #[test]
    fn a_relist_replaces_the_scope() {
        let (idx, _rx) = index();
        idx.observe(0, &watcher::Event::Apply(obj("gone", "i-1", 1)));
        idx.observe(0, &watcher::Event::Init);
        idx.observe(0, &watcher::Event::InitApply(obj("kept", "i-2", 1)));
        assert!(idx.contains("ns/gone"), "the old view holds until the relist is done");
        idx.observe(0, &watcher::Event::InitDone);
        assert!(!idx.contains("ns/gone") && idx.contains("ns/kept"));
    }
}
