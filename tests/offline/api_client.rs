//! Integration tests of the admin API client against the real simulator, over HTTP on 127.0.0.1:0: every
//! endpoint, the mapping of every status code, both auth schemes and a rotated credentials directory,
//! pagination, retries, timeouts, dropped connections, redirects, politeness limits, path-safe IDs and
//! secrecy.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compute_operator::api::backoff::Backoff;
use compute_operator::api::client::install_crypto_provider;
use compute_operator::api::{
    AdminClient, ApiError, ClientConfig, CredentialSource, Credentials, Endpoint, Instance, InstanceStatus, ListFilter,
    PowerAction, Repeat, RequestObserver, Secret,
};
use compute_operator::sim::{self, Faults, SimConfig, SimServer};
use futures::TryStreamExt;

const ADMIN: &str = "dev-admin-token";
const USER: &str = "dev-user-token";
const API_KEY: &str = "test-api-key";
const API_SECRET: &str = "test-api-secret";
const SENTINEL: &str = "SENTINEL-9f3b2c71-never-print-me";

async fn start(config: SimConfig) -> SimServer {
    sim::start(config).await.expect("simulator starts")
}

/// Client settings for tests: the simulator's URL, a generous rate, and short backoff.
fn config(sim: &SimServer) -> ClientConfig {
    ClientConfig {
        base_url: sim.base_url().into(),
        timeout: Duration::from_secs(5),
        rate_per_s: 1000.0,
        burst: 1000,
        max_in_flight: 8,
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        ..ClientConfig::default()
    }
}

fn bearer(token: &str) -> CredentialSource {
    CredentialSource::Static(Credentials::Bearer(Secret::new(token)))
}

fn api_key(key: &str, secret: &str) -> CredentialSource {
    CredentialSource::Static(Credentials::ApiKey {
        key: Secret::new(key),
        secret: Secret::new(secret),
    })
}

fn client_with(config: ClientConfig, credentials: CredentialSource) -> AdminClient {
    AdminClient::new(config, credentials).expect("client builds")
}

fn admin(sim: &SimServer) -> AdminClient {
    client_with(config(sim), bearer(ADMIN))
}

fn instance(id: &str, name: &str, status: InstanceStatus) -> Instance {
    Instance {
        id: id.into(),
        user_id: "5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        customer_id: "a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        name: name.into(),
        zone: "us-central1-a".into(),
        machine_type: "n2-standard-4".into(),
        external_ip: "203.0.113.42".into(),
        internal_ip: "10.128.0.12".into(),
        status,
        template_id: "ubuntu-22-standard".into(),
        created_at: "2026-03-14T15:02:17Z".into(),
    }
}

/// The AND of the set filters, written out here rather than through `ListFilter::matches`.
fn keep(f: &ListFilter, i: &Instance) -> bool {
    f.user_id.as_ref().is_none_or(|v| *v == i.user_id)
        && f.customer_id.as_ref().is_none_or(|v| *v == i.customer_id)
        && f.status.as_ref().is_none_or(|v| v == i.status.as_str())
        && f.zone.as_ref().is_none_or(|v| *v == i.zone)
        && f.template_id.as_ref().is_none_or(|v| *v == i.template_id)
}

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id.clone()).collect()
}

fn first_with(sim: &SimServer, status: InstanceStatus) -> Instance {
    sim.instances()
        .into_iter()
        .find(|i| i.status == status)
        .unwrap_or_else(|| panic!("the fleet has a {status} instance"))
}

