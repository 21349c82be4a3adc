//! The packaging, proven against the real local control plane (kube-apiserver + etcd, RBAC on):
//!
//! 1. `helm install` of `charts/compute-operator` succeeds, cluster-wide (default values) and namespaced
//!    (`watchNamespaces`), and creates the ServiceAccount, the (Cluster)Role(Binding)s, the Deployment and the
//!    Service. The CRDs already exist (the harness installs them): helm skips them and leaves them untouched.
//! 2. The controller, run in this process with a TokenRequest token of the chart's ServiceAccount and the
//!    settings of the Deployment the chart created (its environment turned into flags), reconciles a
//!    ComputeInstanceAction to Ready against the simulator: the chart's RBAC is enough. Under
//!    `policyMode: enforce` the object is granted by a ComputeAccessPolicy that selects its namespace by label,
//!    so reading the policies and the namespace's labels is proven too. With leader election on, the
//!    controller also takes the chart's Lease.
//! 3. Least privilege: `kubectl auth can-i --list` in each relevant namespace, minus what a ServiceAccount
//!    without any binding has, is exactly the expected set of rules; and targeted
//!    `kubectl auth can-i --as=system:serviceaccount:<ns>:<sa>` checks: no Secrets, no wildcard, no
//!    create/delete of the resource, no Leases unless leader election is on (and then only the release's own
//!    Lease in its own namespace).
//! 4. `kubectl apply --dry-run=server -k deploy/` is accepted by the API server.
//!
//! No pods run (there is no kubelet or controller-manager); only the objects are checked. Needs helm
//! (`$HELM_BIN` or `bash tests/controlplane/build.sh helm`), kubectl (`$KUBECTL_BIN`, PATH or the one build.sh
//! builds) and the control-plane binaries; FAILS (never skips) without them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use clap::{ArgAction, CommandFactory as _, Parser};
use compute_operator::api::{CredentialSource, Credentials, InstanceStatus, Secret};
use compute_operator::config::RunArgs;
use compute_operator::crd::access_policy::{
    ComputeAccessPolicy, ComputeAccessPolicySpec, InstanceMatch, NamespaceMatch, PolicyMode,
};
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::sim::{SimConfig, SimServer};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use support::*;

const CHART: &str = "charts/compute-operator";
const CIA: &str = "computeinstanceactions.compute.threatwinds.com";
const CFA: &str = "computefleetactions.compute.threatwinds.com";
const CPS: &str = "computepowerschedules.compute.threatwinds.com";
const POLICY_CRD: &str = "computeaccesspolicies.compute.threatwinds.com";
const SIM_TOKEN: &str = "dev-admin-token";

/// A cluster-wide controller sees every ComputeInstanceAction of the shared control plane: controllers run
/// one at a time, and each run deletes its objects before it lets go.
static OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helm_bin() -> PathBuf {
    compute_operator::devenv::binaries::helm().unwrap_or_else(|e| panic!("helm is required for this test: {e}"))
}

/// `$KUBECTL_BIN`, else kubectl on PATH, else the one `tests/controlplane/build.sh` builds.
fn kubectl_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KUBECTL_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("kubectl").is_file()))
        .unwrap_or(false);
    if on_path {
        return PathBuf::from("kubectl");
    }
    let built = compute_operator::devenv::binaries::cache_root()
        .join(format!("k8s-{}", compute_operator::devenv::binaries::K8S_VERSION))
        .join("kubectl");
    assert!(
        built.is_file(),
        "kubectl is required for this test: none on PATH, none at {} (set KUBECTL_BIN or run `bash tests/controlplane/build.sh all`)",
        built.display()
    );
    built
}

fn admin_kubeconfig() -> String {
    control_plane().kubeconfig.display().to_string()
}

async fn exec(program: &Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in 60s", program.display()))
        .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", program.display()))
}

fn success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl as the control plane's admin.
async fn kubectl(args: &[&str]) -> Output {
    let kc = admin_kubeconfig();
    let mut all = vec!["--kubeconfig", kc.as_str()];
    all.extend_from_slice(args);
    exec(&kubectl_bin(), &all).await
}

// ---------------------------------------------------------------------------------------------------------------
// Releases
// ---------------------------------------------------------------------------------------------------------------

/// One `helm install` of the chart.
struct Release {
    namespace: String,
    /// The chart's full name: `<release>-compute-operator`; also the ServiceAccount, (Cluster)Role and Lease name.
    fullname: String,
}

impl Release {
    fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.fullname)
    }
}

