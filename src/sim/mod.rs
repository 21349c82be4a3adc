//! A faithful simulator of the compute admin API (`spec/compute-admin-api.txt`), for integration tests,
//! benchmarks and `compute-operator sim` / `dev`.
//!
//! It serves the six admin endpoints under [`BASE_PATH`] with the spec's paths, query parameters, JSON
//! shapes and status codes, both auth schemes (Bearer token, `api-key` + `api-secret`), a seeded or
//! file-loaded fleet whose power actions run through asynchronous transitions of configurable length
//! (optionally invisible for restart/reset), and injectable faults: error rate, latency, connections dropped
//! after an action was accepted, transitions that never finish. Control endpoints under `/_sim/` (no auth,
//! no faults) expose the audit log, counters, faults, and let tests set statuses or instances.
//!
//! Module map: [`fleet`] state machine, generation, list/pagination (pure); [`faults`] fault settings;
//! [`audit`] audit log and counters; `http` routes, auth and the accept loop.

pub mod audit;
pub mod faults;
pub mod fleet;
mod http;

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinHandle;

use crate::api::types::{Instance, InstanceStatus, PowerAction};

use audit::Recorder;
pub use audit::{AuditEntry, RequestCounts, SimStats};
use faults::Dice;
pub use faults::Faults;
use fleet::{ActionError, Fleet, TransitionOpts};

/// Where the admin API lives on the simulator, as on the real service.
pub const BASE_PATH: &str = "/api/compute/v1";

/// Command-line flags of `compute-operator sim`; each also reads `COMPUTE_SIM_<NAME>` from the environment.
#[derive(Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, env = "COMPUTE_SIM_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Bearer token that holds the compute_admin role.
    #[arg(
        long,
        env = "COMPUTE_SIM_ADMIN_TOKEN",
        default_value = "dev-admin-token",
        hide_env_values = true
    )]
    pub admin_token: String,
    /// Bearer token of a valid user without the compute_admin role (answered 403).
    #[arg(
        long,
        env = "COMPUTE_SIM_USER_TOKEN",
        default_value = "dev-user-token",
        hide_env_values = true
    )]
    pub user_token: String,
    /// API key accepted together with --api-secret (admin role).
    #[arg(long, env = "COMPUTE_SIM_API_KEY", hide_env_values = true, requires = "api_secret")]
    pub api_key: Option<String>,
    /// API secret accepted together with --api-key.
    #[arg(long, env = "COMPUTE_SIM_API_SECRET", hide_env_values = true, requires = "api_key")]
    pub api_secret: Option<String>,
    /// Number of generated instances (ignored with --fleet-file).
    #[arg(long, env = "COMPUTE_SIM_INSTANCES", default_value_t = 50)]
    pub instances: usize,
    /// Seed of the generated fleet and of the fault dice.
    #[arg(long, env = "COMPUTE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// JSON file with the fleet: an array of instances or {"instances": [...]}.
    #[arg(long, env = "COMPUTE_SIM_FLEET_FILE")]
    pub fleet_file: Option<PathBuf>,
    /// How long stop/start/restart/reset take, in milliseconds.
    #[arg(long, env = "COMPUTE_SIM_TRANSITION_MS", default_value_t = 2000)]
    pub transition_ms: u64,
    /// Restart/reset keep reporting the previous status (e.g. running) while they run.
    #[arg(long, env = "COMPUTE_SIM_INVISIBLE_TRANSITIONS", value_parser = clap::builder::BoolishValueParser::new())]
    pub invisible_transitions: bool,
    /// Probability (0..1) that an admin request fails with --error-status.
    #[arg(long, env = "COMPUTE_SIM_ERROR_RATE", default_value_t = 0.0, value_parser = faults::parse_rate)]
    pub error_rate: f64,
    /// Status of injected errors (500 or 503; 429 and other 5xx are accepted too).
    #[arg(long, env = "COMPUTE_SIM_ERROR_STATUS", default_value_t = 503, value_parser = faults::parse_error_status)]
    pub error_status: u16,
    /// Retry-After header (seconds) sent with injected errors.
    #[arg(long, env = "COMPUTE_SIM_RETRY_AFTER_SECONDS")]
    pub retry_after_seconds: Option<u64>,
    /// Latency added to every admin request, in milliseconds.
    #[arg(long, env = "COMPUTE_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0..1) that an accepted action's connection is closed without a response.
    #[arg(long, env = "COMPUTE_SIM_DROP_AFTER_ACCEPT_RATE", default_value_t = 0.0, value_parser = faults::parse_rate)]
    pub drop_after_accept_rate: f64,
    /// Accepted actions never leave their transitional status (until faults change).
    #[arg(long, env = "COMPUTE_SIM_NEVER_FINISH", value_parser = clap::builder::BoolishValueParser::new())]
    pub never_finish: bool,
    /// Queued actions: after the 202 nothing is visible for this many milliseconds, then the action runs.
    #[arg(long, env = "COMPUTE_SIM_QUEUE_MS", default_value_t = 0)]
    pub queue_ms: u64,
    /// The first restart/reset on each instance is carried out, then answered 503 with Retry-After.
    #[arg(long, env = "COMPUTE_SIM_GATEWAY_503_FIRST_ONE_SHOT", value_parser = clap::builder::BoolishValueParser::new())]
    pub gateway_503_first_one_shot: bool,
    /// Slow list pages (a large platform): every list page answers this many milliseconds later.
    #[arg(long, env = "COMPUTE_SIM_LIST_PAGE_DELAY_MS", default_value_t = 0)]
    pub list_page_delay_ms: u64,
}

