//! `/healthz` on the real stack: healthy while idle (longer than the thresholds), unhealthy when the watch is
//! cut (the controller reaches the API server through a TCP proxy this test breaks) and healthy again once it
//! reconnects; unhealthy when every reconcile hangs on an admin API that accepts connections and never answers,
//! healthy again once reconciles finish.
//!
//! Fails (never skips) when the control plane cannot start.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use compute_operator::api::{AdminClient, ClientConfig, CredentialSource, Credentials, Secret};
use compute_operator::controllers::instance as controller;
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::health::Thresholds;
use compute_operator::metrics::{self, Metrics};
use compute_operator::sim::SimConfig;
use kube::Api;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy to the API server that the test can cut (close every connection, refuse new ones) and restore.
struct CuttableProxy {
    port: u16,
    upstream: String,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    acceptor: Option<tokio::task::JoinHandle<()>>,
}

impl CuttableProxy {
    async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mut proxy = Self {
            port,
            upstream: upstream.to_owned(),
            connections: Default::default(),
            acceptor: None,
        };
        proxy.accept_on(listener);
        proxy
    }

    fn accept_on(&mut self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let connections = self.connections.clone();
        self.acceptor = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Every open connection is closed and new ones are refused.
    fn cut(&mut self) {
        if let Some(a) = self.acceptor.take() {
            a.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }

    async fn restore(&mut self) {
        // The aborted acceptor drops its listener asynchronously: retry the bind briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind the proxy port {}: {e}", self.port),
            }
        };
        self.accept_on(listener);
    }
}

/// An "admin API" that accepts connections and never answers.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind black hole");
    let url = format!("http://{}/api/compute/v1", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (url, task)
}

async fn get(url: &str) -> (u16, String) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
    match http.get(url).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `url` until it answers `code`, or fails with the last answer.
