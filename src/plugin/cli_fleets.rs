//! The thin I/O of `kubectl compute fleet ...` and `kubectl compute schedule ...`: list or get the objects,
//! send the pause/resume/override patches. What is shown and sent is decided in `fleet_report.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::advice::{self, FLEET_ACTION, Kind, POWER_SCHEDULE};
use super::cli::{Failure, call_about, connect, namespace_or_default};
use super::{FIELD_MANAGER, fleet_report};
use crate::crd::fleet_action::ComputeFleetAction;
use crate::crd::fleet_action::{FLEET_LABEL, fleet_label_value};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::crd::power_schedule::{ComputePowerSchedule, ScheduledState};

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Progress of one fleet (with its children) or of every fleet in the namespace.
    Status(ListArgs),
    /// Start no new instance (those in flight finish): sets spec.paused.
    Pause(NameArgs),
    /// Continue a paused fleet where it stopped.
    Resume(NameArgs),
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Next and last events (in the schedule's time zone) and the override in effect.
    Status(ListArgs),
    /// Hold a state until a time, whatever the calendar says; the schedule resumes by itself afterwards.
    Override(OverrideArgs),
    /// End an override now: the calendar applies again.
    ClearOverride(NameArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this object.
    name: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Look in every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    name: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("end").required(true).args(["until", "hold_for"]))]
pub struct OverrideArgs {
    name: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The state to hold.
    #[arg(long, value_parser = ["running", "stopped"])]
    state: String,
    /// Until when (RFC 3339, e.g. 2026-12-04T18:00:00+01:00).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// For how long from now, e.g. 3h or 2days.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    hold_for: Option<Duration>,
}

pub async fn fleet(command: FleetCommand) -> Result<(), Failure> {
    match command {
        FleetCommand::Status(args) => fleet_status(args).await,
        FleetCommand::Pause(args) => set_paused(args, true).await,
        FleetCommand::Resume(args) => set_paused(args, false).await,
    }
}

pub async fn schedule(command: ScheduleCommand) -> Result<(), Failure> {
    match command {
        ScheduleCommand::Status(args) => {
            let (client, ns, scope) = scope_of(&args).await?;
            let schedules: Vec<ComputePowerSchedule> = list_or_get(client, &args, &ns, POWER_SCHEDULE).await?;
            print!("{}", fleet_report::render_schedules(&schedules, &scope));
            Ok(())
        }
        ScheduleCommand::Override(args) => {
            let state = if args.state == "running" {
                ScheduledState::Running
            } else {
                ScheduledState::Stopped
            };
            let until = fleet_report::override_until(Utc::now(), args.until, args.hold_for).map_err(Failure::new)?;
            let target = NameArgs {
                name: args.name,
                namespace: args.namespace,
            };
            let patch = fleet_report::override_patch(Some((state, until)));
            let s: ComputePowerSchedule = merge(&target, patch, POWER_SCHEDULE).await?;
            println!(
                "overridden: computepowerschedule/{} holds {} until {}; then its calendar applies again",
                s.name_any(),
                state.as_str(),
                until.to_rfc3339()
            );
            Ok(())
        }
        ScheduleCommand::ClearOverride(args) => {
            let s: ComputePowerSchedule = merge(&args, fleet_report::override_patch(None), POWER_SCHEDULE).await?;
            println!(
                "override cleared: computepowerschedule/{} follows its calendar",
                s.name_any()
            );
            Ok(())
        }
    }
}

async fn fleet_status(args: ListArgs) -> Result<(), Failure> {
    let (client, ns, scope) = scope_of(&args).await?;
    let fleets: Vec<ComputeFleetAction> = list_or_get(client.clone(), &args, &ns, FLEET_ACTION).await?;
    let children = match (&args.name, fleets.first()) {
        (Some(name), Some(_)) => {
            let api: Api<ComputeInstanceAction> = Api::namespaced(client, &ns);
            let selector = format!("{FLEET_LABEL}={}", fleet_label_value(name));
            let list = call_about(
                advice::INSTANCE_ACTION,
                api.list(&ListParams::default().labels(&selector)),
                "list",
                &ns,
            )
            .await?;
            list.items
        }
        _ => Vec::new(),
    };
    print!("{}", fleet_report::render_fleets(&fleets, &children, &scope));
    Ok(())
}

