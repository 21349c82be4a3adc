//! HTTP side of the simulator: the admin routes and `/_sim` control routes, authentication, fault
//! application and counting (admin paths only), small JSON error bodies, and the accept loop, which serves
//! each connection with hyper so a handler can have its connection dropped without a response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::audit::RequestKind;
use super::faults::Faults;
use super::fleet::{ActionError, ListQuery};
use super::{BASE_PATH, Shared};
use crate::api::types::{Instance, InstanceStatus, PowerAction};

/// The accepted credentials. Comparisons take the same time wherever the first difference is.
pub(crate) struct Auth {
    admin_token: String,
    user_token: String,
    api_key: Option<(String, String)>,
}

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    Admin,
    /// Valid credentials without the compute_admin role.
    NotAdmin,
    /// Missing or invalid credentials.
    Anonymous,
}

impl Auth {
    pub(crate) fn new(admin_token: String, user_token: String, api_key: Option<(String, String)>) -> Self {
        Self {
            admin_token,
            user_token,
            api_key,
        }
    }

    /// Either scheme with admin credentials wins; a valid user token alone is [`Caller::NotAdmin`].
    pub(crate) fn check(&self, headers: &HeaderMap) -> Caller {
        let mut caller = Caller::Anonymous;
        if let Some(token) = headers.get(AUTHORIZATION).and_then(bearer) {
            if ct_eq(token, self.admin_token.as_bytes()) {
                return Caller::Admin;
            }
            if ct_eq(token, self.user_token.as_bytes()) {
                caller = Caller::NotAdmin;
            }
        }
        if let (Some(key), Some(secret), Some((want_key, want_secret))) =
            (headers.get("api-key"), headers.get("api-secret"), &self.api_key)
        {
            let key_ok = ct_eq(key.as_bytes(), want_key.as_bytes());
            let secret_ok = ct_eq(secret.as_bytes(), want_secret.as_bytes());
            if key_ok & secret_ok {
                return Caller::Admin;
            }
        }
        caller
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes();
    let (scheme, token) = v.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error body: `{"code":404,"message":"..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": status.as_u16(), "message": message })),
    )
        .into_response()
}

fn json_bytes(status: StatusCode, body: Result<Vec<u8>, serde_json::Error>) -> Response {
    match body {
        Ok(bytes) => (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            bytes,
        )
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "could not serialize the response"),
    }
}

/// The part after [`BASE_PATH`] when `path` is under it.
fn admin_rest(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(BASE_PATH)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Which admin endpoint a method and the path after [`BASE_PATH`] address.
fn classify(method: &Method, rest: &str) -> RequestKind {
    let Some(tail) = rest.strip_prefix("/admin/instances") else {
        return RequestKind::Other;
    };
    if tail.is_empty() {
        return if method == Method::GET {
            RequestKind::List
        } else {
            RequestKind::Other
        };
    }
    let Some(tail) = tail.strip_prefix('/') else {
        return RequestKind::Other;
    };
    let mut segments = tail.split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some(id), None, None) if !id.is_empty() && method == Method::GET => RequestKind::Get,
        (Some(id), Some(action), None) if !id.is_empty() && method == Method::POST => {
            PowerAction::parse(action).map_or(RequestKind::Other, RequestKind::Action)
        }
        _ => RequestKind::Other,
    }
}

fn injected(faults: &Faults) -> Response {
    let status = StatusCode::from_u16(faults.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = error(status, "injected fault");
    if let Some(secs) = faults.retry_after_seconds {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Runs in front of every route. For admin API paths: count, add latency, inject errors, authenticate
/// (before anything else the handler checks), count the response. `/_sim` passes straight through.
async fn gate(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(rest) = admin_rest(req.uri().path()) else {
        return next.run(req).await;
    };
    let kind = classify(req.method(), rest);
    sh.recorder().request(kind);
    let faults = sh.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let resp = if sh.dice.roll(faults.error_rate) {
        injected(&faults)
    } else {
        match sh.auth.check(req.headers()) {
            Caller::Admin => next.run(req).await,
            Caller::NotAdmin => error(StatusCode::FORBIDDEN, "caller does not hold the compute_admin role"),
            Caller::Anonymous => {
                let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid credentials");
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                resp
            }
        }
    };
    sh.recorder().response(resp.status().as_u16());
    resp
}

async fn list(State(sh): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Response {
    let query = match ListQuery::parse(raw.as_deref()) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    sh.record_list_query(raw.as_deref().unwrap_or_default());
    let delay = sh.faults().list_page_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    // Read after the delay: what a slow page shows is the platform as it is when the page is served.
    let body = sh.fleet().list_json(&query, Instant::now());
    json_bytes(StatusCode::OK, Ok(body))
}

async fn get_one(State(sh): State<Arc<Shared>>, path: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(id)) = path else {
        // An id that does not decode to UTF-8 names no instance.
        return error(StatusCode::NOT_FOUND, "instance not found");
    };
    let body = sh.fleet().get_json(&id, Instant::now()).map(<[u8]>::to_vec);
    match body {
        Some(body) => json_bytes(StatusCode::OK, Ok(body)),
        None => error(StatusCode::NOT_FOUND, "instance not found"),
    }
}

/// Carried in each request's extensions by the accept loop: notifying it closes the connection at once.
#[derive(Clone)]
pub(crate) struct ConnAbort(Arc<Notify>);

async fn act(
    State(sh): State<Arc<Shared>>,
    abort: Option<Extension<ConnAbort>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let Ok(Path((id, action))) = path else {
        return error(StatusCode::NOT_FOUND, "instance not found");
    };
    let Some(action) = PowerAction::parse(&action) else {
        return error(StatusCode::NOT_FOUND, "unknown action");
    };
    match sh.apply(&id, action) {
        Ok(()) => {
            if let Some(Extension(abort)) = abort
                && sh.dice.roll(sh.faults().drop_after_accept_rate)
            {
                sh.recorder().dropped();
                abort.0.notify_one();
                // Never answer: the connection task drops the connection.
                std::future::pending::<()>().await;
            }
            if action.is_one_shot() && sh.faults().gateway503_first_one_shot && sh.first_one_shot_answer_lost(&id) {
                // Carried out, but the gateway in front answers as if it had not been.
                let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable");
                let secs = sh.faults().retry_after_seconds.unwrap_or(1);
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
                return resp;
            }
            StatusCode::ACCEPTED.into_response()
        }
        Err(ActionError::NotFound) => error(StatusCode::NOT_FOUND, "instance not found"),
        Err(ActionError::Busy { action: running }) => error(
            StatusCode::CONFLICT,
            &format!("another action ({running}) is still in progress"),
        ),
        Err(ActionError::NotAllowed { status }) => {
            error(StatusCode::CONFLICT, &format!("instance is {status}; cannot {action}"))
        }
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn get_audit(State(sh): State<Arc<Shared>>) -> Response {
    let body = serde_json::to_vec(sh.recorder().entries());
    json_bytes(StatusCode::OK, body)
}

async fn clear_audit(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.recorder().clear();
    StatusCode::NO_CONTENT
}

async fn get_stats(State(sh): State<Arc<Shared>>) -> Response {
    let body = serde_json::to_vec(sh.recorder().stats());
    json_bytes(StatusCode::OK, body)
}

async fn get_faults(State(sh): State<Arc<Shared>>) -> Response {
    Json(sh.faults()).into_response()
}

async fn put_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<serde_json::Value>(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            if v.is_object() {
                Ok(v)
            } else {
                Err("expected a JSON object".into())
            }
        })
        .and_then(|v| serde_json::from_value::<Faults>(v).map_err(|e| e.to_string()));
    let faults = match parsed {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid faults: {e}")),
    };
    if let Err(message) = faults.validate() {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    sh.set_faults(faults);
    Json(faults).into_response()
}

#[derive(Deserialize)]
struct StatusBody {
    status: InstanceStatus,
}

async fn put_status(State(sh): State<Arc<Shared>>, path: Result<Path<String>, PathRejection>, body: Bytes) -> Response {
    let Ok(Path(id)) = path else {
        return error(StatusCode::BAD_REQUEST, "invalid instance id");
    };
    let status = match serde_json::from_slice::<StatusBody>(&body) {
        Ok(b) => b.status,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"status\": \"...\"}}: {e}"),
            );
        }
    };
    let mut fleet = sh.fleet();
    if !fleet.set_status(&id, status) {
        return error(StatusCode::NOT_FOUND, "instance not found");
    }
    let body = fleet.get(&id, Instant::now()).map(serde_json::to_vec);
    drop(fleet);
    match body {
        Some(body) => json_bytes(StatusCode::OK, body),
        None => error(StatusCode::NOT_FOUND, "instance not found"),
    }
}

async fn put_instance(
    State(sh): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let Ok(Path(id)) = path else {
        return error(StatusCode::BAD_REQUEST, "invalid instance id");
    };
    let instance = match serde_json::from_slice::<Instance>(&body) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid instance: {e}")),
    };
    if instance.id != id {
        return error(StatusCode::BAD_REQUEST, "the instance id must match the path");
    }
    let body = serde_json::to_vec(&instance);
    let created = sh.fleet().upsert(instance);
    json_bytes(if created { StatusCode::CREATED } else { StatusCode::OK }, body)
}

async fn delete_instance(State(sh): State<Arc<Shared>>, path: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(id)) = path else {
        return error(StatusCode::BAD_REQUEST, "invalid instance id");
    };
    if sh.fleet().remove(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "instance not found")
    }
}

/// Every route, with the admin gate in front.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = |p: &str| format!("{BASE_PATH}{p}");
    Router::new()
        .route(&api("/admin/instances"), get(list))
        .route(&api("/admin/instances/{id}"), get(get_one))
        .route(&api("/admin/instances/{id}/{action}"), post(act))
        .route("/_sim/audit", get(get_audit))
        .route("/_sim/audit/clear", post(clear_audit))
        .route("/_sim/stats", get(get_stats))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/instances/{id}", put(put_instance).delete(delete_instance))
        .route("/_sim/instances/{id}/status", put(put_status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// Accept connections until the task is aborted; aborting it also ends every connection.
pub(crate) async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, router.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::debug!(error = %e, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router) {
    let abort = Arc::new(Notify::new());
    let tagged = ConnAbort(abort.clone());
    let inner = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(tagged.clone());
        inner.call(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket without writing anything more.
        _ = abort.notified() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        use PowerAction as A;
        use RequestKind as K;
        let cases = [
            (Method::GET, "/admin/instances", K::List),
            (Method::POST, "/admin/instances", K::Other),
            (Method::GET, "/admin/instances/inst-1", K::Get),
            (Method::GET, "/admin/instances/", K::Other),
            (Method::POST, "/admin/instances/inst-1/stop", K::Action(A::Stop)),
            (Method::POST, "/admin/instances/inst-1/reset", K::Action(A::Reset)),
            (Method::POST, "/admin/instances/inst-1/explode", K::Other),
            (Method::GET, "/admin/instances/inst-1/stop", K::Other),
            (Method::POST, "/admin/instances/inst-1/stop/x", K::Other),
            (Method::GET, "/admin/instancesX", K::Other),
            (Method::GET, "", K::Other),
        ];
        for (m, rest, want) in cases {
            assert_eq!(classify(&m, rest), want, "{m} {rest}");
        }
        assert_eq!(admin_rest("/api/compute/v1/admin/instances"), Some("/admin/instances"));
        assert_eq!(admin_rest("/api/compute/v1"), Some(""));
        assert_eq!(admin_rest("/api/compute/v10/x"), None);
        assert_eq!(admin_rest("/_sim/stats"), None);
    }

    #[test]
    fn auth_table() {
        let auth = Auth::new("adm".into(), "usr".into(), Some(("k".into(), "s".into())));
        let no_key = Auth::new("adm".into(), "usr".into(), None);
        type Case<'a> = (&'a [(&'a str, &'a str)], Caller, Caller);
        let cases: &[Case] = &[
            (&[], Caller::Anonymous, Caller::Anonymous),
            (&[("authorization", "Bearer adm")], Caller::Admin, Caller::Admin),
            (&[("authorization", "bearer  adm ")], Caller::Admin, Caller::Admin),
            (&[("authorization", "Bearer usr")], Caller::NotAdmin, Caller::NotAdmin),
            (&[("authorization", "Bearer ad")], Caller::Anonymous, Caller::Anonymous),
            (&[("authorization", "Basic adm")], Caller::Anonymous, Caller::Anonymous),
            (&[("authorization", "Bearer ")], Caller::Anonymous, Caller::Anonymous),
            (&[("authorization", "adm")], Caller::Anonymous, Caller::Anonymous),
            (
                &[("api-key", "k"), ("api-secret", "s")],
                Caller::Admin,
                Caller::Anonymous,
            ),
            (
                &[("api-key", "k"), ("api-secret", "x")],
                Caller::Anonymous,
                Caller::Anonymous,
            ),
            (&[("api-key", "k")], Caller::Anonymous, Caller::Anonymous),
            (
                &[("authorization", "Bearer usr"), ("api-key", "k"), ("api-secret", "s")],
                Caller::Admin,
                Caller::NotAdmin,
            ),
            (
                &[("authorization", "Bearer bad"), ("api-key", "k"), ("api-secret", "s")],
                Caller::Admin,
                Caller::Anonymous,
            ),
        ];
        for (headers, want, want_no_key) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(auth.check(&map), *want, "{headers:?}");
            assert_eq!(no_key.check(&map), *want_no_key, "{headers:?} without a configured key");
        }
    }
}
