//! Running it in production: the real `compute-operator` binary as separate processes against a real control
//! plane and the simulator. Leader election (one leader, takeover after kill -9 and after SIGTERM, a lost lease
//! ends the process), metrics and health endpoints, and settings validated at start.
//!
//! Fails (never skips) when the control plane cannot start.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compute_operator::api::types::{InstanceStatus, PowerAction};
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::devenv::controlplane::free_port;
use compute_operator::devenv::process::Guarded;
use compute_operator::sim::{SimConfig, SimServer};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const LEASE_DURATION: Duration = Duration::from_secs(4);
/// Followers retry every min(d/3, 2s).
const RETRY: Duration = Duration::from_millis(1334);

/// One operator process with its metrics address and log file.
struct Replica {
    name: &'static str,
    process: Guarded,
    base: String,
    log: PathBuf,
}

impl Replica {
    fn spawn(name: &'static str, ns: &str, sim: &SimServer) -> Self {
        let port = free_port().expect("free port");
        let log = std::env::temp_dir().join(format!("compute-operator-{ns}-{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_compute-operator"));
        cmd.args([
            "run",
            // Access policies are covered by tests/instance_e2e/guardrails.rs; this file is about leadership.
            "--policy-mode",
            "off",
            "--leader-election",
            "--lease-namespace",
            ns,
            "--lease-name",
            "compute-operator",
        ])
        .args([
            "--namespaces",
            ns,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--api-url",
            sim.base_url(),
        ])
        .args(["--lease-duration", &format!("{}s", LEASE_DURATION.as_secs())])
        .args(["--restart-settle", "2s", "--log-level", "info"])
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("COMPUTE_API_TOKEN", "dev-admin-token")
        .env("POD_NAME", name)
        .env_remove("POD_NAMESPACE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
        let process = Guarded::spawn(name, cmd).expect("spawn compute-operator");
        Self {
            name,
            process,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.process.pid() as i32)
    }

    fn log_tail(&self) -> String {
        let text = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = http().get(format!("{}{path}", self.base)).send().await.ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.ok()?))
    }

    /// The sum of every series of `name` in /metrics; None when not reachable.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (code, text) = self.get("/metrics").await?;
        (code == 200).then(|| metric(&text, name))
    }

    async fn leader(&self) -> Option<f64> {
        self.metric("compute_operator_leader").await
    }
}

/// Log files carry terminal colours; drop them for readable failure messages.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn http() -> &'static reqwest::Client {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    HTTP.get_or_init(|| {
        compute_operator::api::client::install_crypto_provider();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client")
    })
}

/// Sums the samples of one metric (every label set) in Prometheus/OpenMetrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else {
                rest
            };
            let value = value.split_whitespace().next()?;
            (rest.starts_with('{') || rest.starts_with(' '))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Waits until exactly one of `replicas` reports `compute_operator_leader 1` and the others 0.
