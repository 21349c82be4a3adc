//! Change control end to end on the real API server: maintenance windows (an allow window opening, a freeze,
//! a freeze shortened), disruption budgets (a fleet and single objects in other namespaces against one budget,
//! a leader change while it is full) and escalation. Windows and budgets are cluster-scoped, so the tests of
//! this binary take turns (one at a time) and each selects only its own namespaces and instances.
#[path = "../support/mod.rs"]
mod support;

mod budgets;
mod escalation;
mod windows;

use std::time::Duration;

use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

/// A client, a fresh namespace and a simulator of these instances whose transitions take `transition_ms`.
pub async fn setup(
    prefix: &str,
    instances: Vec<compute_operator::api::Instance>,
    transition_ms: u64,
) -> (Client, String, compute_operator::sim::SimServer) {
    let client = support::client().await;
    let ns = support::namespace(&client, prefix).await;
    let sim = support::simulator(compute_operator::sim::SimConfig {
        fleet: Some(instances),
        transition: Duration::from_millis(transition_ms),
        ..Default::default()
    })
    .await;
    (client, ns, sim)
}

/// One test at a time: every operator of this binary sees every window and budget.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates a cluster-scoped object from JSON, replacing a leftover of an earlier run.
pub async fn create_cluster_object<K>(client: &Client, value: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object JSON");
    let api: Api<K> = Api::all(client.clone());
    let _ = api.delete(&obj.name_any(), &DeleteParams::default()).await;
    for _ in 0..50 {
        match api.create(&PostParams::default(), &obj).await {
            Ok(o) => return o,
            // The leftover is still being deleted.
            Err(kube::Error::Api(s)) if s.code == 409 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("create {}: {e}", obj.name_any()),
        }
    }
    panic!("{} could not be created", obj.name_any());
}

pub async fn delete_cluster_object<K>(client: &Client, name: &str)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let _ = Api::<K>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}