/// Installs the chart into a fresh namespace (its name is the release name, so cluster-scoped names never
/// collide between tests) and checks what helm printed.
async fn install(client: &Client, prefix: &str, values: &[&str]) -> Release {
    let namespace = namespace(client, prefix).await;
    let kc = admin_kubeconfig();
    let mut args = vec![
        "install",
        namespace.as_str(),
        CHART,
        "--namespace",
        namespace.as_str(),
        "--kubeconfig",
        kc.as_str(),
    ];
    for v in values {
        args.extend(["--set", v]);
    }
    let out = exec(&helm_bin(), &args).await;
    let stdout = success(&out, &format!("helm {args:?}"));
    assert!(
        stdout.contains("STATUS: deployed"),
        "helm install did not report a deployed release:\n{stdout}"
    );
    Release {
        fullname: format!("{namespace}-compute-operator"),
        namespace,
    }
}

async fn must_exist<K>(api: Api<K>, name: &str) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match api.get_opt(name).await.expect("get") {
        Some(o) => o,
        None => panic!(
            "{} {name} does not exist after helm install",
            K::kind(&K::DynamicType::default())
        ),
    }
}

async fn must_not_exist<K>(api: Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    assert!(
        api.get_opt(name).await.expect("get").is_none(),
        "{} {name} exists but should not",
        K::kind(&K::DynamicType::default())
    );
}

/// The objects every install creates in the release namespace; returns the Deployment.
async fn assert_common_objects(client: &Client, r: &Release) -> Deployment {
    let ns = &r.namespace;
    let sa = must_exist(Api::<ServiceAccount>::namespaced(client.clone(), ns), &r.fullname).await;
    assert_eq!(
        sa.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("Helm")
    );
    let svc = must_exist(
        Api::<Service>::namespaced(client.clone(), ns),
        &format!("{}-metrics", r.fullname),
    )
    .await;
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    assert!(
        ports.iter().any(|p| p.name.as_deref() == Some("metrics")),
        "the Service has no metrics port: {ports:?}"
    );
    let deploy = must_exist(Api::<Deployment>::namespaced(client.clone(), ns), &r.fullname).await;
    let pod = deploy.spec.template.spec.as_ref().expect("pod template");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(r.fullname.as_str()),
        "the Deployment runs as the chart's ServiceAccount"
    );
    // Nothing in the chart grants anything on Secrets (checked with can-i below); no Secret is created either.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    must_not_exist(secrets, &format!("{}-credentials", r.fullname)).await;
    deploy
}

// ---------------------------------------------------------------------------------------------------------------
// The controller, in process, as the chart's ServiceAccount
// ---------------------------------------------------------------------------------------------------------------

/// A client authenticated with a TokenRequest token of the release's ServiceAccount.
async fn service_account_client(r: &Release) -> Client {
    let out = kubectl(&["create", "token", &r.fullname, "-n", &r.namespace]).await;
    let token = success(&out, "kubectl create token").trim().to_owned();
    assert!(!token.is_empty(), "kubectl create token printed no token");
    let kubeconfig = control_plane().kubeconfig_for("sa", &token);
    let client = control_plane()
        .client_for_kubeconfig(&kubeconfig)
        .await
        .expect("service account client");
    // Prove the client really is the ServiceAccount (and not the admin).
    let review = Api::<k8s_openapi::api::authentication::v1::SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &Default::default())
        .await;
    let user = review
        .expect("SelfSubjectReview")
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(user.as_deref(), Some(r.subject().as_str()));
    client
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// The operator's settings exactly as the chart's Deployment sets them (every `value:` environment variable
/// turned into its flag), with `overrides` (flag → value) for what differs outside a pod.
fn run_args_from_deployment(deploy: &Deployment, overrides: &[(&str, &str)]) -> RunArgs {
    let container = deploy
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.iter().find(|c| c.name == "operator"))
        .expect("the Deployment has an operator container");
    let command = Cli::command();
    let mut flags: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for env in container.env.iter().flatten() {
        let Some(value) = &env.value else { continue };
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(&env.name)))
        else {
            continue;
        };
        let long = arg.get_long().expect("every run setting has a long flag");
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        flags.insert(long.to_owned(), (value.clone(), switch));
    }
    for (flag, value) in overrides {
        let switch = flags.get(*flag).is_some_and(|(_, s)| *s);
        flags.insert((*flag).to_owned(), ((*value).to_owned(), switch));
    }
    let mut argv = vec!["compute-operator".to_owned()];
    for (flag, (value, switch)) in &flags {
        if *switch {
            if value == "true" {
                argv.push(format!("--{flag}"));
            }
        } else {
            argv.push(format!("--{flag}={value}"));
        }
    }
    Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the Deployment's settings do not parse ({argv:?}): {e}"))
        .run
}

