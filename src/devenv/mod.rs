//! Local control plane (kube-apiserver + etcd): locate binaries, start, stop, kubeconfig; and the `dev` stack.
pub mod binaries;
pub mod controlplane;
pub mod dev;
pub mod process;

pub use binaries::Binaries;
pub use controlplane::ControlPlane;
