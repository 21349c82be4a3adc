//! The admin API client: auth, path-safe IDs, timeouts, retries of what is safe to retry, politeness limits.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::backoff::{Backoff, parse_retry_after};
use super::credentials::CredentialSource;
use super::error::ApiError;
use super::limiter::Limiter;
use super::types::{Instance, InstancePage, ListFilter, MAX_PAGE_SIZE, PowerAction};

/// The production admin API.
pub const DEFAULT_BASE_URL: &str = "https://apis.threatwinds.com/api/compute/v1";
/// Largest response body we read; a page of 100 instances is ~50 KiB.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Everything but RFC 3986 "unreserved" is percent-encoded in a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// Longest instance ID the client sends.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Which admin API operation a request was; used for metrics labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    List,
    Get,
    Action(PowerAction),
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Get => "get",
            Self::Action(a) => a.as_str(),
        }
    }
}

/// Told about every HTTP exchange (endpoint, status code if any, latency). Lets the operator count requests
/// without this module knowing about metrics.
pub type RequestObserver = Arc<dyn Fn(Endpoint, Option<u16>, Duration) + Send + Sync>;

/// Asked right before a request leaves: `false` sends nothing (see [`AdminClient::act_gated`]).
pub type Gate<'a> = &'a (dyn Fn() -> bool + Sync);

/// Whether the caller allows a POST to be sent again after it may have reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Retry only failures that prove the request was not processed (connection refused, 429).
    Never,
    /// Repeating is harmless (the caller knows the action converges to a level).
    SafeToRepeat,
}

/// Client settings. Every request has a timeout.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub base_url: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub rate_per_s: f64,
    pub burst: u32,
    pub max_in_flight: usize,
    /// Tries in all for a transient failure, including the first.
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            rate_per_s: 20.0,
            burst: 40,
            max_in_flight: 8,
            max_attempts: 3,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        }
    }
}

/// A cheap-to-clone handle on the admin API.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: Arc<str>,
    credentials: Arc<CredentialSource>,
    limiter: Limiter,
    config: Arc<ClientConfig>,
    observer: Option<RequestObserver>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Makes sure rustls has a process-wide crypto provider (ring); harmless when one is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Refuses IDs that would change the request path, then percent-encodes the rest.
pub fn encode_instance_id(id: &str) -> Result<String, ApiError> {
    let unsafe_char = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '?' | '#');
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN || id == "." || id == ".." || id.chars().any(unsafe_char) {
        return Err(ApiError::InvalidInstanceId(
            id.chars().take(MAX_INSTANCE_ID_LEN).collect(),
        ));
    }
    Ok(utf8_percent_encode(id, PATH_SEGMENT).to_string())
}

/// Is the host a loopback address? Parsed, not prefix-matched: `127.evil.example` is a domain, not loopback.
pub fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The one rule for the admin API URL's scheme: https, or plain http to a loopback host.
pub fn scheme_allowed(url: &reqwest::Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && is_loopback_host(url))
}

/// Longest wait the client spends inside one call before retrying; a longer `Retry-After` is returned to the
/// caller, which requeues instead of holding a reconcile slot while it waits.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(1);

