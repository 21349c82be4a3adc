//! Helm and promtool for the chart tests (monitoring, CRD upgrades): rendering, linting, YAML access.
//! Tools FAIL the test (never skip) when missing, with how to get them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_norway::Value;

pub const CHART: &str = "charts/compute-operator";
pub const RELEASE: &str = "compute-operator";
pub const NAMESPACE: &str = "compute-operator";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn helm() -> PathBuf {
    compute_operator::devenv::binaries::helm().unwrap_or_else(|e| panic!("helm is required for this test: {e}"))
}

/// `$KUBECTL_BIN`, else kubectl on PATH, else the one `tests/controlplane/build.sh` builds.
pub fn kubectl() -> PathBuf {
    if let Some(bin) = std::env::var_os("KUBECTL_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return PathBuf::from("kubectl");
    }
    use compute_operator::devenv::binaries::{K8S_VERSION, cache_root};
    let built = cache_root().join(format!("k8s-{K8S_VERSION}")).join("kubectl");
    assert!(
        built.is_file(),
        "kubectl is required: none on PATH, none at {}",
        built.display()
    );
    built
}

/// `$PROMTOOL_BIN`, else `promtool` on PATH (Debian: `apt-get install -y prometheus`).
pub fn promtool() -> PathBuf {
    let bin = std::env::var_os("PROMTOOL_BIN")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "promtool".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => PathBuf::from(bin),
        _ => panic!("promtool is not available as {bin:?}: `apt-get install -y prometheus` (or set PROMTOOL_BIN)"),
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart (release and namespace `compute-operator`), or helm's error.
pub fn try_template(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = run(Command::new(helm())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(args));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_stream(&String::from_utf8_lossy(&out.stdout)))
}

pub fn template(args: &[&str]) -> Vec<Value> {
    try_template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

pub fn lint(args: &[&str]) {
    let out = run(Command::new(helm()).args(["lint", CHART, "--strict"]).args(args));
    ok(&out, &format!("helm lint --strict {args:?}"));
}

pub fn parse_stream(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| match key.parse::<usize>() {
        Ok(i) if cur.is_sequence() => cur.get(i),
        _ => cur.get(*key),
    })
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or_else(|| {
        panic!(
            "no string at {path:?} in\n{}",
            serde_norway::to_string(v).unwrap_or_default()
        )
    })
}

pub fn kind(v: &Value) -> &str {
    at(v, &["kind"]).and_then(Value::as_str).unwrap_or("")
}

pub fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

/// Every `compute_operator_*` metric name in a PromQL expression.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("compute_operator_") {
        // Part of a longer identifier (e.g. a label value is fine, but `xcompute_operator_` is not a name).
        let before_ok = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}
