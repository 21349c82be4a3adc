//! The `kubectl compute` command line and its thin I/O: apply the object, follow it with a watch, list objects.
//! Every decision (names, body, progress, advice, report) is in the pure sibling modules.

use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::advice::{self, Refusal};
use super::cli_fleets::{self, FleetCommand, ScheduleCommand};
use super::naming::{self, Verb};
use super::ownership;
use super::progress::{Outcome, Target, Tracker};
use super::{FIELD_MANAGER, report};
use crate::crd::instance_action::ComputeInstanceAction;

/// Limit of one call to the API server (the watch is bounded by `--timeout` instead).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Exit codes: 0 done, 1 failed (refused, Stalled, Failed), 2 usage (clap), 3 `--wait` timed out.
pub(super) const EXIT_FAILED: u8 = 1;
const EXIT_TIMEOUT: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl compute",
    bin_name = "kubectl compute",
    version,
    about = "Power actions on compute instances through the compute-operator (ComputeInstanceAction objects)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Restart the instance once (a new requestId each time).
    Restart(ActionArgs),
    /// Hard-reset the instance once (a new requestId each time).
    Reset(ActionArgs),
    /// Declare the instance stopped.
    Stop(ActionArgs),
    /// Declare the instance running.
    Start(ActionArgs),
    /// The objects acting on an instance (or all of them) and their last actions.
    Status(StatusArgs),
    /// Fleets (ComputeFleetAction): show their progress, pause or resume them.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Power schedules (ComputePowerSchedule): show the next and last events, hold a state for a while.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

#[derive(Args, Debug)]
struct ActionArgs {
    /// The admin API instance id, e.g. inst-7g2xq4bm.
    instance: String,
    /// Namespace of the ComputeInstanceAction (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Follow the action and exit when it is done (non-zero when it stalls or fails).
    #[arg(long)]
    wait: bool,
    /// How long --wait follows it, e.g. 90s or 5m.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Ask the operator to report what it would do without calling the admin API (sets spec.dryRun).
    #[arg(long)]
    dry_run: bool,
    /// Take spec.desiredState/spec.requestId/spec.dryRun even when another tool (Helm, Argo CD, Flux) manages
    /// them; without it the command refuses and names the owner.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Only objects acting on this instance id.
    instance: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Look in every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

/// A failure to report: one line (plus an optional next step) and the exit code.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) code: u8,
}

impl Failure {
    pub(super) fn new(message: String) -> Self {
        Self {
            message,
            code: EXIT_FAILED,
        }
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    crate::api::client::install_crypto_provider();
    let result = match cli.command {
        Command::Restart(a) => act(Verb::Restart, a).await,
        Command::Reset(a) => act(Verb::Reset, a).await,
        Command::Stop(a) => act(Verb::Stop, a).await,
        Command::Start(a) => act(Verb::Start, a).await,
        Command::Status(a) => status(a).await,
        Command::Fleet(c) => cli_fleets::fleet(c).await,
        Command::Schedule(c) => cli_fleets::schedule(c).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kubectl compute: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

pub(super) async fn connect() -> Result<Client, Failure> {
    match tokio::time::timeout(CALL_TIMEOUT, Client::try_default()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Failure::new(advice::unreachable(&e.to_string()))),
        Err(_) => Err(Failure::new(advice::unreachable("timed out"))),
    }
}

/// One API call with the plugin's time limit, its error turned into advice about ComputeInstanceActions.
async fn call<T>(fut: impl Future<Output = kube::Result<T>>, verb: &str, namespace: &str) -> Result<T, Failure> {
    call_about(advice::INSTANCE_ACTION, fut, verb, namespace).await
}

/// One API call with the plugin's time limit, its error turned into advice about objects of `about`.
pub(super) async fn call_about<T>(
    about: advice::Kind,
    fut: impl Future<Output = kube::Result<T>>,
    verb: &str,
    namespace: &str,
) -> Result<T, Failure> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::new(explain_about(about, &e, verb, namespace))),
        Err(_) => Err(Failure::new(advice::unreachable(&format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        )))),
    }
}

/// `-n NAMESPACE`, else the kubeconfig context's namespace.
pub(super) fn namespace_or_default(client: &Client, namespace: &Option<String>) -> String {
    namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned())
}

fn explain(e: &kube::Error, verb: &str, namespace: &str) -> String {
    explain_about(advice::INSTANCE_ACTION, e, verb, namespace)
}

pub(super) fn explain_about(about: advice::Kind, e: &kube::Error, verb: &str, namespace: &str) -> String {
    match e {
        kube::Error::Api(s) => {
            let details = s.details.as_ref();
            advice::refusal_about(
                about,
                &Refusal {
                    code: s.code,
                    message: &s.message,
                    kind: details.map(|d| d.kind.as_str()).unwrap_or(""),
                    name: details.map(|d| d.name.as_str()).unwrap_or(""),
                },
                verb,
                namespace,
            )
        }
        other => advice::unreachable(&other.to_string()),
    }
}