impl fmt::Debug for SimArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SimConfig::from(self.clone()).fmt(f)
    }
}

/// Everything the simulator needs; [`Default`] suits tests (ephemeral port, 200 ms transitions, 20 instances).
#[derive(Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub admin_token: String,
    pub user_token: String,
    /// Accepted `api-key` / `api-secret` pair; both or neither.
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    /// Generated fleet size and seed (also seeds the fault dice).
    pub instances: usize,
    pub seed: u64,
    /// Fleet loaded from this file instead of generated.
    pub fleet_file: Option<PathBuf>,
    /// Fleet given directly (tests); wins over `fleet_file` and generation.
    pub fleet: Option<Vec<Instance>>,
    pub transition: Duration,
    pub invisible_transitions: bool,
    /// Faults in force at start; change them with [`SimServer::set_faults`] or `PUT /_sim/faults`.
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            admin_token: "dev-admin-token".into(),
            user_token: "dev-user-token".into(),
            api_key: None,
            api_secret: None,
            instances: 20,
            seed: 1,
            fleet_file: None,
            fleet: None,
            transition: Duration::from_millis(200),
            invisible_transitions: false,
            faults: Faults::default(),
        }
    }
}

impl fmt::Debug for SimConfig {
    /// Never shows tokens or secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("admin_token", &"<redacted>")
            .field("user_token", &"<redacted>")
            .field("api_key", &redacted(&self.api_key))
            .field("api_secret", &redacted(&self.api_secret))
            .field("instances", &self.instances)
            .field("seed", &self.seed)
            .field("fleet_file", &self.fleet_file)
            .field("fleet", &self.fleet.as_ref().map(Vec::len))
            .field("transition", &self.transition)
            .field("invisible_transitions", &self.invisible_transitions)
            .field("faults", &self.faults)
            .finish()
    }
}

impl From<SimArgs> for SimConfig {
    fn from(a: SimArgs) -> Self {
        Self {
            listen: a.listen,
            admin_token: a.admin_token,
            user_token: a.user_token,
            api_key: a.api_key,
            api_secret: a.api_secret,
            instances: a.instances,
            seed: a.seed,
            fleet_file: a.fleet_file,
            fleet: None,
            transition: Duration::from_millis(a.transition_ms),
            invisible_transitions: a.invisible_transitions,
            faults: Faults {
                error_rate: a.error_rate,
                error_status: a.error_status,
                retry_after_seconds: a.retry_after_seconds,
                latency_ms: a.latency_ms,
                drop_after_accept_rate: a.drop_after_accept_rate,
                never_finish: a.never_finish,
                queue_ms: a.queue_ms,
                gateway503_first_one_shot: a.gateway_503_first_one_shot,
                list_page_delay_ms: a.list_page_delay_ms,
            },
        }
    }
}

/// State shared by the server and its handle. Lock order: fleet, then recorder; faults alone.
pub(crate) struct Shared {
    fleet: Mutex<Fleet>,
    recorder: Mutex<Recorder>,
    faults: Mutex<Faults>,
    dice: Dice,
    auth: http::Auth,
    transition: Duration,
    invisible: bool,
    /// Instances whose first restart/reset answer was already lost (fault `gateway503FirstOneShot`).
    lost_answers: Mutex<std::collections::HashSet<String>>,
    /// Instances whose accepted actions end in `error` (see [`SimServer::fail_actions_on`]).
    failing: Mutex<std::collections::HashSet<String>>,
    /// The query strings of the newest list requests (what a walk asked the list endpoint for).
    list_queries: Mutex<std::collections::VecDeque<String>>,
}

