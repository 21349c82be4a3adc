//! The README's quick start, line by line: `compute-operator dev` (what `cargo run -- dev` runs), then exactly the
//! shell lines the README shows after it, parsed from README.md so the two cannot drift apart. Every example object
//! must end Ready, and the examples must not fight (each demo instance gets only the actions its example asks for).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compute_operator::controllers::fleet::ComputeFleetAction;
use compute_operator::crd::disruption_budget::ComputeDisruptionBudget;
use compute_operator::crd::instance_action::{ComputeInstanceAction, Condition};
use compute_operator::crd::maintenance_window::ComputeMaintenanceWindow;
use compute_operator::crd::power_schedule::ComputePowerSchedule;
use compute_operator::devenv::process::Guarded;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shell lines of the README's quick-start block (the ```sh block that applies deploy/examples/), comments and
/// blank lines left out.
fn quickstart_lines(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(Vec::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(block), l) => block.push(l.to_owned()),
            (None, _) => {}
        }
    }
    let block = blocks
        .into_iter()
        .find(|b| b.iter().any(|l| l.starts_with("kubectl apply -f deploy/examples/")))
        .expect("README.md has no ```sh block with `kubectl apply -f deploy/examples/`");
    block
        .into_iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn the_quick_start_block_is_found_and_runs_to_an_end() {
    let lines = quickstart_lines(&std::fs::read_to_string(repo().join("README.md")).unwrap());
    assert!(lines[0].starts_with("export KUBECONFIG=.dev/kubeconfig"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("kubectl wait --for=condition=Ready cia --all")),
        "{lines:?}"
    );
    // A line that never returns (`kubectl get -w`) would hang whoever follows the README as a script.
    assert!(
        lines.iter().all(|l| !l.contains(" -w") && !l.contains("--watch")),
        "{lines:?}"
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn is_true<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_ && c.status == "True")
}

