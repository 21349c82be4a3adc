//! The change-control gate, started once per operator and shared by every controller: watched caches of
//! ComputeMaintenanceWindows and ComputeDisruptionBudgets, evaluated in memory for each action right before
//! its intent is written; budget admissions made atomic within the process by short reservations; and a nudge
//! to every subscriber when a window or budget changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::channel::mpsc;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::budgets::{self, Budget};
use super::windows::{self, MaintenanceWindow, WindowDecision};
use crate::api::{Instance, PowerAction};
use crate::controllers::runtime::StartError;
use crate::controllers::runtime::announce::{Subscribers, listed};
use crate::crd::access_policy::NamespaceView;
use crate::crd::disruption_budget::ComputeDisruptionBudget;
use crate::crd::instance_action::ObservedInstance;
use crate::crd::maintenance_window::ComputeMaintenanceWindow;

/// An action change control holds back now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// `WaitingForWindow` or `WaitingForBudget`.
    pub reason: &'static str,
    /// The window or budget that holds it back (its name: administrators name them).
    pub by: String,
    /// Names the window or budget and times only.
    pub message: String,
    /// When it may go (a window's next opening); `None`: when woken (a budget) or not within the horizon.
    pub until: Option<DateTime<Utc>>,
}

pub const WAITING_FOR_WINDOW: &str = "WaitingForWindow";
pub const WAITING_FOR_BUDGET: &str = "WaitingForBudget";

/// The objects the instance controller caches that disrupt their instance now, and those named by the given
/// keys whatever they do (the budgets count disruptions from their statuses).
pub type ObjectsSource = Arc<dyn Fn(&HashSet<String>) -> Vec<CountedObject> + Send + Sync>;

/// What disruption budgets read of one cached object's status (the instance cache keeps it beside the packed
/// object, so counting unpacks nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedObject {
    /// `namespace/name`.
    pub key: String,
    pub instance_id: String,
    /// It disrupts its instance now ([`budgets::disrupts`]).
    pub disrupts: bool,
    /// When the intent of its current action was written.
    pub intent_at: Option<DateTime<Utc>>,
    /// Its instance as its status records it.
    pub instance: Option<Instance>,
}

/// The last count of a budget's matching instances.
#[derive(Clone, Debug)]
pub struct Counted {
    pub generation: Option<i64>,
    /// Shared, not copied: every admission reads it.
    pub ids: Arc<HashSet<String>>,
    pub at: DateTime<Utc>,
}

/// A disruption admitted in this process whose intent the cache may not show yet.
#[derive(Clone, Debug)]
struct Reservation {
    instance_id: String,
    instance: Option<Instance>,
    intent_at: DateTime<Utc>,
    made: std::time::Instant,
}

/// Longest a reservation outlives its admission when the cache never shows its intent (a failed write).
const RESERVATION_TTL: Duration = Duration::from_secs(30);

