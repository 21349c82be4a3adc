//! The Kubernetes client the operator runs with: kube's own layers (base URI, credentials, extra headers,
//! timeouts) over a connection pool that lets idle connections go.
//!
//! kube's default client keeps every connection a burst opened for as long as the API server does (hyper's
//! idle timeout needs a timer kube does not give it): after 1,000 status writes about 40 idle TLS connections,
//! 2.4 MiB, stayed for good. Here at most [`MAX_IDLE`] stay, each for at most [`IDLE_FOR`].

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

/// Idle connections kept to the API server (more are closed when they fall idle).
pub const MAX_IDLE: usize = 8;
/// How long an idle connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(30);

/// A client for `config` (kubeconfig or in-cluster) with the bounded idle pool.
pub fn client(config: kube::Config) -> kube::Result<kube::Client> {
    let mut connector = hyper_timeout::TimeoutConnector::new(config.rustls_https_connector()?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let pool = HyperClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_FOR)
        .pool_max_idle_per_host(MAX_IDLE)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(pool);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// [`client`] for the configuration kube infers (kubeconfig, else in-cluster).
pub async fn infer() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    Ok(client(config)?)
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

    #[tokio::test]
    async fn a_burst_leaves_at_most_max_idle_connections_open() {
        let (url, accepted, open) = counting_server(Duration::from_millis(200)).await;
        let config = kube::Config::new(url.parse().expect("url"));
        let client = client(config).expect("client");
        let burst = 3 * MAX_IDLE;
        let answers = futures::future::join_all((0..burst).map(|_| {
            let client = client.clone();
            async move {
                let request = http::Request::get("/version").body(Vec::new()).expect("request");
                client.request_text(request).await
            }
        }))
        .await;
        assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            burst,
            "one connection per concurrent request"
        );
        // The pool closes what it does not keep as soon as each request is done.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while open.load(Ordering::SeqCst) > MAX_IDLE && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            open.load(Ordering::SeqCst),
            MAX_IDLE,
            "idle connections kept after the burst"
        );
        // The kept ones are used again.
        let request = http::Request::get("/version").body(Vec::new()).expect("request");
        client.request_text(request).await.expect("answer");
        assert_eq!(accepted.load(Ordering::SeqCst), burst, "an idle connection was reused");
    }
}
