//! The access policy as the reconciler sees it: a watched cache of ComputeAccessPolicies, namespace labels
//! cached briefly, and a nudge to re-evaluate every object when a policy changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use kube::{Client, ResourceExt};

use super::StartError;
use crate::api::Instance;
use crate::policy::{self, ComputeAccessPolicy, NamespaceView, PolicyMode, Verdict};
use crate::resource::ComputeInstanceAction;

/// How long namespace labels are trusted.
const NAMESPACE_TTL: Duration = Duration::from_secs(30);

/// A namespace's labels and when they were read.
type CachedLabels = (BTreeMap<String, String>, Instant);

pub struct PolicyGate {
    mode: PolicyMode,
    store: Option<Store<ComputeAccessPolicy>>,
    namespaces: Mutex<HashMap<String, CachedLabels>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PolicyGate {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl PolicyGate {
    /// Starts watching policies (in enforce mode) and returns one change stream per controller.
    pub async fn start(
        client: &Client,
        mode: PolicyMode,
        listeners: usize,
    ) -> Result<(Self, Vec<mpsc::Receiver<()>>), StartError> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..listeners).map(|_| mpsc::channel::<()>(1)).unzip();
        if mode == PolicyMode::Off {
            let gate = Self {
                mode,
                store: None,
                namespaces: Mutex::default(),
                task: None,
            };
            return Ok((gate, receivers));
        }
        let api: Api<ComputeAccessPolicy> = Api::all(client.clone());
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(StartError::PolicyCrdMissing)?;
        let (reader, writer) = reflector::store();
        // List the policies before the first reconcile (no Store::wait_until_ready: it wakes only one waiter).
        let mut stream = Box::pin(
            watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(|p: &mut ComputeAccessPolicy| p.managed_fields_mut().clear())
                .reflect(writer),
        );
        let listed = async {
            while let Some(event) = stream.next().await {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    return true;
                }
            }
            false
        };
        if !tokio::time::timeout(Duration::from_secs(30), listed)
            .await
            .unwrap_or(false)
        {
            return Err(StartError::PolicyCrdMissing(kube::Error::Service(
                "listing policies timed out".into(),
            )));
        }
        let task = tokio::spawn(async move {
            let mut senders = senders;
            while let Some(event) = stream.next().await {
                if matches!(
                    event,
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
                ) {
                    for s in &mut senders {
                        // A full channel already carries a pending nudge; that is enough.
                        let _ = s.try_send(());
                    }
                }
            }
            for s in &mut senders {
                let _ = s.close().await;
            }
        });
        let gate = Self {
            mode,
            store: Some(reader),
            namespaces: Mutex::default(),
            task: Some(task),
        };
        Ok((gate, receivers))
    }

    /// Why the object may not act on this instance, or `None` when it may.
    pub async fn denial(&self, client: &Client, obj: &ComputeInstanceAction, instance: &Instance) -> Option<String> {
        let store = match (self.mode, &self.store) {
            (PolicyMode::Off, _) => return None,
            (PolicyMode::Enforce, Some(store)) => store,
            (PolicyMode::Enforce, None) => return Some("access policies are not loaded".into()),
        };
        let policies: Vec<_> = store.state().iter().map(|p| (p.name_any(), p.spec.clone())).collect();
        let ns = obj.namespace().unwrap_or_default();
        let labels = self.namespace_labels(client, &ns).await;
        let view = NamespaceView {
            name: &ns,
            labels: &labels,
        };
        match policy::evaluate(
            self.mode,
            &policies,
            &view,
            &obj.spec.instance_id,
            Some(instance),
            obj.spec.desired_state,
        ) {
            Verdict::Allowed { .. } => None,
            Verdict::Denied { message } => Some(message),
        }
    }

    async fn namespace_labels(&self, client: &Client, ns: &str) -> BTreeMap<String, String> {
        if let Some((labels, at)) = self.namespaces.lock().unwrap_or_else(|p| p.into_inner()).get(ns)
            && at.elapsed() < NAMESPACE_TTL
        {
            return labels.clone();
        }
        let api: Api<Namespace> = Api::all(client.clone());
        let labels = match tokio::time::timeout(Duration::from_secs(10), api.get(ns)).await {
            Ok(Ok(n)) => n.labels().clone(),
            // Unknown labels match no selector: a lookup failure can only deny, never grant. Say why, since the
            // denial message alone would point at the policies.
            Ok(Err(e)) => {
                tracing::warn!(namespace = ns, error = %e, "cannot read namespace labels; label selectors in policies will not match");
                BTreeMap::new()
            }
            Err(_) => {
                tracing::warn!(
                    namespace = ns,
                    "reading namespace labels timed out; label selectors in policies will not match"
                );
                BTreeMap::new()
            }
        };
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.to_owned(), (labels.clone(), Instant::now()));
        labels
    }
}
