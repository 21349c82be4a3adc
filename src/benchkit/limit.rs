//! The limit: what a minimal client achieves against the same API server at the same concurrency, so the
//! controller's throughput can be compared with what the API server allows. [`strict_limit_run`] does the
//! protocol minimum (the creates, then 2 status writes per level object and 3 per one-shot);
//! [`limit_run`] repeats the controller's own number of status writes (and Events), the older yardstick.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::load::minimum_status_writes;
use super::measure::{apiserver_requests, diff_requests};
use super::objects::{create_namespace, new_object};
use super::report::BenchReport;
use super::runs::BenchOptions;
use super::stack::Stack;
use crate::crd::instance_action::{ComputeInstanceAction, ComputeInstanceActionStatus};

/// What the strict limit run did.
pub struct StrictLimit {
    pub objects: usize,
    pub status_writes: u64,
    pub seconds: f64,
}

/// The protocol minimum for `objects` (each with the status a finished controller wrote for it, so payloads
/// are as large as the controller's): the creates with `create_concurrency` in flight, and, as each create
/// returns, its 2 or 3 status writes by `concurrency` writers, pipelined as the controller's writes are with
/// the bench's creates. No Events, no reads: nothing a controller could leave out.
pub(super) async fn strict_limit_run(
    api: &Api<ComputeInstanceAction>,
    objects: Vec<(ComputeInstanceAction, ComputeInstanceActionStatus)>,
    create_concurrency: usize,
    concurrency: usize,
) -> anyhow::Result<StrictLimit> {
    let n = objects.len();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let creator = {
        let api = api.clone();
        tokio::spawn(async move {
            let pp = PostParams::default();
            let results: Vec<anyhow::Result<()>> = futures::stream::iter(objects)
                .map(|(o, status)| {
                    let (api, pp, tx) = (&api, &pp, tx.clone());
                    async move {
                        let name = o.name_any();
                        let created = api.create(pp, &o).await.with_context(|| format!("creating {name}"))?;
                        let _ = tx.send((created, status));
                        Ok(())
                    }
                })
                .buffer_unordered(create_concurrency.max(1))
                .collect()
                .await;
            results.into_iter().collect::<anyhow::Result<()>>()
        })
    };
    let created = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let writes: Vec<anyhow::Result<u64>> = created
        .map(|(o, status)| write_protocol_minimum(api, o, status))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    creator.await.context("the creating task failed")??;
    let seconds = started.elapsed().as_secs_f64();
    let status_writes = writes.into_iter().sum::<anyhow::Result<u64>>()?;
    Ok(StrictLimit {
        objects: n,
        status_writes,
        seconds,
    })
}

/// Intent, (acceptance,) result: the status writes of one action, each on the object the previous returned.
async fn write_protocol_minimum(
    api: &Api<ComputeInstanceAction>,
    mut current: ComputeInstanceAction,
    status: ComputeInstanceActionStatus,
) -> anyhow::Result<u64> {
    let pp = PostParams {
        dry_run: false,
        field_manager: Some("bench-limit".into()),
    };
    let writes = minimum_status_writes(current.spec.desired_state);
    for k in 0..writes {
        let mut body = ComputeInstanceAction::new(&current.name_any(), current.spec.clone());
        body.metadata.namespace = current.namespace();
        body.metadata.resource_version = current.resource_version();
        let mut st = status.clone();
        st.message = Some(format!("limit write {k}"));
        body.status = Some(st);
        current = api
            .replace_status(&current.name_any(), &pp, &body)
            .await
            .with_context(|| format!("writing the status of {}", current.name_any()))?;
    }
    Ok(writes)
}

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
        // A second run over the same names finds the dummies of the first.
        match api.create(&PostParams::default(), &o).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
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

/// The limits of this run, in their own namespace (which the controller does not watch; it is idle, every
/// burst object settled): the strict limit for the burst's objects, then the older status-write yardsticks.
/// Two watches stand in for the controller's and the bench's, so the API server fans out as much as during
/// the burst.
pub(super) async fn measure_limits(stack: &Stack, opts: &BenchOptions, report: &mut BenchReport) -> anyhow::Result<()> {
    let ns = "bench-limit";
    create_namespace(&stack.client, ns).await?;
    let api: Api<ComputeInstanceAction> = Api::namespaced(stack.client.clone(), ns);
    let watches: Vec<_> = (0..2)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default().any_semantic())
                    .default_backoff()
                    .boxed();
                while stream.next().await.is_some() {}
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The burst's objects again, each with the status the controller finally wrote for it.
    let mut finished = stack.api.list(&ListParams::default()).await?.items;
    finished.sort_by_key(|o| o.name_any());
    let objects: Vec<(ComputeInstanceAction, ComputeInstanceActionStatus)> = finished
        .into_iter()
        .map(|o| {
            let copy = ComputeInstanceAction::new(&format!("limit-{}", o.name_any()), o.spec.clone());
            (copy, o.status.unwrap_or_default())
        })
        .collect();
    let names: Vec<String> = objects.iter().map(|(o, _)| o.name_any()).collect();
    let n = names.len().max(1) as f64;
    let concurrency = usize::from(opts.concurrency);

    let before = apiserver_requests(&stack.client).await;
    let strict = strict_limit_run(&api, objects, opts.create_concurrency, concurrency).await?;
    report.apiserver_requests_during_limit = diff_requests(&before, &apiserver_requests(&stack.client).await);
    report.limit_s = strict.seconds;
    report.limit_status_writes = strict.status_writes;
    report.limit_throughput_per_s = strict.objects as f64 / strict.seconds;
    report.ratio = report.throughput_per_s / report.limit_throughput_per_s;

    // The older yardsticks: as many status writes as the controller made (without and with its Events).
    let writes = report.status_writes.max(1);
    let secs = limit_run(&api, &names, writes, 0, concurrency).await?;
    report.status_write_limit_writes_per_s = writes as f64 / secs;
    report.status_write_limit_throughput_per_s = n / secs;
    report.ratio_vs_status_write_limit = report.throughput_per_s / report.status_write_limit_throughput_per_s;
    let events = (report.events_per_action * n).round() as u64;
    let with_events_secs = limit_run(&api, &names, writes, events, concurrency).await?;
    report.limit_with_events_throughput_per_s = n / with_events_secs;
    report.ratio_with_events = report.throughput_per_s / report.limit_with_events_throughput_per_s;

    for w in watches {
        w.abort();
    }
    // Out of the API server's way for the runs that follow.
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    Ok(())
}