pub struct ChangeGate {
    windows: Option<Store<ComputeMaintenanceWindow>>,
    budgets: Option<Store<ComputeDisruptionBudget>>,
    counts: Arc<Mutex<HashMap<String, Counted>>>,
    reservations: Mutex<HashMap<String, Reservation>>,
    admission: Mutex<()>,
    objects: OnceLock<ObjectsSource>,
    subscribers: Subscribers,
    /// Woken when a budget changes (its count is taken again at once).
    pub(super) recount: Arc<tokio::sync::Notify>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for ChangeGate {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl ChangeGate {
    /// A gate that holds nothing back and starts nothing (unit tests of other parts).
    pub fn off() -> Self {
        Self {
            windows: None,
            budgets: None,
            counts: Arc::default(),
            reservations: Mutex::default(),
            admission: Mutex::default(),
            objects: OnceLock::new(),
            subscribers: Subscribers::default(),
            recount: Arc::default(),
            tasks: Mutex::default(),
        }
    }

    /// Starts watching windows and budgets (cluster-wide); the caches are filled before it returns.
    pub async fn start(client: &Client) -> Result<Self, StartError> {
        let mut gate = Self::off();
        let (windows, mut window_events) = watch::<ComputeMaintenanceWindow>(client).await?;
        let (budgets, mut budget_events) = watch::<ComputeDisruptionBudget>(client).await?;
        gate.windows = Some(windows);
        gate.budgets = Some(budgets);
        let subscribers = gate.subscribers.clone();
        let recount = gate.recount.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(_) = window_events.next() => subscribers.nudge(),
                    Some(_) = budget_events.next() => {
                        recount.notify_one();
                        subscribers.nudge();
                    }
                    else => break,
                }
            }
        });
        gate.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        Ok(gate)
    }

    /// A change stream: yields whenever a window or budget changes. One per controller and scope.
    pub fn subscribe(&self) -> mpsc::Receiver<()> {
        self.subscribers.subscribe()
    }

    /// The instance controller hands over its caches once (budgets count from them).
    pub fn count_from(&self, objects: ObjectsSource) {
        let _ = self.objects.set(objects);
    }

    pub(super) fn nudge_all(&self) {
        self.subscribers.nudge();
    }

    pub(super) fn add_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
    }

    pub fn windows(&self) -> Vec<Arc<ComputeMaintenanceWindow>> {
        self.windows.as_ref().map(Store::state).unwrap_or_default()
    }

    pub fn budget_objects(&self) -> Vec<Arc<ComputeDisruptionBudget>> {
        self.budgets.as_ref().map(Store::state).unwrap_or_default()
    }

    pub(super) fn record_count(&self, name: &str, counted: Counted) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), counted);
    }

    pub(super) fn count_of(&self, name: &str) -> Option<Counted> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Does a maintenance window hold this action back now?
    pub fn window_hold(
        &self,
        ns: &NamespaceView<'_>,
        id: &str,
        instance: Option<&Instance>,
        action: PowerAction,
        now: DateTime<Utc>,
    ) -> Option<Hold> {
        let read: Vec<MaintenanceWindow> = self
            .windows()
            .iter()
            .map(|w| MaintenanceWindow::new(&w.name_any(), &w.spec))
            .filter(|w| w.covers(ns, id, instance, action))
            .collect();
        let covering: Vec<&MaintenanceWindow> = read.iter().collect();
        match windows::decide(&covering, now) {
            WindowDecision::Open => None,
            WindowDecision::Held { window, why, until } => Some(Hold {
                reason: WAITING_FOR_WINDOW,
                by: window.clone(),
                message: windows::held_message(action, &window, &why, until),
                until,
            }),
        }
    }

    /// The budgets as last counted.
    pub fn budgets(&self) -> Vec<Budget> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        self.budget_objects()
            .iter()
            .map(|b| {
                let name = b.name_any();
                let matching = counts
                    .get(&name)
                    .filter(|c| c.generation == b.metadata.generation)
                    .map(|c| c.ids.clone());
                Budget {
                    name,
                    instances: b.spec.instances.clone(),
                    max_disrupted: b.spec.max_disrupted.clone(),
                    matching,
                }
            })
            .collect()
    }

    /// Instances disrupted now: by what the cached statuses record, and by admissions the cache does not show
    /// yet. `except` (an object key) is left out: an object deciding again does not count against itself.
    pub fn disrupted(&self, except: Option<&str>) -> Vec<(String, Option<Instance>)> {
        // What disrupts by its status, and the objects of admissions not yet reflected (to tell when they are).
        let reserved: HashSet<String> = self
            .reservations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let objects = self.objects.get().map(|f| f(&reserved)).unwrap_or_default();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut reflected = HashSet::new();
        {
            let reservations = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
            for o in &objects {
                if let Some(r) = reservations.get(&o.key)
                    && o.intent_at.is_some_and(|at| at >= r.intent_at)
                {
                    reflected.insert(o.key.clone());
                }
                if Some(o.key.as_str()) == except || !o.disrupts {
                    continue;
                }
                if seen.insert(o.instance_id.clone()) {
                    out.push((o.instance_id.clone(), o.instance.clone()));
                }
            }
        }
        let mut reservations = self.reservations.lock().unwrap_or_else(|p| p.into_inner());
        reservations.retain(|key, r| !reflected.contains(key) && r.made.elapsed() < RESERVATION_TTL);
        for (key, r) in reservations.iter() {
            if Some(key.as_str()) != except && seen.insert(r.instance_id.clone()) {
                out.push((r.instance_id.clone(), r.instance.clone()));
            }
        }
        out
    }

    /// Would a disruption budget hold this action back now? (No reservation is made.)
    pub fn budget_hold(
        &self,
        key: &str,
        id: &str,
        instance: Option<&Instance>,
        action: PowerAction,
        show_counts: bool,
    ) -> Option<Hold> {
        self.check_budgets(key, id, instance, action, show_counts).err()
    }

    /// Whether a budget covers this action (`Ok(true)`: one does and it fits), or why it waits. Disruptions are
    /// counted only when some budget covers the instance: every other action costs no scan of the objects.
    fn check_budgets(
        &self,
        key: &str,
        id: &str,
        instance: Option<&Instance>,
        action: PowerAction,
        show_counts: bool,
    ) -> Result<bool, Hold> {
        if !budgets::is_disruptive(action) || self.budgets.is_none() {
            return Ok(false);
        }
        let budgets = self.budgets();
        if !budgets.iter().any(|b| b.covers(id, instance)) {
            return Ok(false);
        }
        let disrupted = self.disrupted(Some(key));
        budgets::admit(&budgets, id, instance, &disrupted)
            .map(|()| true)
            .map_err(|hold| Hold {
                reason: WAITING_FOR_BUDGET,
                by: hold.budget.clone(),
                message: budgets::held_message(action, &hold, show_counts),
                until: None,
            })
    }

    /// Admits a disruption atomically within this process (no two reconciles can both take the last unit of
    /// a budget) and reserves it until the cache shows its intent. `Err`: held back after all.
    pub fn reserve(
        &self,
        key: &str,
        id: &str,
        instance: Option<&Instance>,
        action: PowerAction,
        intent_at: DateTime<Utc>,
        show_counts: bool,
    ) -> Result<(), Hold> {
        // One admission at a time: the count and the reservation happen under the same lock.
        let _one = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        if self.check_budgets(key, id, instance, action, show_counts)? {
            self.reservations.lock().unwrap_or_else(|p| p.into_inner()).insert(
                key.to_owned(),
                Reservation {
                    instance_id: id.to_owned(),
                    instance: instance.cloned(),
                    intent_at,
                    made: std::time::Instant::now(),
                },
            );
        }
        Ok(())
    }

    /// The admitted action was not sent after all (its intent was not written, or it was recorded as not sent).
    pub fn release(&self, key: &str) {
        self.reservations.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// What an object's status records of its instance, as an instance (attributes the status does not keep are
/// empty, so a budget by such an attribute covers it only through its last count).
pub fn observed_instance(id: &str, seen: &ObservedInstance) -> Instance {
    Instance {
        id: id.to_owned(),
        user_id: String::new(),
        customer_id: String::new(),
        name: seen.name.clone(),
        zone: seen.zone.clone(),
        machine_type: String::new(),
        external_ip: String::new(),
        internal_ip: String::new(),
        status: crate::api::InstanceStatus::parse(&seen.status),
        template_id: String::new(),
        created_at: String::new(),
    }
}

/// A cluster-wide cache of `K`, listed before it returns, and the stream of its changes.
async fn watch<K>(client: &Client) -> Result<(Store<K>, futures::stream::BoxStream<'static, ()>), StartError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let kind = K::kind(&()).into_owned();
    let api: Api<K> = Api::all(client.clone());
    // Served, or a definite no (an API server that is restarting is waited for, as for every kind).
    crate::controllers::runtime::check_served(&api).await?;
    let (reader, writer) = reflector::store();
    let mut stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .boxed();
    if !listed(&mut stream).await {
        return Err(StartError::CrdMissing {
            kind: kind.clone(),
            source: kube::Error::Service(format!("listing {kind}s timed out").into()),
        });
    }
    // Only a change of spec (a new generation) or a deletion is a change: the upkeep's own status writes are not.
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    let changes = stream
        .filter_map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(o)) => {
                    generations.insert(o.name_any(), o.meta().generation) != Some(o.meta().generation)
                }
                Ok(watcher::Event::Delete(o)) => {
                    generations.remove(&o.name_any());
                    true
                }
                // A re-list after a watch error: a change only where a generation moved.
                Ok(watcher::Event::InitApply(o)) => {
                    generations.insert(o.name_any(), o.meta().generation) != Some(o.meta().generation)
                }
                _ => false,
            };
            futures::future::ready(changed.then_some(()))
        })
        .boxed();
    Ok((reader, changes))
}
