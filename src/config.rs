//! The `run` settings: every one a flag and an environment variable, validated at start with a clear message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::api::backoff::Backoff;
use crate::api::{ClientConfig, CredentialSource, Credentials, DEFAULT_BASE_URL};
use crate::controllers::instance::ControllerConfig;
use crate::controllers::instance::plan::PlanSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `compute-operator run`. Credentials are never flags: env or a mounted directory only.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Admin API base URL (plain http only for loopback).
    #[arg(long, env = "COMPUTE_API_URL", default_value = DEFAULT_BASE_URL)]
    pub api_url: String,
    /// Directory with `token`, or `api-key` and `api-secret` (a mounted Secret); re-read when it changes.
    /// Without it, COMPUTE_API_TOKEN or COMPUTE_API_KEY + COMPUTE_API_SECRET are used.
    #[arg(long, env = "COMPUTE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Reconciles running at once.
    #[arg(long, env = "COMPUTE_OPERATOR_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Admin API requests per second (client-side limit).
    #[arg(long, env = "COMPUTE_API_RATE", default_value_t = 20.0)]
    pub api_rate: f64,
    /// Admin API burst above the rate.
    #[arg(long, env = "COMPUTE_API_BURST", default_value_t = 40)]
    pub api_burst: u32,
    /// Admin API requests in flight at most.
    #[arg(long, env = "COMPUTE_API_MAX_IN_FLIGHT", default_value_t = 8)]
    pub api_max_in_flight: usize,
    /// Timeout of one admin API request.
    #[arg(long, env = "COMPUTE_API_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub api_timeout: Duration,
    /// Re-check of settled objects, to notice drift.
    #[arg(long, env = "COMPUTE_OPERATOR_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// After a restart/reset with no visible transition, how long `running` must be seen before it counts as done.
    #[arg(long, env = "COMPUTE_OPERATOR_RESTART_SETTLE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub restart_settle: Duration,
    /// Namespaces to watch, comma-separated; empty watches all.
    #[arg(long, env = "COMPUTE_OPERATOR_NAMESPACES", value_delimiter = ',', default_value = "")]
    pub namespaces: Vec<String>,
    /// Only the replica holding a Lease reconciles.
    #[arg(long, env = "COMPUTE_OPERATOR_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    #[arg(long, env = "COMPUTE_OPERATOR_LEASE_NAME", default_value = "compute-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (defaults to POD_NAMESPACE).
    #[arg(long, env = "COMPUTE_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    #[arg(long, env = "COMPUTE_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// Serves /metrics, /healthz and /readyz.
    #[arg(long, env = "COMPUTE_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "COMPUTE_OPERATOR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "COMPUTE_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// `enforce`: objects that no ComputeAccessPolicy allows are denied; `off`: single-tenant clusters.
    #[arg(long, env = "COMPUTE_OPERATOR_POLICY_MODE", value_enum, default_value = "enforce")]
    pub policy_mode: crate::crd::access_policy::PolicyMode,
    /// Loop protection: restart/reset actions allowed per instance within --one-shot-window.
    #[arg(long, env = "COMPUTE_OPERATOR_MAX_ONE_SHOTS", default_value_t = 5)]
    pub max_one_shots: u32,
    #[arg(long, env = "COMPUTE_OPERATOR_ONE_SHOT_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub one_shot_window: Duration,
    /// Liveness: `/healthz` fails once a watch has reported only errors for this long.
    #[arg(long, env = "COMPUTE_OPERATOR_HEALTH_WATCH_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub health_watch_timeout: Duration,
    /// Liveness: `/healthz` fails once reconciles are running and none has finished for this long. Keep it
    /// above the longest reconcile (a few --api-timeout).
    #[arg(long, env = "COMPUTE_OPERATOR_HEALTH_RECONCILE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub health_reconcile_timeout: Duration,
    /// Report what would be done; never call an action endpoint.
    #[arg(long, env = "COMPUTE_OPERATOR_DRY_RUN", default_value_t = false)]
    pub dry_run: bool,
}

/// A setting that cannot work, named with the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct InvalidSetting {
    pub setting: &'static str,
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        setting,
        reason: reason.into(),
    }
}