fn sim_config() -> SimConfig {
    SimConfig {
        instances: 0,
        transition: Duration::from_millis(200),
        ..SimConfig::default()
    }
}

fn add_instance(sim: &SimServer, id: &str, status: InstanceStatus) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.status = status;
    sim.upsert_instance(i);
}

/// Runs `operator::run_with` as the ServiceAccount until every `(namespace, name)` in `objects` is Ready, then
/// stops it gracefully (the run must end with Ok). Polled in this task: `run_with`'s future is not `Send`.
async fn run_until_ready(client: Client, args: RunArgs, objects: &[(String, String)]) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let operator = compute_operator::operator::run_with(
        args,
        CredentialSource::Static(Credentials::Bearer(Secret::new(SIM_TOKEN))),
        client,
        shutdown,
    );
    tokio::pin!(operator);
    let admin = support::client().await;
    for (ns, name) in objects {
        let api: Api<ComputeInstanceAction> = Api::namespaced(admin.clone(), ns);
        let settled = wait_for(&api, name, Duration::from_secs(30), "Ready", |o| {
            condition(o, "Ready").is_some() || condition(o, "Stalled").is_some()
        });
        tokio::select! {
            o = settled => assert!(
                condition(&o, "Ready").is_some(),
                "{ns}/{name} stalled instead of becoming Ready: {}",
                serde_json::to_string_pretty(&o.status).unwrap_or_default()
            ),
            end = &mut operator => panic!("the operator stopped before {ns}/{name} was Ready: {end:?}"),
        }
    }
    let _ = stop.send(());
    let end = tokio::time::timeout(Duration::from_secs(20), operator)
        .await
        .expect("the operator stops within 20s");
    if let Err(e) = end {
        panic!("the operator ended with an error: {e:#}");
    }
}

async fn create_cia(client: &Client, ns: &str, name: &str, instance: &str) {
    Api::<ComputeInstanceAction>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &cia(name, instance, DesiredState::Stopped, None),
        )
        .await
        .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"));
}

async fn delete_cia(client: &Client, ns: &str, name: &str) {
    let _ = Api::<ComputeInstanceAction>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await;
}

/// Under `--policy-mode enforce` (the operator's default) nothing is acted on without a ComputeAccessPolicy:
/// grants the namespaces (selected by a label, so the operator must be able to read their labels) the
/// instances, for `stopped`. Returns the policy's name, or `None` when the settings turn policies off.
async fn grant_policy(
    admin: &Client,
    args: &RunArgs,
    tag: &str,
    namespaces: &[&str],
    instances: &[&str],
) -> Option<String> {
    if args.policy_mode != PolicyMode::Enforce {
        return None;
    }
    let label = "packaging-test.compute.threatwinds.com/grant";
    let nss: Api<Namespace> = Api::all(admin.clone());
    for ns in namespaces {
        let patch = serde_json::json!({ "metadata": { "labels": { label: tag } } });
        nss.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("label namespace {ns}: {e}"));
    }
    let name = format!("packaging-{tag}");
    let policy = ComputeAccessPolicy::new(
        &name,
        ComputeAccessPolicySpec {
            namespaces: NamespaceMatch {
                names: None,
                selector: Some(LabelSelector {
                    match_labels: Some([(label.to_owned(), tag.to_owned())].into()),
                    ..Default::default()
                }),
            },
            instances: InstanceMatch {
                ids: Some(instances.iter().map(|i| (*i).to_owned()).collect()),
                ..Default::default()
            },
            desired_states: vec![DesiredState::Stopped],
        },
    );
    Api::<ComputeAccessPolicy>::all(admin.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap_or_else(|e| panic!("create ComputeAccessPolicy {name}: {e}"));
    Some(name)
}

async fn delete_policy(admin: &Client, name: Option<String>) {
    if let Some(name) = name {
        let _ = Api::<ComputeAccessPolicy>::all(admin.clone())
            .delete(&name, &DeleteParams::default())
            .await;
    }
}

