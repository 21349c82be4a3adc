//! ComputeInstanceAction end to end on the real API server, in one test binary (one link of the library, one
//! control plane): the main flows (`e2e`), a hostile admin API (`hostile`) and the access policy (`guardrails`).
#[path = "../support/mod.rs"]
mod support;

mod e2e;
mod guardrails;
mod hostile;
