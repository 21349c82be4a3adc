//! `kubectl compute`: the kubectl plugin binary (install with `cargo install --path . --bin kubectl-compute`).

use std::process::ExitCode;

use clap::Parser;
use compute_operator::plugin::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    run(Cli::parse()).await
}
