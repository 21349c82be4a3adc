//! CRDs that upgrade (cert-manager's convention: `crds.enabled`, `crds.keep`):
//!
//! 1. Static: off by default; when on, the templated CRDs are the files of crds/ (one source) plus the release's
//!    labels and, with `crds.keep`, `helm.sh/resource-policy: keep`.
//! 2. On the real API server: a release installed from a chart whose CRD lacks a field (`spec.dryRun`) prunes
//!    that field; `helm upgrade` to the current chart updates the CRD and the field is served (an object
//!    keeps it); `helm uninstall` leaves the CRDs and the objects.
//! 3. On the real API server: a release installed the old way (CRDs from crds/, unowned) moves to
//!    `crds.enabled=true` after the documented adoption (label + annotate), and its upgrade updates the CRD.
//!
//! Needs helm and the control-plane binaries; FAILS (never skips) without them.

mod chart_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chart_support::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_norway::Value;
use support::{client, control_plane, namespace};

const CIA_CRD: &str = "computeinstanceactions.compute.threatwinds.com";

/// Every CRD the chart ships (the same list `crds/` is generated from).
fn all_crds() -> Vec<String> {
    compute_operator::crd::crds()
        .into_iter()
        .filter_map(|(_, crd)| crd.metadata.name)
        .collect()
}
const CIA_FILE: &str = "crds/computeinstanceactions.yaml";
/// The field the "older" chart's CRD lacks.
const NEW_FIELD: &str = "dryRun";

/// Both cluster tests replace the CRDs of this binary's control plane: one at a time.
static CRDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// YAML as JSON with every number a float (Helm's fromYaml/toYaml turns `86400.0` into `86400`).
fn normalized(v: &Value) -> serde_json::Value {
    fn floats(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) => serde_json::json!(n.as_f64().unwrap_or_default()),
            serde_json::Value::Array(a) => a.into_iter().map(floats).collect(),
            serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, floats(v))).collect(),
            other => other,
        }
    }
    floats(serde_json::to_value(v).expect("YAML as JSON"))
}

fn crd_files() -> Vec<Value> {
    let dir = root().join(CHART).join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("chart crds/")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| parse_stream(&std::fs::read_to_string(p).expect("CRD file")))
        .collect()
}

#[test]
fn templated_crds_are_the_crds_dir_plus_release_metadata() {
    assert!(
        of_kind(&template(&[]), "CustomResourceDefinition").is_empty(),
        "crds.enabled is off by default (the CRDs come from crds/)"
    );
    lint(&["--set", "crds.enabled=true"]);
    let docs = template(&["--set", "crds.enabled=true"]);
    let templated = of_kind(&docs, "CustomResourceDefinition");
    let files = crd_files();
    assert_eq!(templated.len(), files.len(), "one templated CRD per file in crds/");
    for file in &files {
        let name = str_at(file, &["metadata", "name"]);
        let t = templated
            .iter()
            .find(|d| str_at(d, &["metadata", "name"]) == name)
            .unwrap_or_else(|| panic!("{name} is not templated"));
        assert_eq!(
            str_at(t, &["metadata", "labels", "app.kubernetes.io/managed-by"]),
            "Helm"
        );
        assert_eq!(
            str_at(t, &["metadata", "annotations", "helm.sh/resource-policy"]),
            "keep"
        );
        let mut stripped = (*t).clone();
        let meta = stripped["metadata"].as_mapping_mut().expect("metadata");
        meta.remove("labels");
        meta.remove("annotations");
        assert_eq!(
            normalized(&stripped),
            normalized(file),
            "{name}: the templated CRD differs from crds/ beyond labels and annotations"
        );
    }
    let unkept = template(&["--set", "crds.enabled=true", "--set", "crds.keep=false"]);
    for crd in of_kind(&unkept, "CustomResourceDefinition") {
        assert!(at(crd, &["metadata", "annotations", "helm.sh/resource-policy"]).is_none());
    }
}

// -------------------------------------------------------------------------------------------------------------
// On the real API server
// -------------------------------------------------------------------------------------------------------------