/// The read-only policies ClusterRole(Binding) exist exactly when the Deployment enforces policies.
async fn assert_policy_rbac(admin: &Client, r: &Release, args: &RunArgs) {
    let name = format!("{}-policies", r.fullname);
    if args.policy_mode == PolicyMode::Enforce {
        must_exist(Api::<ClusterRole>::all(admin.clone()), &name).await;
        must_exist(Api::<ClusterRoleBinding>::all(admin.clone()), &name).await;
    } else {
        must_not_exist(Api::<ClusterRole>::all(admin.clone()), &name).await;
        must_not_exist(Api::<ClusterRoleBinding>::all(admin.clone()), &name).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kubectl auth can-i
// ---------------------------------------------------------------------------------------------------------------

/// One permission as `kubectl auth can-i --list` prints it: (resource[.group][/subresource], resource names, verb).
type Grant = (String, String, String);

fn grant_set(list: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    let mut set = BTreeSet::new();
    for (resource, names, verbs) in list {
        for verb in *verbs {
            set.insert(((*resource).to_owned(), (*names).to_owned(), (*verb).to_owned()));
        }
    }
    set
}

/// What the controller needs in a namespace it serves.
fn controller_grants() -> BTreeSet<Grant> {
    grant_set(&[
        // create/delete/patch: a fleet's children.
        (CIA, "", &["get", "list", "watch", "create", "delete", "patch"]),
        (&format!("{CIA}/status"), "", &["patch", "update"]),
        // create/delete/patch: a schedule's children.
        (CFA, "", &["get", "list", "watch", "create", "delete", "patch"]),
        (&format!("{CFA}/status"), "", &["patch", "update"]),
        (CPS, "", &["get", "list", "watch"]),
        (&format!("{CPS}/status"), "", &["patch", "update"]),
        (&format!("{CFA}/finalizers"), "", &["update"]),
        (&format!("{CPS}/finalizers"), "", &["update"]),
        ("events", "", &["create", "patch"]),
        ("events.events.k8s.io", "", &["create", "patch"]),
    ])
}

/// The cluster-scoped reads (visible from every namespace): change control's windows and budgets (always, and
/// their status), and the guardrails' policies (with policies enforced).
fn cluster_grants(args: &RunArgs) -> BTreeSet<Grant> {
    let mut grants = grant_set(&[
        (
            "computemaintenancewindows.compute.threatwinds.com",
            "",
            &["get", "list", "watch"],
        ),
        (
            "computedisruptionbudgets.compute.threatwinds.com",
            "",
            &["get", "list", "watch"],
        ),
        (
            "computemaintenancewindows.compute.threatwinds.com/status",
            "",
            &["get", "patch"],
        ),
        (
            "computedisruptionbudgets.compute.threatwinds.com/status",
            "",
            &["get", "patch"],
        ),
    ]);
    if args.policy_mode == PolicyMode::Enforce {
        grants.extend(grant_set(&[(POLICY_CRD, "", &["get", "list", "watch"])]));
    }
    grants
}

/// The watch of namespace labels (policies and windows select by them), in every policy mode: every namespace
/// (`names` empty) or only the one served.
fn namespace_grants(_args: &RunArgs, names: &str) -> BTreeSet<Grant> {
    // Cluster-wide the labels are watched; a namespaced Role can grant only `get` of its own namespace.
    let verbs: &[&str] = if names.is_empty() {
        &["get", "list", "watch"]
    } else {
        &["get"]
    };
    grant_set(&[("namespaces", names, verbs)])
}

fn union(sets: &[&BTreeSet<Grant>]) -> BTreeSet<Grant> {
    sets.iter().flat_map(|s| s.iter().cloned()).collect()
}

/// The resource rules `kubectl auth can-i --list -n <ns> --as=<subject>` reports.
async fn listed_grants(subject: &str, ns: &str) -> BTreeSet<Grant> {
    let as_flag = format!("--as={subject}");
    let out = kubectl(&["auth", "can-i", "--list", "-n", ns, &as_flag]).await;
    let text = success(&out, &format!("kubectl auth can-i --list -n {ns} {as_flag}"));
    let bracketed = |s: &str| -> Vec<String> {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut set = BTreeSet::new();
    for line in text.lines().skip(1) {
        // Non-resource URL rows have an empty first column.
        if line.is_empty() || line.starts_with(char::is_whitespace) {
            continue;
        }
        let cols: Vec<&str> = line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(cols.len(), 4, "unexpected can-i --list row: {line:?}");
        let names = bracketed(cols[2]).join(" ");
        for verb in bracketed(cols[3]) {
            set.insert((cols[0].to_owned(), names.clone(), verb));
        }
    }
    set
}

/// In every namespace given, the ServiceAccount has exactly the expected permissions beyond what any
/// ServiceAccount without bindings has (discovery, self reviews): nothing more, nothing less.
async fn assert_exact_grants(r: &Release, expected: Vec<(String, BTreeSet<Grant>)>) {
    let subject = r.subject();
    let nobody = format!("system:serviceaccount:{}:no-bindings", r.namespace);
    let mut wrong = Vec::new();
    for (ns, want) in expected {
        let (have, baseline) = tokio::join!(listed_grants(&subject, &ns), listed_grants(&nobody, &ns));
        let have: BTreeSet<Grant> = have.difference(&baseline).cloned().collect();
        let extra: Vec<&Grant> = have.difference(&want).collect();
        let missing: Vec<&Grant> = want.difference(&have).collect();
        if !extra.is_empty() || !missing.is_empty() {
            wrong.push(format!(
                "  in namespace {ns}: more than expected {extra:?}, missing {missing:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the RBAC of {subject} is not what the chart promises:\n{}",
        wrong.join("\n")
    );
}

/// `kubectl auth can-i <args> --as=<subject>` as the admin.
async fn can_i(subject: &str, args: &[String]) -> bool {
    let as_flag = format!("--as={subject}");
    let mut all = vec!["auth", "can-i"];
    all.extend(args.iter().map(String::as_str));
    all.push(&as_flag);
    let out = kubectl(&all).await;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {args:?}: unexpected answer ({}):\nstdout: {answer}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asks every `(expected, can-i arguments)`, three at a time, and fails listing all the wrong answers.
async fn assert_can_i(r: &Release, cases: &[(bool, Vec<String>)]) {
    use futures::StreamExt as _;
    let subject = r.subject();
    let subject = subject.as_str();
    let answers: Vec<(bool, &Vec<String>, bool)> = futures::stream::iter(cases)
        .map(|(want, args)| async move { (*want, args, can_i(subject, args).await) })
        .buffered(3)
        .collect()
        .await;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(want, _, got)| want != got)
        .map(|(want, args, got)| {
            format!(
                "  can-i {}: expected {}, got {}",
                args.join(" "),
                yes_no(*want),
                yes_no(*got)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "RBAC of {subject} is not what the chart promises:\n{}",
        wrong.join("\n")
    );
}

fn yes(args: &[&str]) -> (bool, Vec<String>) {
    (true, args.iter().map(|s| (*s).to_owned()).collect())
}

fn no(args: &[&str]) -> (bool, Vec<String>) {
    (false, args.iter().map(|s| (*s).to_owned()).collect())
}

/// What no install grants: Secrets, a wildcard, replacing an instance action's or fleet's spec, creating, deleting
/// or writing a schedule (the operator creates and deletes only children: instance actions of a fleet, fleets of a
/// schedule).
fn never(ns: &str) -> Vec<(bool, Vec<String>)> {
    vec![
        no(&["list", "secrets", "--all-namespaces"]),
        no(&["watch", "secrets", "--all-namespaces"]),
        no(&["get", "secrets", "--all-namespaces"]),
        no(&["list", "secrets", "-n", ns]),
        no(&["get", "secrets", "-n", ns]),
        no(&["*", "*", "--all-namespaces"]),
        no(&["*", "*", "-n", ns]),
        no(&["update", CIA, "-n", ns]),
        no(&["update", CFA, "-n", ns]),
        no(&["create", CPS, "-n", ns]),
        no(&["delete", CPS, "-n", ns]),
        no(&["update", CPS, "-n", ns]),
        no(&["patch", CPS, "-n", ns]),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_install_is_enough_and_no_more() {
    let admin = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let names = [CIA, POLICY_CRD];
    let mut before = Vec::new();
    for name in names {
        let crd = crds.get(name).await.expect("the harness installed the CRDs");
        before.push(crd.resource_version());
    }

    // Leader election (on by default) has its own test below; this one checks the rest with it off.
    let r = install(&admin, "pkg-cw", &["leaderElection.enabled=false"]).await;

    // helm skips the CRDs of crds/ that already exist: untouched, not adopted.
    for (name, before) in names.into_iter().zip(before) {
        let after = crds.get(name).await.expect("CRD");
        assert_eq!(
            after.resource_version(),
            before,
            "helm install changed the existing CRD {name}"
        );
        assert!(
            !after.labels().contains_key("app.kubernetes.io/managed-by"),
            "helm adopted the existing CRD {name}"
        );
    }

    let deploy = assert_common_objects(&admin, &r).await;
    must_exist(Api::<ClusterRole>::all(admin.clone()), &r.fullname).await;
    let binding = must_exist(Api::<ClusterRoleBinding>::all(admin.clone()), &r.fullname).await;
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        (
            binding.role_ref.name.as_str(),
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        (
            r.fullname.as_str(),
            "ServiceAccount",
            r.fullname.as_str(),
            Some(r.namespace.as_str())
        )
    );
    // Leader election off: no Lease Role.
    must_not_exist(
        Api::<Role>::namespaced(admin.clone(), &r.namespace),
        &format!("{}-leader-election", r.fullname),
    )
    .await;

    // The controller, as the ServiceAccount, with the Deployment's settings, on an object in another namespace.
    let work = namespace(&admin, "pkg-cw-work").await;
    let sa = service_account_client(&r).await;
    let sim = simulator(sim_config()).await;
    add_instance(&sim, "i-cw", InstanceStatus::Running);
    let args = run_args_from_deployment(&deploy, &[("api-url", sim.base_url()), ("metrics-addr", "127.0.0.1:0")]);
    assert!(
        args.namespaces().is_empty() && !args.leader_election,
        "default values: all namespaces, no leader election ({args:?})"
    );
    assert_eq!(args.policy_mode, PolicyMode::Enforce, "default values");
    assert_policy_rbac(&admin, &r, &args).await;
    {
        let _one = OPERATOR.lock().await;
        let policy = grant_policy(&admin, &args, &work, &[&work], &["i-cw"]).await;
        create_cia(&admin, &work, "stop-cw", "i-cw").await;
        run_until_ready(sa, args.clone(), &[(work.clone(), "stop-cw".into())]).await;
        delete_cia(&admin, &work, "stop-cw").await;
        delete_policy(&admin, policy).await;
    }
    assert_eq!(audit_for(&sim, "i-cw"), vec!["stop"]);

    // Exactly the controller's permissions, in every namespace (and the guardrails' reads).
    let everywhere = union(&[
        &controller_grants(),
        &cluster_grants(&args),
        &namespace_grants(&args, ""),
    ]);
    assert_exact_grants(
        &r,
        vec![(r.namespace.clone(), everywhere.clone()), (work.clone(), everywhere)],
    )
    .await;
    let mut cases = never(&work);
    cases.extend([
        no(&["list", "secrets", "-n", &r.namespace]),
        no(&["delete", CPS, "--all-namespaces"]),
        no(&["create", "leases", "-n", &r.namespace]),
        no(&["update", "leases", "-n", &r.namespace]),
        no(&["get", "leases", "--all-namespaces"]),
        yes(&["list", CIA, "--all-namespaces"]),
        yes(&["watch", CIA, "--all-namespaces"]),
        yes(&["patch", CIA, "--subresource=status", "-n", &work]),
        yes(&["create", "events", "-n", &work]),
        yes(&["create", "events.events.k8s.io", "-n", &work]),
    ]);
    assert_can_i(&r, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_install_is_enough_and_no_more() {
    let admin = client().await;
    let team_a = namespace(&admin, "pkg-team-a").await;
    let team_b = namespace(&admin, "pkg-team-b").await;
    let other = namespace(&admin, "pkg-other").await;
    let watch = format!("watchNamespaces={{{team_a},{team_b}}}");
    let r = install(&admin, "pkg-ns", &[&watch, "leaderElection.enabled=false"]).await;

    let deploy = assert_common_objects(&admin, &r).await;
    for ns in [&team_a, &team_b] {
        must_exist(Api::<Role>::namespaced(admin.clone(), ns), &r.fullname).await;
        let binding = must_exist(Api::<RoleBinding>::namespaced(admin.clone(), ns), &r.fullname).await;
        assert_eq!(
            (binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()),
            ("Role", r.fullname.as_str())
        );
    }
    for ns in [&r.namespace, &other] {
        must_not_exist(Api::<Role>::namespaced(admin.clone(), ns), &r.fullname).await;
    }
    // No cluster-wide access to the resource.
    must_not_exist(Api::<ClusterRole>::all(admin.clone()), &r.fullname).await;
    must_not_exist(Api::<ClusterRoleBinding>::all(admin.clone()), &r.fullname).await;

    let sa = service_account_client(&r).await;
    let sim = simulator(sim_config()).await;
    for id in ["i-a", "i-b", "i-other"] {
        add_instance(&sim, id, InstanceStatus::Running);
    }
    let args = run_args_from_deployment(&deploy, &[("api-url", sim.base_url()), ("metrics-addr", "127.0.0.1:0")]);
    assert_eq!(args.namespaces(), vec![team_a.clone(), team_b.clone()]);
    assert_policy_rbac(&admin, &r, &args).await;
    {
        let _one = OPERATOR.lock().await;
        let policy = grant_policy(
            &admin,
            &args,
            &r.namespace,
            &[&team_a, &team_b, &other],
            &["i-a", "i-b", "i-other"],
        )
        .await;
        create_cia(&admin, &team_a, "stop-a", "i-a").await;
        create_cia(&admin, &team_b, "stop-b", "i-b").await;
        create_cia(&admin, &other, "stop-other", "i-other").await;
        run_until_ready(
            sa,
            args.clone(),
            &[(team_a.clone(), "stop-a".into()), (team_b.clone(), "stop-b".into())],
        )
        .await;
        // The object outside the watched namespaces was never touched.
        let untouched = Api::<ComputeInstanceAction>::namespaced(admin.clone(), &other)
            .get("stop-other")
            .await
            .expect("get");
        assert!(
            untouched.status.is_none(),
            "an unwatched namespace was reconciled: {:?}",
            untouched.status
        );
        for (ns, name) in [(&team_a, "stop-a"), (&team_b, "stop-b"), (&other, "stop-other")] {
            delete_cia(&admin, ns, name).await;
        }
        delete_policy(&admin, policy).await;
    }
    assert_eq!(audit_for(&sim, "i-a"), vec!["stop"]);
    assert_eq!(audit_for(&sim, "i-b"), vec!["stop"]);
    assert!(audit_for(&sim, "i-other").is_empty());

    // The controller's permissions in the watched namespaces only; elsewhere at most the policies' read.
    let watched = |ns: &str| {
        union(&[
            &controller_grants(),
            &cluster_grants(&args),
            &namespace_grants(&args, ns),
        ])
    };
    assert_exact_grants(
        &r,
        vec![
            (team_a.clone(), watched(&team_a)),
            (team_b.clone(), watched(&team_b)),
            (r.namespace.clone(), cluster_grants(&args)),
            (other.clone(), cluster_grants(&args)),
        ],
    )
    .await;
    let other_ns = format!("namespaces/{other}");
    let mut cases = never(&team_a);
    cases.extend([
        no(&["list", "secrets", "-n", &r.namespace]),
        no(&["list", CIA, "--all-namespaces"]),
        no(&["watch", CIA, "--all-namespaces"]),
        no(&["list", CIA, "-n", &r.namespace]),
        no(&["list", CIA, "-n", &other]),
        no(&["patch", CIA, "--subresource=status", "-n", &other]),
        no(&["create", "events", "-n", &other]),
        no(&["get", &other_ns]),
        no(&["create", "leases", "-n", &r.namespace]),
        no(&["update", "leases", "-n", &r.namespace]),
        yes(&["list", CIA, "-n", &team_b]),
        yes(&["watch", CIA, "-n", &team_a]),
        yes(&["patch", CIA, "--subresource=status", "-n", &team_a]),
        yes(&["patch", CIA, "--subresource=status", "-n", &team_b]),
        yes(&["create", "events", "-n", &team_b]),
    ]);
    assert_can_i(&r, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_grants_only_the_own_lease() {
    let admin = client().await;
    let team = namespace(&admin, "pkg-le-team").await;
    let watch = format!("watchNamespaces={{{team}}}");
    // Policies off here (the other tests enforce them): nothing is granted for them.
    let r = install(
        &admin,
        "pkg-le",
        &[&watch, "leaderElection.enabled=true", "policyMode=off"],
    )
    .await;

    let deploy = assert_common_objects(&admin, &r).await;
    let lease_role = format!("{}-leader-election", r.fullname);
    must_exist(Api::<Role>::namespaced(admin.clone(), &r.namespace), &lease_role).await;
    must_exist(Api::<RoleBinding>::namespaced(admin.clone(), &r.namespace), &lease_role).await;

    // The controller takes the chart's Lease with nothing but the chart's RBAC. POD_NAMESPACE (the downward
    // API in a pod) becomes --lease-namespace.
    let sa = service_account_client(&r).await;
    let sim = simulator(sim_config()).await;
    add_instance(&sim, "i-le", InstanceStatus::Running);
    let args = run_args_from_deployment(
        &deploy,
        &[
            ("api-url", sim.base_url()),
            ("metrics-addr", "127.0.0.1:0"),
            ("lease-namespace", &r.namespace),
        ],
    );
    assert!(args.leader_election, "leaderElection.enabled=true: {args:?}");
    assert_eq!(args.lease_name, r.fullname);
    assert_eq!(args.policy_mode, PolicyMode::Off);
    assert_policy_rbac(&admin, &r, &args).await;
    {
        let _one = OPERATOR.lock().await;
        let policy = grant_policy(&admin, &args, &team, &[&team], &["i-le"]).await;
        create_cia(&admin, &team, "stop-le", "i-le").await;
        run_until_ready(sa, args.clone(), &[(team.clone(), "stop-le".into())]).await;
        delete_cia(&admin, &team, "stop-le").await;
        delete_policy(&admin, policy).await;
    }
    assert_eq!(audit_for(&sim, "i-le"), vec!["stop"]);
    let lease = must_exist(Api::<Lease>::namespaced(admin.clone(), &r.namespace), &r.fullname).await;
    assert!(
        lease.spec.is_some_and(|s| s.lease_transitions.is_some()),
        "the operator wrote the chart's Lease"
    );

    // Leases: create (cannot be limited by name) and get/update of its own Lease, in its own namespace only.
    let own = grant_set(&[
        ("leases.coordination.k8s.io", "", &["create"]),
        ("leases.coordination.k8s.io", &r.fullname, &["get", "update"]),
    ]);
    assert_exact_grants(
        &r,
        vec![
            (r.namespace.clone(), union(&[&own, &cluster_grants(&args)])),
            (
                team.clone(),
                union(&[
                    &controller_grants(),
                    &cluster_grants(&args),
                    &namespace_grants(&args, &team),
                ]),
            ),
        ],
    )
    .await;
    let lease = format!("leases/{}", r.fullname);
    let mut cases = never(&team);
    cases.extend([
        no(&["list", "secrets", "-n", &r.namespace]),
        yes(&["create", "leases", "-n", &r.namespace]),
        yes(&["get", &lease, "-n", &r.namespace]),
        yes(&["update", &lease, "-n", &r.namespace]),
        no(&["update", "leases/another-lease", "-n", &r.namespace]),
        no(&["update", "leases", "-n", &r.namespace]),
        no(&["delete", &lease, "-n", &r.namespace]),
        no(&["list", "leases", "-n", &r.namespace]),
        no(&["create", "leases", "-n", &team]),
        no(&["update", &lease, "-n", &team]),
        no(&["create", "leases", "-n", "kube-system"]),
        no(&["create", "leases", "--all-namespaces"]),
        yes(&["patch", CIA, "--subresource=status", "-n", &team]),
        yes(&["create", "events", "-n", &team]),
    ]);
    assert_can_i(&r, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_kustomization_passes_a_server_side_dry_run() {
    control_plane();
    // A server-side dry run persists nothing, so every object in the new namespace would be refused with
    // "namespaces not found": the Namespace is applied first, as the first real apply would create it. Its
    // "restricted" Pod Security label makes the dry run check the Deployment's pod against that standard.
    let out = kubectl(&["apply", "-f", "deploy/base/namespace.yaml"]).await;
    success(&out, "kubectl apply -f deploy/base/namespace.yaml");

    let out = kubectl(&["kustomize", "deploy/"]).await;
    let rendered = success(&out, "kubectl kustomize deploy/");
    let objects = rendered
        .split("\n---\n")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .count();
    let out = kubectl(&["apply", "--dry-run=server", "-k", "deploy/"]).await;
    let stdout = success(&out, "kubectl apply --dry-run=server -k deploy/");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let accepted = stdout.lines().filter(|l| l.ends_with("(server dry run)")).count();
    assert_eq!(
        accepted, objects,
        "every object of deploy/ is accepted by the API server:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("PodSecurity"),
        "the Deployment violates the namespace's Pod Security level:\n{stderr}"
    );
    for object in [
        "namespace/compute-operator",
        "customresourcedefinition.apiextensions.k8s.io/computeinstanceactions.compute.threatwinds.com",
        "customresourcedefinition.apiextensions.k8s.io/computeaccesspolicies.compute.threatwinds.com",
        "serviceaccount/compute-operator",
        "clusterrole.rbac.authorization.k8s.io/compute-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/compute-operator",
        "service/compute-operator-metrics",
        "deployment.apps/compute-operator",
    ] {
        assert!(stdout.contains(object), "{object} missing from the dry run:\n{stdout}");
    }
}