#[tokio::test]
async fn list_page_paginates_and_combines_filters_with_and() {
    install_crypto_provider();
    let sim = start(SimConfig {
        instances: 200,
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    let client = admin(&sim);
    let all = sim.instances();
    assert_eq!(all.len(), 200);

    // Pagination over the unfiltered fleet, in id order.
    let page = client.list_page(&ListFilter::default(), 3, 7).await.unwrap();
    assert_eq!(ids(&page.instances), ids(&all[14..21]));
    assert_eq!(page.instances, all[14..21].to_vec(), "full records");
    let p = &page.pagination;
    assert_eq!((p.page, p.page_size, p.total_count, p.total_pages), (3, 7, 200, 29));
    assert!(p.has_next && p.has_prev);
    let last = client.list_page(&ListFilter::default(), 29, 7).await.unwrap();
    assert_eq!(ids(&last.instances), ids(&all[196..]));
    assert!(!last.pagination.has_next && last.pagination.has_prev);
    let beyond = client.list_page(&ListFilter::default(), 30, 7).await.unwrap();
    assert!(beyond.instances.is_empty() && !beyond.pagination.has_next);

    // Out-of-range arguments are clamped by the client, never sent as-is (they would be 400s).
    let clamped = client.list_page(&ListFilter::default(), 0, 500).await.unwrap();
    assert_eq!((clamped.pagination.page, clamped.pagination.page_size), (1, 100));
    assert_eq!(ids(&clamped.instances), ids(&all[..100]));
    let tiny = client.list_page(&ListFilter::default(), 1, 0).await.unwrap();
    assert_eq!(tiny.pagination.page_size, 1);
    assert_eq!(ids(&tiny.instances), ids(&all[..1]));

    // Each filter alone, all of them together, and a contradictory pair.
    let target = all[17].clone();
    let other_customer = all
        .iter()
        .map(|i| i.customer_id.clone())
        .find(|c| *c != target.customer_id)
        .expect("more than one customer");
    let filters = [
        ListFilter {
            user_id: Some(target.user_id.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            customer_id: Some(target.customer_id.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            status: Some("stopped".into()),
            ..ListFilter::default()
        },
        ListFilter {
            status: Some("running".into()),
            ..ListFilter::default()
        },
        ListFilter {
            zone: Some(target.zone.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            template_id: Some(target.template_id.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            user_id: Some(target.user_id.clone()),
            customer_id: Some(target.customer_id.clone()),
            status: Some(target.status.as_str().into()),
            zone: Some(target.zone.clone()),
            template_id: Some(target.template_id.clone()),
        },
        ListFilter {
            zone: Some(target.zone.clone()),
            template_id: Some(target.template_id.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            user_id: Some(target.user_id.clone()),
            customer_id: Some(other_customer),
            ..ListFilter::default()
        },
        ListFilter {
            zone: Some("nowhere-1a".into()),
            ..ListFilter::default()
        },
    ];
    let mut nonempty = 0;
    for f in &filters {
        let want: Vec<Instance> = all.iter().filter(|i| keep(f, i)).cloned().collect();
        let got = client.list_page(f, 1, 100).await.unwrap();
        let n = want.len().min(100);
        assert_eq!(ids(&got.instances), ids(&want[..n]), "{f:?}");
        assert_eq!(got.pagination.total_count, want.len() as u64, "{f:?}");
        assert_eq!(got.pagination.total_pages, (want.len() as u64).div_ceil(100), "{f:?}");
        assert_eq!(got.pagination.has_next, want.len() > 100, "{f:?}");
        if !want.is_empty() {
            nonempty += 1;
            assert!(want.len() < all.len(), "{f:?} filters something out");
        }
    }
    assert!(nonempty >= 7, "the filters are not vacuous");
    let all_five = client.list_page(&filters[6], 1, 100).await.unwrap();
    assert!(all_five.instances.iter().any(|i| i.id == target.id));
    let contradictory = client.list_page(&filters[8], 1, 100).await.unwrap();
    assert!(contradictory.instances.is_empty());
    assert_eq!(contradictory.pagination.total_pages, 0);
}

#[tokio::test]
async fn get_instance_returns_the_full_record() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let client = admin(&sim);
    for want in sim.instances().iter().step_by(5) {
        let got = client.get_instance(&want.id).await.unwrap();
        assert_eq!(&got, want);
    }
    let custom = instance("inst-7g2xq4bm", "build-runner-03", InstanceStatus::Running);
    sim.upsert_instance(custom.clone());
    assert_eq!(client.get_instance(&custom.id).await.unwrap(), custom);
}

#[tokio::test]
async fn power_actions_are_accepted_with_202() {
    install_crypto_provider();
    let sim = start(SimConfig {
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let client = admin(&sim);
    let running: Vec<Instance> = sim
        .instances()
        .into_iter()
        .filter(|i| i.status == InstanceStatus::Running)
        .take(4)
        .collect();
    assert_eq!(running.len(), 4);
    assert!(sim.set_status(&running[3].id, InstanceStatus::Stopped));
    let plan = [
        (PowerAction::Stop, InstanceStatus::Stopping),
        (PowerAction::Restart, InstanceStatus::Restarting),
        (PowerAction::Reset, InstanceStatus::Resetting),
        (PowerAction::Start, InstanceStatus::Starting),
    ];
    for ((action, _), inst) in plan.iter().zip(&running) {
        assert_eq!(client.act(&inst.id, *action, Repeat::Never).await, Ok(()), "{action}");
    }
    let stats = sim.stats();
    assert_eq!(stats.responses_with(202), 4);
    let r = &stats.requests;
    assert_eq!((r.stop, r.start, r.restart, r.reset), (1, 1, 1, 1));
    let audit: Vec<(String, PowerAction)> = sim.audit().into_iter().map(|e| (e.instance_id, e.action)).collect();
    let want: Vec<(String, PowerAction)> = plan
        .iter()
        .zip(&running)
        .map(|((a, _), i)| (i.id.clone(), *a))
        .collect();
    assert_eq!(audit, want);
    for ((action, shown), inst) in plan.iter().zip(&running) {
        let now = client.get_instance(&inst.id).await.unwrap();
        assert_eq!(&now.status, shown, "after {action}");
        assert_eq!(sim.busy_with(&inst.id), Some(*action));
    }
}

#[tokio::test]
async fn every_status_code_maps_to_its_error_variant() {
    install_crypto_provider();
    let sim = start(SimConfig {
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let client = admin(&sim);
    let running = first_with(&sim, InstanceStatus::Running).id;
    let stopped = first_with(&sim, InstanceStatus::Stopped).id;
    let any = ListFilter::default();

    // 400: a status filter value the API does not know. Not retried.
    let bogus = ListFilter {
        status: Some("bogus".into()),
        ..ListFilter::default()
    };
    let err = client.list_page(&bogus, 1, 20).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::BadRequest(m) if m.contains("status")),
        "{err:?}"
    );
    assert!(!err.is_transient() && !err.may_have_reached_server());
    let err = client.list_all(bogus).try_collect::<Vec<_>>().await.unwrap_err();
    assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
    assert_eq!(sim.stats().requests.list, 2);
    assert_eq!(sim.stats().responses_with(400), 2);

    // 401: a token the API does not know, on every endpoint.
    sim.clear_audit();
    let stranger = client_with(config(&sim), bearer("not-a-valid-token"));
    assert_eq!(stranger.list_page(&any, 1, 20).await, Err(ApiError::Unauthorized));
    assert_eq!(stranger.get_instance(&running).await, Err(ApiError::Unauthorized));
    for action in PowerAction::ALL {
        assert_eq!(
            stranger.act(&running, action, Repeat::SafeToRepeat).await,
            Err(ApiError::Unauthorized)
        );
    }
    assert_eq!(sim.stats().total, 6, "401 is not retried");
    assert_eq!(sim.stats().responses_with(401), 6);

    // 403: a valid user without the compute_admin role.
    sim.clear_audit();
    let user = client_with(config(&sim), bearer(USER));
    assert_eq!(user.list_page(&any, 1, 20).await, Err(ApiError::Forbidden));
    assert_eq!(user.get_instance(&running).await, Err(ApiError::Forbidden));
    for action in PowerAction::ALL {
        assert_eq!(
            user.act(&running, action, Repeat::SafeToRepeat).await,
            Err(ApiError::Forbidden)
        );
    }
    assert_eq!(sim.stats().total, 6, "403 is not retried");
    assert_eq!(sim.stats().responses_with(403), 6);
    assert!(sim.audit().is_empty());

    // 404: an unknown id.
    sim.clear_audit();
    assert_eq!(client.get_instance("inst-doesnotexist").await, Err(ApiError::NotFound));
    for action in PowerAction::ALL {
        assert_eq!(
            client.act("inst-doesnotexist", action, Repeat::SafeToRepeat).await,
            Err(ApiError::NotFound)
        );
    }
    assert_eq!(sim.stats().total, 5, "404 is not retried");

    // 409: an action the status does not allow, and a second action while one runs.
    sim.clear_audit();
    assert_eq!(
        client.act(&stopped, PowerAction::Stop, Repeat::Never).await,
        Err(ApiError::Conflict)
    );
    assert_eq!(
        client.act(&stopped, PowerAction::Restart, Repeat::Never).await,
        Err(ApiError::Conflict)
    );
    assert_eq!(
        client.act(&running, PowerAction::Start, Repeat::Never).await,
        Err(ApiError::Conflict)
    );
    assert_eq!(client.act(&running, PowerAction::Restart, Repeat::Never).await, Ok(()));
    assert_eq!(sim.busy_with(&running), Some(PowerAction::Restart));
    for action in [PowerAction::Stop, PowerAction::Restart, PowerAction::Reset] {
        let err = client.act(&running, action, Repeat::SafeToRepeat).await.unwrap_err();
        assert_eq!(err, ApiError::Conflict, "{action} while restarting");
        assert!(!err.is_transient() && !err.may_have_reached_server());
    }
    let stats = sim.stats();
    assert_eq!(stats.total, 7, "409 is not retried");
    assert_eq!((stats.responses_with(409), stats.responses_with(202)), (6, 1));
    assert_eq!(sim.audit().len(), 1);
}

#[tokio::test]
async fn api_key_and_secret_authenticate() {
    install_crypto_provider();
    let sim = start(SimConfig {
        api_key: Some(API_KEY.into()),
        api_secret: Some(API_SECRET.into()),
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let client = client_with(config(&sim), api_key(API_KEY, API_SECRET));
    let page = client.list_page(&ListFilter::default(), 1, 100).await.unwrap();
    assert_eq!(page.instances, sim.instances());
    let running = first_with(&sim, InstanceStatus::Running);
    assert_eq!(client.get_instance(&running.id).await.unwrap(), running);
    assert_eq!(client.act(&running.id, PowerAction::Stop, Repeat::Never).await, Ok(()));
    assert_eq!(sim.audit().len(), 1);

    // Half right is wrong; the Bearer scheme keeps working alongside.
    let wrong = client_with(config(&sim), api_key(API_KEY, "not-the-secret"));
    assert_eq!(wrong.get_instance(&running.id).await, Err(ApiError::Unauthorized));
    let swapped = client_with(config(&sim), api_key(API_SECRET, API_KEY));
    assert_eq!(swapped.get_instance(&running.id).await, Err(ApiError::Unauthorized));
    assert!(admin(&sim).get_instance(&running.id).await.is_ok());
}

/// Lets the file system's modification time move on, so a rewritten file is seen as changed.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

fn write(dir: &Path, name: &str, value: &str) {
    std::fs::write(dir.join(name), value).expect("write credentials file");
}

#[tokio::test]
async fn credentials_directory_is_reread_when_rotated() {
    install_crypto_provider();
    let sim = start(SimConfig {
        api_key: Some(API_KEY.into()),
        api_secret: Some(API_SECRET.into()),
        ..SimConfig::default()
    })
    .await;
    let id = sim.instances()[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(config(&sim), CredentialSource::dir(dir.path()));

    // Empty directory: refused before any request is sent.
    let err = client.get_instance(&id).await.unwrap_err();
    assert!(matches!(err, ApiError::Credentials(_)), "{err:?}");
    assert_eq!(sim.stats().total, 0);

    write(dir.path(), "token", &format!("{USER}\n"));
    assert_eq!(client.get_instance(&id).await, Err(ApiError::Forbidden));
    tick().await;
    write(dir.path(), "token", &format!("{ADMIN}\n"));
    assert_eq!(client.get_instance(&id).await.unwrap().id, id);

    // Rotation to the key scheme.
    tick().await;
    std::fs::remove_file(dir.path().join("token")).unwrap();
    write(dir.path(), "api-key", API_KEY);
    write(dir.path(), "api-secret", &format!("{API_SECRET}\n"));
    assert_eq!(client.get_instance(&id).await.unwrap().id, id);
    tick().await;
    write(dir.path(), "api-secret", "revoked-secret");
    assert_eq!(client.get_instance(&id).await, Err(ApiError::Unauthorized));
    tick().await;
    write(dir.path(), "api-secret", API_SECRET);
    assert_eq!(client.get_instance(&id).await.unwrap().id, id);

    // Half a key pair: refused client-side again.
    tick().await;
    std::fs::remove_file(dir.path().join("api-secret")).unwrap();
    let before = sim.stats().total;
    let err = client.get_instance(&id).await.unwrap_err();
    assert!(matches!(err, ApiError::Credentials(_)), "{err:?}");
    assert_eq!(sim.stats().total, before);
    assert_eq!(sim.stats().responses_with(200), 3);
}

#[tokio::test]
async fn credentials_directory_follows_a_mounted_secret_swap() {
    install_crypto_provider();
    let sim = start(SimConfig {
        api_key: Some(API_KEY.into()),
        api_secret: Some(API_SECRET.into()),
        ..SimConfig::default()
    })
    .await;
    let id = sim.instances()[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The kubelet's layout: files are symlinks into `..data`, itself a symlink to a timestamped directory.
    std::fs::create_dir(root.join("..v1")).unwrap();
    write(&root.join("..v1"), "token", ADMIN);
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    for name in ["token", "api-key", "api-secret"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
    }
    let client = client_with(config(&sim), CredentialSource::dir(root));
    assert_eq!(client.get_instance(&id).await.unwrap().id, id);

    // An atomic swap of `..data` to a version holding a key pair instead.
    tick().await;
    std::fs::create_dir(root.join("..v2")).unwrap();
    write(&root.join("..v2"), "api-key", API_KEY);
    write(&root.join("..v2"), "api-secret", API_SECRET);
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    assert_eq!(client.get_instance(&id).await.unwrap().id, id);

    // And to a version with a user token, which must be noticed too.
    tick().await;
    std::fs::create_dir(root.join("..v3")).unwrap();
    write(&root.join("..v3"), "token", USER);
    std::os::unix::fs::symlink("..v3", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v2")).unwrap();
    assert_eq!(client.get_instance(&id).await, Err(ApiError::Forbidden));
}

#[tokio::test]
async fn list_all_walks_every_page_with_filters() {
    install_crypto_provider();
    let sim = start(SimConfig {
        instances: 1000,
        seed: 42,
        ..SimConfig::default()
    })
    .await;
    let client = admin(&sim);
    let all = sim.instances();
    assert_eq!(all.len(), 1000);

    let everything: Vec<Instance> = client.list_all(ListFilter::default()).try_collect().await.unwrap();
    assert_eq!(everything, all);
    assert_eq!(sim.stats().requests.list, 10, "ten pages of 100");

    let sample = &all[123];
    let filters = [
        ListFilter {
            status: Some("running".into()),
            zone: Some(sample.zone.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            customer_id: Some(sample.customer_id.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            status: Some("stopped".into()),
            ..ListFilter::default()
        },
        ListFilter {
            user_id: Some(sample.user_id.clone()),
            template_id: Some(sample.template_id.clone()),
            ..ListFilter::default()
        },
        ListFilter {
            status: Some("deleting".into()),
            ..ListFilter::default()
        },
    ];
    for f in filters {
        sim.clear_audit();
        let want: Vec<Instance> = all.iter().filter(|i| keep(&f, i)).cloned().collect();
        let got: Vec<Instance> = client.list_all(f.clone()).try_collect().await.unwrap();
        assert_eq!(ids(&got), ids(&want), "{f:?}");
        assert_eq!(got, want, "{f:?}");
        let pages = (want.len() as u64).div_ceil(100).max(1);
        assert_eq!(sim.stats().requests.list, pages, "{f:?}: one request per page");
    }
}

/// What an observer was told: endpoint and status of every try.
type Seen = Arc<Mutex<Vec<(Endpoint, Option<u16>)>>>;

fn counting_observer() -> (RequestObserver, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let observer: RequestObserver = Arc::new(move |endpoint, status, _latency| {
        sink.lock().unwrap().push((endpoint, status));
    });
    (observer, seen)
}

#[tokio::test]
async fn get_retries_503_honouring_retry_after_then_gives_up() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = sim.instances()[0].id.clone();
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        retry_after_seconds: Some(1),
        ..Faults::default()
    });
    let (observer, seen) = counting_observer();
    let client = admin(&sim).with_observer(observer);
    let started = Instant::now();
    let err = client.get_instance(&id).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(
        err,
        ApiError::Server {
            status: 503,
            retry_after: Some(Duration::from_secs(1))
        }
    );
    assert!(err.is_transient() && err.may_have_reached_server());
    let stats = sim.stats();
    assert!(stats.requests.get > 1, "retried: {stats:?}");
    assert_eq!(stats.requests.get, 3, "max_attempts in all");
    assert_eq!(stats.responses_with(503), 3);
    assert!(
        elapsed >= Duration::from_millis(1900),
        "two waits of at least Retry-After: {elapsed:?}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Endpoint::Get, Some(503)); 3],
        "the observer sees every try"
    );
}

#[tokio::test]
async fn get_succeeds_once_the_fault_clears_between_tries() {
    install_crypto_provider();
    let sim = Arc::new(start(SimConfig::default()).await);
    let want = sim.instances()[3].clone();
    sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        retry_after_seconds: Some(1),
        ..Faults::default()
    });
    let client = admin(&sim);
    let healer = {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sim.set_faults(Faults::default());
        })
    };
    let started = Instant::now();
    let got = client.get_instance(&want.id).await;
    healer.await.unwrap();
    assert_eq!(got, Ok(want));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After"
    );
    let stats = sim.stats();
    assert_eq!(stats.requests.get, 2);
    assert_eq!((stats.responses_with(503), stats.responses_with(200)), (1, 1));
}

#[tokio::test]
async fn never_posts_are_not_repeated_after_any_5xx_but_after_429() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = first_with(&sim, InstanceStatus::Running).id;
    let client = admin(&sim);
    let fault = |status| Faults {
        error_rate: 1.0,
        error_status: status,
        ..Faults::default()
    };

    // 503: a gateway may answer it after the action ran, so a Never POST is sent once.
    sim.set_faults(fault(503));
    let err = client.act(&id, PowerAction::Stop, Repeat::Never).await.unwrap_err();
    assert_eq!(
        err,
        ApiError::Server {
            status: 503,
            retry_after: None
        }
    );
    assert!(err.may_have_reached_server());
    assert_eq!(sim.stats().requests.stop, 1, "not repeated");

    // 500: it may have been carried out; a Never POST is sent once.
    sim.clear_audit();
    sim.set_faults(fault(500));
    let err = client.act(&id, PowerAction::Stop, Repeat::Never).await.unwrap_err();
    assert!(matches!(err, ApiError::Server { status: 500, .. }), "{err:?}");
    assert!(err.may_have_reached_server());
    assert_eq!(sim.stats().requests.stop, 1, "not repeated");
    assert_eq!(sim.stats().total, 1);

    // Unless the caller says repeating is harmless; and GETs are always safe to repeat.
    sim.clear_audit();
    let err = client
        .act(&id, PowerAction::Stop, Repeat::SafeToRepeat)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Server { status: 500, .. }));
    assert_eq!(sim.stats().requests.stop, 3);
    assert!(matches!(
        client.get_instance(&id).await,
        Err(ApiError::Server { status: 500, .. })
    ));
    assert_eq!(sim.stats().requests.get, 3);
    assert!(sim.audit().is_empty(), "injected errors process nothing");

    // 429 is a refusal too: retried for a Never POST, then reported as rate limiting.
    sim.clear_audit();
    sim.set_faults(fault(429));
    let err = client.act(&id, PowerAction::Stop, Repeat::Never).await.unwrap_err();
    assert_eq!(err, ApiError::RateLimited { retry_after: None });
    assert_eq!(sim.stats().requests.stop, 3);

    sim.set_faults(Faults::default());
    assert_eq!(client.act(&id, PowerAction::Stop, Repeat::Never).await, Ok(()));
}

#[tokio::test]
async fn slow_answers_time_out_and_posts_are_not_repeated() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = first_with(&sim, InstanceStatus::Running).id;
    sim.set_faults(Faults {
        latency_ms: 3000,
        ..Faults::default()
    });
    let client = client_with(
        ClientConfig {
            timeout: Duration::from_millis(500),
            max_attempts: 2,
            ..config(&sim)
        },
        bearer(ADMIN),
    );
    let started = Instant::now();
    let err = client.get_instance(&id).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, ApiError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient() && err.may_have_reached_server());
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "two tries of 500 ms: {elapsed:?}"
    );
    assert_eq!(sim.stats().requests.get, 2, "a GET timing out is retried");

    let err = client.act(&id, PowerAction::Restart, Repeat::Never).await.unwrap_err();
    assert!(matches!(err, ApiError::Timeout { sent: true }), "{err:?}");
    assert!(err.may_have_reached_server());
    assert_eq!(
        sim.stats().requests.restart,
        1,
        "a POST that may have been carried out is not repeated"
    );
}

#[tokio::test]
async fn dropped_connection_after_accept_is_not_retried() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = first_with(&sim, InstanceStatus::Running).id;
    let client = admin(&sim);
    sim.set_faults(Faults {
        drop_after_accept_rate: 1.0,
        ..Faults::default()
    });
    let err = client.act(&id, PowerAction::Restart, Repeat::Never).await.unwrap_err();
    assert!(err.may_have_reached_server(), "{err:?}");
    assert!(
        matches!(
            err,
            ApiError::Transport { sent: true, .. } | ApiError::Timeout { sent: true }
        ),
        "{err:?}"
    );
    let audit = sim.audit();
    assert_eq!(audit.len(), 1, "exactly one restart: {audit:?}");
    assert_eq!(
        (audit[0].instance_id.as_str(), audit[0].action),
        (id.as_str(), PowerAction::Restart)
    );
    let stats = sim.stats();
    assert_eq!((stats.requests.restart, stats.dropped), (1, 1));

    // The client is still usable afterwards.
    sim.set_faults(Faults::default());
    assert_eq!(client.get_instance(&id).await.unwrap().id, id);
}

