//! Integration tests of the compute admin API simulator, over real HTTP.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use compute_operator::api::types::{Instance, InstancePage, InstanceStatus, ListFilter, PowerAction};
use compute_operator::sim::{self, AuditEntry, Faults, SimConfig, SimServer, SimStats};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "dev-admin-token";
const USER: &str = "dev-user-token";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

struct Sim {
    sim: SimServer,
    http: reqwest::Client,
}

impl Sim {
    async fn start(config: SimConfig) -> Self {
        Self {
            sim: sim::start(config).await.expect("simulator starts"),
            http: client(),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    fn ctl(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim.addr())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.api(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET")
    }

    async fn post(&self, path: &str) -> reqwest::Response {
        self.http
            .post(self.api(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("POST")
    }

    async fn act(&self, id: &str, action: &str) -> StatusCode {
        self.post(&format!("/admin/instances/{id}/{action}")).await.status()
    }

    async fn list(&self, query: &str) -> InstancePage {
        let resp = self.get(&format!("/admin/instances?{query}")).await;
        assert_eq!(resp.status(), StatusCode::OK, "list {query}");
        resp.json().await.expect("page JSON")
    }

    async fn status(&self, id: &str) -> InstanceStatus {
        let resp = self.get(&format!("/admin/instances/{id}")).await;
        assert_eq!(resp.status(), StatusCode::OK, "get {id}");
        resp.json::<Instance>().await.expect("instance JSON").status
    }

    /// Poll until `id` reports `want`; the time it took.
    async fn wait_status(&self, id: &str, want: InstanceStatus, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.status(id).await;
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{id} still {got} after {within:?}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    async fn audit(&self) -> Vec<AuditEntry> {
        self.http
            .get(self.ctl("/_sim/audit"))
            .send()
            .await
            .expect("audit")
            .json()
            .await
            .expect("audit JSON")
    }

    async fn stats(&self) -> SimStats {
        self.http
            .get(self.ctl("/_sim/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }

    async fn put_faults(&self, faults: Value) -> StatusCode {
        self.http
            .put(self.ctl("/_sim/faults"))
            .json(&faults)
            .send()
            .await
            .expect("faults")
            .status()
    }
}

fn inst(id: &str, user: &str, customer: &str, zone: &str, template: &str, status: InstanceStatus) -> Instance {
    Instance {
        id: id.into(),
        user_id: user.into(),
        customer_id: customer.into(),
        name: format!("name-{id}"),
        zone: zone.into(),
        machine_type: "e2-small".into(),
        external_ip: "203.0.113.1".into(),
        internal_ip: "10.128.0.1".into(),
        status,
        template_id: template.into(),
        created_at: "2026-03-14T15:02:17Z".into(),
    }
}

/// a: running, b: stopped, c: error, d: running, e: provisioning.
fn small_fleet() -> Vec<Instance> {
    use InstanceStatus as S;
    vec![
        inst("a", "u1", "c1", "z1", "t1", S::Running),
        inst("b", "u1", "c1", "z1", "t1", S::Stopped),
        inst("c", "u2", "c1", "z2", "t1", S::Error),
        inst("d", "u2", "c2", "z2", "t2", S::Running),
        inst("e", "u3", "c2", "z1", "t2", S::Provisioning),
    ]
}

async fn assert_error(resp: reqwest::Response, status: StatusCode) {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["code"], json!(status.as_u16()), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn auth_schemes_and_error_statuses() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        api_key: Some("key-1".into()),
        api_secret: Some("secret-1".into()),
        ..SimConfig::default()
    })
    .await;
    let list = s.api("/admin/instances");
    let h = &s.http;

    let resp = h.get(&list).send().await.unwrap();
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_error(resp, StatusCode::UNAUTHORIZED).await;
    assert_error(
        h.get(&list).bearer_auth("nope").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        h.get(&list).bearer_auth(USER).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        h.get(&list).bearer_auth(ADMIN).send().await.unwrap().status(),
        StatusCode::OK
    );
    let keyed = |k: &str, sec: &str| h.get(&list).header("api-key", k).header("api-secret", sec);
    assert_eq!(
        keyed("key-1", "secret-1").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_error(keyed("key-1", "wrong").send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
    assert_error(
        keyed("wrong", "secret-1").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        h.get(&list).header("api-key", "key-1").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;

    // Auth comes before validation, lookup and state checks.
    for (method, path) in [
        ("GET", "/admin/instances?page=0"),
        ("GET", "/admin/instances/missing"),
        ("POST", "/admin/instances/missing/stop"),
        ("POST", "/admin/instances/a/explode"),
        ("POST", "/admin/instances/b/stop"),
        ("GET", "/admin/nothing-here"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = h.request(m.clone(), s.api(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let resp = h.request(m, s.api(path)).bearer_auth(USER).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
    // A non-admin POST changes nothing.
    assert_eq!(
        h.post(s.api("/admin/instances/a/stop"))
            .bearer_auth(USER)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(s.status("a").await, InstanceStatus::Running);
    assert!(s.audit().await.is_empty());

    // The other statuses, with admin credentials.
    assert_error(s.get("/admin/instances?page=0").await, StatusCode::BAD_REQUEST).await;
    assert_error(s.get("/admin/instances/missing").await, StatusCode::NOT_FOUND).await;
    assert_error(s.post("/admin/instances/missing/stop").await, StatusCode::NOT_FOUND).await;
    assert_error(s.post("/admin/instances/a/explode").await, StatusCode::NOT_FOUND).await;
    assert_error(s.get("/admin/nothing-here").await, StatusCode::NOT_FOUND).await;
    // Ids that do not decode to UTF-8 name no instance.
    assert_error(s.get("/admin/instances/%FF").await, StatusCode::NOT_FOUND).await;
    assert_error(s.post("/admin/instances/%FF/stop").await, StatusCode::NOT_FOUND).await;
    assert_error(s.post("/admin/instances/b/stop").await, StatusCode::CONFLICT).await;
    let get = s.get("/admin/instances/a").await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.headers()["content-type"], "application/json");
    assert_eq!(get.json::<Instance>().await.unwrap(), small_fleet()[0]);
    let accepted = s.post("/admin/instances/a/stop").await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert!(accepted.bytes().await.unwrap().is_empty(), "202 has no body");
    // Key auth works for actions too.
    let resp = h
        .post(s.api("/admin/instances/d/restart"))
        .header("api-key", "key-1")
        .header("api-secret", "secret-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // Wrong method on a known path.
    assert_error(
        h.delete(s.api("/admin/instances/a"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}

#[tokio::test]
async fn pagination_edges() {
    let s = Sim::start(SimConfig {
        instances: 45,
        seed: 3,
        ..SimConfig::default()
    })
    .await;
    let p = s.list("").await;
    assert_eq!(p.instances.len(), 20);
    let pg = &p.pagination;
    assert_eq!(
        (
            pg.page,
            pg.page_size,
            pg.total_count,
            pg.total_pages,
            pg.has_next,
            pg.has_prev
        ),
        (1, 20, 45, 3, true, false)
    );
    let last = s.list("page=3").await;
    assert_eq!(last.instances.len(), 5);
    assert!(!last.pagination.has_next && last.pagination.has_prev);
    let beyond = s.list("page=4").await;
    assert!(beyond.instances.is_empty());
    assert_eq!((beyond.pagination.total_count, beyond.pagination.total_pages), (45, 3));
    assert!(!beyond.pagination.has_next && beyond.pagination.has_prev);
    let far = s.list("page=4000000000").await;
    assert!(far.instances.is_empty());
    let all = s.list("pageSize=100").await;
    assert_eq!(
        (all.instances.len(), all.pagination.total_pages, all.pagination.has_next),
        (45, 1, false)
    );
    let exact = s.list("pageSize=15&page=3").await;
    assert_eq!(
        (
            exact.instances.len(),
            exact.pagination.total_pages,
            exact.pagination.has_next
        ),
        (15, 3, false)
    );
    let one = s.list("pageSize=1&page=45").await;
    assert_eq!((one.instances.len(), one.pagination.total_pages), (1, 45));

    // Walking the pages gives every instance once, in id order.
    let mut walked = Vec::new();
    for page in 1.. {
        let p = s.list(&format!("pageSize=7&page={page}")).await;
        walked.extend(p.instances.into_iter().map(|i| i.id));
        if !p.pagination.has_next {
            break;
        }
    }
    let ids: Vec<String> = all.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(walked, ids);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by id");
    assert_eq!(all.instances, s.sim.instances());

    for bad in [
        "pageSize=101",
        "pageSize=0",
        "pageSize=-1",
        "pageSize=abc",
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "status=bogus",
        "status=stopping",
        "status=RUNNING",
    ] {
        assert_error(s.get(&format!("/admin/instances?{bad}")).await, StatusCode::BAD_REQUEST).await;
    }

    // Same seed, same fleet; another seed, another fleet.
    let twin = Sim::start(SimConfig {
        instances: 45,
        seed: 3,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(twin.list("pageSize=100").await.instances, all.instances);
    let other = Sim::start(SimConfig {
        instances: 45,
        seed: 4,
        ..SimConfig::default()
    })
    .await;
    assert_ne!(other.list("pageSize=100").await.instances, all.instances);
}

#[tokio::test]
async fn filters_combine_with_and() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        ..SimConfig::default()
    })
    .await;
    let ids = |p: InstancePage| p.instances.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let cases: &[(&str, &[&str])] = &[
        ("userID=u1", &["a", "b"]),
        ("customerID=c1", &["a", "b", "c"]),
        ("zone=z1", &["a", "b", "e"]),
        ("templateID=t2", &["d", "e"]),
        ("status=running", &["a", "d"]),
        ("status=provisioning", &["e"]),
        ("status=error", &["c"]),
        ("status=deleting", &[]),
        ("zone=z1&status=running", &["a"]),
        ("customerID=c1&zone=z2", &["c"]),
        ("customerID=c2&templateID=t2&zone=z1", &["e"]),
        ("userID=u1&customerID=c2", &[]),
        ("userID=u2&zone=z2&status=running&templateID=t2&customerID=c2", &["d"]),
        ("zone=nowhere", &[]),
        ("zone=z1&pageSize=2&page=2", &["e"]),
    ];
    for (q, want) in cases {
        assert_eq!(ids(s.list(q).await), *want, "{q}");
    }
    let empty = s.list("zone=nowhere").await.pagination;
    assert_eq!(
        (empty.total_count, empty.total_pages, empty.has_next, empty.has_prev),
        (0, 0, false, false)
    );

    // Against a generated fleet: every filter combination agrees with a brute-force count.
    let big = Sim::start(SimConfig {
        instances: 400,
        seed: 11,
        ..SimConfig::default()
    })
    .await;
    let fleet = big.sim.instances();
    let some = &fleet[7];
    let filters = [
        ListFilter {
            zone: Some(some.zone.clone()),
            status: Some("running".into()),
            ..Default::default()
        },
        ListFilter {
            user_id: Some(some.user_id.clone()),
            template_id: Some(some.template_id.clone()),
            ..Default::default()
        },
        ListFilter {
            customer_id: Some(some.customer_id.clone()),
            status: Some("stopped".into()),
            zone: Some(some.zone.clone()),
            ..Default::default()
        },
    ];
    for f in filters {
        let q: Vec<String> = f.query_pairs().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let page = big.list(&format!("{}&pageSize=100", q.join("&"))).await;
        let want: Vec<&Instance> = fleet.iter().filter(|i| f.matches(i)).collect();
        assert_eq!(page.pagination.total_count, want.len() as u64, "{q:?}");
        assert!(!want.is_empty(), "{q:?}");
        assert_eq!(
            page.instances.iter().collect::<Vec<_>>(),
            want.into_iter().take(100).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn visible_transitions_and_conflicts() {
    use InstanceStatus as S;
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        transition: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await;
    let max = Duration::from_secs(3);

    assert_eq!(s.act("a", "stop").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("a").await, S::Stopping);
    assert_eq!(s.sim.busy_with("a"), Some(PowerAction::Stop));
    for action in ["stop", "start", "restart", "reset"] {
        assert_eq!(
            s.act("a", action).await,
            StatusCode::CONFLICT,
            "{action} while stopping"
        );
    }
    let took = s.wait_status("a", S::Stopped, max).await;
    assert!(took >= Duration::from_millis(100), "transition took {took:?}");
    for action in ["stop", "restart", "reset"] {
        assert_eq!(s.act("a", action).await, StatusCode::CONFLICT, "{action} when stopped");
    }
    assert_eq!(s.act("a", "start").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("a").await, S::Starting);
    s.wait_status("a", S::Running, max).await;

    assert_eq!(s.act("d", "restart").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("d").await, S::Restarting);
    s.wait_status("d", S::Running, max).await;
    assert_eq!(s.act("d", "reset").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("d").await, S::Resetting);
    s.wait_status("d", S::Running, max).await;

    // From error: reset and stop are allowed, restart is not.
    assert_eq!(s.act("c", "restart").await, StatusCode::CONFLICT);
    assert_eq!(s.act("c", "reset").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("c").await, S::Resetting);
    s.wait_status("c", S::Running, max).await;
    // Provisioning allows nothing.
    for action in ["stop", "start", "restart", "reset"] {
        assert_eq!(
            s.act("e", action).await,
            StatusCode::CONFLICT,
            "{action} while provisioning"
        );
    }
    // Lists show transitional statuses too, and the status filter sees them settle.
    assert_eq!(s.act("b", "start").await, StatusCode::ACCEPTED);
    let listed = s.list("userID=u1").await;
    assert_eq!(listed.instances[1].status, S::Starting);
    s.wait_status("b", S::Running, max).await;
    assert_eq!(s.list("status=running").await.pagination.total_count, 4);

    let audit = s.audit().await;
    let got: Vec<(&str, PowerAction)> = audit.iter().map(|e| (e.instance_id.as_str(), e.action)).collect();
    use PowerAction as A;
    assert_eq!(
        got,
        [
            ("a", A::Stop),
            ("a", A::Start),
            ("d", A::Restart),
            ("d", A::Reset),
            ("c", A::Reset),
            ("b", A::Start)
        ]
    );
    assert!(audit.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(s.sim.audit(), audit);
    // `at` is RFC 3339 with milliseconds.
    let raw: Value = s
        .http
        .get(s.ctl("/_sim/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = raw[0]["at"].as_str().unwrap();
    assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.', "{at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_actions_on_one_instance_accept_exactly_one() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        transition: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let url = s.api("/admin/instances/a/restart");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (h, url) = (s.http.clone(), url.clone());
            tokio::spawn(async move { h.post(url).bearer_auth(ADMIN).send().await.map(|r| r.status()) })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        codes.iter().filter(|c| **c == StatusCode::ACCEPTED).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == StatusCode::CONFLICT).count(),
        15,
        "{codes:?}"
    );
    assert_eq!(s.audit().await.len(), 1);
}

#[tokio::test]
async fn invisible_transitions_keep_reporting_running_but_stay_busy() {
    use InstanceStatus as S;
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        transition: Duration::from_millis(250),
        invisible_transitions: true,
        ..SimConfig::default()
    })
    .await;
    let t0 = Instant::now();
    assert_eq!(s.act("a", "restart").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("a").await, S::Running);
    assert_eq!(
        s.list("status=running").await.pagination.total_count,
        2,
        "still listed as running"
    );
    assert_eq!(s.act("a", "restart").await, StatusCode::CONFLICT);
    assert_eq!(s.act("a", "reset").await, StatusCode::CONFLICT);
    assert_eq!(s.act("a", "stop").await, StatusCode::CONFLICT);
    assert_eq!(s.act("d", "reset").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("d").await, S::Running);
    // Stop/start stay visible.
    assert_eq!(s.act("b", "start").await, StatusCode::ACCEPTED);
    assert_eq!(s.status("b").await, S::Starting);
    // Once the transition is over, a new restart is accepted.
    loop {
        match s.act("a", "restart").await {
            StatusCode::ACCEPTED => break,
            StatusCode::CONFLICT => {
                assert!(t0.elapsed() < Duration::from_secs(3), "restart never finished");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "busy for the whole transition: {:?}",
        t0.elapsed()
    );
    let restarts = s.audit().await.iter().filter(|e| e.instance_id == "a").count();
    assert_eq!(restarts, 2);
}

#[tokio::test]
async fn error_rate_fault_answers_with_retry_after() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        faults: Faults {
            error_rate: 1.0,
            retry_after_seconds: Some(7),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    for _ in 0..3 {
        let resp = s.get("/admin/instances").await;
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_error(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    assert_error(s.post("/admin/instances/a/stop").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(s.audit().await.is_empty(), "a failed request does nothing");
    assert_eq!(s.sim.instance("a").unwrap().status, InstanceStatus::Running);
    // Control endpoints are never faulted.
    let stats = s.stats().await;
    assert_eq!((stats.total, stats.responses_with(503)), (4, 4));

    assert_eq!(
        s.put_faults(json!({"errorRate": 1.0, "errorStatus": 500})).await,
        StatusCode::OK
    );
    let resp = s.get("/admin/instances/a").await;
    assert!(resp.headers().get("retry-after").is_none());
    assert_error(resp, StatusCode::INTERNAL_SERVER_ERROR).await;

    // A partial rate fails some requests, not all.
    s.sim.set_faults(Faults {
        error_rate: 0.5,
        ..Faults::default()
    });
    let mut failed = 0;
    for _ in 0..60 {
        let code = s.get("/admin/instances/a").await.status();
        assert!(
            code == StatusCode::OK || code == StatusCode::SERVICE_UNAVAILABLE,
            "{code}"
        );
        failed += usize::from(code == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!((10..=50).contains(&failed), "{failed} of 60 failed at rate 0.5");

    assert_eq!(s.put_faults(json!({})).await, StatusCode::OK);
    assert_eq!(s.get("/admin/instances").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn latency_fault_delays_admin_requests_only() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        faults: Faults {
            latency_ms: 400,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let t = Instant::now();
    assert_eq!(s.get("/admin/instances/a").await.status(), StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    let t = Instant::now();
    // Latency comes before auth, as in front of a slow service.
    assert_eq!(
        s.http.get(s.api("/admin/instances")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    let t = Instant::now();
    s.stats().await;
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "/_sim is not delayed: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn dropped_connection_after_accept_still_applies_the_action() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        transition: Duration::from_millis(100),
        faults: Faults {
            drop_after_accept_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    // Warm a pooled connection first, so the drop hits a reused connection too.
    assert_eq!(s.status("a").await, InstanceStatus::Running);
    let err = s
        .http
        .post(s.api("/admin/instances/a/stop"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect_err("no response");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    let audit = s.audit().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].instance_id.as_str(), audit[0].action),
        ("a", PowerAction::Stop)
    );
    s.wait_status("a", InstanceStatus::Stopped, Duration::from_secs(3))
        .await;
    // Refused actions are answered normally.
    assert_eq!(s.act("a", "stop").await, StatusCode::CONFLICT);
    assert_eq!(s.act("missing", "stop").await, StatusCode::NOT_FOUND);
    // A fresh client on a fresh connection sees the same.
    let err = client()
        .post(s.api("/admin/instances/d/restart"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect_err("dropped");
    assert!(!err.is_status(), "{err:?}");
    let stats = s.stats().await;
    assert_eq!(stats.dropped, 2);
    assert_eq!(stats.responses_with(202), 0);
    assert_eq!(s.audit().await.len(), 2);
    // Lifting the fault restores answers.
    s.sim.set_faults(Faults::default());
    assert_eq!(s.act("a", "start").await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn never_finish_holds_transitions_until_lifted_or_overridden() {
    use InstanceStatus as S;
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        transition: Duration::from_millis(80),
        faults: Faults {
            never_finish: true,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    assert_eq!(s.act("a", "stop").await, StatusCode::ACCEPTED);
    assert_eq!(s.act("d", "restart").await, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.status("a").await, S::Stopping);
    assert_eq!(s.status("d").await, S::Restarting);
    assert_eq!(s.act("a", "stop").await, StatusCode::CONFLICT);

    // Setting a status cancels the transition at once.
    let resp = s
        .http
        .put(s.ctl("/_sim/instances/d/status"))
        .json(&json!({"status": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Instance>().await.unwrap().status, S::Running);
    assert_eq!(s.sim.busy_with("d"), None);
    assert_eq!(s.act("d", "reset").await, StatusCode::ACCEPTED, "no longer busy");

    // Lifting the fault lets held transitions finish one transition later.
    let t = Instant::now();
    assert_eq!(s.put_faults(json!({"neverFinish": false})).await, StatusCode::OK);
    s.wait_status("a", S::Stopped, Duration::from_secs(3)).await;
    s.wait_status("d", S::Running, Duration::from_secs(3)).await;
    assert!(t.elapsed() >= Duration::from_millis(60), "{:?}", t.elapsed());
}

#[tokio::test]
async fn control_endpoints() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        ..SimConfig::default()
    })
    .await;
    let h = &s.http;

    let faults: Value = h.get(s.ctl("/_sim/faults")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        faults,
        json!({"errorRate": 0.0, "errorStatus": 503, "retryAfterSeconds": null, "latencyMs": 0,
               "dropAfterAcceptRate": 0.0, "neverFinish": false, "queueMs": 0, "gateway503FirstOneShot": false,
               "listPageDelayMs": 0})
    );
    for bad in [
        json!({"errorRate": 2}),
        json!({"errorStatus": 404}),
        json!({"bogus": 1}),
        json!([1]),
    ] {
        assert_eq!(s.put_faults(bad.clone()).await, StatusCode::BAD_REQUEST, "{bad}");
    }
    let resp = h.put(s.ctl("/_sim/faults")).body("{not json").send().await.unwrap();
    assert_error(resp, StatusCode::BAD_REQUEST).await;
    let set = json!({"errorRate": 0.25, "errorStatus": 500, "retryAfterSeconds": 3, "latencyMs": 5,
                     "dropAfterAcceptRate": 0.5, "neverFinish": true, "queueMs": 0, "gateway503FirstOneShot": false,
                     "listPageDelayMs": 40});
    assert_eq!(s.put_faults(set.clone()).await, StatusCode::OK);
    let back: Value = h.get(s.ctl("/_sim/faults")).send().await.unwrap().json().await.unwrap();
    assert_eq!(back, set);
    assert_eq!(s.sim.faults().retry_after_seconds, Some(3));
    s.sim.set_faults(Faults::default());

    // Status: unknown id, bad bodies, any status string.
    let status_url = |id: &str| s.ctl(&format!("/_sim/instances/{id}/status"));
    assert_error(
        h.put(status_url("zz"))
            .json(&json!({"status": "running"}))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        h.put(status_url("a"))
            .json(&json!({"state": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        h.put(status_url("a"))
            .json(&json!({"status": "error"}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(s.status("a").await, InstanceStatus::Error);
    assert!(s.sim.set_status("a", InstanceStatus::Other("hibernating".into())));
    assert!(!s.sim.set_status("zz", InstanceStatus::Running));
    assert_eq!(s.status("a").await, InstanceStatus::Other("hibernating".into()));
    assert_eq!(s.act("a", "start").await, StatusCode::CONFLICT);

    // Slow list pages: every page answers that much later; other requests do not wait.
    assert_eq!(s.put_faults(json!({"listPageDelayMs": 300})).await, StatusCode::OK);
    let t = std::time::Instant::now();
    let page = s.list("page=1&pageSize=2").await;
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    assert_eq!(page.instances.len(), 2);
    let t = std::time::Instant::now();
    s.get("/admin/instances/a").await;
    assert!(t.elapsed() < Duration::from_millis(300), "a GET is not a list page");
    assert!(
        s.sim.list_queries().iter().any(|q| q.contains("pageSize=2")),
        "{:?}",
        s.sim.list_queries()
    );
    s.sim.set_faults(Faults::default());

    // Instances: create, replace, mismatched id, bad body.
    let new = inst("new-1", "u9", "c9", "z9", "t9", InstanceStatus::Stopped);
    let resp = h.put(s.ctl("/_sim/instances/new-1")).json(&new).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        s.get("/admin/instances/new-1").await.json::<Instance>().await.unwrap(),
        new
    );
    let replaced = Instance {
        status: InstanceStatus::Running,
        ..new.clone()
    };
    assert_eq!(
        h.put(s.ctl("/_sim/instances/new-1"))
            .json(&replaced)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(s.sim.instance("new-1"), Some(replaced));
    assert_error(
        h.put(s.ctl("/_sim/instances/other")).json(&new).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        h.put(s.ctl("/_sim/instances/x"))
            .json(&json!({"id": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Ids are single path segments, percent-decoded.
    let odd = inst("a/b c", "u9", "c9", "z8", "t9", InstanceStatus::Running);
    let resp = h
        .put(s.ctl("/_sim/instances/a%2Fb%20c"))
        .json(&odd)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = s.get("/admin/instances/a%2Fb%20c").await;
    assert_eq!(got.json::<Instance>().await.unwrap(), odd);
    assert_eq!(s.act("a%2Fb%20c", "stop").await, StatusCode::ACCEPTED);
    assert_eq!(s.audit().await[0].instance_id, "a/b c");
    s.sim.clear_audit();
    assert!(s.sim.set_status("a/b c", InstanceStatus::Running));
    // Deleting an instance (a user deleting it while the operator works): gone from get and list.
    s.sim
        .upsert_instance(inst("gone-1", "u9", "c9", "z7", "t9", InstanceStatus::Running));
    assert_eq!(
        h.delete(s.ctl("/_sim/instances/gone-1")).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.get("/admin/instances/gone-1").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.list("zone=z7").await.pagination.total_count, 0);
    assert_error(
        h.delete(s.ctl("/_sim/instances/gone-1")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    s.sim
        .upsert_instance(inst("new-2", "u9", "c9", "z9", "t9", InstanceStatus::Running));
    assert_eq!(s.list("zone=z9").await.pagination.total_count, 2);
    assert_eq!(s.list("").await.pagination.total_count, 8);

    // Stats and audit, then clear.
    assert_eq!(s.act("new-2", "stop").await, StatusCode::ACCEPTED);
    let stats: Value = h.get(s.ctl("/_sim/stats")).send().await.unwrap().json().await.unwrap();
    for key in ["list", "get", "stop", "start", "restart", "reset"] {
        assert!(stats["requests"][key].is_u64(), "{key} in {stats}");
    }
    assert!(stats["total"].as_u64().unwrap() > 0);
    assert!(stats["responses"]["202"].as_u64() == Some(1), "{stats}");
    assert_eq!(s.audit().await.len(), 1);
    assert_eq!(
        h.post(s.ctl("/_sim/audit/clear")).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert!(s.audit().await.is_empty());
    assert_eq!(s.stats().await, SimStats::default());
    assert_error(
        h.delete(s.ctl("/_sim/stats")).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert_error(
        h.get(s.ctl("/_sim/nothing")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn stats_count_admin_requests_by_endpoint_and_status() {
    let s = Sim::start(SimConfig {
        fleet: Some(small_fleet()),
        ..SimConfig::default()
    })
    .await;
    s.list("").await;
    s.list("zone=z1").await;
    s.status("a").await;
    assert_eq!(s.act("a", "stop").await, StatusCode::ACCEPTED);
    assert_eq!(s.act("a", "stop").await, StatusCode::CONFLICT);
    assert_eq!(s.act("b", "start").await, StatusCode::ACCEPTED);
    assert_eq!(s.act("d", "restart").await, StatusCode::ACCEPTED);
    assert_eq!(s.act("missing", "reset").await, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/admin/instances?page=0").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        s.http.get(s.api("/admin/instances")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    s.audit().await;
    let stats = s.stats().await;
    assert_eq!(stats.total, 10);
    let r = &stats.requests;
    assert_eq!((r.list, r.get, r.stop, r.start, r.restart, r.reset), (4, 1, 2, 1, 1, 1));
    let responses: Vec<(u16, u64)> = stats.responses.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(responses, [(200, 3), (202, 3), (400, 1), (401, 1), (404, 1), (409, 1)]);
    assert_eq!(s.sim.stats(), stats);
    s.sim.clear_audit();
    assert_eq!(s.sim.stats(), SimStats::default());
}

#[tokio::test]
async fn fleet_files_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = small_fleet();
    let array = dir.path().join("array.json");
    std::fs::write(&array, serde_json::to_vec(&fleet).unwrap()).unwrap();
    let wrapped = dir.path().join("wrapped.json");
    std::fs::write(&wrapped, serde_json::to_vec(&json!({"instances": fleet})).unwrap()).unwrap();
    for path in [array, wrapped] {
        let s = Sim::start(SimConfig {
            fleet_file: Some(path.clone()),
            ..SimConfig::default()
        })
        .await;
        assert_eq!(s.list("pageSize=100").await.instances, fleet, "{}", path.display());
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\"nope\": 1}").unwrap();
    for path in [bad, dir.path().join("missing.json")] {
        let err = sim::start(SimConfig {
            fleet_file: Some(path.clone()),
            ..SimConfig::default()
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("fleet file"), "{err:#}");
    }
    let dup = vec![fleet[0].clone(), fleet[0].clone()];
    assert!(
        sim::start(SimConfig {
            fleet: Some(dup),
            ..SimConfig::default()
        })
        .await
        .is_err()
    );
}

#[tokio::test]
async fn large_fleet_lists_stay_cheap() {
    let s = Sim::start(SimConfig {
        instances: 10_000,
        seed: 5,
        ..SimConfig::default()
    })
    .await;
    let zone = s.sim.instances()[0].zone.clone();
    let t = Instant::now();
    let mut seen = BTreeSet::new();
    for page in 1..=100 {
        let p = s.list(&format!("pageSize=100&page={page}")).await;
        assert_eq!(p.instances.len(), 100);
        seen.extend(p.instances.into_iter().map(|i| i.id));
        let f = s
            .list(&format!(
                "pageSize=100&page={}&zone={zone}&status=running",
                page % 5 + 1
            ))
            .await;
        assert!(f.pagination.total_count > 500);
    }
    assert_eq!(seen.len(), 10_000);
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "200 list calls took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn shutdown_and_drop_stop_serving() {
    let s = sim::start(SimConfig::default()).await.unwrap();
    let addr = s.addr();
    assert!(s.base_url().starts_with("http://127.0.0.1:") && s.base_url().ends_with("/api/compute/v1"));
    s.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
    let s = sim::start(SimConfig::default()).await.unwrap();
    let addr = s.addr();
    drop(s);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after drop"
    );
    // Bad configuration is refused.
    assert!(
        sim::start(SimConfig {
            api_key: Some("k".into()),
            ..SimConfig::default()
        })
        .await
        .is_err()
    );
}
