//! The happy path holds nothing (issue 15): under a rule that needs nothing from the
//! body before routing, the gateway sends the request on at once and the first
//! attempt starts while the body is still arriving; rules whose router headers
//! depend on the body still hold it. Real Envoy, the fresh module, the mock.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

/// Sends the request's headers and the first half of its body, and reports whether
/// Envoy started an upstream request before the second half was sent; then sends
/// the rest and returns the answer's status line and body.
fn upstream_started_before_the_body_ended(envoy: &Envoy, body: &str) -> (bool, String) {
    let mut client = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (first, second) = body.split_at(body.len() / 2);
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(first.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut started = false;
    while Instant::now() < deadline && !started {
        started = envoy.stat("cluster.provider.upstream_rq_total") > 0;
        std::thread::sleep(Duration::from_millis(50));
    }
    client.write_all(second.as_bytes()).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    (started, answer)
}

fn body_for(model: &str) -> String {
    json!({"messages": [{"role": "user", "content": "x".repeat(4000)}], "model": model}).to_string()
}

#[tokio::test]
async fn without_a_hold_the_first_attempt_starts_before_the_body_ends_and_falls_back() {
    let (envoy, mock) = start_with_plugin(json!({"chains": {"a+status-502": ["b"]}}));
    let body = body_for("a+status-502");
    let (started, answer) = upstream_started_before_the_body_ended(&envoy, &body);
    assert!(started, "the first attempt waited for the body");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""model":"b""#), "{answer}");
    assert_eq!(models_seen(&mock), ["a+status-502", "b"]);
    let requests = mock.requests();
    let rewritten = with_model(body.as_bytes(), "\"a+status-502\"", "\"b\"");
    assert_eq!(requests[1].body, rewritten);
    assert_eq!(
        requests[1].header("content-length"),
        Some(rewritten.len().to_string().as_str())
    );
}

#[tokio::test]
async fn rules_whose_router_headers_depend_on_the_body_still_hold_it() {
    let holding = [
        json!({"chains": {"a+status-502": ["b"]}, "budget_ms": 20000}),
        json!({"chains": {"a+status-502": ["b"]}, "cooldown_failures": 3}),
        json!({"chains": {"a+status-502": ["b"]}, "attempt_timeout_ms": 9000,
               "first_byte_timeout_ms": 5000}),
    ];
    for plugin in holding {
        let (envoy, mock) = start_with_plugin(plugin.clone());
        let (started, answer) =
            upstream_started_before_the_body_ended(&envoy, &body_for("a+status-502"));
        assert!(!started, "{plugin}: the request went on before its body");
        assert!(answer.contains(r#""model":"b""#), "{plugin}: {answer}");
        assert_eq!(models_seen(&mock), ["a+status-502", "b"], "{plugin}");
    }
}

/// What Istio's `WasmPlugin` and Envoy Gateway's `EnvoyExtensionPolicy` render: a
/// gateway filter without `allow_on_headers_stop_iteration`. A rule without a hold
/// needs none: the happy path, a fallback and a stream all work.
#[tokio::test]
async fn the_gateway_needs_no_allow_on_headers_stop_iteration_without_a_hold() {
    let mock = Mock::start();
    let plugin = json!({"chains": {"a+status-502": ["b"], "b": ["c"]}});
    let mut config = example_config(mock.port(), &plugin);
    let gateway = &mut connection_manager(&mut config)["http_filters"][0]["typed_config"]["config"];
    assert_eq!(gateway["root_id"], "ai_fallback_gateway");
    gateway
        .as_object_mut()
        .unwrap()
        .remove("allow_on_headers_stop_iteration")
        .expect("the example sets it");
    let envoy = Envoy::start(&config);
    for (model, attempts) in [("b", "1"), ("a+status-502", "2")] {
        let response = client()
            .post(envoy.url(CHAT))
            .header("content-type", "application/json")
            .body(chat_request(model).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(response.headers()["x-ai-fallback-model"], "b");
        assert_eq!(response.headers()["x-ai-fallback-attempts"], attempts);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["model"], "b");
    }
    let stream = json!({"model": "a+status-502", "stream": true, "messages": []});
    let response = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .body(stream.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ai-fallback-attempts"], "2");
    let text = response.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert_eq!(
        models_seen(&mock),
        ["b", "a+status-502", "b", "a+status-502", "b"]
    );
}