#[tokio::test]
async fn rate_limit_paces_requests() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = sim.instances()[0].id.clone();
    let client = client_with(
        ClientConfig {
            rate_per_s: 10.0,
            burst: 1,
            ..config(&sim)
        },
        bearer(ADMIN),
    );
    let started = Instant::now();
    let results = futures::future::join_all((0..11).map(|_| client.get_instance(&id))).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sim.stats().requests.get, 11);
    assert!(
        elapsed >= Duration::from_millis(900),
        "11 requests at 10/s with a burst of 1 take about 1 s: {elapsed:?}"
    );
}

#[tokio::test]
async fn max_in_flight_serializes_requests() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = sim.instances()[0].id.clone();
    sim.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let timed = |max_in_flight| {
        let client = client_with(
            ClientConfig {
                max_in_flight,
                ..config(&sim)
            },
            bearer(ADMIN),
        );
        let id = id.clone();
        async move {
            let started = Instant::now();
            let results = futures::future::join_all((0..4).map(|_| client.get_instance(&id))).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            started.elapsed()
        }
    };
    let one_at_a_time = timed(1).await;
    assert!(
        one_at_a_time >= Duration::from_millis(1150),
        "4 x 300 ms one after another: {one_at_a_time:?}"
    );
    let side_by_side = timed(4).await;
    assert!(
        side_by_side < Duration::from_millis(1000),
        "4 x 300 ms side by side: {side_by_side:?}"
    );
    assert_eq!(sim.stats().requests.get, 8);
}