impl AdminClient {
    pub fn new(config: ClientConfig, credentials: CredentialSource) -> Result<Self, ApiError> {
        install_crypto_provider();
        let base = config.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| ApiError::Malformed(format!("base URL: {e}")))?;
        if !scheme_allowed(&parsed) {
            return Err(ApiError::Malformed(format!(
                "base URL must be https (plain http only for loopback), got {}://{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or("")
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // The API never redirects. Following one would send the `api-key`/`api-secret` headers (which
            // reqwest only strips for `Authorization`) to another origin, possibly over plain http, and
            // re-send a POST (307/308) that `Repeat::Never` must not repeat.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("compute-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Transport {
                message: e.to_string(),
                sent: false,
            })?;
        Ok(Self {
            http,
            base: base.into(),
            credentials: Arc::new(credentials),
            limiter: Limiter::new(config.rate_per_s, config.burst, config.max_in_flight),
            config: Arc::new(config),
            observer: None,
        })
    }

    pub fn with_observer(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /admin/instances/{id}`.
    pub async fn get_instance(&self, id: &str) -> Result<Instance, ApiError> {
        let path = format!("/admin/instances/{}", encode_instance_id(id)?);
        self.send_json(Endpoint::Get, Method::GET, &path, &[], Repeat::SafeToRepeat)
            .await
    }

    /// `GET /admin/instances` for one page.
    pub async fn list_page(&self, filter: &ListFilter, page: u32, page_size: u32) -> Result<InstancePage, ApiError> {
        let page = page.max(1).to_string();
        let size = page_size.clamp(1, MAX_PAGE_SIZE).to_string();
        let mut query = vec![("page", page.as_str()), ("pageSize", size.as_str())];
        query.extend(filter.query_pairs());
        self.send_json(
            Endpoint::List,
            Method::GET,
            "/admin/instances",
            &query,
            Repeat::SafeToRepeat,
        )
        .await
    }

    /// Every instance matching `filter`, walking pages of 100 until `hasNext` is false.
    pub fn list_all(&self, filter: ListFilter) -> impl Stream<Item = Result<Instance, ApiError>> + Send + 'static {
        let client = self.clone();
        futures::stream::try_unfold(Some(1u32), move |page| {
            let client = client.clone();
            let filter = filter.clone();
            async move {
                let Some(page) = page else { return Ok(None) };
                let got = client.list_page(&filter, page, MAX_PAGE_SIZE).await?;
                // Guard against a server that says hasNext forever on empty pages.
                let next = (got.pagination.has_next && !got.instances.is_empty()).then_some(page + 1);
                Ok::<_, ApiError>(Some((futures::stream::iter(got.instances.into_iter().map(Ok)), next)))
            }
        })
        .try_flatten()
    }

    /// `POST /admin/instances/{id}/{action}`; success is 202 (any body is ignored).
    pub async fn act(&self, id: &str, action: PowerAction, repeat: Repeat) -> Result<(), ApiError> {
        self.act_gated(id, action, repeat, &|| true).await
    }

    /// [`Self::act`], asking `may_send` at the last moment before each attempt leaves (after the wait for the
    /// rate limiter and between retries): a replica whose lease ran out meanwhile sends nothing and gets
    /// [`ApiError::NotSent`].
    pub async fn act_gated(
        &self,
        id: &str,
        action: PowerAction,
        repeat: Repeat,
        may_send: Gate<'_>,
    ) -> Result<(), ApiError> {
        let path = format!("/admin/instances/{}/{}", encode_instance_id(id)?, action.as_str());
        self.send(Endpoint::Action(action), Method::POST, &path, &[], repeat, may_send)
            .await
            .map(|_| ())
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        repeat: Repeat,
    ) -> Result<T, ApiError> {
        let body = self.send(endpoint, method, path, query, repeat, &|| true).await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(format!("{} response: {e}", endpoint.as_str())))
    }

    /// One logical request: retries transient failures when that is safe, with jittered backoff.
    async fn send(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        repeat: Repeat,
        may_send: Gate<'_>,
    ) -> Result<Vec<u8>, ApiError> {
        let mut attempt = 0;
        loop {
            let result = self.send_once(endpoint, method.clone(), path, query, may_send).await;
            let err = match result {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            attempt += 1;
            let retry_allowed = match (method == Method::POST, repeat) {
                (false, _) | (true, Repeat::SafeToRepeat) => err.is_transient(),
                // The server said it did not process it, or it never got there.
                (true, Repeat::Never) => err.is_transient() && !err.may_have_reached_server(),
            };
            let long_wait = err.retry_after().is_some_and(|d| d > MAX_INLINE_WAIT);
            if !retry_allowed || long_wait || attempt >= self.config.max_attempts {
                return Err(err);
            }
            let delay = self
                .config
                .backoff
                .delay(attempt - 1, rand::random::<f64>(), err.retry_after());
            tracing::debug!(endpoint = endpoint.as_str(), attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying admin API request");
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        may_send: Gate<'_>,
    ) -> Result<Vec<u8>, ApiError> {
        let headers = self
            .credentials
            .headers()
            .map_err(|e| ApiError::Credentials(e.to_string()))?;
        let _permit = self.limiter.acquire().await;
        // The wait for a permit can be long under load: whoever asked to act decides again now.
        if !may_send() {
            return Err(ApiError::NotSent);
        }
        let started = Instant::now();
        let url = format!("{}{}", self.base, path);
        let response = self
            .http
            .request(method, url)
            .headers(headers)
            .query(query)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.observe(endpoint, None, started);
                return Err(transport_error(&e));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // An accepted action is accepted whatever its body says: reading a body (too large, cut off) must never
        // turn a 202 into an error that would let a one-shot be sent again.
        if status.is_success() && matches!(endpoint, Endpoint::Action(_)) {
            self.observe(endpoint, Some(status.as_u16()), started);
            return Ok(Vec::new());
        }
        // A 5xx is judged by its status alone: its body (too large, cut off) must not turn "may have been carried
        // out" into "refused".
        if status.is_server_error() {
            self.observe(endpoint, Some(status.as_u16()), started);
            return Err(ApiError::Server {
                status: status.as_u16(),
                retry_after,
            });
        }
        let body = read_capped(response).await;
        self.observe(endpoint, Some(status.as_u16()), started);
        let body = body?;
        match status {
            s if s.is_success() => Ok(body),
            StatusCode::BAD_REQUEST => Err(ApiError::BadRequest(excerpt(&body))),
            StatusCode::UNAUTHORIZED => Err(ApiError::Unauthorized),
            StatusCode::FORBIDDEN => Err(ApiError::Forbidden),
            StatusCode::NOT_FOUND => Err(ApiError::NotFound),
            StatusCode::CONFLICT => Err(ApiError::Conflict),
            StatusCode::TOO_MANY_REQUESTS => Err(ApiError::RateLimited { retry_after }),
            s => Err(ApiError::UnexpectedStatus(s.as_u16())),
        }
    }

    fn observe(&self, endpoint: Endpoint, status: Option<u16>, started: Instant) {
        if let Some(observer) = &self.observer {
            observer(endpoint, status, started.elapsed());
        }
    }
}

/// Reads a body, refusing anything larger than [`MAX_BODY_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(ApiError::Malformed(format!(
                        "response body larger than {MAX_BODY_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport_error(&e)),
        }
    }
}

fn transport_error(e: &reqwest::Error) -> ApiError {
    // A connect failure proves the request never left; anything later may have reached the server.
    let sent = !e.is_connect();
    if e.is_timeout() {
        ApiError::Timeout { sent }
    } else {
        // reqwest's message may contain the URL (never credentials, which travel in headers).
        let mut message = e.to_string();
        if let Some(source) = std::error::Error::source(e) {
            message = format!("{message}: {source}");
        }
        ApiError::Transport { message, sent }
    }
}

/// The start of an error body, for messages: printable ASCII only, bounded.
fn excerpt(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.is_empty() { "no detail".into() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_single_safe_segments() {
        let table = [
            ("inst-7g2xq4bm", Some("inst-7g2xq4bm")),
            ("a.b_c~d", Some("a.b_c~d")),
            ("with%percent", Some("with%25percent")),
            ("ünï", Some("%C3%BCn%C3%AF")),
            ("a:b", Some("a%3Ab")),
            ("", None),
            (".", None),
            ("..", None),
            ("a/b", None),
            ("a?b", None),
            ("a#b", None),
            ("a b", None),
            ("a\\b", None),
            ("a\nb", None),
        ];
        for (id, want) in table {
            assert_eq!(encode_instance_id(id).ok().as_deref(), want, "{id:?}");
        }
        assert!(encode_instance_id(&"x".repeat(MAX_INSTANCE_ID_LEN + 1)).is_err());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let creds = || CredentialSource::Static(super::super::Credentials::Bearer(super::super::Secret::new("t")));
        let cfg = |url: &str| ClientConfig {
            base_url: url.into(),
            ..Default::default()
        };
        assert!(AdminClient::new(cfg("http://127.0.0.1:1/api"), creds()).is_ok());
        assert!(AdminClient::new(cfg("http://localhost:1/api"), creds()).is_ok());
        assert!(AdminClient::new(cfg("https://example.com/api"), creds()).is_ok());
        assert!(AdminClient::new(cfg("http://example.com/api"), creds()).is_err());
        let table = [
            ("http://127.0.0.1:1/api", true),
            ("http://127.1.2.3/api", true),
            ("http://[::1]:8080/api", true),
            ("http://localhost/api", true),
            ("http://LOCALHOST/api", true),
            ("https://anything.example/api", true),
            ("http://127.evil.example/api", false),
            ("http://127.0.0.1.nip.io/api", false),
            ("http://localhost.evil.example/api", false),
            ("http://[::ffff:127.0.0.1]/api", false),
            ("http://10.0.0.1/api", false),
            ("ftp://127.0.0.1/api", false),
        ];
        for (url, allowed) in table {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert_eq!(scheme_allowed(&parsed), allowed, "{url}");
            assert_eq!(AdminClient::new(cfg(url), creds()).is_ok(), allowed, "{url}");
        }
    }
}
