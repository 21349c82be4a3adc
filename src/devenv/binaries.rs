//! Finds the pinned control-plane binaries that `tests/controlplane/build.sh` builds into the cache.

use std::path::{Path, PathBuf};

pub const K8S_VERSION: &str = "v1.37.2";
pub const ETCD_VERSION: &str = "v3.6.16";
pub const HELM_VERSION: &str = "v3.22.0";

/// The cache root, the same rule as build.sh: $COMPUTE_OPERATOR_CACHE, else $XDG_CACHE_HOME or ~/.cache.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("COMPUTE_OPERATOR_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("compute-operator")
}

/// Paths of the binaries the local control plane needs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    /// Runs the garbage collector (owner references) and the namespace controller, as in a real cluster.
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
}

/// Why the binaries could not be found, with what to run.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} not found at {path}: run `bash tests/controlplane/build.sh` (builds pinned versions from the Go module proxy; the first build takes ~20 minutes) or set {env}"
)]
pub struct Missing {
    pub what: &'static str,
    pub path: String,
    pub env: &'static str,
}

fn locate(what: &'static str, env: &'static str, default: PathBuf) -> Result<PathBuf, Missing> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Missing {
            what,
            path: path.display().to_string(),
            env,
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Binaries {
    /// From env (`KUBE_APISERVER_BIN`, `KUBE_CONTROLLER_MANAGER_BIN`, `ETCD_BIN`) or the cache.
    pub fn locate() -> Result<Self, Missing> {
        let root = cache_root();
        Ok(Self {
            kube_apiserver: locate(
                "kube-apiserver",
                "KUBE_APISERVER_BIN",
                root.join(format!("k8s-{K8S_VERSION}")).join("kube-apiserver"),
            )?,
            kube_controller_manager: locate(
                "kube-controller-manager",
                "KUBE_CONTROLLER_MANAGER_BIN",
                root.join(format!("k8s-{K8S_VERSION}")).join("kube-controller-manager"),
            )?,
            etcd: locate(
                "etcd",
                "ETCD_BIN",
                root.join(format!("etcd-{ETCD_VERSION}")).join("etcd"),
            )?,
        })
    }

    /// Builds them with the repository's script when missing (the `dev` command does this for newcomers).
    pub fn locate_or_build(repo: &Path) -> anyhow::Result<Self> {
        if let Ok(b) = Self::locate() {
            return Ok(b);
        }
        let script = repo.join("tests/controlplane/build.sh");
        anyhow::ensure!(
            script.exists(),
            "{} not found; run from the repository root",
            script.display()
        );
        let status = std::process::Command::new("bash").arg(&script).arg("all").status()?;
        anyhow::ensure!(status.success(), "{} failed ({status})", script.display());
        Ok(Self::locate()?)
    }
}

/// helm, built by the same script.
pub fn helm() -> Result<PathBuf, Missing> {
    locate(
        "helm",
        "HELM_BIN",
        cache_root().join(format!("helm-{HELM_VERSION}")).join("helm"),
    )
}