#[tokio::test]
async fn unsafe_instance_ids_are_refused_without_a_request() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let client = admin(&sim);
    let bad = [
        "a/b",
        "..",
        ".",
        "../etc",
        "x/../y",
        "inst-1/stop",
        "",
        "a?b",
        "a#b",
        "a b",
        "a\\b",
        "a\nb",
    ];
    for id in bad {
        let err = client.get_instance(id).await.unwrap_err();
        assert!(matches!(err, ApiError::InvalidInstanceId(_)), "{id:?}: {err:?}");
        assert!(!err.may_have_reached_server());
        for action in PowerAction::ALL {
            let err = client.act(id, action, Repeat::SafeToRepeat).await.unwrap_err();
            assert!(matches!(err, ApiError::InvalidInstanceId(_)), "{id:?}: {err:?}");
        }
    }
    let long = "x".repeat(129);
    assert!(matches!(
        client.get_instance(&long).await,
        Err(ApiError::InvalidInstanceId(_))
    ));
    assert_eq!(sim.stats().total, 0, "nothing was sent");
    assert!(sim.audit().is_empty());
}

#[tokio::test]
async fn ids_with_reserved_characters_reach_the_right_instance() {
    install_crypto_provider();
    let sim = start(SimConfig {
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let client = admin(&sim);
    // "a%41" sent unencoded would be decoded by the server as "aA": both exist, with different names.
    let cases = [
        ("aA", "decoy"),
        ("a%41", "percent"),
        ("100%", "bare-percent"),
        ("inst:7g2x", "colon"),
        ("urn:x:y", "colons"),
        ("x+y", "plus"),
        ("a..b", "inner-dots"),
        ("ünï-1", "unicode"),
    ];
    for (id, name) in cases {
        sim.upsert_instance(instance(id, name, InstanceStatus::Running));
    }
    for (id, name) in cases {
        let got = client.get_instance(id).await.unwrap_or_else(|e| panic!("{id:?}: {e}"));
        assert_eq!((got.id.as_str(), got.name.as_str()), (id, name));
    }
    for id in ["a%41", "inst:7g2x", "100%"] {
        assert_eq!(client.act(id, PowerAction::Stop, Repeat::Never).await, Ok(()), "{id:?}");
    }
    let stopped: Vec<String> = sim.audit().into_iter().map(|e| e.instance_id).collect();
    assert_eq!(stopped, ["a%41", "inst:7g2x", "100%"]);
    assert_eq!(
        sim.instance("aA").unwrap().status,
        InstanceStatus::Running,
        "the decoy was not touched"
    );
    assert_eq!(sim.stats().responses_with(404), 0);
}

#[tokio::test]
async fn secrets_never_appear_in_debug_or_display() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let id = sim.instances()[0].id.clone();
    let assert_clean = |what: &str, shown: String| {
        assert!(
            !shown.contains(SENTINEL) && !shown.contains("9f3b2c71"),
            "{what} shows the secret: {shown}"
        );
    };

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", SENTINEL);
    let clients = [
        ("bearer", client_with(config(&sim), bearer(SENTINEL))),
        ("api-key", client_with(config(&sim), api_key(SENTINEL, SENTINEL))),
        ("dir", client_with(config(&sim), CredentialSource::dir(dir.path()))),
    ];
    for (what, client) in &clients {
        assert_clean(what, format!("{client:?} {client:#?}"));
        let errors = [
            client.list_page(&ListFilter::default(), 1, 20).await.unwrap_err(),
            client.get_instance(&id).await.unwrap_err(),
            client.act(&id, PowerAction::Stop, Repeat::Never).await.unwrap_err(),
        ];
        for err in errors {
            assert_eq!(err, ApiError::Unauthorized, "{what}");
            assert_clean(what, format!("{err:?} {err:#?} {err} {}", err.reason()));
        }
    }
    assert_eq!(sim.stats().responses_with(401), 9);

    // A credential that cannot be a header value is refused without echoing it.
    let broken = tempfile::tempdir().unwrap();
    write(broken.path(), "token", &format!("{SENTINEL}\u{7f}x"));
    let client = client_with(config(&sim), CredentialSource::dir(broken.path()));
    let err = client.get_instance(&id).await.unwrap_err();
    assert!(matches!(err, ApiError::Credentials(_)), "{err:?}");
    assert_clean("header error", format!("{err:?} {err}"));

    // Transport errors (the server is gone) carry the URL at most, never the credentials.
    let base = config(&sim);
    sim.shutdown().await;
    let client = client_with(base, bearer(SENTINEL));
    let err = client.get_instance(&id).await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { sent: false, .. }), "{err:?}");
    assert!(!err.may_have_reached_server());
    assert_clean("transport error", format!("{err:?} {err}"));
}