async fn wait_code(url: &str, code: u16, limit: Duration, what: &str) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (c, body) = get(url).await;
        if c == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {url} did not answer {code} within {limit:?}; last: {c} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/healthz` answers 200 throughout `span` (sampled).
async fn stays_healthy(base: &str, span: Duration, what: &str) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        let (c, body) = get(&format!("{base}/healthz")).await;
        assert_eq!(c, 200, "{what}: /healthz answered {c} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Running {
    base: String,
    _server: tokio::task::JoinHandle<()>,
    _controller: tokio::task::JoinHandle<()>,
}

async fn run_controller(
    client: kube::Client,
    api: AdminClient,
    ns: &str,
    thresholds: Thresholds,
    concurrency: u16,
) -> Running {
    let metrics = Metrics::new();
    metrics.health.set_thresholds(thresholds);
    // No leader election here (operator::run_with sets this): ready once the caches have synced.
    metrics
        .leadership_known
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (addr, server) = metrics::serve("127.0.0.1:0".parse().unwrap(), metrics.clone())
        .await
        .expect("serve health");
    let mut config = test_controller_config(ns);
    config.concurrency = concurrency;
    let shared = shared_runtime_on(
        client,
        api,
        &config,
        metrics,
        compute_operator::leader::Fence::always_open(),
    )
    .await;
    let controller = tokio::spawn(async move {
        let never = std::future::pending::<()>();
        if let Err(e) = controller::run(shared, config, never).await {
            panic!("controller failed: {e}");
        }
    });
    let base = format!("http://{addr}");
    wait_code(&format!("{base}/readyz"), 200, Duration::from_secs(30), "caches synced").await;
    Running {
        base,
        _server: server,
        _controller: controller,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_the_watch_is_cut_and_recovers_after() {
    let cp = control_plane();
    let direct = client().await;
    let ns = namespace(&direct, "health-watch").await;
    let sim = simulator(SimConfig::default()).await;
    let upstream = cp.url.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let mut proxy = CuttableProxy::start(&upstream).await;
    let via_proxy = cp
        .client_for_kubeconfig(
            &cp.kubeconfig_yaml()
                .replace(&cp.url, &format!("https://127.0.0.1:{}", proxy.port)),
        )
        .await
        .expect("client through the proxy");
    let thresholds = Thresholds {
        watch_failing: Duration::from_secs(3),
        reconcile_stalled: Duration::from_secs(3),
        ..Thresholds::default()
    };
    let running = run_controller(via_proxy, admin_client_for(&sim, "dev-admin-token"), &ns, thresholds, 4).await;
    let healthz = format!("{}/healthz", running.base);

    // Idle for longer than both thresholds: nothing to do is not stuck.
    stays_healthy(&running.base, Duration::from_secs(5), "idle controller").await;

    proxy.cut();
    let cut_at = Instant::now();
    let body = wait_code(&healthz, 503, Duration::from_secs(20), "watch cut").await;
    eprintln!("cut -> 503 after {:?}: {body}", cut_at.elapsed());
    assert!(
        body.contains(&format!("the watch of {ns} has failed")),
        "the answer names the failing watch: {body}"
    );
    assert!(cut_at.elapsed() >= Duration::from_secs(3), "not before the threshold");

    proxy.restore().await;
    // A change lets the reconnected watch show it works (an idle one counts as recovered after `error_quiet`).
    let objects: Api<ComputeInstanceAction> = Api::namespaced(direct.clone(), &ns);
    let mut instance = compute_operator::devenv::dev::demo_instances().remove(0);
    instance.id = "inst-health001".into();
    instance.status = compute_operator::api::InstanceStatus::Stopped;
    sim.upsert_instance(instance);
    create(
        &objects,
        &cia("after-cut", "inst-health001", DesiredState::Running, None),
    )
    .await;
    let restored_at = Instant::now();
    wait_code(&healthz, 200, Duration::from_secs(60), "watch restored").await;
    eprintln!("restore -> 200 after {:?}", restored_at.elapsed());
    wait_ready(&objects, "after-cut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_every_reconcile_hangs_and_recovers_after() {
    let direct = client().await;
    let ns = namespace(&direct, "health-reconcile").await;
    let (url, hole) = black_hole().await;
    let api = AdminClient::new(
        ClientConfig {
            base_url: url,
            timeout: Duration::from_secs(120),
            max_attempts: 1,
            ..ClientConfig::default()
        },
        CredentialSource::Static(Credentials::Bearer(Secret::new("dev-admin-token"))),
    )
    .expect("admin client");
    let thresholds = Thresholds {
        watch_failing: Duration::from_secs(3),
        reconcile_stalled: Duration::from_secs(3),
        ..Thresholds::default()
    };
    // One reconcile at a time: the one hanging saturates the controller.
    let running = run_controller(direct.clone(), api, &ns, thresholds, 1).await;
    let healthz = format!("{}/healthz", running.base);
    stays_healthy(&running.base, Duration::from_secs(4), "idle controller").await;

    let objects: Api<ComputeInstanceAction> = Api::namespaced(direct.clone(), &ns);
    create(&objects, &cia("hangs-a", "inst-hang0001", DesiredState::Running, None)).await;
    create(&objects, &cia("hangs-b", "inst-hang0002", DesiredState::Running, None)).await;
    let created_at = Instant::now();
    let body = wait_code(&healthz, 503, Duration::from_secs(20), "reconcile hanging").await;
    eprintln!("hang -> 503 after {:?}: {body}", created_at.elapsed());
    assert!(
        body.contains("1 reconciles running and none finished"),
        "the answer says the reconcile loop is stuck: {body}"
    );
    assert!(
        created_at.elapsed() >= Duration::from_secs(3),
        "not before the threshold"
    );

    // The admin API goes away for good: requests now fail at once, reconciles finish (with errors) again.
    hole.abort();
    let released_at = Instant::now();
    wait_code(&healthz, 200, Duration::from_secs(20), "reconciles finishing").await;
    eprintln!("release -> 200 after {:?}", released_at.elapsed());
    stays_healthy(
        &running.base,
        Duration::from_secs(5),
        "reconciles failing fast and retried",
    )
    .await;
}
