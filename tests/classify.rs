//! Failures hidden in bodies, streams and rate limits, read by the attempt role under
//! the real Envoy binary, with the mock scripted to answer like real providers.

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
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

/// Every primary here fails in its own way; `backup` answers.
const RETRYABLE: [&str; 8] = [
    "cdn+status-502+html",
    "cf+status-524",
    "anthropic+status-529",
    "chutes+status-404+body-noinstances",
    "chute+status-404+body-chutenotfound",
    "busy+status-503+body-overloaded",
    "liar+body-errorenvelope",
    "limited+status-429+retry-after-30",
];

fn plugin() -> Value {
    let mut chains = serde_json::Map::new();
    for primary in RETRYABLE {
        chains.insert(primary.into(), json!(["backup"]));
    }
    for primary in [
        "sse+sse-error",
        "sse+sse-dataerror",
        "auth+status-401",
        "pay+status-402",
        "deny+status-403",
        "long+status-400+body-ctxlen",
        "bad+status-400",
        "lost+status-404",
    ] {
        chains.insert(primary.into(), json!(["backup"]));
    }
    json!({
        "chains": chains,
        "context_chains": {"long+status-400+body-ctxlen": ["big-context"]},
    })
}

async fn chat(envoy: &Envoy, body: &Value) -> reqwest::Response {
    client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("response")
}

fn request(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn each_retryable_class_is_answered_by_the_fallback() {
    let (envoy, mock) = start_with_plugin(plugin());
    for primary in RETRYABLE {
        mock.clear();
        let started = Instant::now();
        let response = chat(&envoy, &request(primary, false)).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "{primary}");
        assert_eq!(response.headers().get("x-ai-fallback-retry"), None);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], "backup", "{primary}");
        assert_eq!(models_seen(&mock), [primary, "backup"]);
        if primary.contains("retry-after") {
            // Moving on at once, not after the 30 s the provider asked for.
            assert!(
                elapsed < Duration::from_secs(1),
                "{primary} took {elapsed:?}"
            );
        }
    }
}

#[tokio::test]
async fn stream_error_before_content_falls_back_and_streams() {
    let (envoy, mock) = start_with_plugin(plugin());
    for primary in ["sse+sse-error", "sse+sse-dataerror"] {
        mock.clear();
        let response = chat(&envoy, &request(primary, true)).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(!text.contains("stream failed"), "{primary}: {text}");
        assert!(text.contains("\"model\":\"backup\""), "{primary}: {text}");
        assert!(text.trim_end().ends_with("data: [DONE]"));
        assert_eq!(models_seen(&mock), [primary, "backup"]);
    }
}

#[tokio::test]
async fn final_client_errors_pass_through_after_one_attempt() {
    let (envoy, mock) = start_with_plugin(plugin());
    for (model, status) in [
        ("auth+status-401", 401),
        ("pay+status-402", 402),
        ("deny+status-403", 403),
        ("bad+status-400", 400),
        ("lost+status-404", 404),
    ] {
        mock.clear();
        let response = chat(&envoy, &request(model, false)).await;
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["message"],
            format!("mock failure {status} for model {model}")
        );
        assert_eq!(models_seen(&mock), [model]);
    }
}

#[tokio::test]
async fn the_context_chain_is_used_only_for_context_length() {
    let (envoy, mock) = start_with_plugin(plugin());
    let response = chat(&envoy, &request("long+status-400+body-ctxlen", false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "big-context");
    assert_eq!(
        models_seen(&mock),
        ["long+status-400+body-ctxlen", "big-context"],
        "the ordinary chain (backup) is skipped"
    );

    // Without a context chain the same answer is final.
    mock.clear();
    let response = chat(&envoy, &request("plain+status-400+body-ctxlen", false)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(models_seen(&mock), ["plain+status-400+body-ctxlen"]);
}

#[tokio::test]
async fn the_last_models_failure_is_not_retried_and_is_reported() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"a+status-404+body-noinstances": ["b+body-errorenvelope"]}
    }));
    let response = chat(&envoy, &request("a+status-404+body-noinstances", false)).await;
    // The last failure was a 200 in disguise: the client gets an error status.
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers().get("x-ai-fallback-retry"), None);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "fallbacks_exhausted");
    let attempts = body["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["class"], "no_capacity");
    assert_eq!(attempts[1]["class"], "error_envelope");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("(\"No instances available\")"),
        "{message}"
    );
    assert_eq!(
        models_seen(&mock),
        ["a+status-404+body-noinstances", "b+body-errorenvelope"]
    );
}