/// List queries remembered.
const LIST_QUERIES_KEPT: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        lock(&self.fleet)
    }

    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        lock(&self.recorder)
    }

    pub(crate) fn record_list_query(&self, query: &str) {
        let mut q = lock(&self.list_queries);
        if q.len() == LIST_QUERIES_KEPT {
            q.pop_front();
        }
        q.push_back(query.to_owned());
    }

    fn faults(&self) -> Faults {
        *lock(&self.faults)
    }

    /// Replace the faults; lifting `never_finish` lets stuck transitions finish one transition from now.
    fn set_faults(&self, faults: Faults) {
        let mut fleet = self.fleet();
        *lock(&self.faults) = faults;
        if !faults.never_finish {
            fleet.release_stuck(Instant::now(), self.transition);
        }
    }

    /// True the first time it is asked for `id`: that one-shot's answer is lost by the gateway.
    fn first_one_shot_answer_lost(&self, id: &str) -> bool {
        lock(&self.lost_answers).insert(id.to_owned())
    }

    /// Accept an action and audit it, or say why not.
    fn apply(&self, id: &str, action: PowerAction) -> Result<(), ActionError> {
        let mut fleet = self.fleet();
        let faults = self.faults();
        let opts = TransitionOpts {
            duration: self.transition,
            invisible: self.invisible,
            never_finish: faults.never_finish,
            queue: Duration::from_millis(faults.queue_ms),
            fails: lock(&self.failing).contains(id),
        };
        fleet.apply(id, action, Instant::now(), opts)?;
        // Kept at millisecond precision, as served by `/_sim/audit`.
        let at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3);
        self.recorder().accepted(id, action, at);
        Ok(())
    }
}

/// A running simulator. Stops when [`SimServer::shutdown`] is called or when dropped.
pub struct SimServer {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// `http://<addr>/api/compute/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, actions on `id` are accepted (202, audited) but the instance ends in `error` instead of
    /// its target: a fault of one instance, where the service itself works (a failing host).
    pub fn fail_actions_on(&self, id: &str) {
        lock(&self.shared.failing).insert(id.to_owned());
    }

    /// Lifts [`Self::fail_actions_on`]: the instance's next actions end in their target again (a host repaired).
    pub fn heal(&self, id: &str) {
        lock(&self.shared.failing).remove(id);
    }

    /// Every accepted action so far, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.shared.recorder().entries().to_vec()
    }

    pub fn stats(&self) -> SimStats {
        self.shared.recorder().stats().clone()
    }

    /// Empty the audit log and zero the counters.
    pub fn clear_audit(&self) {
        self.shared.recorder().clear();
        lock(&self.shared.list_queries).clear();
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Set an instance's status at once, cancelling any transition. False when the id is unknown.
    pub fn set_status(&self, id: &str, status: InstanceStatus) -> bool {
        self.shared.fleet().set_status(id, status)
    }

    /// Create or replace an instance (cancelling any transition it had).
    pub fn upsert_instance(&self, instance: Instance) {
        self.shared.fleet().upsert(instance);
    }

    /// Delete an instance (a user deleting it while the operator works). False when the id is unknown.
    pub fn remove_instance(&self, id: &str) -> bool {
        self.shared.fleet().remove(id)
    }

    /// The query strings of the newest list requests, oldest first (`clear_audit` empties them too).
    pub fn list_queries(&self) -> Vec<String> {
        lock(&self.shared.list_queries).iter().cloned().collect()
    }

    /// The instance as the API would report it now.
    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.shared.fleet().get(id, Instant::now()).cloned()
    }

    /// All instances as the API would report them now, in id order.
    pub fn instances(&self) -> Vec<Instance> {
        self.shared.fleet().all(Instant::now()).cloned().collect()
    }

    /// The action still running on an instance, if any.
    pub fn busy_with(&self, id: &str) -> Option<PowerAction> {
        self.shared.fleet().busy_with(id, Instant::now())
    }

    /// Stop accepting, close every connection, and wait for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn load_fleet(config: &SimConfig) -> anyhow::Result<Fleet> {
    let instances = if let Some(fleet) = &config.fleet {
        fleet.clone()
    } else if let Some(path) = &config.fleet_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading fleet file {}", path.display()))?;
        fleet::parse_fleet_json(&text).with_context(|| format!("parsing fleet file {}", path.display()))?
    } else {
        fleet::generate(config.instances, config.seed)
    };
    Ok(Fleet::new(instances)?)
}

fn validate(config: &SimConfig) -> anyhow::Result<()> {
    anyhow::ensure!(!config.admin_token.is_empty(), "the admin token must not be empty");
    anyhow::ensure!(!config.user_token.is_empty(), "the user token must not be empty");
    anyhow::ensure!(
        config.admin_token != config.user_token,
        "the admin and user tokens must differ"
    );
    match (&config.api_key, &config.api_secret) {
        (None, None) => {}
        (Some(k), Some(s)) => {
            anyhow::ensure!(
                !k.is_empty() && !s.is_empty(),
                "the api key and secret must not be empty"
            )
        }
        _ => anyhow::bail!("the api key and api secret must be given together"),
    }
    config.faults.validate().map_err(anyhow::Error::msg)
}

