//! The one error policy of every controller: per-object jittered exponential backoff that honours the admin
//! API's `Retry-After`, counted by kind and reason, and logged once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::api::backoff::Backoff;
use crate::metrics::{KindReasonLabels, Metrics};

/// What a controller's reconcile error tells the policy.
pub trait ReconcileError: std::error::Error {
    /// A short, stable reason for metrics (`WriteStatus`, `ListSelection`, ...).
    fn reason(&self) -> &'static str;
    /// How long the admin API asked to wait, when it did.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Per-object error counts for exponential backoff (kube-rs requeues errors at a fixed delay otherwise).
/// An entry lives from an object's first failure to its next success or its deletion.
#[derive(Default)]
pub struct ErrorBackoff {
    attempts: Mutex<HashMap<String, u32>>,
}

impl ErrorBackoff {
    /// The next delay for `key`, counting this failure.
    pub fn next(&self, key: &str, backoff: &Backoff, retry_after: Option<Duration>) -> Duration {
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        let delay = backoff.delay(*n, rand::random::<f64>(), retry_after);
        *n = n.saturating_add(1);
        delay
    }

    /// Success, or the object is gone: start again from the shortest delay.
    pub fn reset(&self, key: &str) {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    pub fn len(&self) -> usize {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policy: counts the failure of `kind` by reason, and comes back after the object's next delay.
    pub fn back_off<K: ResourceExt>(
        &self,
        kind: &'static str,
        obj: &K,
        err: &impl ReconcileError,
        backoff: &Backoff,
        metrics: &Metrics,
    ) -> Action {
        let key = crate::controllers::object_key(obj);
        metrics
            .reconcile_errors
            .get_or_create(&KindReasonLabels {
                kind: kind.into(),
                reason: err.reason().into(),
            })
            .inc();
        let delay = self.next(&key, backoff, err.retry_after());
        tracing::warn!(kind, object = %key, error = %err, delay_ms = delay.as_millis() as u64, "reconcile failed; backing off");
        Action::requeue(delay)
    }
}