#[tokio::test]
async fn unknown_statuses_are_kept_as_other() {
    install_crypto_provider();
    let sim = start(SimConfig::default()).await;
    let client = admin(&sim);
    let odd = instance("inst-hibernate", "sleepy", InstanceStatus::Other("hibernating".into()));
    sim.upsert_instance(odd.clone());
    let got = client.get_instance(&odd.id).await.unwrap();
    assert_eq!(got.status, InstanceStatus::Other("hibernating".into()));
    assert!(got.status.is_transitional());
    assert_eq!(got, odd);

    let other = sim.instances()[0].id.clone();
    assert!(sim.set_status(&other, InstanceStatus::Other("migrating".into())));
    assert_eq!(
        client.get_instance(&other).await.unwrap().status,
        InstanceStatus::Other("migrating".into())
    );
    let listed: Vec<Instance> = client.list_all(ListFilter::default()).try_collect().await.unwrap();
    let statuses: Vec<&InstanceStatus> = listed
        .iter()
        .filter(|i| i.id == odd.id || i.id == other)
        .map(|i| &i.status)
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().all(|s| matches!(s, InstanceStatus::Other(_))));
    // The server refuses actions on a status it cannot transition from.
    assert_eq!(
        client.act(&odd.id, PowerAction::Stop, Repeat::Never).await,
        Err(ApiError::Conflict)
    );
}

