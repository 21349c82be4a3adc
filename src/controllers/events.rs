//! Kubernetes Events for every controller, published off the reconcile path: best effort (they cost API server
//! round trips), in order, each bounded in time, and with a bound on how many batches are in flight.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// Longest one Event write may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest note kept (the API server refuses longer ones).
const MAX_NOTE: usize = 1000;

/// One Event to publish: warning or normal, a reason, a note.
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Publishes `notes` about `reference` in the background. With `slots`, waits for one first, so at most that
/// many batches are in flight (and a shutdown can wait for them by taking every slot).
pub async fn publish(
    recorder: &Recorder,
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
            secondary: None,
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