#[tokio::test]
async fn classes_switched_off_pass_through() {
    let mut config = plugin();
    config["fallback_on_rate_limit"] = json!(false);
    config["fallback_on_error_envelope"] = json!(false);
    config["no_capacity_patterns"] = json!([]);
    let (envoy, mock) = start_with_plugin(config);
    for (model, status) in [
        ("limited+status-429+retry-after-30", 429),
        ("liar+body-errorenvelope", 200),
        ("chutes+status-404+body-noinstances", 404),
    ] {
        mock.clear();
        let response = chat(&envoy, &request(model, false)).await;
        assert_eq!(response.status(), status, "{model}");
        assert_eq!(models_seen(&mock), [model]);
    }
}

#[tokio::test]
async fn a_stream_broken_mid_body_is_not_ended_silently() {
    let (envoy, mock) = start_with_plugin(json!({"chains": {"b+break-2": ["backup"]}}));
    let response = chat(&envoy, &request("b+break-2", true)).await;
    assert_eq!(
        response.status(),
        200,
        "content began: no fallback any more"
    );
    let mut chunks = response.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => failed = true,
        }
    }
    assert!(text.contains("tok1"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    // The upstream reset the connection: Envoy resets the client's stream, which a
    // client sees as an error, never as a complete stream.
    assert!(failed, "the stream ended as if complete: {text}");
    assert_eq!(models_seen(&mock), ["b+break-2"]);
}

/// An upstream that ends a stream cleanly after one content event, without [DONE].
fn start_cut_stream_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // Read the head and a body of content-length bytes.
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                 transfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n0\r\n\r\n",
                event.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[tokio::test]
async fn a_stream_that_ends_early_gets_an_sse_error_event() {
    let upstream_port = start_cut_stream_upstream();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("access.log");
    let mut config = example_config(upstream_port, &json!({"chains": {"m": ["n"]}}));
    connection_manager(&mut config)["access_log"][0]["typed_config"]["path"] =
        json!(log_path.display().to_string());
    let envoy = Envoy::try_start_with(&config, &["--file-flush-interval-msec", "50"]).unwrap();
    let response = chat(&envoy, &request("m", true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.starts_with("data: {\"choices\""), "{text}");
    let last_event = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last_event.starts_with("event: error\ndata: "), "{text}");
    let data: Value = serde_json::from_str(
        last_event
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data["error"]["code"], "stream_truncated");
    // The access record says so too.
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no access log line");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["ai_fallback_outcome"], "truncated", "{line}");
    let record = &line["ai_fallback"]["value"];
    assert_eq!(record["outcome"], "truncated");
    assert!(record["attempts"][0]["end_ms"].is_u64(), "{record}");
}

/// Milliseconds from sending the request to the first byte of the body.
async fn first_event_ms(envoy: &Envoy, model: &str) -> f64 {
    let started = Instant::now();
    let response = chat(envoy, &request(model, true)).await;
    let mut chunks = response.bytes_stream();
    let first = chunks
        .next()
        .await
        .expect("a first chunk")
        .expect("no error");
    assert!(!first.is_empty());
    let at = started.elapsed().as_secs_f64() * 1000.0;
    while chunks.next().await.is_some() {}
    at
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::test]
async fn a_healthy_streams_first_event_is_not_held_back() {
    // The stream's events come 200 ms apart: holding for more than the first event
    // would show as hundreds of milliseconds.
    let model = "healthy+chunks-3+gap-200";
    let chains = json!({model: ["backup"]});
    let (inspecting, _mock_a) = start_with_plugin(json!({"chains": chains}));
    let (not_inspecting, _mock_b) =
        start_with_plugin(json!({"chains": chains, "fallback_on_stream_error": false}));
    let mut with_inspection = Vec::new();
    let mut without_inspection = Vec::new();
    for _ in 0..5 {
        with_inspection.push(first_event_ms(&inspecting, model).await);
        without_inspection.push(first_event_ms(&not_inspecting, model).await);
    }
    let (on, off) = (median(with_inspection), median(without_inspection));
    assert!(
        on <= off + 50.0,
        "first event after {on:.1} ms with inspection, {off:.1} ms without"
    );
}
