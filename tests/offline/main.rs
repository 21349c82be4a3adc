//! The tests that need no control plane, in one binary (one link of the library instead of four): the admin
//! API client against the simulator over HTTP, the simulator itself, the simulator against the OpenAPI
//! document, and fuzzing of the wire types and parsers.
mod api_client;
mod fuzz_parsing;
mod sim;
mod sim_openapi;
