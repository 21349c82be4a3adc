//! A kind's watch as every controller of a composed kind runs it: managedFields dropped before the store (the
//! cache holds what planners read), every event reported to liveness, and what is kept for an object let go
//! when the watch shows it deleted.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::health::Health;

/// The objects of `api`, reflected into `writer`; `gone` runs for each deleted object; `name` is how liveness
/// calls the watch.
pub fn watched<K>(
    api: Api<K>,
    writer: Writer<K>,
    health: Option<Arc<Health>>,
    name: String,
    gone: impl Fn(&K) + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let probe = health.map(|h| h.watch(name));
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |event| {
            if let Some(p) = &probe {
                p.observe(event);
            }
            if let Ok(watcher::Event::Delete(o)) = event {
                gone(o);
            }
        })
        .touched_objects()
}

/// A composed kind's watch in one scope: its store and its stream ([`watched`]), named for liveness
/// `<plural> in <namespace>` (or `in all namespaces`).
pub fn scope_watch<K, G>(
    api: Api<K>,
    run: &super::RunSettings,
    plural: &str,
    gone: G,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + use<K, G>,
)
where
    G: Fn(&K) + Send + 'static,
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let name = format!("{plural} in {}", api.namespace().unwrap_or("all namespaces"));
    (reader, watched(api, writer, run.health.clone(), name, gone))
}
