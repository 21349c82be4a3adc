//! The ComputeInstanceAction controller: pure planning, a thin reconciler, and the kube-rs wiring.
pub mod after_post;
pub mod cached;
pub mod hot;
pub mod index;
pub mod judge;
pub mod locks;
pub mod memory;
pub mod packing;
pub mod peers;
pub mod plan;
pub mod reconcile;
pub mod status_write;
pub mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use kube::runtime::controller::Controller;

use crate::controllers::events::EventRecorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::api::AdminClient;
use crate::api::backoff::Backoff;
use crate::controllers::runtime::{self, ErrorBackoff, Shared, StartError};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::metrics::Metrics;
use locks::InstanceLocks;
use plan::PlanSettings;
use reconcile::AcceptanceMemory;

/// How long after a deletion what is kept for the object is dropped once more (a reconcile in flight then
/// has long finished: every Kubernetes and admin API call is bounded well below this).
const LATE_FORGET: Duration = Duration::from_secs(40);

/// Event batches published concurrently in the background.
const EVENT_SLOTS: usize = 64;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    pub plan: PlanSettings,
    pub error_backoff: Backoff,
    /// Name reported on Events.
    pub reporter: String,
    pub policy_mode: crate::crd::access_policy::PolicyMode,
    /// Admin API requests per second the shared instance view may use (a share of the client's rate limit).
    pub view_rate: f64,
    /// Serving listed namespaces (a Role cannot grant a watch of namespaces): how often their labels, which
    /// access policies may select by, are read.
    pub namespace_label_poll: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        // The operator-wide defaults are the runtime's; only the instance controller's own are set here.
        let operator = runtime::OperatorSettings::default();
        Self {
            namespaces: operator.namespaces,
            concurrency: 16,
            plan: PlanSettings {
                dry_run: operator.dry_run,
                ..PlanSettings::default()
            },
            error_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
            reporter: operator.reporter,
            policy_mode: operator.policy_mode,
            view_rate: operator.view_rate,
            namespace_label_poll: operator.namespace_label_poll,
        }
    }
}

impl ControllerConfig {
    /// What the other controllers and the runtime share of this configuration.
    pub fn operator(&self) -> runtime::OperatorSettings {
        runtime::OperatorSettings {
            namespaces: self.namespaces.clone(),
            reporter: self.reporter.clone(),
            dry_run: self.plan.dry_run,
            policy_mode: self.policy_mode,
            namespace_label_poll: self.namespace_label_poll,
            view_rate: self.view_rate,
        }
    }
}

#[cfg(test)]
#[test]
fn the_operator_settings_carry_what_the_other_kinds_follow() {
    let mut config = ControllerConfig {
        namespaces: vec!["a".into()],
        reporter: "me".into(),
        ..Default::default()
    };
    config.plan.dry_run = true;
    let operator = config.operator();
    assert_eq!(
        (operator.namespaces, operator.reporter, operator.dry_run),
        (vec!["a".to_owned()], "me".to_owned(), true)
    );
    let defaults = ControllerConfig::default().operator();
    let runtime = runtime::OperatorSettings::default();
    assert_eq!(
        (defaults.reporter, defaults.view_rate, defaults.dry_run),
        (runtime.reporter, runtime.view_rate, runtime.dry_run)
    );
}

/// What every reconcile shares.
pub struct Context {
    pub kube: Client,
    pub api: AdminClient,
    pub stores: Vec<Store<cached::CachedAction>>,
    pub recorder: EventRecorder,
    /// Bounds Event batches being published in the background.
    pub event_slots: Arc<tokio::sync::Semaphore>,
    pub config: ControllerConfig,
    pub locks: InstanceLocks,
    pub error_backoff: ErrorBackoff,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<runtime::PolicyGate>,
    /// Maintenance windows and disruption budgets, asked right before every intent.
    pub change: Arc<crate::controllers::change::ChangeGate>,
    /// Which objects name which instance (peers, locks, loop protection, waking peers).
    pub index: Arc<crate::controllers::instance::index::InstanceIndex>,
    /// One concurrency limit for every watched namespace together.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Statuses this controller wrote or holds back (read your writes, progress of open actions).
    pub memory: Arc<memory::StatusMemory>,
    /// What settled objects are checked against, instead of a GET each.
    pub view: Arc<crate::controllers::instance::view::InstanceView>,
    /// Closed on a replica that does not (or no longer) hold the lease: checked right before every POST.
    pub fence: Arc<crate::leader::Fence>,
    acceptances: AcceptanceMemory,
    /// This process's recent status writes, to tell the cause of a 409.
    pub writes: status_write::RecentWrites,
}

