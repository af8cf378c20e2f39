//! Model fallback under the real Envoy binary, against the mock upstream.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

/// Headers only Envoy and the filter may see; a provider never should.
const INTERNAL_HEADERS: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-attempt-count",
    "x-envoy-expected-rq-timeout-ms",
];

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

fn assert_no_internal_headers(mock: &Mock) {
    for request in mock.requests() {
        for name in INTERNAL_HEADERS {
            assert_eq!(request.header(name), None, "{name} reached the upstream");
        }
    }
}

#[tokio::test]
async fn primary_502_is_answered_by_the_fallback() {
    let (envoy, mock) = start_with_plugin(plugin());
    let response = post(&envoy, CHAT, chat_body("a+status-502")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "b");
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    assert_no_internal_headers(&mock);
}

#[tokio::test]
async fn third_model_answers_after_500_then_502() {
    let (envoy, mock) = start_with_plugin(plugin());
    let response = post(&envoy, CHAT, chat_body("first+status-500")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "third");
    assert_eq!(
        models_seen(&mock),
        ["first+status-500", "second+status-502", "third"]
    );
    assert_no_internal_headers(&mock);
}

#[tokio::test]
async fn client_errors_pass_through_after_one_attempt() {
    let (envoy, mock) = start_with_plugin(plugin());
    for (model, status) in [("bad+status-400", 400), ("auth+status-401", 401)] {
        mock.clear();
        let response = post(&envoy, CHAT, chat_body(model)).await;
        assert_eq!(response.status(), status);
        let body = json_of(response).await;
        assert_eq!(
            body["error"]["message"],
            format!("mock failure {status} for model {model}"),
            "the provider's body reaches the client unchanged"
        );
        assert_eq!(models_seen(&mock), [model]);
    }
}

#[tokio::test]
async fn every_model_failing_gives_the_last_status_and_every_attempt() {
    let (envoy, mock) = start_with_plugin(json!({"chains": {"x+status-500": ["y+status-503"]}}));
    let response = post(&envoy, CHAT, chat_body("x+status-500")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "fallbacks_exhausted");
    assert_eq!(body["error"]["type"], "upstream_error");
    let attempts = body["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["model"], "x+status-500");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[1]["model"], "y+status-503");
    assert_eq!(attempts[1]["status"], 503);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("All 2 attempt(s) failed. x+status-500: 500 after "),
        "{message}"
    );
    assert!(
        message.contains("mock failure 503 for model y+status-503"),
        "{message}"
    );
    assert_eq!(models_seen(&mock), ["x+status-500", "y+status-503"]);
}

#[tokio::test]
async fn streamed_request_falls_back_then_streams_incrementally() {
    let (envoy, mock) = start_with_plugin(plugin());
    let body = json!({"model": "s+status-502", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let started = Instant::now();
    let response = post(&envoy, CHAT, body.to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut chunks = response.bytes_stream();
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.expect("stream chunk");
        if first_event_at.is_none() && !chunk.is_empty() {
            first_event_at = Some(started.elapsed());
        }
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let done_at = started.elapsed();
    let first_event_at = first_event_at.expect("at least one chunk");
    // The mock waits 150 ms between its 8 events: a client that got the first event
    // only with the last would see both at once.
    assert!(
        done_at - first_event_at >= Duration::from_millis(600),
        "first event at {first_event_at:?}, stream done at {done_at:?}: not incremental"
    );
    assert!(
        text.contains("\"model\":\"streamer+chunks-5+gap-150\""),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        models_seen(&mock),
        ["s+status-502", "streamer+chunks-5+gap-150"]
    );
}

#[tokio::test]
async fn other_paths_pass_through_byte_for_byte() {
    let (envoy, mock) = start_with_plugin(plugin());
    let body = r#"{"model":"a+status-502", "x": 1.0e0 }"#;
    let response = post(&envoy, "/v1/other", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-mock-echo"], "1");
    assert_eq!(response.bytes().await.unwrap(), body.as_bytes());
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, body.as_bytes());
}

#[tokio::test]
async fn model_without_chain_passes_through_after_one_attempt() {
    let (envoy, mock) = start_with_plugin(plugin());
    let body = r#"{ "model" : "lonely+status-502","messages":[],"temperature":0.70}"#;
    let response = post(&envoy, CHAT, body).await;
    assert_eq!(response.status(), 502);
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, body.as_bytes());
}

#[tokio::test]
async fn non_ascii_body_keeps_every_byte_but_the_model() {
    let (envoy, mock) = start_with_plugin(plugin());
    let body = "{\"temperature\":0.70,\"model\":\"a+status-502\",\"messages\":[{\"role\":\"user\",\
                \"content\":\"h\u{e9}llo w\u{f6}rld \u{2713} \u{65e5}\u{672c}\u{8a9e} \u{1f389} \\u00e9 \\\"q\\\"\"}],\
                \"n\":1e2,\"z\":null}";
    let response = post(&envoy, CHAT, body).await;
    assert_eq!(response.status(), 200);
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body,
        body.as_bytes(),
        "first attempt is untouched"
    );
    assert_eq!(
        requests[1].body,
        with_model(body.as_bytes(), "\"a+status-502\"", "\"b\"")
    );
    assert_eq!(
        requests[1].header("content-length"),
        Some(requests[1].body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn one_mib_body_keeps_every_byte_but_the_model() {
    let (envoy, mock) = start_with_plugin(plugin());
    // model last: the whole body lies before the value that changes.
    let filler: String = (0..1024 * 1024 - 200)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{filler}"}}],"model":"big+status-502"}}"#
    );
    assert!(body.len() >= 1024 * 1024 - 150);
    let response = post(&envoy, CHAT, body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "ok-big");
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, body.as_bytes());
    assert_eq!(
        requests[1].body,
        with_model(body.as_bytes(), "\"big+status-502\"", "\"ok-big\"")
    );
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
