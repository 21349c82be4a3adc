//! Runs one configured kube-rs `Controller` the way every kind does: bounded concurrency, graceful shutdown,
//! each reconcile counted for liveness (`/healthz`), every result drained (errors are already handled by the
//! kind's error policy, so they are only traced here).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Future, StreamExt, TryFuture};
use kube::Resource;
use kube::runtime::controller::{self, Action, Controller};
use serde::de::DeserializeOwned;

use crate::health::Health;

/// How one controller runs.
#[derive(Clone)]
pub struct Drive<S> {
    pub concurrency: u16,
    pub shutdown: S,
    /// Liveness: reconciles report here when set.
    pub health: Option<Arc<Health>>,
    /// The kind's name in logs and metrics (`instance`, `fleet`, `schedule`).
    pub kind: &'static str,
    /// Reconciles are counted here by kind and result.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl<S> Drive<S> {
    /// The way `kind` runs under `run`'s settings.
    pub fn of(
        run: &super::RunSettings,
        shutdown: S,
        kind: &'static str,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            concurrency: run.concurrency,
            shutdown,
            health: run.health.clone(),
            kind,
            metrics,
        }
    }
}

/// What ends a controller (and the operator): a future that resolves once, on shutdown. One name for the bound
/// every `run` takes.
pub trait Shutdown: Future<Output = ()> + Send + Sync + 'static {}

impl<F: Future<Output = ()> + Send + Sync + 'static> Shutdown for F {}

/// Runs one controller per scope until every one has stopped, saying so at start and stop.
pub async fn every_scope(
    kind: &'static str,
    namespaces: &[String],
    runs: impl IntoIterator<Item = impl Future<Output = ()>>,
) {
    tracing::info!(kind, ?namespaces, "controller started");
    futures::future::join_all(runs).await;
    tracing::info!(kind, "controller stopped");
}

/// Runs `controller` until `drive.shutdown` resolves (in-flight reconciles finish first).
pub async fn drive<K, S, Ctx, Fut, E>(
    controller: Controller<K>,
    drive: Drive<S>,
    mut reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut + Send + 'static,
    error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    ctx: Arc<Ctx>,
) where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Debug + Unpin + Hash + Eq + Clone + Send + Sync,
    S: Future<Output = ()> + Send + Sync + 'static,
    Ctx: Send + Sync + 'static,
    Fut: TryFuture<Ok = Action, Error = E> + Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let health = drive.health;
    let (kind, metrics) = (drive.kind, drive.metrics);
    let shutdown = futures::FutureExt::shared(drive.shutdown);
    // kube holds the runner until the store's first list is in, and a shutdown cuts the watch that would bring
    // it: a controller told to stop before that would wait for its grace to run out. Nothing has run then, so
    // it stops at once.
    let store = controller.store();
    let stopped_before_first_list = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if matches!(futures::FutureExt::now_or_never(store.wait_until_ready()), Some(Ok(()))) {
                std::future::pending::<()>().await;
            }
        }
    };
    let run = controller
        .with_config(controller::Config::default().concurrency(drive.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| {
                let metrics = metrics.clone();
                let counted = crate::health::counted(health.as_ref(), reconcile(obj, ctx));
                futures::FutureExt::inspect(counted, move |result: &Result<Action, E>| {
                    let labels = crate::metrics::KindResultLabels {
                        kind: kind.into(),
                        result: if result.is_ok() { "ok" } else { "error" }.into(),
                    };
                    metrics.kind_reconciles.get_or_create(&labels).inc();
                })
            },
            error_policy,
            ctx,
        )
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, kind, "controller event");
            }
            futures::future::ready(())
        });
    tokio::select! {
        () = run => {}
        () = stopped_before_first_list => tracing::debug!(kind, "stopped before its first list"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::crd::fleet_action::ComputeFleetAction;

    #[tokio::test]
    async fn a_controller_told_to_stop_before_its_first_list_stops_at_once() {
        // A watch that never lists: the store never becomes ready (its writer lives on).
        let (reader, _writer) = kube::runtime::reflector::store::<ComputeFleetAction>();
        let controller = Controller::for_stream(futures::stream::pending(), reader);
        let how = Drive {
            concurrency: 1,
            shutdown: std::future::ready(()),
            health: None,
            kind: "test",
            metrics: crate::metrics::Metrics::new(),
        };
        let reconcile =
            |_: Arc<ComputeFleetAction>, _: Arc<()>| async { Ok::<_, std::io::Error>(Action::await_change()) };
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            drive(
                controller,
                how,
                reconcile,
                |_, _, _| Action::await_change(),
                Arc::new(()),
            ),
        )
        .await;
        assert!(
            stopped.is_ok(),
            "the controller waited for a first list that cannot come"
        );
    }
}
