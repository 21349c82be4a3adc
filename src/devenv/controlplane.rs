//! A real local control plane: etcd and kube-apiserver on free loopback ports, the way envtest runs them, plus
//! kube-controller-manager running only the garbage collector and the namespace controller (owner references
//! and namespace deletion behave as in a real cluster).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::binaries::Binaries;
use super::process::Guarded;

/// A running etcd + kube-apiserver. Dropping it stops both and removes its directory.
pub struct ControlPlane {
    pub url: String,
    pub admin_token: String,
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    ca_pem: Vec<u8>,
    apiserver: Option<Guarded>,
    controller_manager: Option<Guarded>,
    etcd: Option<Guarded>,
    _tmp: Option<tempfile::TempDir>,
    apiserver_cmd: Option<Command>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A free TCP port on loopback (bound then released; the tiny race is acceptable for local use).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts tried before a port taken between picking and binding it is reported.
const START_ATTEMPTS: usize = 3;

/// Did a start fail because a port it picked was taken before it was bound?
fn is_port_taken(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("address already in use")
}

/// Temporary control-plane directories are `<TMP_PREFIX><pid>-<random>`.
const TMP_PREFIX: &str = "compute-operator-cp-";

/// The directory names (of `names`) that belong to processes no longer alive.
fn stale_dir_names<'a>(names: impl Iterator<Item = &'a str>, alive: impl Fn(u32) -> bool) -> Vec<&'a str> {
    names
        .filter(|name| {
            let owner = name.strip_prefix(TMP_PREFIX).and_then(|rest| rest.split_once('-'));
            owner
                .and_then(|(pid, _)| pid.parse().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .collect()
}

/// Removes the control-plane directories of dead processes from `tmp` (best effort: etcd data is ~100 MB each).
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for name in stale_dir_names(names.iter().map(String::as_str), alive) {
        let _ = std::fs::remove_dir_all(tmp.join(name));
    }
}

fn random_token() -> String {
    (0..32).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect()
}

impl ControlPlane {
    /// Starts both in a fresh temporary directory (named after this process, so that the next start can remove
    /// what a process that never dropped its control plane, such as a test binary's shared one, left behind).
    pub async fn start(binaries: &Binaries) -> anyhow::Result<Self> {
        remove_stale_dirs(&std::env::temp_dir());
        let mut attempt = 1;
        loop {
            let tmp = tempfile::Builder::new()
                .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
                .tempdir()?;
            let dir = tmp.path().to_path_buf();
            match Self::start_in(binaries, &dir).await {
                Ok(mut cp) => {
                    cp._tmp = Some(tmp);
                    return Ok(cp);
                }
                // The ports were free when picked, but another process can take one before etcd or
                // kube-apiserver binds it (test binaries start simulators and control planes side by side).
                Err(e) if attempt < START_ATTEMPTS && is_port_taken(&e) => {
                    tracing::warn!(
                        attempt,
                        "a control-plane port was taken meanwhile; starting again on new ports"
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts both with state in `dir` (kept after stop, e.g. `.dev/`).
    pub async fn start_in(binaries: &Binaries, dir: &Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        std::fs::create_dir_all(dir.join("certs"))?;
        let log = |name: &str| -> anyhow::Result<Stdio> {
            Ok(Stdio::from(std::fs::File::create(dir.join(format!("{name}.log")))?))
        };

        let (etcd_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd_cmd = Command::new(&binaries.etcd);
        etcd_cmd
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn")
            .stdout(log("etcd")?)
            .stderr(log("etcd")?);
        let etcd = Guarded::spawn("etcd", etcd_cmd).context("starting etcd")?;

        // Service-account signing key (TokenRequest, `kubectl create token`) and a static admin token.
        let sa_key = rcgen::KeyPair::generate().context("generating the service-account key")?;
        std::fs::write(dir.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), sa_key.public_key_pem())?;
        let admin_token = random_token();
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
        )?;

        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(&binaries.kube_apiserver);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", dir.join("sa.pub").display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
            .arg("--authorization-mode=RBAC")
            .arg("--allow-privileged=true")
            .arg("--enable-priority-and-fairness=false")
            .arg("--endpoint-reconciler-type=none")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--storage-backend=etcd3")
            .arg("--v=0")
            .stdout(log("kube-apiserver")?)
            .stderr(log("kube-apiserver")?);
        let apiserver_cmd = clone_command(&cmd);
        let apiserver = Guarded::spawn("kube-apiserver", cmd).context("starting kube-apiserver")?;

        let mut cp = Self {
            url,
            admin_token,
            kubeconfig: dir.join("kubeconfig"),
            dir: dir.to_path_buf(),
            ca_pem: Vec::new(),
            apiserver: Some(apiserver),
            controller_manager: None,
            etcd: Some(etcd),
            _tmp: None,
            apiserver_cmd: Some(apiserver_cmd),
        };
        cp.wait_ready(Duration::from_secs(90)).await?;
        cp.ca_pem = std::fs::read(dir.join("certs/apiserver.crt")).context("reading the serving certificate")?;
        std::fs::write(&cp.kubeconfig, cp.kubeconfig_yaml())?;
        cp.install_crds().await?;
        cp.start_controller_manager(binaries)?;
        tracing::info!(url = %cp.url, secs = started.elapsed().as_secs_f64(), "control plane ready");
        Ok(cp)
    }

    /// Starts kube-controller-manager with the admin kubeconfig: only the garbage collector and the namespace
    /// controller, no leader election, no serving port (`--secure-port=0`), so several control planes can run
    /// side by side.
    fn start_controller_manager(&mut self, binaries: &Binaries) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("kube-controller-manager.log"))?;
        let mut cmd = Command::new(&binaries.kube_controller_manager);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--controllers=garbagecollector,namespace")
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let mut process = Guarded::spawn("kube-controller-manager", cmd).context("starting kube-controller-manager")?;
        // A bad flag or kubeconfig ends it at once: report that here rather than as missing garbage collection.
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = process.exited() {
            bail!(
                "kube-controller-manager exited ({status}) during start-up:\n{}",
                self.log_tail("kube-controller-manager")
            );
        }
        self.controller_manager = Some(process);
        Ok(())
    }

    /// Polls `/readyz` until it answers 200; fails with the tail of the logs if a process exits.
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        crate::api::client::install_crypto_provider();
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + limit;
        loop {
            let exited = [
                self.etcd.as_mut(),
                self.apiserver.as_mut(),
                self.controller_manager.as_mut(),
            ]
            .into_iter()
            .flatten()
            .find_map(|p| p.exited().map(|status| (p.name, status)));
            if let Some((name, status)) = exited {
                bail!("{name} exited ({status}) during start-up:\n{}", self.log_tail(name));
            }
            let ready = http
                .get(format!("{}/readyz", self.url))
                .bearer_auth(&self.admin_token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after {limit:?}:\n{}",
                    self.log_tail("kube-apiserver")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A kubeconfig for the static admin user.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_for("admin", &self.admin_token)
    }

    /// A kubeconfig for any bearer token (e.g. a ServiceAccount's, from TokenRequest).
    pub fn kubeconfig_for(&self, user: &str, token: &str) -> String {
        use base64::Engine as _;
        let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: {user}\ncurrent-context: local\n",
            url = self.url,
            ca = encode(&self.ca_pem),
        )
    }

    /// A fresh client (one per tokio runtime: clients must not cross runtimes).
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_for_kubeconfig(&self.kubeconfig_yaml()).await
    }

    pub async fn client_for_kubeconfig(&self, yaml: &str) -> anyhow::Result<Client> {
        let kc = Kubeconfig::from_yaml(yaml)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Applies the CRD and waits until it is Established.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (_, crd) in crate::crd::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            match api.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
            }
            let established = kube::runtime::wait::await_condition(
                api.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            );
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .with_context(|| format!("CRD {name} not established in 30s"))??;
        }
        Ok(())
    }

    /// Restarts kube-apiserver on the same port and storage (fault injection: watches break, data stays).
    pub async fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(10));
        }
        let cmd = self
            .apiserver_cmd
            .as_ref()
            .map(clone_command)
            .context("no apiserver command")?;
        self.apiserver = Some(Guarded::spawn("kube-apiserver", cmd)?);
        self.wait_ready(Duration::from_secs(90)).await
    }

    /// Stops both processes (also done on drop).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.controller_manager.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(10));
        }
        if let Some(mut p) = self.etcd.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        [
            self.etcd.as_ref(),
            self.apiserver.as_ref(),
            self.controller_manager.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Guarded::pid)
        .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn clone_command(cmd: &Command) -> Command {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    // stdout/stderr of the clone append to the same logs.
    if let Some(dir) = cmd
        .get_args()
        .filter_map(|a| a.to_str())
        .find_map(|a| a.strip_prefix("--cert-dir="))
        .and_then(|d| Path::new(d).parent().map(Path::to_path_buf))
        && let Ok(f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("kube-apiserver.log"))
        && let Ok(f2) = f.try_clone()
    {
        c.stdout(f).stderr(f2);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_dead_processes_are_stale() {
        let alive = |pid: u32| pid == 100;
        // (directory name, stale)
        let rows = [
            ("compute-operator-cp-100-a1b2", false),
            ("compute-operator-cp-200-a1b2", true),
            ("compute-operator-cp-abc123", false),
            ("compute-operator-cp-", false),
            ("other-200-a1b2", false),
            (".dev", false),
        ];
        for (name, stale) in rows {
            assert_eq!(
                stale_dir_names(std::iter::once(name), alive) == vec![name],
                stale,
                "{name}"
            );
        }
    }
}