impl RunArgs {
    /// Checks every setting; the first bad one is reported.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let url = reqwest::Url::parse(&self.api_url).map_err(|e| invalid("--api-url", e.to_string()))?;
        if !crate::api::client::scheme_allowed(&url) {
            return Err(invalid(
                "--api-url",
                "must be https (plain http is allowed only for loopback)",
            ));
        }
        if self.concurrency == 0 {
            return Err(invalid("--concurrency", "must be at least 1"));
        }
        if !(self.api_rate.is_finite() && self.api_rate > 0.0) {
            return Err(invalid(
                "--api-rate",
                "must be a positive number of requests per second",
            ));
        }
        if self.api_burst == 0 {
            return Err(invalid("--api-burst", "must be at least 1"));
        }
        if self.api_max_in_flight == 0 {
            return Err(invalid("--api-max-in-flight", "must be at least 1"));
        }
        if self.api_timeout < Duration::from_millis(100) || self.api_timeout > Duration::from_secs(300) {
            return Err(invalid("--api-timeout", "must be between 100ms and 5m"));
        }
        if self.resync_interval < Duration::from_secs(5) {
            return Err(invalid("--resync-interval", "must be at least 5s"));
        }
        if self.leader_election && self.lease_namespace().is_none() {
            return Err(invalid(
                "--lease-namespace",
                "required with --leader-election (or set POD_NAMESPACE)",
            ));
        }
        if self.one_shot_window < Duration::from_secs(1) || self.one_shot_window > Duration::from_secs(30 * 24 * 3600) {
            return Err(invalid("--one-shot-window", "must be between 1s and 30 days"));
        }
        if self.max_one_shots == 0 {
            return Err(invalid("--max-one-shots", "must be at least 1"));
        }
        if self.lease_duration < Duration::from_secs(2) {
            return Err(invalid("--lease-duration", "must be at least 2s"));
        }
        for (setting, value) in [
            ("--health-watch-timeout", self.health_watch_timeout),
            ("--health-reconcile-timeout", self.health_reconcile_timeout),
        ] {
            if value < Duration::from_secs(1) {
                return Err(invalid(setting, "must be at least 1s"));
            }
        }
        if let Some(dir) = &self.credentials_dir
            && !dir.is_dir()
        {
            return Err(invalid(
                "--credentials-dir",
                format!("{} is not a directory", dir.display()),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| invalid("--log-level", e.to_string()))?;
        Ok(())
    }

    pub fn lease_namespace(&self) -> Option<String> {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|s| !s.is_empty())
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            base_url: self.api_url.clone(),
            timeout: self.api_timeout,
            rate_per_s: self.api_rate,
            burst: self.api_burst,
            max_in_flight: self.api_max_in_flight,
            ..ClientConfig::default()
        }
    }

    /// The credential source: the directory if given, else the environment.
    pub fn credentials(&self) -> Result<CredentialSource, InvalidSetting> {
        match &self.credentials_dir {
            Some(dir) => {
                let source = CredentialSource::dir(dir);
                source
                    .headers()
                    .map_err(|e| invalid("--credentials-dir", e.to_string()))?;
                Ok(source)
            }
            None => Credentials::from_env_vars(|k| std::env::var(k).ok())
                .map(CredentialSource::Static)
                .map_err(|e| invalid("credentials", e.to_string())),
        }
    }

    pub fn health_thresholds(&self) -> crate::health::Thresholds {
        crate::health::Thresholds {
            watch_failing: self.health_watch_timeout,
            reconcile_stalled: self.health_reconcile_timeout,
            ..Default::default()
        }
    }

    pub fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            namespaces: self.namespaces(),
            concurrency: self.concurrency,
            plan: PlanSettings {
                resync: self.resync_interval,
                settle: self.restart_settle,
                dry_run: self.dry_run,
                max_one_shots: self.max_one_shots,
                one_shot_window: self.one_shot_window,
                ..PlanSettings::default()
            },
            error_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
            reporter: "compute-operator".into(),
            policy_mode: self.policy_mode,
            // A quarter of the budget: new work and open actions keep the rest.
            view_rate: self.api_rate / 4.0,
            ..ControllerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .expect("parses")
            .run
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let table: [(&[&str], &str); 6] = [
            (&["--api-url", "http://example.com"], "--api-url"),
            (&["--concurrency", "0"], "--concurrency"),
            (&["--api-rate", "0"], "--api-rate"),
            (&["--resync-interval", "1s"], "--resync-interval"),
            (&["--api-timeout", "10m"], "--api-timeout"),
            (&["--log-level", "info,[[["], "--log-level"),
        ];
        for (args, setting) in table {
            let err = parse(args).validate().expect_err("invalid");
            assert_eq!(err.setting, setting, "{args:?}");
            assert!(err.to_string().starts_with(&format!("invalid setting {setting}: ")));
        }
        assert!(parse(&["--api-url", "http://127.0.0.1:9/api"]).validate().is_ok());
    }

    #[test]
    fn namespaces_split_on_commas() {
        assert_eq!(parse(&["--namespaces", "a, b,,c"]).namespaces(), vec!["a", "b", "c"]);
        assert!(parse(&[]).namespaces().is_empty());
    }
}
