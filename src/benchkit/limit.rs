//! The limit: the status writes a controller makes, done by a minimal client against the same API server at
//! the same concurrency, so throughput can be compared with what the API server allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::ResourceExt as _;
use kube::api::{Api, ObjectMeta, PostParams};

use super::objects::new_object;
use crate::resource::ComputeInstanceAction;

/// `writes` status replacements over `names` (each worker owns its own objects, so no conflicts), with
/// `concurrency` in flight; returns the seconds taken. The objects' current status is written back with a
/// changed message, so the payloads are as large as the controller's.
pub(super) async fn limit_run(
    api: &Api<ComputeInstanceAction>,
    names: &[String],
    writes: u64,
    events: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let concurrency = concurrency.max(1);
    let mut names = names.to_vec();
    // Fewer objects than workers: add dummies so every worker has its own.
    let template = api.get(&names[0]).await?;
    let mut i = 0;
    while names.len() < concurrency {
        let name = format!("limit-dummy-{i}");
        let o = new_object(
            &name,
            &template.spec.instance_id,
            template.spec.desired_state,
            None,
            600,
        );
        api.create(&PostParams::default(), &o).await?;
        names.push(name);
        i += 1;
    }
    let status = template.status.clone().unwrap_or_default();
    let mut owned: Vec<Vec<ComputeInstanceAction>> = vec![Vec::new(); concurrency];
    for (i, name) in names.iter().enumerate() {
        let mut o = api.get(name).await?;
        if o.status.is_none() {
            o.status = Some(status.clone());
        }
        owned[i % concurrency].push(o);
    }
    let tickets = Arc::new(AtomicU64::new(0));
    let total = writes + events;
    let started = Instant::now();
    let workers = owned.into_iter().map(|mut objs| {
        let api = api.clone();
        let event_api: Api<K8sEvent> = Api::namespaced(
            api.clone().into_client(),
            objs.first().and_then(|o| o.namespace()).as_deref().unwrap_or("default"),
        );
        let tickets = tickets.clone();
        async move {
            let pp = PostParams {
                dry_run: false,
                field_manager: Some("bench-limit".into()),
            };
            let mut next = 0usize;
            loop {
                let k = tickets.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let idx = next % objs.len();
                next += 1;
                let current = &objs[idx];
                // Events spread evenly among the status writes.
                if (k + 1) * events / total > k * events / total {
                    event_api
                        .create(&PostParams::default(), &limit_event(current, k))
                        .await?;
                    continue;
                }
                let mut body = ComputeInstanceAction::new(&current.name_any(), current.spec.clone());
                body.metadata.namespace = current.namespace();
                body.metadata.resource_version = current.resource_version();
                let mut st = current.status.clone().unwrap_or_default();
                st.message = Some(format!("limit write {k}"));
                body.status = Some(st);
                match api.replace_status(&current.name_any(), &pp, &body).await {
                    Ok(o) => objs[idx] = o,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        objs[idx] = api.get(&current.name_any()).await?;
                        tickets.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// An Event like the controller's (events.k8s.io/v1, regarding the object).
fn limit_event(o: &ComputeInstanceAction, k: u64) -> K8sEvent {
    use kube::Resource as _;
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{}.limit-{k}", o.name_any())),
            namespace: o.namespace(),
            ..Default::default()
        },
        action: Some("Reconcile".into()),
        reason: Some("LimitRun".into()),
        note: Some(format!("limit write {k} of instance {}", o.spec.instance_id)),
        type_: Some("Normal".into()),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        )),
        regarding: Some(o.object_ref(&())),
        reporting_controller: Some("bench-limit".into()),
        reporting_instance: Some("bench-limit".into()),
        ..Default::default()
    }
}
