//! Model fallback under the real Envoy binary, against the mock upstream.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod scenarios;

use common::*;
use scenarios::Target;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn plugin() -> Value {
    json!({
        "chains": {
            "a+status-502": ["b"],
            "first+status-500": ["second+status-502", "third"],
            "bad+status-400": ["never"],
            "auth+status-401": ["never"],
            "s+status-502": ["streamer+chunks-5+gap-150"],
            "big+status-502": ["ok-big"]
        }
    })
}

async fn post(envoy: &Envoy, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .post(envoy.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("response")
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

// The client-side scenarios live in tests/scenarios, shared with `make docker-test`,
// which runs them against the Docker stack; here each runs against its own Envoy and
// mock, with the Docker stack's chains.

#[tokio::test]
async fn primary_502_is_answered_by_the_fallback() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::primary_502_is_answered_by_the_fallback(&Target::native(&envoy, &mock)).await;
}

#[tokio::test]
async fn third_model_answers_after_500_then_502() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::third_model_answers_after_500_then_502(&Target::native(&envoy, &mock)).await;
}

#[tokio::test]
async fn client_errors_pass_through_after_one_attempt() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::client_errors_pass_through_after_one_attempt(&Target::native(&envoy, &mock)).await;
}

#[tokio::test]
async fn every_model_failing_gives_the_last_status_and_every_attempt() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::every_model_failing_gives_the_last_status_and_every_attempt(&Target::native(
        &envoy, &mock,
    ))
    .await;
}

#[tokio::test]
async fn streamed_request_falls_back_then_streams_incrementally() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::streamed_request_falls_back_then_streams_incrementally(&Target::native(
        &envoy, &mock,
    ))
    .await;
}

#[tokio::test]
async fn other_paths_pass_through_byte_for_byte() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::other_paths_pass_through_byte_for_byte(&Target::native(&envoy, &mock)).await;
}

#[tokio::test]
async fn model_without_chain_passes_through_after_one_attempt() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::model_without_chain_passes_through_after_one_attempt(&Target::native(&envoy, &mock))
        .await;
}

#[tokio::test]
async fn non_ascii_body_keeps_every_byte_but_the_model() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::non_ascii_body_keeps_every_byte_but_the_model(&Target::native(&envoy, &mock)).await;
}

#[tokio::test]
async fn one_mib_body_keeps_every_byte_but_the_model() {
    let (envoy, mock) = start_with_plugin(scenarios::plugin());
    scenarios::one_mib_body_keeps_every_byte_but_the_model(&Target::native(&envoy, &mock)).await;
}

#[tokio::test]
async fn body_over_the_limit_gets_a_413_json_error() {
    let mut config = plugin();
    config["max_body_bytes"] = json!(1000);
    let (envoy, mock) = start_with_plugin(config);
    let big = format!(r#"{{"model":"a+status-502","pad":"{}"}}"#, "x".repeat(2000));

    // With a content-length the gateway answers before reading the body ...
    let response = post(&envoy, CHAT, big.clone()).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        json_of(response).await["error"]["code"],
        "request_too_large"
    );

    // ... and a chunked upload is stopped once it grows past the limit.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(300)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = post(&envoy, CHAT, stream).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        json_of(response).await["error"]["code"],
        "request_too_large"
    );

    assert!(mock.requests().is_empty(), "nothing reached the upstream");
    // Envoy keeps serving.
    let response = post(&envoy, CHAT, chat_body("a+status-502")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn fallback_works_without_the_attempt_count_header() {
    // A virtual host without include_request_attempt_count: the attempt role falls
    // back on Envoy's own attempt count instead of resending the first model.
    let mock = Mock::start();
    let mut config = example_config(mock.port(), &plugin());
    let virtual_host = &mut connection_manager(&mut config)["route_config"]["virtual_hosts"][0];
    virtual_host
        .as_object_mut()
        .unwrap()
        .remove("include_request_attempt_count");
    let envoy = Envoy::start(&config);
    let response = post(&envoy, CHAT, chat_body("first+status-500")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "third");
    assert_eq!(
        models_seen(&mock),
        ["first+status-500", "second+status-502", "third"]
    );
}
