//! The `compute-operator` command line: parses arguments and calls into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use compute_operator::{config, devenv, operator, resource, sim, telemetry};

#[derive(Parser)]
#[command(name = "compute-operator", version, about = "Declare the power state of compute instances from Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (kubeconfig or in-cluster).
    Run(config::RunArgs),
    /// Print the CustomResourceDefinition YAML.
    Crd,
    /// Run the admin API simulator on loopback.
    Sim(sim::SimArgs),
    /// Run the whole stack locally: control plane, CRDs, simulator, controller.
    Dev(devenv::dev::DevArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => resource::crd_yaml().map(|y| print!("{y}")).map_err(Into::into),
        Command::Sim(args) => {
            telemetry::init("info", config::LogFormat::Text);
            sim::run(args).await
        }
        Command::Run(args) => {
            telemetry::init(&args.log_level, args.log_format);
            match kube::Client::try_default().await {
                Ok(client) => operator::run(args, client, operator::shutdown_signal()).await,
                Err(e) => Err(anyhow::anyhow!("cannot reach Kubernetes (kubeconfig or in-cluster config): {e}")),
            }
        }
        Command::Dev(args) => {
            telemetry::init("info", config::LogFormat::Text);
            devenv::dev::run(args).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compute-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
