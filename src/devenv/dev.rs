//! `compute-operator dev`: the whole stack on one machine, stopped by Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::{Binaries, ControlPlane};
use crate::api::{CredentialSource, Credentials, Instance, InstanceStatus, Secret};
use crate::config::RunArgs;
use crate::sim::{self, SimConfig};

#[derive(Args, Clone, Debug)]
pub struct DevArgs {
    /// Where the kubeconfig, logs and etcd data go.
    #[arg(long, default_value = ".dev")]
    pub state_dir: PathBuf,
    /// Use this admin API instead of starting the simulator (credentials from the usual env variables).
    #[arg(long, env = "COMPUTE_API_URL")]
    pub api_url: Option<String>,
    /// Start everything but the controller (run `compute-operator run` yourself against the same stack).
    #[arg(long)]
    pub no_controller: bool,
    /// Simulator: port to listen on.
    #[arg(long, default_value_t = 8090)]
    pub sim_port: u16,
    /// Simulator: how long a transition takes.
    #[arg(long, default_value_t = 2000)]
    pub transition_ms: u64,
    /// Controller: metrics address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics_addr: std::net::SocketAddr,
}

/// Demo instances the examples in deploy/examples/ refer to, so that no two examples act on the same instance
/// (apart from the two that both keep inst-demo0002 running, which agree): the instance actions use 0001-0004;
/// `restart-zone-runners` selects 0005-0007 (template `ubuntu-22-runner`, which the generated instances never
/// use); `office-hours` 0008-0009 (template `ubuntu-22-desktop`); `stop-nightly` 0010-0011; `demo-week`
/// 0012-0013. `stop-customer-fleet` is a dry run over the demo customer (all of them) and changes nothing.
pub fn demo_instances() -> Vec<Instance> {
    let demo = |n: u32, status: InstanceStatus, zone: &str, template: &str| Instance {
        id: format!("inst-demo{n:04}"),
        user_id: "5f35d2c4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        customer_id: "a1b2c3d4-5633-4b16-bbf0-5ca22ef8ea2e".into(),
        name: format!("demo-{n}"),
        zone: zone.into(),
        machine_type: "n2-standard-4".into(),
        external_ip: format!("203.0.113.{n}"),
        internal_ip: format!("10.128.0.{n}"),
        status,
        template_id: template.into(),
        created_at: "2026-03-14T15:02:17Z".into(),
    };
    use InstanceStatus::{Running, Stopped};
    let (zone, standard, runner, desktop) = (
        "us-central1-a",
        "ubuntu-22-standard",
        "ubuntu-22-runner",
        "ubuntu-22-desktop",
    );
    vec![
        demo(1, Running, zone, standard),
        demo(2, Stopped, zone, standard),
        demo(3, Running, zone, standard),
        demo(4, Running, zone, standard),
        demo(5, Running, zone, runner),
        demo(6, Running, zone, runner),
        demo(7, Running, zone, runner),
        demo(8, Running, "europe-west1-b", desktop),
        demo(9, Stopped, "europe-west1-b", desktop),
        demo(10, Running, zone, standard),
        demo(11, Running, zone, standard),
        demo(12, Stopped, zone, standard),
        demo(13, Running, zone, standard),
    ]
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let repo = std::env::current_dir()?;
    let binaries = Binaries::locate_or_build(&repo)?;
    std::fs::create_dir_all(&args.state_dir)?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    let cp_dir = state_dir.join("controlplane");
    // A previous run's etcd data would carry old objects and a stale certificate: start clean.
    let _ = std::fs::remove_dir_all(&cp_dir);
    eprintln!("starting etcd and kube-apiserver in {} ...", cp_dir.display());
    let control_plane = ControlPlane::start_in(&binaries, &cp_dir).await?;
    let kubeconfig = state_dir.join("kubeconfig");
    std::fs::write(&kubeconfig, control_plane.kubeconfig_yaml())?;

    let (api_url, simulator, sim_token) = match &args.api_url {
        Some(url) => (url.clone(), None, None),
        None => {
            let config = SimConfig {
                listen: format!("127.0.0.1:{}", args.sim_port).parse()?,
                transition: Duration::from_millis(args.transition_ms),
                instances: 50,
                ..SimConfig::default()
            };
            let token = config.admin_token.clone();
            let server = sim::start(config).await.context("starting the simulator")?;
            for i in demo_instances() {
                server.upsert_instance(i);
            }
            (server.base_url().to_owned(), Some(server), Some(token))
        }
    };
    let kc = kubeconfig.display();
    println!(
        "\ncompute-operator dev stack is up.\n  kubeconfig:   {kc}\n  admin API:    {api_url}{}\n\nTry:\n  export KUBECONFIG={kc}\n  kubectl apply -f deploy/examples/\n  kubectl wait --for=condition=Ready cia --all --timeout=60s\n  kubectl wait --for=condition=Ready cfa,cps --all --timeout=60s\n  kubectl wait --for=condition=Ready cmw,cdb --all --timeout=60s\n  kubectl get cia,cfa,cps,cmw,cdb\n  curl -s {}/_sim/audit   # every action the simulator accepted\n\nCtrl-C stops everything.\n",
        if simulator.is_some() { " (simulator)" } else { "" },
        simulator
            .as_ref()
            .map(|s| format!("http://{}", s.addr()))
            .unwrap_or_default(),
    );

    let shutdown = crate::operator::shutdown_signal();
    if args.no_controller {
        println!(
            "controller not started (--no-controller); run it with:\n  KUBECONFIG={kc} COMPUTE_API_URL={api_url} COMPUTE_API_TOKEN=... cargo run -- run --metrics-addr 127.0.0.1:8081\n"
        );
        shutdown.await;
    } else {
        // A single-user playground: no access policies needed (see README, "Access policies").
        let run_args = RunArgs {
            api_url,
            metrics_addr: args.metrics_addr,
            policy_mode: crate::crd::access_policy::PolicyMode::Off,
            ..dev_run_args()
        };
        let client = control_plane.client().await?;
        let credentials = match sim_token {
            Some(token) => CredentialSource::Static(Credentials::Bearer(Secret::new(token))),
            None => run_args.credentials()?,
        };
        crate::operator::run_with(run_args, credentials, client, shutdown).await?;
    }
    if let Some(s) = simulator {
        s.shutdown().await;
    }
    drop(control_plane);
    eprintln!("dev stack stopped");
    Ok(())
}

/// `run` defaults for local use.
pub fn dev_run_args() -> RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }
    Wrapper::parse_from(["compute-operator"]).run
}
