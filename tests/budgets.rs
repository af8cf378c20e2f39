//! Per-route rules and time budgets under the real Envoy binary.

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
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

/// Slack for Envoy, the mock and a loaded 2-core machine on top of a budget.
const MARGIN: Duration = Duration::from_millis(400);

async fn chat(envoy: &Envoy, model: &str, headers: &[(&str, &str)]) -> (u16, Value, Duration) {
    chat_body_with(envoy, &json!({"model": model, "messages": []}), headers).await
}

async fn chat_body_with(
    envoy: &Envoy,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value, Duration) {
    let mut request = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request.send().await.expect("response");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let elapsed = started.elapsed();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, elapsed)
}

fn assert_openai_error(body: &Value, code: &str) {
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error["attempts"].is_array(), "{body}");
}

#[tokio::test]
async fn a_slow_primary_is_cut_off_and_the_fallback_answers() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"slow+delay-3000": ["fast"]},
        "attempt_timeout_ms": 300,
    }));
    let (status, body, elapsed) = chat(&envoy, "slow+delay-3000", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "fast");
    assert!(elapsed < Duration::from_millis(300) + MARGIN, "{elapsed:?}");
    assert_eq!(models_seen(&mock), ["slow+delay-3000", "fast"]);
}

#[tokio::test]
async fn every_model_slow_ends_with_a_504_within_the_budget() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"s1+delay-5000": ["s2+delay-5000", "s3+delay-5000"]},
        "budget_ms": 800,
        "attempt_timeout_ms": 350,
    }));
    let (status, body, elapsed) = chat(&envoy, "s1+delay-5000", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert_openai_error(&body, "budget_exceeded");
    assert_eq!(body["error"]["type"], "timeout");
    assert!(elapsed < Duration::from_millis(800) + MARGIN, "{elapsed:?}");
    let attempts = body["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), models_seen(&mock).len());
    assert_eq!(attempts[0]["model"], "s1+delay-5000");
    assert_eq!(attempts[0]["class"], "no_answer");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("time budget of 800 ms"), "{message}");
    assert!(
        message.contains("s1+delay-5000: no answer (timeout or reset) after"),
        "{message}"
    );
}

/// The example config with two more routes, picked by an `x-tier` request header:
/// `fast` (selected by its route name) and `tagged` (its metadata names a rule).
fn two_route_config(mock_port: u16, plugin: &Value) -> Value {
    let mut config = example_config(mock_port, plugin);
    let routes = &mut connection_manager(&mut config)["route_config"]["virtual_hosts"][0]["routes"];
    let by_tier = |name: &str, tier: &str| {
        json!({
            "name": name,
            "match": {"prefix": "/", "headers": [{"name": "x-tier", "string_match": {"exact": tier}}]},
            "route": {"cluster": "provider", "timeout": "60s"},
        })
    };
    let mut tagged = by_tier("tagged", "tagged");
    tagged["metadata"] = json!({"filter_metadata": {"ai_fallback": {"rule": "from-metadata"}}});
    let routes = routes.as_array_mut().unwrap();
    routes.insert(0, by_tier("fast", "fast"));
    routes.insert(0, tagged);
    config
}

#[tokio::test]
async fn two_routes_apply_their_own_budgets_and_chains() {
    let mock = Mock::start();
    let plugin = json!({
        "chains": {"m+delay-700": ["default-fallback"], "f+status-502": ["default-fallback"]},
        "rules": [
            {"name": "fast-route", "match": {"route_name": "fast"}, "attempt_timeout_ms": 250,
             "chains": {"m+delay-700": ["fast-fallback"]}},
            {"name": "from-metadata", "chains": {"f+status-502": ["metadata-fallback"]}}
        ]
    });
    let envoy = Envoy::start(&two_route_config(mock.port(), &plugin));

    // The fast route cuts the slow model off and uses its own chain ...
    let (status, body, _) = chat(&envoy, "m+delay-700", &[("x-tier", "fast")]).await;
    assert_eq!(
        (status, body["model"].as_str()),
        (200, Some("fast-fallback"))
    );
    // ... the default route has no attempt timeout: the slow model answers.
    let (status, body, elapsed) = chat(&envoy, "m+delay-700", &[]).await;
    assert_eq!((status, body["model"].as_str()), (200, Some("m+delay-700")));
    assert!(elapsed >= Duration::from_millis(700));

    // A route whose metadata names a rule gets that rule's chain.
    let (status, body, _) = chat(&envoy, "f+status-502", &[("x-tier", "tagged")]).await;
    assert_eq!(
        (status, body["model"].as_str()),
        (200, Some("metadata-fallback"))
    );
    let (status, body, _) = chat(&envoy, "f+status-502", &[]).await;
    assert_eq!(
        (status, body["model"].as_str()),
        (200, Some("default-fallback"))
    );
}

#[tokio::test]
async fn the_clients_deadline_shortens_the_budget_but_never_lengthens_it() {
    let (envoy, _mock) = start_with_plugin(json!({
        "chains": {"s+delay-5000": ["t+delay-5000"]},
        "budget_ms": 1500,
    }));
    let (status, body, elapsed) = chat(
        &envoy,
        "s+delay-5000",
        &[("x-ai-fallback-timeout-ms", "400")],
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_openai_error(&body, "budget_exceeded");
    assert!(elapsed < Duration::from_millis(400) + MARGIN, "{elapsed:?}");

    let (status, body, elapsed) = chat(
        &envoy,
        "s+delay-5000",
        &[("x-ai-fallback-timeout-ms", "60000")],
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(elapsed >= Duration::from_millis(1400), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1500) + MARGIN,
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_stream_without_its_first_byte_in_time_falls_back() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"late+delay-3000": ["quick+chunks-2"]},
        "first_byte_timeout_ms": 300,
        "attempt_timeout_ms": 10000,
    }));
    let body = json!({"model": "late+delay-3000", "stream": true, "messages": []});
    let (status, text, elapsed) = chat_body_with(&envoy, &body, &[]).await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap();
    assert!(text.contains("\"model\":\"quick+chunks-2\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(elapsed < Duration::from_millis(300) + MARGIN, "{elapsed:?}");
    assert_eq!(models_seen(&mock), ["late+delay-3000", "quick+chunks-2"]);
}

#[tokio::test]
async fn no_attempt_starts_with_less_than_the_minimum_left() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"a+delay-3000": ["b"]},
        "budget_ms": 1000,
        "attempt_timeout_ms": 700,
        "min_attempt_ms": 400,
    }));
    let (status, body, elapsed) = chat(&envoy, "a+delay-3000", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert_openai_error(&body, "budget_exceeded");
    assert!(
        elapsed < Duration::from_millis(1000),
        "ended at once: {elapsed:?}"
    );
    assert_eq!(models_seen(&mock), ["a+delay-3000"], "b was never started");

    // With enough time left the same chain falls back.
    let (envoy, _mock) = start_with_plugin(json!({
        "chains": {"a+delay-3000": ["b"]},
        "budget_ms": 2000,
        "attempt_timeout_ms": 700,
        "min_attempt_ms": 400,
    }));
    let (status, body, _) = chat(&envoy, "a+delay-3000", &[]).await;
    assert_eq!((status, body["model"].as_str()), (200, Some("b")));
}