/// Starts `compute-operator dev` in `dir` and waits for its "is up" line.
fn start_dev(dir: &Path) -> Guarded {
    let out = std::fs::File::create(dir.join("dev.out")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_compute-operator"));
    cmd.arg("dev")
        .current_dir(dir)
        .env("COMPUTE_OPERATOR_LOG_LEVEL", "warn")
        .env_remove("COMPUTE_API_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    let mut dev = Guarded::spawn("compute-operator dev", cmd).expect("spawn compute-operator dev");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(dir.join("dev.out")).unwrap_or_default();
        if text.contains("compute-operator dev stack is up") {
            println!("{text}");
            return dev;
        }
        if let Some(status) = dev.exited() {
            panic!("compute-operator dev exited ({status}) before it was up:\n{text}");
        }
        if Instant::now() > deadline {
            panic!("compute-operator dev not up within 90 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn dev_client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read .dev/kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_ends_with_every_example_ready() {
    compute_operator::api::client::install_crypto_provider();
    for tool in ["bash", "kubectl", "curl"] {
        assert!(
            on_path(tool),
            "{tool} is not on PATH: the README's quick start needs it"
        );
    }
    let lines = quickstart_lines(&std::fs::read_to_string(repo().join("README.md")).unwrap());
    // A fresh directory standing in for the clone: the examples and build script from this repo, its own .dev.
    let dir = tempfile::tempdir().unwrap();
    for link in ["deploy", "tests"] {
        std::os::unix::fs::symlink(repo().join(link), dir.path().join(link)).unwrap();
    }
    let mut dev = start_dev(dir.path());

    let script = format!("set -euo pipefail\nset -x\n{}\n", lines.join("\n"));
    let started = Instant::now();
    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the quick start's lines did not finish within 240 s")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}\n{stderr}\n(quick start lines took {:?})", started.elapsed());
    let dev_log = || std::fs::read_to_string(dir.path().join("dev.out")).unwrap_or_default();
    assert!(
        out.status.success(),
        "a quick-start line failed:\n{stderr}\n--- dev output ---\n{}",
        dev_log()
    );
    assert!(dev.exited().is_none(), "the dev stack stopped:\n{}", dev_log());

    let client = dev_client(&dir.path().join(".dev/kubeconfig")).await;
    let cias: Api<ComputeInstanceAction> = Api::default_namespaced(client.clone());
    let cfas: Api<ComputeFleetAction> = Api::default_namespaced(client.clone());
    let cpss: Api<ComputePowerSchedule> = Api::default_namespaced(client.clone());
    let mut not_ready = Vec::new();
    let mut check = |short: &str, name: String, conditions: Option<Vec<Condition>>| {
        let conditions = conditions.unwrap_or_default();
        if is_true(&conditions, "Ready").is_none() {
            not_ready.push(format!("{short}/{name}: {conditions:?}"));
        }
    };
    for o in cias.list(&Default::default()).await.unwrap() {
        check("cia", o.name_any(), o.status.map(|s| s.conditions));
    }
    let fleets = cfas.list(&Default::default()).await.unwrap().items;
    for o in &fleets {
        check("cfa", o.name_any(), o.status.clone().map(|s| s.conditions));
    }
    let schedules = cpss.list(&Default::default()).await.unwrap().items;
    for o in &schedules {
        check("cps", o.name_any(), o.status.clone().map(|s| s.conditions));
    }
    // Change control: every window and budget example is Ready, and none holds an example action back.
    let windows = Api::<ComputeMaintenanceWindow>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    for o in &windows {
        check("cmw", o.name_any(), o.status.clone().map(|s| s.conditions));
    }
    let budgets = Api::<ComputeDisruptionBudget>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    for o in &budgets {
        check("cdb", o.name_any(), o.status.clone().map(|s| s.conditions));
    }
    assert_eq!(
        (windows.len(), budgets.len()),
        (2, 1),
        "every change-control example applied"
    );
    let held: Vec<String> = cias
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.status.as_ref().is_some_and(|s| s.held_by.is_some()))
        .map(|o| o.name_any())
        .collect();
    assert!(held.is_empty(), "held back by change control: {held:?}");
    assert!(
        not_ready.is_empty(),
        "not Ready after the quick start:\n{}",
        not_ready.join("\n")
    );
    assert_eq!(schedules.len(), 3, "every schedule example applied");
    // The dev stack prints the same lines to try (its banner and this README cannot drift apart).
    let banner = dev_log();
    for line in lines.iter().filter(|l| l.starts_with("kubectl")) {
        assert!(
            banner.contains(line.as_str()),
            "the dev banner lacks the README's {line:?}:\n{banner}"
        );
    }

    // The fleet restarted its three runners, once each, through children that all succeeded.
    let runners = fleets
        .iter()
        .find(|f| f.name_any() == "restart-zone-runners")
        .and_then(|f| f.status.clone())
        .expect("restart-zone-runners has a status");
    assert_eq!(
        (runners.selected, runners.succeeded, runners.failed),
        (3, 3, 0),
        "{runners:?}"
    );
    // The demo override holds its instances running through a child fleet of its own.
    assert!(
        fleets
            .iter()
            .any(|f| f.labels().get("compute.threatwinds.com/schedule").map(String::as_str) == Some("demo-week")),
        "demo-week created no child fleet"
    );

    // No fight: each demo instance got exactly what its one example asks for (the curl line printed the audit).
    let last = stdout.lines().last().unwrap_or_default();
    let audit: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the README's curl line did not print the audit as JSON ({e}):\n{stdout}"));
    let entries = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut actions: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in &entries {
        let id = e["instanceId"].as_str().unwrap_or_default().to_owned();
        actions
            .entry(id)
            .or_default()
            .push(e["action"].as_str().unwrap_or_default().to_owned());
    }
    let want: std::collections::BTreeMap<String, Vec<String>> = [
        ("inst-demo0001", "stop"),
        ("inst-demo0002", "start"),
        ("inst-demo0003", "restart"),
        ("inst-demo0004", "reset"),
        ("inst-demo0005", "restart"),
        ("inst-demo0006", "restart"),
        ("inst-demo0007", "restart"),
        ("inst-demo0012", "start"),
    ]
    .into_iter()
    .map(|(i, a)| (i.to_owned(), vec![a.to_owned()]))
    .collect();
    // A schedule event that falls inside the run (07:00, 19:00 or 20:00 Madrid) may add its own level action.
    let scheduled = ["inst-demo0008", "inst-demo0009", "inst-demo0010", "inst-demo0011"];
    actions.retain(|id, _| !scheduled.contains(&id.as_str()));
    assert_eq!(actions, want, "the examples fought, or acted twice:\n{audit:#}");
    dev.stop(Duration::from_secs(15));
}
