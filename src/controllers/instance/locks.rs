//! Per-instance serialization inside one process: at most one object acts on an instance at a time.
//!
//! Across restarts and replicas the persisted intent records (peers with an open action) do the same job;
//! this map closes the gap between deciding and that record reaching the cache.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct InstanceLocks {
    held: Mutex<HashMap<String, String>>,
}

impl InstanceLocks {
    /// Takes the instance for `holder` unless another live holder has it. `is_live` says whether a holder
    /// object still exists (a deleted holder's lock is taken over).
    pub fn try_acquire(&self, instance: &str, holder: &str, is_live: impl Fn(&str) -> bool) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(instance) {
            Some(current) if current != holder && is_live(current) => false,
            _ => {
                held.insert(instance.to_owned(), holder.to_owned());
                true
            }
        }
    }

    /// Releases the instance if `holder` has it.
    pub fn release(&self, instance: &str, holder: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(instance).is_some_and(|h| h == holder) {
            held.remove(instance);
        }
    }

    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn holder(&self, instance: &str) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_instance() {
        let l = InstanceLocks::default();
        assert!(l.try_acquire("i1", "a", |_| true));
        assert!(l.try_acquire("i1", "a", |_| true), "re-entrant for the holder");
        assert!(!l.try_acquire("i1", "b", |_| true));
        assert!(l.try_acquire("i2", "b", |_| true), "other instances are independent");
        l.release("i1", "b");
        assert_eq!(l.holder("i1").as_deref(), Some("a"), "only the holder releases");
        assert!(
            l.try_acquire("i1", "b", |h| h != "a"),
            "a deleted holder's lock is taken over"
        );
        l.release("i1", "b");
        assert_eq!(l.holder("i1"), None);
    }
}