/// A server that answers every request with `307 Temporary Redirect` to the same path on `target`, another
/// origin (a different port). Returns its base URL and how many requests it got.
async fn start_redirector(target: String) -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let location = format!("{target}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}{}", sim::BASE_PATH), hits)
}

#[tokio::test]
async fn redirects_are_not_followed() {
    install_crypto_provider();
    let sim = start(SimConfig {
        api_key: Some(API_KEY.into()),
        api_secret: Some(API_SECRET.into()),
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let id = first_with(&sim, InstanceStatus::Running).id;
    let (base_url, hits) = start_redirector(format!("http://{}", sim.addr())).await;
    for credentials in [api_key(API_KEY, API_SECRET), bearer(ADMIN)] {
        let client = client_with(
            ClientConfig {
                base_url: base_url.clone(),
                ..config(&sim)
            },
            credentials,
        );
        let err = client.get_instance(&id).await.unwrap_err();
        assert_eq!(err, ApiError::UnexpectedStatus(307));
        let err = client.act(&id, PowerAction::Restart, Repeat::Never).await.unwrap_err();
        assert_eq!(err, ApiError::UnexpectedStatus(307));
        // Whatever stands behind a redirect may have run it: never read as a refusal (a one-shot is not resent).
        assert!(err.may_have_reached_server());
    }
    assert_eq!(hits.load(Ordering::Relaxed), 4, "one try each, no retry");
    // Neither the api-key/api-secret headers nor the restart were passed on to another origin.
    assert_eq!(sim.stats().total, 0, "{:?}", sim.stats());
    assert!(sim.audit().is_empty(), "{:?}", sim.audit());
}

/// A replica whose lease runs out while it waits for the rate limiter sends nothing: the gate is asked after
/// the wait, right before the request leaves.
#[tokio::test]
async fn a_gate_closed_during_the_rate_limit_wait_sends_nothing() {
    install_crypto_provider();
    let sim = start(SimConfig {
        transition: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let running: Vec<String> = sim
        .instances()
        .into_iter()
        .filter(|i| i.status == InstanceStatus::Running)
        .take(2)
        .map(|i| i.id)
        .collect();
    let client = client_with(
        ClientConfig {
            rate_per_s: 1.0,
            burst: 1,
            ..config(&sim)
        },
        bearer(ADMIN),
    );
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = {
        let open = open.clone();
        move || open.load(Ordering::SeqCst)
    };
    // The first takes the only token; the second waits about a second for the next one.
    client
        .act_gated(&running[0], PowerAction::Restart, Repeat::Never, &gate)
        .await
        .expect("first restart accepted");
    let closer = {
        let open = open.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            open.store(false, Ordering::SeqCst);
        })
    };
    let started = Instant::now();
    let err = client
        .act_gated(&running[1], PowerAction::Restart, Repeat::Never, &gate)
        .await
        .unwrap_err();
    closer.await.unwrap();
    assert_eq!(err, ApiError::NotSent);
    assert!(!err.may_have_reached_server());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the limiter first"
    );
    let acted: Vec<String> = sim.audit().into_iter().map(|a| a.instance_id).collect();
    assert_eq!(
        acted,
        [running[0].clone()],
        "only the first restart reached the admin API"
    );
}