async fn act(verb: Verb, args: ActionArgs) -> Result<(), Failure> {
    let client = connect().await?;
    let ns = namespace_or_default(&client, &args.namespace);
    let api: Api<ComputeInstanceAction> = Api::namespaced(client, &ns);
    let name = naming::object_name(&args.instance);
    let desired = verb.desired_state();
    let request_id = (!desired.is_level()).then(|| naming::request_id(Utc::now()));
    let body = naming::apply_body(&name, &ns, &args.instance, verb, request_id.as_deref(), args.dry_run);
    // Server-side apply of the plugin's own fields, never forced unless asked: a field another manager owns is a
    // refusal that names it (like `kubectl apply --server-side` without `--force-conflicts`).
    let params = PatchParams::apply(FIELD_MANAGER);
    let first = tokio::time::timeout(CALL_TIMEOUT, api.patch(&name, &params, &Patch::Apply(&body)))
        .await
        .map_err(|_| Failure::new(advice::unreachable("no answer to the apply")))?;
    let applied = match first {
        Err(kube::Error::Api(s)) if s.code == 409 && !ownership::conflicts(&s.message).is_empty() => {
            let owned = ownership::conflicts(&s.message);
            if !args.force {
                return Err(Failure::new(ownership::refusal(&owned, &name, &ns)));
            }
            eprintln!("{}", ownership::taking(&owned));
            let forced = params.force();
            call(api.patch(&name, &forced, &Patch::Apply(&body)), "patch", &ns).await?
        }
        Err(e) => return Err(Failure::new(explain(&e, "patch", &ns))),
        Ok(applied) => applied,
    };
    let rid = request_id
        .as_deref()
        .map(|r| format!(", requestId {r}"))
        .unwrap_or_default();
    let dry = if args.dry_run { ", dry run" } else { "" };
    println!(
        "requested: {} instance {} (computeinstanceaction/{name} in namespace {ns}{rid}{dry})",
        verb.as_str(),
        args.instance
    );
    if !args.wait {
        println!("follow it with: kubectl compute status {} -n {ns}", args.instance);
        return Ok(());
    }
    let target = Target {
        generation: applied.metadata.generation.unwrap_or(0),
        desired,
        request_id,
        dry_run: args.dry_run,
    };
    follow(&api, &name, &ns, target, args.timeout).await
}

/// Prints progress lines as the watch delivers new versions of the object, until an outcome or the timeout.
async fn follow(
    api: &Api<ComputeInstanceAction>,
    name: &str,
    ns: &str,
    target: Target,
    limit: Duration,
) -> Result<(), Failure> {
    let generation = target.generation;
    let desired = target.desired;
    let dry_run_asked = target.dry_run;
    let mut tracker = Tracker::new(target);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api.clone(), config).applied_objects().boxed();
    let deadline = tokio::time::Instant::now() + limit;
    let mut answered = false;
    let mut transient_errors = 0u32;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.try_next()).await {
            Ok(next) => next,
            Err(_) => {
                let timeout = humantime::format_duration(limit).to_string();
                return Err(Failure {
                    message: advice::timed_out(answered, &timeout, name, ns),
                    code: EXIT_TIMEOUT,
                });
            }
        };
        let object = match next {
            Ok(Some(object)) => object,
            Ok(None) => return Err(Failure::new(format!("the watch on {name} ended unexpectedly"))),
            Err(e) => {
                if let Some(refused) = final_watch_error(&e, ns) {
                    return Err(Failure::new(refused));
                }
                // A dropped connection or a restarting API server: the watcher starts again by itself.
                transient_errors += 1;
                if transient_errors > 10 {
                    return Err(Failure::new(advice::unreachable(&e.to_string())));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        transient_errors = 0;
        answered |= object
            .status
            .as_ref()
            .is_some_and(|s| s.observed_generation.unwrap_or(0) >= generation);
        let (lines, outcome) = tracker.observe(&object);
        for line in lines {
            println!("{line}");
        }
        match outcome {
            None => {}
            Some(Outcome::Done(_)) => return Ok(()),
            Some(Outcome::Failed { reason, message }) => {
                let kind = match reason.as_str() {
                    "Suspended" => "Suspended",
                    r if super::progress::nothing_ran(r, dry_run_asked) => "nothing ran, Ready",
                    _ => "Stalled",
                };
                let next = advice::stalled(&reason, desired, &object.name_any(), ns);
                return Err(Failure::new(format!(
                    "failed: {kind}/{reason}: {message}\n  next: {next}"
                )));
            }
        }
    }
}

/// Watch errors that will not heal by retrying (no rights, no CRD), as advice.
fn final_watch_error(e: &watcher::Error, ns: &str) -> Option<String> {
    let inner = match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
        _ => return None,
    };
    match inner {
        kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404) => Some(explain(inner, "watch", ns)),
        _ => None,
    }
}

async fn status(args: StatusArgs) -> Result<(), Failure> {
    let client = connect().await?;
    let (api, scope, ns): (Api<ComputeInstanceAction>, String, String) = if args.all_namespaces {
        (Api::all(client), "all namespaces".into(), "(all)".into())
    } else {
        let ns = namespace_or_default(&client, &args.namespace);
        (Api::namespaced(client, &ns), format!("namespace {ns}"), ns)
    };
    let list = call(api.list(&ListParams::default()), "list", &ns).await?;
    let objects: Vec<ComputeInstanceAction> = list
        .items
        .into_iter()
        .filter(|o| args.instance.as_deref().is_none_or(|id| o.spec.instance_id == id))
        .collect();
    print!("{}", report::render(&objects, args.instance.as_deref(), &scope));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_as_documented() {
        let cli = Cli::try_parse_from([
            "kubectl-compute",
            "restart",
            "inst-1",
            "-n",
            "team-a",
            "--wait",
            "--timeout",
            "90s",
            "--dry-run",
        ])
        .unwrap();
        let Command::Restart(a) = cli.command else {
            panic!("not restart")
        };
        assert_eq!(a.instance, "inst-1");
        assert_eq!(a.namespace.as_deref(), Some("team-a"));
        assert!(a.wait && a.dry_run);
        assert_eq!(a.timeout, Duration::from_secs(90));
        assert!(
            Cli::try_parse_from(["kubectl-compute", "restart"]).is_err(),
            "INSTANCE is required"
        );
        assert!(Cli::try_parse_from(["kubectl-compute", "stop", "i", "--timeout", "soon"]).is_err());
    }
}