async fn helm_cmd(args: &[&str]) -> String {
    let kc = control_plane().kubeconfig.display().to_string();
    let mut cmd = tokio::process::Command::new(helm());
    cmd.args(args)
        .args(["--kubeconfig", &kc])
        .current_dir(root())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("helm {args:?} did not finish in 120s"))
        .unwrap_or_else(|e| panic!("cannot run helm {args:?}: {e}"));
    ok(&out, &format!("helm {args:?}"))
}

/// A copy of the chart whose ComputeInstanceAction CRD lacks `spec.<NEW_FIELD>`: the release "before".
fn older_chart(dir: &Path) -> std::path::PathBuf {
    let chart = dir.join("compute-operator");
    let out = Command::new("cp")
        .arg("-r")
        .arg(root().join(CHART))
        .arg(&chart)
        .output()
        .expect("cp");
    ok(&out, "copy the chart");
    let path = chart.join(CIA_FILE);
    let mut crd: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for version in crd["spec"]["versions"].as_sequence_mut().expect("versions") {
        let spec_props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .as_mapping_mut()
            .expect("spec properties");
        assert!(
            spec_props.remove(NEW_FIELD).is_some(),
            "the current CRD has spec.{NEW_FIELD}"
        );
    }
    std::fs::write(&path, serde_norway::to_string(&crd).unwrap()).unwrap();
    chart
}

/// How long the API server may take to delete a CRD. Its finalizer lists the objects every 5 s and backs off when
/// the CRD's storage is still settling (the CRDs were installed moments before): a slow machine took over 60 s.
const CRD_DELETE_WAIT: Duration = Duration::from_secs(240);

