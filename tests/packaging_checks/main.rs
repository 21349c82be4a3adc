//! The chart and the shipped manifests checked without a running cluster, in one test binary (one link of the
//! library instead of five): Helm invariants and examples (`chart`), the rendered `deploy/` tree and the image
//! (`deploy`), Argo CD's Lua health checks (`argocd`), the NetworkPolicy and third-party scanners (`network`),
//! and the dashboards and alerts with promtool (`monitoring`).
#[path = "../chart_support/mod.rs"]
mod chart_support;
#[path = "../packaging_support/mod.rs"]
mod packaging_support;
#[path = "../support/mod.rs"]
mod support;

mod argocd;
mod chart;
mod deploy;
mod monitoring;
mod network;
