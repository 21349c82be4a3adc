//! The `compute-operator` command line: parses arguments and calls into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use compute_operator::{config, crd, operator, telemetry};
#[cfg(feature = "dev-tools")]
use compute_operator::{devenv, sim};

// The allocator (README "Memory"): jemalloc, chosen by the benchmark's rest run over glibc's and mimalloc.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
/// jemalloc's options, read before `main`: a background thread hands freed pages back to the kernel after a
/// burst (`dirty_decay_ms`), and one arena keeps a small, mostly idle process from spreading its objects over many.
/// `_RJEM_MALLOC_CONF` in the environment still overrides them.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static, NUL-terminated string, as jemalloc expects.
    Some(unsafe { &*c"background_thread:true,narenas:1,dirty_decay_ms:500,muzzy_decay_ms:0".as_ptr() });

#[derive(Parser)]
#[command(
    name = "compute-operator",
    version,
    about = "Declare the power state of compute instances from Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (kubeconfig or in-cluster).
    Run(Box<config::RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Write the CRDs to crds/ and the Helm chart's crds/ (run from the repository root).
    CrdFiles,
    /// Run the admin API simulator on loopback.
    #[cfg(feature = "dev-tools")]
    Sim(sim::SimArgs),
    /// Run the whole stack locally: control plane, CRDs, simulator, controller.
    #[cfg(feature = "dev-tools")]
    Dev(devenv::dev::DevArgs),
}

fn write_crd_files() -> anyhow::Result<()> {
    for (file, crd) in crd::crds() {
        let yaml = crd::crd_to_yaml(&crd)?;
        for dir in ["crds", "charts/compute-operator/crds"] {
            std::fs::create_dir_all(dir)?;
            std::fs::write(format!("{dir}/{file}"), &yaml)?;
            println!("wrote {dir}/{file}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => crd::crd_yaml().map(|y| print!("{y}")).map_err(Into::into),
        Command::CrdFiles => write_crd_files(),
        #[cfg(feature = "dev-tools")]
        Command::Sim(args) => {
            telemetry::init("info", config::LogFormat::Text);
            sim::run(args).await
        }
        Command::Run(args) => {
            telemetry::init(&args.log_level, args.log_format);
            // Settings first: a bad flag is reported as such even without a cluster.
            if let Err(e) = args.validate() {
                eprintln!("compute-operator: {e}");
                return ExitCode::FAILURE;
            }
            match compute_operator::kube_client::infer().await {
                Ok(client) => operator::run(*args, client, operator::shutdown_signal()).await,
                Err(e) => Err(anyhow::anyhow!(
                    "cannot reach Kubernetes (kubeconfig or in-cluster config): {e}"
                )),
            }
        }
        #[cfg(feature = "dev-tools")]
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
