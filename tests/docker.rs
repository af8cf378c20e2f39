//! The shared client scenarios (tests/scenarios) against the Docker stack of
//! envoy/docker-compose.yaml: Envoy in a container in front of the mock upstream in
//! another. `make docker-test` brings the stack up, sets the two URLs below and runs
//! this test; `make test` lists it as ignored.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod scenarios;

/// Envoy's listener as published on the host, e.g. `http://127.0.0.1:32769`.
const ENVOY_URL: &str = "AI_FALLBACK_DOCKER_URL";
/// The mock container's port as published on the host (for `/__mock/requests`).
const MOCK_URL: &str = "AI_FALLBACK_DOCKER_MOCK_URL";

#[tokio::test]
#[ignore = "needs the Docker stack: run `make docker-test`"]
async fn scenarios_against_the_docker_stack() {
    let envoy = std::env::var(ENVOY_URL)
        .unwrap_or_else(|_| panic!("{ENVOY_URL} is not set: run `make docker-test`"));
    let mock = std::env::var(MOCK_URL)
        .unwrap_or_else(|_| panic!("{MOCK_URL} is not set: run `make docker-test`"));
    scenarios::run_all(&scenarios::Target::remote(&envoy, &mock)).await;
}