async fn wait_one_leader(replicas: &[&Replica], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let mut values = Vec::new();
        for r in replicas {
            values.push(r.leader().await);
        }
        let leaders: Vec<usize> = (0..values.len()).filter(|&i| values[i] == Some(1.0)).collect();
        if leaders.len() == 1 && values.iter().all(|v| v.is_some()) {
            return leaders[0];
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas.iter().map(|r| r.log_tail()).collect();
            panic!("no single leader within {limit:?}: {values:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time until `r` reports itself leader.
async fn time_to_lead(r: &Replica, since: Instant, limit: Duration) -> Duration {
    loop {
        if r.leader().await == Some(1.0) {
            return since.elapsed();
        }
        if since.elapsed() > limit {
            panic!("{} did not take over within {limit:?}\n{}", r.name, r.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_status(r: &Replica, path: &str, want: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = r.get(path).await.map(|(c, _)| c);
        if got == Some(want) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{} {path}: {got:?}, wanted {want}\n{}", r.name, r.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn restarts(sim: &SimServer, instance: &str) -> usize {
    audit_for(sim, instance)
        .iter()
        .filter(|a| *a == PowerAction::Restart.as_str())
        .count()
}

/// Two running instances of the simulator's fleet.
fn running_instances(sim: &SimServer) -> (String, String) {
    let ids: Vec<String> = sim.instances().into_iter().map(|i| i.id).take(2).collect();
    for id in &ids {
        assert!(sim.set_status(id, InstanceStatus::Running));
    }
    (ids[0].clone(), ids[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_acts_and_a_follower_takes_over_after_kill_9() {
    let client = client().await;
    let ns = namespace(&client, "ops-kill").await;
    let sim = simulator(SimConfig {
        transition: Duration::from_millis(1500),
        ..SimConfig::default()
    })
    .await;
    let (first, second) = running_instances(&sim);
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let mut replicas = [Replica::spawn("a", &ns, &sim), Replica::spawn("b", &ns, &sim)];

    let li = wait_one_leader(&[&replicas[0], &replicas[1]], Duration::from_secs(20)).await;
    let fi = 1 - li;
    for r in &replicas {
        wait_status(r, "/healthz", 200, Duration::from_secs(5)).await;
        wait_status(r, "/readyz", 200, Duration::from_secs(20)).await;
    }

    // The leader acts, exactly once.
    let pp = PostParams::default();
    api.create(&pp, &cia("restart-1", &first, DesiredState::Restarted, Some("r1")))
        .await
        .expect("create restart-1");
    wait_ready(&api, "restart-1").await;
    assert_eq!(restarts(&sim, &first), 1, "audit: {:?}", audit_for(&sim, &first));
    let (leader, follower) = (&replicas[li], &replicas[fi]);
    for name in [
        "compute_operator_reconciles_total",
        "compute_operator_actions_total",
        "compute_operator_api_requests_total",
    ] {
        let v = leader.metric(name).await.expect("leader metrics");
        assert!(v > 0.0, "{name} = {v} on the leader");
    }
    assert_eq!(
        follower.metric("compute_operator_reconciles_total").await,
        Some(0.0),
        "a follower never reconciles"
    );
    assert_eq!(follower.metric("compute_operator_actions_total").await, Some(0.0));
    wait_status(follower, "/readyz", 200, Duration::from_secs(1)).await;

    // kill -9 the leader in the middle of a restart.
    api.create(&pp, &cia("restart-2", &second, DesiredState::Restarted, Some("r2")))
        .await
        .expect("create restart-2");
    let deadline = Instant::now() + Duration::from_secs(15);
    while sim.busy_with(&second).is_none() {
        assert!(
            Instant::now() < deadline,
            "restart-2 never started\n{}",
            replicas[li].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = Instant::now();
    replicas[li].process.kill_now();
    let takeover = time_to_lead(&replicas[fi], killed, Duration::from_secs(15)).await;
    eprintln!("takeover after kill -9: {takeover:?}");
    // Expiry is judged on the follower's own clock (client-go's rule): it must see the same lease record,
    // first noticed up to RETRY after the last renew, unchanged for d, checked every RETRY.
    assert!(
        takeover <= LEASE_DURATION + RETRY * 2 + Duration::from_secs(1),
        "takeover after kill -9 took {takeover:?}"
    );

    let o = wait_for(
        &api,
        "restart-2",
        Duration::from_secs(30),
        "Ready or Stalled/OutcomeUnknown",
        |o| condition(o, "Ready").is_some() || condition(o, "Stalled").is_some_and(|c| c.reason == "OutcomeUnknown"),
    )
    .await;
    let outcome = ["Ready", "Stalled"]
        .iter()
        .find_map(|t| condition(&o, t).map(|c| format!("{t}/{}", c.reason)));
    eprintln!("restart-2 after the leader change: {outcome:?}");
    // Long enough for a wrongful resend to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        restarts(&sim, &second),
        1,
        "requestId r2 ran more than once: {:?}; status {}",
        audit_for(&sim, &second),
        serde_json::to_string(&o.status).unwrap_or_default()
    );
    assert_eq!(
        restarts(&sim, &first),
        1,
        "requestId r1 must not run again after the leader change"
    );
    let new_leader = &replicas[fi];
    assert!(
        new_leader
            .metric("compute_operator_reconciles_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    wait_status(new_leader, "/readyz", 200, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_and_a_stolen_lease_ends_the_leader() {
    let client = client().await;
    let ns = namespace(&client, "ops-term").await;
    let sim = simulator(SimConfig::default()).await;
    let mut replicas = [Replica::spawn("a", &ns, &sim), Replica::spawn("b", &ns, &sim)];
    let li = wait_one_leader(&[&replicas[0], &replicas[1]], Duration::from_secs(20)).await;
    let fi = 1 - li;
    for r in &replicas {
        wait_status(r, "/readyz", 200, Duration::from_secs(20)).await;
    }

    // SIGTERM: the leader stops, releases the lease, and the follower takes over at its next retry.
    let sent = Instant::now();
    kill(replicas[li].pid(), Signal::SIGTERM).expect("SIGTERM");
    let takeover = time_to_lead(&replicas[fi], sent, Duration::from_secs(10)).await;
    eprintln!("takeover after SIGTERM: {takeover:?}");
    assert!(
        takeover < Duration::from_secs(3),
        "takeover after SIGTERM took {takeover:?}\n{}",
        replicas[li].log_tail()
    );
    let status = loop {
        if let Some(s) = replicas[li].process.exited() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the old leader did not exit within 10s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "graceful stop exits 0, got {status}\n{}",
        replicas[li].log_tail()
    );
    assert!(
        std::fs::read_to_string(&replicas[li].log)
            .unwrap_or_default()
            .contains("released the lease")
    );

    // Someone else takes the lease: the leader stops acting and exits with an error, to restart as a follower.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let now = k8s_openapi::jiff::Timestamp::now();
    let steal = serde_json::json!({"spec": {
        "holderIdentity": "intruder",
        "leaseDurationSeconds": 60,
        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
    }});
    leases
        .patch("compute-operator", &PatchParams::default(), &Patch::Merge(&steal))
        .await
        .expect("steal the lease");
    let stolen = Instant::now();
    let status = loop {
        if let Some(s) = replicas[fi].process.exited() {
            break s;
        }
        assert!(
            stolen.elapsed() < Duration::from_secs(10),
            "the leader kept running after losing its lease\n{}",
            replicas[fi].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("exit after the lease was taken: {:?}", stolen.elapsed());
    assert!(!status.success(), "losing the lease is an error exit");
    let log = std::fs::read_to_string(&replicas[fi].log).unwrap_or_default();
    assert!(log.contains("lost leadership"), "{}", replicas[fi].log_tail());
}

#[test]
fn invalid_settings_fail_at_start_naming_the_setting() {
    let kubeconfig = &control_plane().kubeconfig;
    for (args, setting) in [
        (["--concurrency", "0"], "--concurrency"),
        (["--api-url", "http://example.com"], "--api-url"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_compute-operator"))
            .arg("run")
            .args(args)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", kubeconfig)
            .env("COMPUTE_API_TOKEN", "dev-admin-token")
            .env_remove("COMPUTE_API_URL")
            .env_remove("COMPUTE_OPERATOR_CONCURRENCY")
            .output()
            .expect("run compute-operator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            stderr.contains(setting),
            "{args:?}: stderr does not name {setting}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: not one line: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resuming_after_a_takeover_sends_nothing() {
    let client = client().await;
    let ns = namespace(&client, "ops-pause").await;
    let sim = simulator(SimConfig {
        instances: 24,
        transition: Duration::from_millis(2500),
        ..SimConfig::default()
    })
    .await;
    let ids: Vec<String> = sim.instances().into_iter().map(|i| i.id).collect();
    for id in &ids {
        assert!(sim.set_status(id, InstanceStatus::Running));
    }
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let replicas = [Replica::spawn("a", &ns, &sim), Replica::spawn("b", &ns, &sim)];
    let li = wait_one_leader(&[&replicas[0], &replicas[1]], Duration::from_secs(20)).await;
    let (leader, follower) = (&replicas[li], &replicas[1 - li]);
    wait_status(leader, "/readyz", 200, Duration::from_secs(20)).await;

    // Many restarts in flight, and the leader frozen in the middle of them (SIGSTOP: a GC pause, a frozen node).
    let pp = PostParams::default();
    for (n, id) in ids.iter().enumerate() {
        api.create(
            &pp,
            &cia(&format!("restart-{n}"), id, DesiredState::Restarted, Some("r1")),
        )
        .await
        .expect("create");
        if n == ids.len() / 2 {
            while sim.audit().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            kill(leader.pid(), Signal::SIGSTOP).expect("SIGSTOP");
        }
    }
    let paused = Instant::now();
    let takeover = time_to_lead(follower, paused, Duration::from_secs(20)).await;
    eprintln!("takeover while the leader was paused: {takeover:?}");
    // Let the successor work for a while, then wake the old leader up: it must notice and send nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill(leader.pid(), Signal::SIGCONT).expect("SIGCONT");
    for n in 0..ids.len() {
        wait_for(
            &api,
            &format!("restart-{n}"),
            Duration::from_secs(60),
            "Ready or Stalled",
            |o| condition(o, "Ready").is_some() || condition(o, "Stalled").is_some(),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let duplicates: Vec<(String, usize)> = ids
        .iter()
        .map(|id| (id.clone(), restarts(&sim, id)))
        .filter(|(_, n)| *n > 1)
        .collect();
    let sent: usize = ids.iter().map(|id| restarts(&sim, id)).sum();
    eprintln!("paused leader: {sent} restarts sent for {} objects", ids.len());
    assert!(
        duplicates.is_empty(),
        "restarts ran twice: {duplicates:?}\n{}\n{}",
        leader.log_tail(),
        follower.log_tail()
    );
}
