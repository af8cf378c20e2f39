//! Bytes that are not UTF-8 in every header the filter reads, from a client and from
//! a provider, under the real Envoy binary with two workers: after each, requests
//! still fall back, no VM was reloaded (the examples' FAIL_RELOAD counts a crash on
//! any worker in `vm_reload_*`), and Envoy's log has no panic. (The SDK's header
//! getters unwrap UTF-8: one such byte used to kill a worker's VM.) Which worker
//! takes which connection is proven in `tests/host_boundary_workers.rs`: fresh
//! connections one after another may all land on one worker.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::raw::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const NOT_UTF8: &[u8] = b"\xff\xfe\xe9";
const WORKERS: usize = 2;

/// Envoy with two workers that take fresh connections in turn, in front of `port`.
fn envoy_with_workers(port: u16) -> Envoy {
    let mut config = example_config(
        port,
        &json!({"chains": {"primary+status-502": ["backup"], "bad-answer": ["backup"]}}),
    );
    config["static_resources"]["listeners"][0]["connection_balance_config"] =
        json!({"exact_balance": {}});
    Envoy::try_start_with(&config, &["--concurrency", "2"]).unwrap()
}

/// One request written byte for byte on a fresh connection: (status, body).
fn raw_request(port: u16, head: &[u8], body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A chat request's head with `header: value` added (or replacing the default one).
fn head_with(path: &[u8], header: &str, value: &[u8], body_len: usize) -> Vec<u8> {
    let mut head = b"POST ".to_vec();
    head.extend_from_slice(path);
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let defaults: [(&str, Vec<u8>); 3] = [
        ("host", b"localhost".to_vec()),
        ("content-type", b"application/json".to_vec()),
        ("content-length", body_len.to_string().into_bytes()),
    ];
    for (name, default) in defaults {
        let value = if name == header { value } else { &default };
        head.extend_from_slice(format!("{name}: ").as_bytes());
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    if !["host", "content-type", "content-length", ":path"].contains(&header) {
        head.extend_from_slice(format!("{header}: ").as_bytes());
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

fn chat_body(model: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

/// Requests still fall back (fresh connections, each getting the backup's answer to
/// a failing model), and no VM on any worker died.
fn assert_still_falls_back(envoy: &Envoy, seen: &Seen, case: &str) {
    let body = chat_body("primary+status-502");
    for round in 0..2 * WORKERS {
        let before = models(seen).len();
        let head = head_with(b"/v1/chat/completions", "x-none", b"", body.len());
        let (status, answer) = raw_request(envoy.port, &head, &body);
        assert_eq!(status, 200, "{case}, request {round}: {answer}");
        assert_eq!(
            models(seen)[before..],
            ["primary+status-502", "backup"],
            "{case}, request {round}: fell back"
        );
    }
    assert_vms_alive(envoy, case);
}

/// No wasm VM died: no panic in Envoy's log, and neither plugin's VM was reloaded
/// or refused a request while waiting to be (`failure_policy: FAIL_RELOAD` counts
/// `wasm.<plugin>.vm_reload_success`, `_failure` and `_backoff`).
fn assert_vms_alive(envoy: &Envoy, case: &str) {
    let log = envoy.log();
    assert!(!log.contains("panicked"), "{case}: a panic in Envoy's log");
    for plugin in ["ai_fallback", "ai_fallback_attempt"] {
        for event in ["success", "failure", "backoff"] {
            let stat = format!("wasm.{plugin}.vm_reload_{event}");
            assert_eq!(envoy.stat(&stat), 0, "{case}: {stat}");
        }
    }
}

/// An upstream that answers `bad-answer` with a 502 carrying `header: NOT_UTF8`, on
/// attempts that ask for it, and everything else as the mock would.
fn upstream_with_bad_answer_header(header: &'static str) -> (u16, Seen) {
    raw_upstream(move |model, _, _| match model {
        "bad-answer" => {
            let mut answer =
                format!("HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n{header}: ").into_bytes();
            answer.extend_from_slice(NOT_UTF8);
            answer.extend_from_slice(b"\r\n");
            if header != "content-type" {
                answer.extend_from_slice(b"content-type: application/json\r\n");
            }
            if header != "content-length" {
                answer.extend_from_slice(b"content-length: 2\r\n");
            }
            answer.extend_from_slice(b"\r\n{}");
            answer
        }
        "primary+status-502" => bad_gateway(),
        other => json_ok(other),
    })
}

/// Request headers the gateway or the attempt role reads. Each case: the request
/// goes on (falls back, or is answered by Envoy itself if its codec refuses the
/// bytes), and then requests still fall back.
#[test]
fn request_headers_that_are_not_utf8() {
    let (port, seen) = upstream_with_bad_answer_header("x-unused");
    let envoy = envoy_with_workers(port);
    let body = chat_body("primary+status-502");
    for header in [
        "x-ai-fallback-timeout-ms",
        "x-ai-fallback",
        "x-ai-fallback-models",
        "content-type",
        "content-encoding",
        "x-request-id",
        "host",
    ] {
        for _ in 0..WORKERS {
            let head = head_with(b"/v1/chat/completions", header, NOT_UTF8, body.len());
            let (status, answer) = raw_request(envoy.port, &head, &body);
            let expected = match header {
                // An encoding that is not `identity`: the body is not read.
                "content-encoding" => 502,
                // Envoy's codec refuses such an authority before any filter runs.
                "host" => 400,
                _ => 200,
            };
            assert_eq!(status, expected, "{header}: {answer}");
        }
        assert_still_falls_back(&envoy, &seen, header);
    }
    // A content-length that is not a number, and a path that is not UTF-8: Envoy's
    // codec answers these itself (400) or passes them on; either way the filter
    // lives on.
    for _ in 0..WORKERS {
        let head = head_with(b"/v1/chat/completions", "content-length", NOT_UTF8, 0);
        let (status, _) = raw_request(envoy.port, &head, &body);
        assert_eq!(
            status, 400,
            "Envoy refuses a content-length that is no number"
        );
        let mut path = b"/v1/chat/completions?q=".to_vec();
        path.extend_from_slice(NOT_UTF8);
        let head = head_with(&path, "x-none", b"", body.len());
        let (status, _) = raw_request(envoy.port, &head, &body);
        assert!(status == 400 || status == 200, "path: {status}");
    }
    assert_still_falls_back(&envoy, &seen, "content-length and :path");
}

/// Answer headers the attempt role reads, on a failing first attempt: it still
/// falls back, and later requests still do.
#[test]
fn answer_headers_that_are_not_utf8() {
    for header in [
        "content-type",
        "retry-after",
        "content-encoding",
        "x-ai-fallback-retry",
    ] {
        let (port, seen) = upstream_with_bad_answer_header(header);
        let envoy = envoy_with_workers(port);
        let body = chat_body("bad-answer");
        for _ in 0..WORKERS {
            let before = models(&seen).len();
            let head = head_with(b"/v1/chat/completions", "x-none", b"", body.len());
            let (status, answer) = raw_request(envoy.port, &head, &body);
            assert_eq!(status, 200, "{header}: {answer}");
            let answer: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(answer["model"], "backup", "{header}");
            assert_eq!(
                models(&seen)[before..],
                ["bad-answer", "backup"],
                "{header}"
            );
        }
        assert_still_falls_back(&envoy, &seen, header);
    }
}