async fn set_paused(args: NameArgs, paused: bool) -> Result<(), Failure> {
    let fleet: ComputeFleetAction = merge(&args, fleet_report::pause_patch(paused), FLEET_ACTION).await?;
    let word = if paused {
        "paused: no new instance starts (those in flight finish)"
    } else {
        "resumed: continues where it stopped"
    };
    println!("computefleetaction/{} {word}", fleet.name_any());
    Ok(())
}

/// The client, the namespace to look in, and how to name that scope in a report.
async fn scope_of(args: &ListArgs) -> Result<(Client, String, String), Failure> {
    let client = connect().await?;
    if args.all_namespaces {
        return Ok((client, String::new(), "all namespaces".into()));
    }
    let ns = namespace_or_default(&client, &args.namespace);
    let scope = format!("namespace {ns}");
    Ok((client, ns, scope))
}

/// One named object, or every object of the kind in the namespace (`ns` empty: in every namespace).
async fn list_or_get<K>(client: Client, args: &ListArgs, ns: &str, about: Kind) -> Result<Vec<K>, Failure>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    if ns.is_empty() {
        let api: Api<K> = Api::all(client);
        return Ok(call_about(about, api.list(&ListParams::default()), "list", "(all)")
            .await?
            .items);
    }
    let api: Api<K> = Api::namespaced(client, ns);
    match &args.name {
        Some(name) => Ok(vec![call_about(about, api.get(name), "get", ns).await?]),
        None => Ok(call_about(about, api.list(&ListParams::default()), "list", ns)
            .await?
            .items),
    }
}

/// A JSON merge patch of the spec, like `kubectl patch --type merge`: it changes only the named field, so a GitOps
/// tool that owns the rest of the manifest keeps owning it (and may set it back on its next sync).
async fn merge<K>(args: &NameArgs, patch: serde_json::Value, about: Kind) -> Result<K, Failure>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let client = connect().await?;
    let ns = namespace_or_default(&client, &args.namespace);
    let api: Api<K> = Api::namespaced(client, &ns);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    call_about(
        about,
        api.patch(&args.name, &params, &Patch::Merge(&patch)),
        "patch",
        &ns,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::cli::Cli;
    use clap::Parser;

    #[test]
    fn an_override_needs_a_state_and_exactly_one_end() {
        let parse = |args: &[&str]| {
            let mut all = vec!["kubectl-compute", "schedule", "override", "office"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        assert!(parse(&["--state", "running", "--for", "3h"]).is_ok());
        assert!(parse(&["--state", "stopped", "--until", "2026-12-04T18:00:00+01:00"]).is_ok());
        assert!(parse(&["--state", "running"]).is_err(), "no end");
        assert!(
            parse(&["--state", "running", "--for", "3h", "--until", "2026-12-04T18:00:00Z"]).is_err(),
            "two ends"
        );
        assert!(parse(&["--state", "restarted", "--for", "3h"]).is_err(), "levels only");
        assert!(parse(&["--for", "3h"]).is_err(), "no state");
    }

    #[test]
    fn fleet_subcommands_parse() {
        for args in [
            vec!["kubectl-compute", "fleet", "status"],
            vec!["kubectl-compute", "fleet", "status", "nightly", "-n", "ops"],
            vec!["kubectl-compute", "fleet", "status", "-A"],
            vec!["kubectl-compute", "fleet", "pause", "nightly"],
            vec!["kubectl-compute", "fleet", "resume", "nightly", "-n", "ops"],
            vec!["kubectl-compute", "schedule", "clear-override", "office"],
        ] {
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?}");
        }
        assert!(
            Cli::try_parse_from(["kubectl-compute", "fleet", "pause"]).is_err(),
            "NAME is required"
        );
        assert!(Cli::try_parse_from(["kubectl-compute", "fleet", "status", "x", "-A"]).is_err());
    }
}
