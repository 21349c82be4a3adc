//! The Kubernetes client the operator runs with: kube's own layers (base URI, credentials, extra headers,
//! timeouts) over a connection pool that lets idle connections go.
//!
//! kube's default client keeps every connection a burst opened for as long as the API server does (hyper's
//! idle timeout needs a timer kube does not give it): after 1,000 status writes about 40 idle TLS connections,
//! 2.4 MiB, stayed for good. Here an idle connection goes after [`IDLE_FOR`], and at most [`MAX_IDLE`] are
//! kept. The cap is well above the controller's concurrency on purpose: a lower one closes connections a burst
//! is about to reuse, and each request beyond it pays a new TLS handshake.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

/// Idle connections kept to the API server at most (more are closed as they fall idle).
pub const MAX_IDLE: usize = 64;
/// How long an idle connection is kept: longer than the gaps within a burst, shorter than a quiet period.
pub const IDLE_FOR: Duration = Duration::from_secs(10);

/// How the pool keeps idle connections.
#[derive(Clone, Copy, Debug)]
pub struct IdlePool {
    pub max_idle: usize,
    pub idle_for: Duration,
}

impl Default for IdlePool {
    fn default() -> Self {
        Self {
            max_idle: MAX_IDLE,
            idle_for: IDLE_FOR,
        }
    }
}

/// A client for `config` (kubeconfig or in-cluster) whose pool keeps idle connections as `pool` says.
pub fn client(config: kube::Config, pool: IdlePool) -> kube::Result<kube::Client> {
    let mut connector = hyper_timeout::TimeoutConnector::new(config.rustls_https_connector()?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(pool.idle_for)
        .pool_max_idle_per_host(pool.max_idle)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// [`client`] for the configuration kube infers (kubeconfig, else in-cluster), with the default pool.
pub async fn infer() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    Ok(client(config, IdlePool::default())?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An HTTP/1.1 server that answers every request after `delay`, keeps connections alive and counts the
    /// connections accepted and still open.
    async fn counting_server(delay: Duration) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let reply =
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (url, accepted, open)
    }

    async fn burst(client: &kube::Client, n: usize) {
        let answers = futures::future::join_all((0..n).map(|_| {
            let client = client.clone();
            async move {
                let request = http::Request::get("/version").body(Vec::new()).expect("request");
                client.request_text(request).await
            }
        }))
        .await;
        assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    }

    async fn wait_open(open: &AtomicUsize, at_most: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) > at_most && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_burst_keeps_its_connections_for_the_next_and_lets_them_go_when_idle() {
        let (url, accepted, open) = counting_server(Duration::from_millis(200)).await;
        let pool = IdlePool {
            max_idle: 8,
            idle_for: Duration::from_millis(1500),
        };
        let client = client(kube::Config::new(url.parse().expect("url")), pool).expect("client");
        burst(&client, 3 * pool.max_idle).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3 * pool.max_idle,
            "one connection per concurrent request"
        );
        // Beyond the cap, connections close as soon as their request is done.
        wait_open(&open, pool.max_idle).await;
        assert_eq!(
            open.load(Ordering::SeqCst),
            pool.max_idle,
            "idle connections kept after the burst"
        );
        // The next burst within the idle time reuses what was kept.
        burst(&client, pool.max_idle).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3 * pool.max_idle,
            "idle connections were reused"
        );
        // Once idle for longer than the idle time, none is left.
        tokio::time::sleep(pool.idle_for).await;
        wait_open(&open, 0).await;
        assert_eq!(open.load(Ordering::SeqCst), 0, "idle connections expire");
    }
}
