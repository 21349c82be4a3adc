//! The access policy gate, started once per operator and shared by every controller: watched caches of
//! ComputeAccessPolicies and of namespace labels, and a nudge to every subscriber (one per controller and
//! scope) when a policy or a namespace's labels change. Evaluation is in memory: no request per reconcile.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use kube::{Client, ResourceExt};

use super::StartError;
use super::announce::{Subscribers, listed};
use crate::api::Instance;
use crate::crd::access_policy::{self as policy, ComputeAccessPolicy, NamespaceView, PolicyMode, Verdict};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::crd::instance_action::DesiredState;

pub struct PolicyGate {
    mode: PolicyMode,
    store: Option<Store<ComputeAccessPolicy>>,
    /// Every namespace's labels, watched (cluster-wide mode).
    namespaces: Vec<Store<PartialObjectMeta<Namespace>>>,
    /// The served namespaces' labels, read by name (namespaced mode).
    polled: Polled,
    subscribers: Subscribers,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PolicyGate {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Labels of the served namespaces, by name.
type Polled = Arc<std::sync::Mutex<HashMap<String, BTreeMap<String, String>>>>;

/// How often the served namespaces' labels are read when they cannot be watched (the default).
pub const NAMESPACE_POLL: Duration = Duration::from_secs(30);

/// Reads each served namespace by name, for ever; a change of labels nudges every object to be re-evaluated.
async fn poll_namespaces(
    client: Client,
    names: Vec<String>,
    every: Duration,
    polled: Polled,
    subscribers: Subscribers,
) {
    let api: Api<Namespace> = Api::all(client);
    loop {
        let mut changed = false;
        for name in &names {
            let labels = match tokio::time::timeout(Duration::from_secs(10), api.get(name)).await {
                Ok(Ok(n)) => n.labels().clone(),
                // Unknown labels match no selector: a failed read can only deny, never grant.
                Ok(Err(e)) => {
                    tracing::warn!(namespace = %name, error = %e, "cannot read namespace labels");
                    BTreeMap::new()
                }
                Err(_) => {
                    tracing::warn!(namespace = %name, "reading namespace labels timed out");
                    BTreeMap::new()
                }
            };
            let mut map = polled.lock().unwrap_or_else(|p| p.into_inner());
            // The first read counts as a change too: objects decided before it are looked at again.
            if map.get(name) != Some(&labels) {
                changed = true;
                map.insert(name.clone(), labels);
            }
        }
        if changed {
            subscribers.nudge();
        }
        tokio::time::sleep(every).await;
    }
}

impl PolicyGate {
    /// A gate that allows everything (`--policy-mode off`) and starts nothing.
    pub fn off() -> Self {
        Self {
            mode: PolicyMode::Off,
            store: None,
            namespaces: Vec::new(),
            polled: Arc::default(),
            subscribers: Subscribers::default(),
            tasks: Vec::new(),
        }
    }

    /// A change stream: it yields whenever a policy or a served namespace's labels change (every object may
    /// then be judged differently). One per controller and scope.
    pub fn subscribe(&self) -> mpsc::Receiver<()> {
        self.subscribers.subscribe()
    }

    /// Starts watching policies (in enforce mode); the caches are filled before it returns.
    pub async fn start(
        client: &Client,
        mode: PolicyMode,
        watched: &[String],
        label_poll: Duration,
    ) -> Result<Self, StartError> {
        let subscribers = Subscribers::default();
        // Policies only in enforce mode; namespace labels in every mode (maintenance windows select namespaces
        // by label too).
        let (store, mut policies) = if mode == PolicyMode::Enforce {
            let api: Api<ComputeAccessPolicy> = Api::all(client.clone());
            // Served, or a definite no; an API server that is restarting is waited for, as for every kind.
            super::check_served(&api).await.map_err(|e| match e {
                StartError::CrdMissing { source, .. } => StartError::PolicyCrdMissing(source),
                other => other,
            })?;
            let (reader, writer) = reflector::store();
            let mut policies = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(|p: &mut ComputeAccessPolicy| p.managed_fields_mut().clear())
                .reflect(writer)
                .boxed();
            if !listed(&mut policies).await {
                return Err(StartError::PolicyCrdMissing(kube::Error::Service(
                    "listing policies timed out".into(),
                )));
            }
            (Some(reader), Some(policies))
        } else {
            (None, None)
        };
        // Namespace labels, for policies that select namespaces by label; only labels are kept. Cluster-wide:
        // watched. Serving only some namespaces (a Role in each, which can grant `get` on its own namespace but
        // never a list or watch of namespaces): each is read by name every `label_poll`.
        let selectors: Vec<watcher::Config> = if watched.is_empty() {
            vec![watcher::Config::default().any_semantic()]
        } else {
            Vec::new()
        };
        let mut ns_stores = Vec::new();
        let mut ns_streams = Vec::new();
        for config in selectors {
            let (ns_reader, ns_writer) = reflector::store();
            let mut stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), config)
                .default_backoff()
                .modify(|n: &mut PartialObjectMeta<Namespace>| {
                    n.managed_fields_mut().clear();
                    n.annotations_mut().clear();
                })
                .reflect(ns_writer)
                .boxed();
            if !listed(&mut stream).await {
                return Err(StartError::PolicyCrdMissing(kube::Error::Service(
                    "listing namespaces timed out (with --policy-mode enforce the controller needs list/watch on the namespaces it serves)".into(),
                )));
            }
            ns_stores.push(ns_reader);
            ns_streams.push(stream);
        }
        let polled: Polled = Arc::default();
        let mut tasks = Vec::new();
        if !watched.is_empty() {
            tasks.push(tokio::spawn(poll_namespaces(
                client.clone(),
                watched.to_vec(),
                label_poll,
                polled.clone(),
                subscribers.clone(),
            )));
        }
        let mut namespaces = futures::stream::select_all(ns_streams);
        let policy_subscribers = subscribers.clone();
        let policy_task = tokio::spawn(async move {
            let Some(policies) = policies.as_mut() else {
                return;
            };
            while let Some(event) = policies.next().await {
                if matches!(
                    event,
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
                ) {
                    policy_subscribers.nudge();
                }
            }
            policy_subscribers.close();
        });
        let ns_subscribers = subscribers.clone();
        let ns_task = tokio::spawn(async move {
            // Only a change of labels matters (namespaces change status and annotations too).
            let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            while let Some(event) = namespaces.next().await {
                let changed = match event {
                    Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                        let name = n.name_any();
                        let new = n.labels().clone();
                        labels.insert(name, new.clone()).is_some_and(|old| old != new)
                    }
                    Ok(watcher::Event::Delete(n)) => labels.remove(&n.name_any()).is_some(),
                    _ => false,
                };
                if changed {
                    ns_subscribers.nudge();
                }
            }
        });
        let gate = Self {
            mode,
            store,
            namespaces: ns_stores,
            polled,
            subscribers,
            tasks: tasks.into_iter().chain([policy_task, ns_task]).collect(),
        };
        Ok(gate)
    }

    /// What namespace `ns` may power for `desired`, before any instance is looked at (see
    /// [`policy::coverage`]). Policies not loaded in enforce mode cover nothing.
    pub fn coverage(&self, ns: &str, desired: DesiredState) -> policy::Coverage {
        let store = match (self.mode, &self.store) {
            (PolicyMode::Off, _) => return policy::Coverage::Everything,
            (PolicyMode::Enforce, Some(store)) => store,
            (PolicyMode::Enforce, None) => return policy::Coverage::Only(Vec::new()),
        };
        let policies: Vec<_> = store.state().iter().map(|p| (p.name_any(), p.spec.clone())).collect();
        let labels = self.labels_of(ns);
        let view = NamespaceView {
            name: ns,
            labels: &labels,
        };
        policy::coverage(self.mode, &policies, &view, desired)
    }

    /// The namespace's labels as last seen. Unknown labels match no selector: a namespace not (yet) cached
    /// can only be denied, never granted.
    pub fn labels_of(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .find_map(|s| s.get(&ObjectRef::new(ns)))
            .map(|n| n.labels().clone())
            .or_else(|| self.polled.lock().unwrap_or_else(|p| p.into_inner()).get(ns).cloned())
            .unwrap_or_default()
    }

    /// Why the object may not act on this instance, or `None` when it may. `instance` is `None` when only
    /// the ID is known (a missing instance): then only a policy naming the ID can allow it.
    pub fn denial(&self, obj: &ComputeInstanceAction, instance: Option<&Instance>) -> Option<String> {
        self.evaluate(obj, |policies, view| {
            policy::evaluate(
                self.mode,
                policies,
                view,
                &obj.spec.instance_id,
                instance,
                obj.spec.desired_state,
            )
        })
    }

    /// Denied whatever the instance turns out to be (no policy covers the namespace and the desired state):
    /// then the admin API need not be asked at all.
    pub fn denial_for_any_instance(&self, obj: &ComputeInstanceAction) -> Option<String> {
        self.evaluate(obj, |policies, view| {
            policy::evaluate_for_any_instance(self.mode, policies, view, &obj.spec.instance_id, obj.spec.desired_state)
        })
    }

    fn evaluate(
        &self,
        obj: &ComputeInstanceAction,
        judge: impl FnOnce(&[(String, policy::ComputeAccessPolicySpec)], &NamespaceView<'_>) -> Verdict,
    ) -> Option<String> {
        let store = match (self.mode, &self.store) {
            (PolicyMode::Off, _) => return None,
            (PolicyMode::Enforce, Some(store)) => store,
            (PolicyMode::Enforce, None) => return Some("access policies are not loaded".into()),
        };
        let policies: Vec<_> = store.state().iter().map(|p| (p.name_any(), p.spec.clone())).collect();
        let ns = obj.namespace().unwrap_or_default();
        let labels = self.labels_of(&ns);
        let view = NamespaceView {
            name: &ns,
            labels: &labels,
        };
        match judge(&policies, &view) {
            Verdict::Allowed { .. } => None,
            Verdict::Denied { message } => Some(message),
        }
    }
}