impl Context {
    fn acceptance_key(obj: &ComputeInstanceAction, intent_at: DateTime<Utc>) -> (String, DateTime<Utc>) {
        (obj.uid().unwrap_or_default(), intent_at)
    }

    pub(crate) fn remember_acceptance(&self, obj: &ComputeInstanceAction, intent_at: DateTime<Utc>, at: DateTime<Utc>) {
        let mut m = self.acceptances.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(Self::acceptance_key(obj, intent_at), at);
    }

    pub(crate) fn recalled_acceptance(
        &self,
        obj: &ComputeInstanceAction,
        intent_at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let m = self.acceptances.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&Self::acceptance_key(obj, intent_at)).copied()
    }

    /// The object as the cache holds it now (the one given if the cache no longer has it), unpacked.
    pub(crate) fn newest(&self, obj: &Arc<cached::CachedAction>) -> Result<ComputeInstanceAction, cached::CacheError> {
        let r = kube::runtime::reflector::ObjectRef::from_obj(obj.as_ref());
        self.stores
            .iter()
            .find_map(|s| s.get(&r))
            .filter(|o| o.uid() == obj.uid())
            .unwrap_or_else(|| obj.clone())
            .unpack()
    }

    /// Drops everything kept for an object that is gone: its held status, acceptances, backoff and lock.
    pub(crate) fn forget_object(&self, obj: &cached::CachedAction) {
        let key = crate::controllers::object_key(obj);
        self.memory.forget(obj);
        self.forget_acceptance(obj);
        self.error_backoff.reset(&key);
        self.locks.release(&obj.facts().instance_id, &key);
    }

    /// Entries kept per object, all kinds together (reported as a gauge; each goes with its object).
    pub fn held_object_state(&self) -> usize {
        let acceptances = self.acceptances.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.memory.len() + acceptances + self.error_backoff.len() + self.locks.len()
    }

    pub(crate) fn forget_acceptance(&self, obj: &impl kube::Resource) {
        let uid = obj.uid().unwrap_or_default();
        self.acceptances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(u, _), _| *u != uid);
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish their status writes first.
pub async fn run(shared: Shared, config: ControllerConfig, shutdown: impl runtime::Shutdown) -> Result<(), StartError> {
    let Shared {
        kube: client,
        api,
        gate: policy,
        change,
        fence,
        lists,
        metrics,
    } = shared;
    runtime::check_crd::<ComputeInstanceAction>(&client, &config.namespaces).await?;
    let scopes = runtime::scoped::<cached::CachedAction>(&client, &config.namespaces);
    let mut controllers = Vec::new();
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    let (wakers, wake_streams): (Vec<_>, Vec<_>) =
        (0..scopes.len()).map(|_| futures::channel::mpsc::channel(1024)).unzip();
    // Readiness: every cache has listed once, seen on the stream itself. `Store::wait_until_ready` keeps a
    // single waker inside kube-runtime, so a second waiter next to the Controller's own would sleep for ever.
    let scopes_total = scopes.len();
    let synced = Arc::new(AtomicUsize::new(0));
    let mut probes = Vec::new();
    // The stores first: the index that every stream feeds reads objects from them.
    for scope in scopes {
        let (reader, writer) = reflector::store();
        stores.push(reader.clone());
        streams.push((scope, writer, reader));
    }
    let index = Arc::new(index::InstanceIndex::new(stores.clone(), wakers));
    let memory = Arc::new(memory::StatusMemory::default());
    // Deleted objects, to drop what is kept for them (the context is built after the streams).
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<cached::CachedAction>();
    for (n, ((scope, writer, reader), wake)) in streams.into_iter().zip(wake_streams).enumerate() {
        let mut seen_init = false;
        let synced = synced.clone();
        let metrics = metrics.clone();
        let index = index.clone();
        let held = memory.clone();
        let gone = gone_tx.clone();
        // Liveness (/healthz): what the watch shows, before any filtering.
        let probe = metrics
            .health
            .watch(scope.namespace().unwrap_or("all namespaces").to_owned());
        probes.push(probe.clone());
        // The cache keeps each object slimmed and packed, straight from the API server's JSON (`cached`).
        let stream = watcher(scope, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            // The index sees every event first and tells which ones the controller reconciles on: an object at
            // a generation it did not hold (kube's generation predicate, without a cache of its own).
            .filter_map(move |event| {
                let reconcile = match &event {
                    Ok(e) => {
                        probe.event();
                        let new_generation = index.observe(n, e);
                        match e {
                            watcher::Event::Apply(o) => held.observed(o),
                            watcher::Event::Delete(o) => {
                                let _ = gone.send(o.clone());
                            }
                            _ => {}
                        }
                        new_generation
                    }
                    Err(e) => {
                        probe.error(e);
                        false
                    }
                };
                if !seen_init && matches!(event, Ok(watcher::Event::InitDone)) {
                    seen_init = true;
                    if synced.fetch_add(1, Ordering::SeqCst) + 1 == scopes_total {
                        metrics.watching.store(true, Ordering::SeqCst);
                        tracing::info!("caches synced");
                    }
                }
                std::future::ready(match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) if reconcile => Some(Ok(o)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
            });
        controllers.push(Controller::for_stream(stream, reader).reconcile_on(wake));
    }
    // Budgets count disruptions from what these caches hold (every namespace this operator serves).
    change.count_from({
        let index = index.clone();
        Arc::new(move |named| index.disrupting_objects(named))
    });
    let controllers: Vec<_> = controllers
        .into_iter()
        .map(|c| {
            c.reconcile_all_on(policy.subscribe())
                .reconcile_all_on(change.subscribe())
                .reconcile_all_on(settled_sweep(config.plan.resync))
        })
        .collect();
    let view = Arc::new(crate::controllers::instance::view::InstanceView::default());
    let refresher = tokio::spawn(
        crate::controllers::instance::view::Refresher {
            view: view.clone(),
            api: api.clone(),
            index: index.clone(),
            interval: config.plan.resync,
            max_rate: config.view_rate,
            budget: lists,
            metrics: metrics.clone(),
        }
        .run(),
    );
    let hot_pages =
        tokio::spawn(hot::HotPages::new(view.clone(), api.clone(), index.clone(), config.plan.clone()).run());
    let ctx = Arc::new(Context {
        kube: client.clone(),
        api,
        stores: stores.clone(),
        recorder: runtime::recorder(client, &config.reporter),
        event_slots: Arc::new(tokio::sync::Semaphore::new(EVENT_SLOTS)),
        config: config.clone(),
        locks: InstanceLocks::default(),
        error_backoff: ErrorBackoff::default(),
        metrics: metrics.clone(),
        fence,
        policy,
        change: change.clone(),
        index: index.clone(),
        memory: memory.clone(),
        view: view.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(usize::from(config.concurrency.max(1)))),
        acceptances: Default::default(),
        writes: Default::default(),
    });
    drop(gone_tx);
    let forgetting = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(obj) = gone_rx.recv().await {
                ctx.forget_object(&obj);
                ctx.metrics.held_object_state.set(ctx.held_object_state() as i64);
                // A reconcile that was in flight when the object went may still record something: look again.
                let later = ctx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(LATE_FORGET).await;
                    later.forget_object(&obj);
                    later.metrics.held_object_state.set(later.held_object_state() as i64);
                });
            }
        })
    };
    // The phase gauge is refreshed periodically; held writes the watch has shown are let go.
    let gauges = {
        let stores = stores.clone();
        let metrics = metrics.clone();
        let memory = memory.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            loop {
                tick.tick().await;
                memory.sweep(std::time::Instant::now(), memory::SEEN_GRACE);
                ctx.writes.sweep();
                count_phases(&stores, &metrics);
                metrics.held_object_state.set(ctx.held_object_state() as i64);
            }
        })
    };
    let shutdown = shutdown.shared();
    let runs = controllers.into_iter().zip(probes).map(|(c, probe)| {
        let stopping = shutdown.clone();
        let how = runtime::Drive {
            concurrency: config.concurrency,
            shutdown: shutdown.clone(),
            health: Some(metrics.health.clone()),
            kind: "instance",
            metrics: metrics.clone(),
        };
        runtime::drive(c, how, reconcile::reconcile, reconcile::error_policy, ctx.clone()).inspect(move |()| {
            if stopping.peek().is_none() {
                tracing::error!("a controller stopped without being asked to");
                probe.ended();
            }
        })
    });
    tracing::info!(namespaces = ?config.namespaces, concurrency = config.concurrency, "controller started");
    futures::future::join_all(runs).await;
    metrics.health.clear_watches();
    gauges.abort();
    forgetting.abort();
    refresher.abort();
    hot_pages.abort();
    // Let Events already decided reach the API server (bounded).
    let flushed = tokio::time::timeout(Duration::from_secs(5), ctx.event_slots.acquire_many(EVENT_SLOTS as u32)).await;
    if flushed.is_err() {
        tracing::warn!("some Events were not published before shutdown");
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// Refreshes the objects-by-phase gauge from the caches.
pub fn count_phases(stores: &[Store<cached::CachedAction>], metrics: &Metrics) {
    // Every phase is set, to 0 when no object has it: a series left at its last value would never clear.
    let mut counts: std::collections::BTreeMap<String, i64> = ["None", "Pending", "InProgress", "Succeeded", "Failed"]
        .into_iter()
        .map(|p| (p.to_owned(), 0))
        .collect();
    for s in stores {
        for o in s.state() {
            let phase = o.facts().phase.map_or("None".to_owned(), |p| format!("{p:?}"));
            *counts.entry(phase).or_default() += 1;
        }
    }
    for (phase, n) in counts {
        metrics
            .objects_by_phase
            .get_or_create(&crate::metrics::PhaseLabel { phase })
            .set(n);
    }
    count_conditions(stores, metrics);
}

/// Refreshes the Ready/Stalled-by-reason gauges (and Reconciling for actions change control holds back) and the
/// age of the oldest Stalled condition per reason: from what each cached object counts ([`cached::Facts`]).
fn count_conditions(stores: &[Store<cached::CachedAction>], metrics: &Metrics) {
    use crate::controllers::conditions::STALLED;
    let now = Utc::now();
    let mut counts = std::collections::BTreeMap::<(String, String), i64>::new();
    let mut oldest = std::collections::BTreeMap::<String, f64>::new();
    for s in stores {
        for o in s.state() {
            for c in o.facts().counted.iter() {
                *counts.entry((c.type_.to_owned(), c.reason.to_string())).or_default() += 1;
                if c.type_ == STALLED {
                    let age = (now - c.last_transition_time).num_milliseconds().max(0) as f64 / 1000.0;
                    let entry = oldest.entry(c.reason.to_string()).or_default();
                    *entry = entry.max(age);
                }
            }
        }
    }
    metrics.set_condition_counts(&counts, &oldest);
}

/// Ticks every [`reconcile::SETTLED_SWEEP_FACTOR`] resync intervals (not at start: the initial list reconciles
/// everything anyway): every cached object is reconciled once.
fn settled_sweep(resync: Duration) -> impl futures::Stream<Item = ()> + Send + 'static {
    let every = resync.saturating_mul(reconcile::SETTLED_SWEEP_FACTOR);
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some(((), ()))
    })
}