async fn delete_crds(kube: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(kube.clone());
    for name in all_crds() {
        let name = name.as_str();
        let _ = crds.delete(name, &DeleteParams::default()).await;
    }
    let started = Instant::now();
    let deadline = started + CRD_DELETE_WAIT;
    for name in all_crds() {
        let name = name.as_str();
        while let Some(left) = crds.get_opt(name).await.expect("get CRD") {
            if left.metadata.deletion_timestamp.is_none() {
                // The first delete did not take (an error answered it): ask again, and say what it answered.
                if let Err(e) = crds.delete(name, &DeleteParams::default()).await {
                    eprintln!("delete CRD {name}: {e}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not deleted within {CRD_DELETE_WAIT:?}; its conditions: {:?}",
                left.status.and_then(|s| s.conditions)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("CRDs deleted in {:?}", started.elapsed());
}

fn cia_resource() -> ApiResource {
    ApiResource::erase::<compute_operator::crd::instance_action::ComputeInstanceAction>(&())
}

/// Creates a ComputeInstanceAction with `spec.dryRun: true` (retrying while the CRD is not served yet) and
/// returns whether the field survived (it is pruned when the CRD does not know it).
async fn field_survives(kube: &Client, ns: &str, name: &str) -> bool {
    let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &cia_resource());
    let mut obj = DynamicObject::new(name, &cia_resource());
    obj.data = serde_json::json!({
        "spec": {"instanceId": "inst-crd00001", "desiredState": "running", NEW_FIELD: true}
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(o) => break o,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("cannot create {name}: {e}"),
        }
    };
    created.data["spec"].get(NEW_FIELD) == Some(&serde_json::json!(true))
}

async fn crd(kube: &Client, name: &str) -> Option<CustomResourceDefinition> {
    Api::<CustomResourceDefinition>::all(kube.clone())
        .get_opt(name)
        .await
        .expect("get CRD")
}

/// Waits until a freshly created object keeps the new field (the API server serves the updated schema).
async fn wait_field_served(kube: &Client, ns: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if field_survives(kube, ns, &format!("{prefix}-{i}")).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "spec.{NEW_FIELD} still pruned 30s after the upgrade"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_updates_templated_crds_and_uninstall_keeps_them() {
    let _one = CRDS.lock().await;
    let kube = client().await;
    delete_crds(&kube).await;
    let ns = namespace(&kube, "crd-upgrade").await;
    let dir = tempfile::tempdir().unwrap();
    let old = older_chart(dir.path());
    let old = old.to_str().unwrap();

    // Before: templated CRDs without the field (--skip-crds: crds/ would create unowned copies first).
    helm_cmd(&[
        "install",
        &ns,
        old,
        "-n",
        &ns,
        "--set",
        "crds.enabled=true",
        "--skip-crds",
    ])
    .await;
    let before = crd(&kube, CIA_CRD).await.expect("the release created the CRD");
    assert_eq!(
        before.annotations().get("meta.helm.sh/release-name"),
        Some(&ns),
        "owned by the release"
    );
    assert!(
        !field_survives(&kube, &ns, "before").await,
        "the older CRD prunes spec.{NEW_FIELD}"
    );

    // The upgrade carries the CRD change.
    helm_cmd(&["upgrade", &ns, CHART, "-n", &ns, "--set", "crds.enabled=true"]).await;
    wait_field_served(&kube, &ns, "after").await;
    let after = crd(&kube, CIA_CRD).await.expect("CRD");
    assert_eq!(
        after.annotations().get("helm.sh/resource-policy").map(String::as_str),
        Some("keep")
    );

    // Uninstall keeps the CRDs, and so the objects.
    let out = helm_cmd(&["uninstall", &ns, "-n", &ns]).await;
    eprintln!("helm uninstall: {out}");
    for name in all_crds() {
        let name = name.as_str();
        assert!(crd(&kube, name).await.is_some(), "{name} was deleted with the release");
    }
    let objects: Api<DynamicObject> = Api::namespaced_with(kube.clone(), &ns, &cia_resource());
    assert!(
        objects.get_opt("after-0").await.expect("get").is_some(),
        "objects survive the uninstall"
    );
    restore_harness_crds(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_crds_from_the_crds_dir_adopts_them_and_upgrades() {
    let _one = CRDS.lock().await;
    let kube = client().await;
    delete_crds(&kube).await;
    let ns = namespace(&kube, "crd-adopt").await;
    let dir = tempfile::tempdir().unwrap();
    let old = older_chart(dir.path());
    let old = old.to_str().unwrap();

    // Today's install: CRDs from crds/, not owned by the release.
    helm_cmd(&["install", &ns, old, "-n", &ns]).await;
    let before = crd(&kube, CIA_CRD).await.expect("helm installed crds/");
    assert!(before.annotations().get("meta.helm.sh/release-name").is_none());
    assert!(
        !field_survives(&kube, &ns, "before").await,
        "the older CRD prunes spec.{NEW_FIELD}"
    );

    // Without adoption Helm refuses to take the CRDs over (and says why).
    let kc = control_plane().kubeconfig.display().to_string();
    let refused = Command::new(helm())
        .args([
            "upgrade",
            &ns,
            CHART,
            "-n",
            &ns,
            "--set",
            "crds.enabled=true",
            "--kubeconfig",
            &kc,
        ])
        .current_dir(root())
        .output()
        .expect("helm upgrade");
    assert!(!refused.status.success(), "helm upgrade took over unowned CRDs");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("invalid ownership metadata"), "{err}");

    // The adoption the README documents, then the upgrade.
    for name in all_crds() {
        let name = name.as_str();
        let label = Command::new(kubectl())
            .args([
                "--kubeconfig",
                &kc,
                "label",
                "crd",
                name,
                "app.kubernetes.io/managed-by=Helm",
                "--overwrite",
            ])
            .output()
            .expect("kubectl label");
        ok(&label, "kubectl label crd");
        let annotate = Command::new(kubectl())
            .args(["--kubeconfig", &kc, "annotate", "crd", name, "--overwrite"])
            .arg(format!("meta.helm.sh/release-name={ns}"))
            .arg(format!("meta.helm.sh/release-namespace={ns}"))
            .output()
            .expect("kubectl annotate");
        ok(&annotate, "kubectl annotate crd");
    }
    helm_cmd(&["upgrade", &ns, CHART, "-n", &ns, "--set", "crds.enabled=true"]).await;
    wait_field_served(&kube, &ns, "adopted").await;
    helm_cmd(&["uninstall", &ns, "-n", &ns]).await;
    assert!(crd(&kube, CIA_CRD).await.is_some(), "kept after uninstall");
    restore_harness_crds(&kube).await;
}

/// Leaves the CRDs as the harness installs them (current, unowned), for whatever runs next in this binary.
async fn restore_harness_crds(kube: &Client) {
    delete_crds(kube).await;
    control_plane().install_crds().await.expect("reinstall the CRDs");
    assert!(crd(kube, CIA_CRD).await.is_some());
}
