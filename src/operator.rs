//! `compute-operator run`: wires settings, metrics, the admin client, leader election and the controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::api::{AdminClient, CredentialSource};
use crate::config::RunArgs;
use crate::controller;
use crate::metrics::{self, Metrics};

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    args: RunArgs,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    args.validate()?;
    let credentials = args.credentials()?;
    run_with(args, credentials, client, shutdown).await
}

/// Runs the operator with credentials already chosen (the `dev` stack passes the simulator's).
pub async fn run_with(
    args: RunArgs,
    credentials: CredentialSource,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    args.validate()?;
    let metrics = Metrics::new();
    let observer_metrics = metrics.clone();
    let api = AdminClient::new(args.client_config(), credentials)
        .context("admin API client")?
        .with_observer(Arc::new(move |endpoint, code, latency| {
            observer_metrics.observe_request(endpoint.as_str(), code, latency)
        }));
    let (addr, metrics_task) = metrics::serve(args.metrics_addr, metrics.clone())
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(%addr, api_url = %api.base_url(), "serving metrics and health");

    let may_act = Arc::new(AtomicBool::new(!args.leader_election));
    if args.leader_election {
        anyhow::bail!("--leader-election is not available in this build yet");
    }
    metrics.leadership_known.store(true, Ordering::SeqCst);
    let result = controller::run(client, api, args.controller_config(), metrics, may_act, shutdown).await;
    metrics_task.abort();
    result.map_err(Into::into)
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
}
