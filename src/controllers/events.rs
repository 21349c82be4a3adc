//! Kubernetes Events for every controller, published off the reconcile path: best effort (they cost API server
//! round trips), in order, each bounded in time, and with a bound on how many batches are in flight.
//!
//! [`EventRecorder`] writes events.k8s.io/v1 Events the way kube-runtime's `Recorder` does (a repeat of the
//! same reason about the same object within 6 minutes becomes a series on the first Event), but remembers each
//! recent Event as a hash and a name. kube's keeps every whole Event for 6 minutes in a map that never shrinks
//! and is pruned only when the next Event is published: measured 11.8 MiB after a burst of 1,000 actions,
//! kept for ever at rest.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

/// One Event to write.
#[derive(Clone, Debug)]
pub struct Event {
    pub type_: EventType,
    pub reason: String,
    pub note: Option<String>,
    pub action: String,
}

/// How long a repeat counts as part of the first Event's series (kube-runtime's and client-go's figure).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// At most this many recent Events are remembered for series (beyond it, a repeat is a new Event).
const MAX_REMEMBERED: usize = 4096;

/// A recent Event: where it is and how often it happened.
#[derive(Clone, Debug)]
struct Sent {
    namespace: String,
    name: String,
    count: i32,
    at: Instant,
}

/// Recent Events by key, pruned as they age; the map gives its memory back when it empties out.
#[derive(Debug, Default)]
struct Recent {
    by_key: HashMap<u64, Sent>,
}

impl Recent {
    fn prune(&mut self, now: Instant) {
        self.by_key.retain(|_, s| now.duration_since(s.at) < SERIES_WINDOW);
        if self.by_key.capacity() > 64 && self.by_key.len() < self.by_key.capacity() / 4 {
            self.by_key.shrink_to_fit();
        }
    }

    /// The series this Event continues, if it repeats a recent one.
    fn repeat_of(&self, key: u64, now: Instant) -> Option<&Sent> {
        self.by_key
            .get(&key)
            .filter(|s| now.duration_since(s.at) < SERIES_WINDOW)
    }

    fn remember(&mut self, key: u64, sent: Sent) {
        if self.by_key.len() < MAX_REMEMBERED || self.by_key.contains_key(&key) {
            self.by_key.insert(key, sent);
        }
    }
}

/// What makes two Events the same (kube-runtime's key: not the note).
fn event_key(reporter: &Reporter, ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (
        ev.type_,
        &ev.action,
        &ev.reason,
        &reporter.controller,
        &reporter.instance,
    )
        .hash(&mut h);
    (&regarding.namespace, &regarding.name, &regarding.uid, &regarding.kind).hash(&mut h);
    h.finish()
}

/// Writes Events for one controller; cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    reporter: Reporter,
    recent: Arc<Mutex<Recent>>,
}

impl EventRecorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the Event, or counts a repeat on the series of the recent one.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = event_key(&self.reporter, ev, regarding);
        let now = Instant::now();
        let repeat = {
            let mut recent = self.recent();
            recent.prune(now);
            recent.repeat_of(key, now).cloned()
        };
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let sent = match repeat {
            Some(first) => {
                let count = first.count + 1;
                let series = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: stamp }
                });
                Api::<K8sEvent>::namespaced(self.client.clone(), &first.namespace)
                    .patch(&first.name, &PatchParams::default(), &Patch::Merge(&series))
                    .await?;
                Sent {
                    count,
                    at: now,
                    ..first
                }
            }
            None => {
                let event = self.new_event(ev, regarding, stamp);
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let created = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
                    .create(&PostParams::default(), &event)
                    .await?;
                Sent {
                    namespace,
                    name: created.metadata.name.unwrap_or_default(),
                    count: 1,
                    at: now,
                }
            }
        };
        self.recent().remember(key, sent);
        Ok(())
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference, stamp: MicroTime) -> K8sEvent {
        let object = regarding.name.as_deref().unwrap_or(&self.reporter.controller);
        K8sEvent {
            metadata: ObjectMeta {
                // Cluster-scoped objects get their Events in `default`, as with kube-runtime.
                namespace: Some(regarding.namespace.clone().unwrap_or_else(|| "default".into())),
                name: Some(format!("{object}.{:x}", stamp.0.as_nanosecond())),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(stamp),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

/// Longest one Event write may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest note kept (the API server refuses longer ones).
const MAX_NOTE: usize = 1000;

/// One Event to publish: warning or normal, a reason, a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Publishes `notes` about `reference` in the background. With `slots`, waits for one first, so at most that
/// many batches are in flight (and a shutdown can wait for them by taking every slot).
pub async fn publish(
    recorder: &EventRecorder,
    slots: Option<&Arc<tokio::sync::Semaphore>>,
    reference: ObjectReference,
    action: &str,
    notes: Vec<Note>,
) {
    if notes.is_empty() {
        return;
    }
    let permit = match slots {
        Some(s) => match s.clone().acquire_owned().await {
            Ok(p) => Some(p),
            Err(_) => return,
        },
        None => None,
    };
    let recorder = recorder.clone();
    let events: Vec<Event> = notes
        .into_iter()
        .map(|n| Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason,
            note: Some(n.message.chars().take(MAX_NOTE).collect()),
            action: action.into(),
        })
        .collect();
    tokio::spawn(async move {
        for event in &events {
            match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(event, &reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, reason = %event.reason, "could not publish an Event"),
                Err(_) => tracing::warn!(reason = %event.reason, "publishing an Event timed out"),
            }
        }
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(at: Instant) -> Sent {
        Sent {
            namespace: "ns".into(),
            name: "obj.1".into(),
            count: 1,
            at,
        }
    }

    #[test]
    fn repeats_within_the_window_continue_a_series_and_old_ones_are_forgotten() {
        let t0 = Instant::now();
        let mut recent = Recent::default();
        recent.remember(1, sent(t0));
        // (seconds after the first, a repeat)
        let rows = [(0, true), (359, true), (360, false), (3600, false)];
        for (after, repeat) in rows {
            let now = t0 + Duration::from_secs(after);
            assert_eq!(recent.repeat_of(1, now).is_some(), repeat, "{after} s later");
        }
        assert!(recent.repeat_of(2, t0).is_none(), "another key");
        recent.prune(t0 + SERIES_WINDOW);
        assert!(recent.by_key.is_empty(), "pruned once old");
    }

    #[test]
    fn memory_is_bounded_and_given_back() {
        let t0 = Instant::now();
        let mut recent = Recent::default();
        for key in 0..(MAX_REMEMBERED as u64 + 100) {
            recent.remember(key, sent(t0));
        }
        assert_eq!(recent.by_key.len(), MAX_REMEMBERED, "bounded");
        let big = recent.by_key.capacity();
        recent.prune(t0 + SERIES_WINDOW);
        assert!(
            recent.by_key.capacity() < big / 4,
            "shrunk after pruning: {}",
            recent.by_key.capacity()
        );
    }

    #[test]
    fn the_key_is_the_reason_about_the_object_not_the_note() {
        let reporter = Reporter {
            controller: "c".into(),
            instance: None,
        };
        let on = |name: &str| ObjectReference {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        };
        let ev = |reason: &str, note: &str| Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
        };
        let k = |e: &Event, o: &ObjectReference| event_key(&reporter, e, o);
        assert_eq!(k(&ev("A", "one"), &on("x")), k(&ev("A", "two"), &on("x")));
        assert_ne!(k(&ev("A", "one"), &on("x")), k(&ev("B", "one"), &on("x")));
        assert_ne!(k(&ev("A", "one"), &on("x")), k(&ev("A", "one"), &on("y")));
    }
}