/// Start the simulator; it accepts connections once this returns.
pub async fn start(config: SimConfig) -> anyhow::Result<SimServer> {
    validate(&config)?;
    let fleet = load_fleet(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shown = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let api_key = config.api_key.zip(config.api_secret);
    let shared = Arc::new(Shared {
        fleet: Mutex::new(fleet),
        recorder: Mutex::new(Recorder::default()),
        faults: Mutex::new(config.faults),
        dice: Dice::new(config.seed),
        auth: http::Auth::new(config.admin_token, config.user_token, api_key),
        transition: config.transition,
        invisible: config.invisible_transitions,
        lost_answers: Mutex::default(),
        failing: Mutex::default(),
        list_queries: Mutex::default(),
    });
    let router = http::router(shared.clone());
    let task = tokio::spawn(http::serve(listener, router));
    Ok(SimServer {
        addr,
        base_url: format!("http://{shown}{BASE_PATH}"),
        shared,
        task: Some(task),
    })
}

/// `compute-operator sim`: serve until SIGINT/SIGTERM. The first line on stdout is the base URL, printed
/// once connections are accepted.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let config = SimConfig::from(args);
    let summary = format!(
        "{} instances, transitions {:?}{}, faults {:?}",
        config
            .fleet_file
            .as_ref()
            .map_or_else(|| config.instances.to_string(), |p| p.display().to_string()),
        config.transition,
        if config.invisible_transitions {
            " (restart/reset invisible)"
        } else {
            ""
        },
        config.faults,
    );
    let server = start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", server.base_url()).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    tracing::info!(
        base_url = server.base_url(),
        "compute admin API simulator ready: {summary}"
    );
    wait_for_signal().await?;
    tracing::info!("compute admin API simulator stopping");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let d = SimConfig::from(Cli::parse_from(["sim"]).sim);
        assert_eq!(d.listen, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(
            (d.instances, d.seed, d.transition),
            (50, 1, Duration::from_millis(2000))
        );
        assert_eq!(d.faults, Faults::default());
        assert!(!d.invisible_transitions && d.api_key.is_none());

        let c = SimConfig::from(
            Cli::parse_from([
                "sim",
                "--listen",
                "0.0.0.0:9",
                "--admin-token",
                "A",
                "--user-token",
                "U",
                "--api-key",
                "k",
                "--api-secret",
                "s",
                "--instances",
                "7",
                "--seed",
                "3",
                "--fleet-file",
                "/f.json",
                "--transition-ms",
                "5",
                "--invisible-transitions",
                "--error-rate",
                "0.5",
                "--error-status",
                "500",
                "--retry-after-seconds",
                "2",
                "--latency-ms",
                "9",
                "--drop-after-accept-rate",
                "1",
                "--never-finish",
                "--list-page-delay-ms",
                "1500",
            ])
            .sim,
        );
        assert_eq!(c.api_key.as_deref().zip(c.api_secret.as_deref()), Some(("k", "s")));
        assert_eq!(c.fleet_file, Some(PathBuf::from("/f.json")));
        assert!(c.invisible_transitions);
        assert_eq!(
            c.faults,
            Faults {
                error_rate: 0.5,
                error_status: 500,
                retry_after_seconds: Some(2),
                latency_ms: 9,
                drop_after_accept_rate: 1.0,
                never_finish: true,
                queue_ms: 0,
                gateway503_first_one_shot: false,
                list_page_delay_ms: 1500,
            }
        );
        for bad in [
            &["sim", "--error-rate", "1.5"][..],
            &["sim", "--error-status", "404"],
            &["sim", "--api-key", "k"],
            &["sim", "--listen", "nowhere"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let args = Cli::parse_from([
            "sim",
            "--admin-token",
            "SECRET-A",
            "--user-token",
            "SECRET-U",
            "--api-key",
            "SECRET-K",
            "--api-secret",
            "SECRET-S",
        ])
        .sim;
        let shown = format!("{args:?} {:?}", SimConfig::from(args.clone()));
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn config_validation() {
        let bad = [
            SimConfig {
                admin_token: String::new(),
                ..SimConfig::default()
            },
            SimConfig {
                user_token: "dev-admin-token".into(),
                ..SimConfig::default()
            },
            SimConfig {
                api_key: Some("k".into()),
                ..SimConfig::default()
            },
            SimConfig {
                faults: Faults {
                    error_rate: 2.0,
                    ..Faults::default()
                },
                ..SimConfig::default()
            },
        ];
        for c in bad {
            assert!(validate(&c).is_err(), "{c:?}");
        }
        assert!(validate(&SimConfig::default()).is_ok());
    }
}
