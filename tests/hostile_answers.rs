//! Hostile clients and misbehaving providers, under the real Envoy binary: answers
//! that forge the filter's own retry header, arrive compressed, or say `[DONE]` as
//! text; client-made model names that must not take shared memory; a client
//! deadline that must not outlast the route; a probe claim that must not sideline a
//! model the request never sent to.

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
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

async fn post(envoy: &Envoy, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    post_json(envoy, CHAT, headers, body).await
}

/// gzip of `data` in stored (uncompressed) deflate blocks: valid for any decoder.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (index, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(index + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// An answer that carries `x-ai-fallback-retry` itself is the upstream's, not the
/// attempt role's mark: it goes to the client, and the router does not retry it.
#[tokio::test]
async fn an_upstream_cannot_force_a_retry() {
    let (port, seen) = raw_upstream(|model, _, _| match model {
        "forger" => response(
            "200 OK",
            &[
                ("content-type", "application/json"),
                ("x-ai-fallback-retry", "failure_status"),
            ],
            br#"{"model":"forger","choices":[]}"#,
        ),
        other => json_ok(other),
    });
    let envoy = Envoy::start(&example_config(
        port,
        &json!({"chains": {"forger": ["backup"]}}),
    ));
    let (status, body) = post(&envoy, &[], &chat_request("forger")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"forger\""), "{body}");
    assert_eq!(models(&seen), ["forger"], "never retried");
}

/// With cooldowns on, a model the configuration does not name (one a client made
/// up, under `default_chain`) keeps no health: it does not cool, and takes no
/// shared memory.
#[tokio::test]
async fn client_named_models_keep_no_health() {
    let (envoy, mock) = start_with_plugin(json!({
        "default_chain": ["backup"],
        "cooldown_failures": 1,
        "cooldown_ms": 60000
    }));
    for _ in 0..2 {
        let (status, _) = post(&envoy, &[], &chat_request("made-up+status-502")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        models_seen(&mock),
        [
            "made-up+status-502",
            "backup",
            "made-up+status-502",
            "backup"
        ],
        "the made-up model did not cool"
    );
    assert_eq!(envoy.stat("ai_fallback.cooling_models"), 0);
}

/// A model name over 256 bytes is not planned: sent once, its answer as it came.
#[tokio::test]
async fn overlong_model_names_pass_through() {
    let (envoy, mock) = start_with_plugin(json!({"default_chain": ["backup"]}));
    let long = format!("{}+status-502", "m".repeat(300));
    let (status, _) = post(&envoy, &[], &chat_request(&long)).await;
    assert_eq!(status, 502);
    assert_eq!(models_seen(&mock), [long]);
    let just_fits = format!("{}+status-502", "m".repeat(256 - 11));
    let (status, _) = post(&envoy, &[], &chat_request(&just_fits)).await;
    assert_eq!(status, 200, "256 bytes is still planned");
}

/// A client's deadline longer than the route's timeout does not lengthen it.
#[tokio::test]
async fn a_client_deadline_never_outlasts_the_route_timeout() {
    let mock = Mock::start();
    let mut config = example_config(mock.port(), &json!({"chains": {"slow+delay-6000": ["b"]}}));
    connection_manager(&mut config)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        ["timeout"] = json!("2s");
    let envoy = Envoy::start(&config);
    let started = Instant::now();
    let headers = [("x-ai-fallback-timeout-ms", "30000")];
    let (status, body) = post(&envoy, &headers, &chat_request("slow+delay-6000")).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(4500), "{elapsed:?}: {body}");
    assert_eq!(status, 504, "{body}");
}

/// The deadline header is the filter's own: no provider sees it, on a path the
/// filter does not act on, on a body it cannot read, or on a planned request.
#[tokio::test]
async fn the_deadline_header_never_reaches_the_provider() {
    let (envoy, mock) = start_with_plugin(json!({"chains": {"a": ["b"]}}));
    let deadline = ("x-ai-fallback-timeout-ms", "5000");
    let get = client()
        .get(envoy.url("/v1/models"))
        .header(deadline.0, deadline.1)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let gzip_body = gzip(chat_request("a").to_string().as_bytes());
    let gzipped = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header(deadline.0, deadline.1)
        .body(gzip_body)
        .send()
        .await
        .unwrap();
    assert!(gzipped.status().as_u16() > 0);
    let (status, _) = post(&envoy, &[deadline], &chat_request("a")).await;
    assert_eq!(status, 200);
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    for request in requests {
        assert_eq!(request.header(deadline.0), None, "{}", request.path);
    }
}

/// A provider compresses its answer when the client accepts gzip (the openai SDK
/// and httpx do): a compressed "No instances available" or error envelope must
/// still fall back.
#[tokio::test]
async fn compressed_error_bodies_still_fall_back() {
    let (port, seen) = raw_upstream(|model, _, headers| {
        let (status, body): (&str, &[u8]) = match model {
            "noinst" => ("404 Not Found", br#"{"detail":"No instances available"}"#),
            "envelope" => ("200 OK", br#"{"error":{"message":"overloaded"}}"#),
            other => return json_ok(other),
        };
        // Compressed when the request accepts it, as real providers do.
        let accepts_gzip = headers
            .iter()
            .any(|(name, value)| name == "accept-encoding" && value.contains("gzip"));
        if !accepts_gzip {
            return response(status, &[("content-type", "application/json")], body);
        }
        response(
            status,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            &gzip(body),
        )
    });
    let envoy = Envoy::start(&example_config(
        port,
        &json!({"chains": {"noinst": ["backup"], "envelope": ["backup"]}}),
    ));
    for model in ["noinst", "envelope"] {
        let headers = [("accept-encoding", "gzip")];
        let (status, body) = post(&envoy, &headers, &chat_request(model)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert!(body.contains("\"backup\""), "{model}: {body}");
    }
    assert_eq!(models(&seen), ["noinst", "backup", "envelope", "backup"]);
}

/// A model whose cooldown ended is probed by the request that sends to it; a
/// request that never sends to it must not claim its probe and sideline it.
#[tokio::test]
async fn a_probe_is_claimed_only_by_the_request_that_sends_to_the_model() {
    // `b` fails the first time it is asked, then recovers.
    let (port, seen) = raw_upstream(|model, nth, _| match (model, nth) {
        ("b", 0) => bad_gateway(),
        (other, _) => json_ok(other),
    });
    let envoy = Envoy::start(&example_config(
        port,
        &json!({"chains": {"a": ["b"], "b": ["c"]},
                "cooldown_failures": 1, "cooldown_ms": 400}),
    ));
    let (status, _) = post(&envoy, &[], &chat_request("b")).await;
    assert_eq!(status, 200, "b failed, c answered; b cools");
    std::thread::sleep(Duration::from_millis(600));
    // b's probe is due; this request's chain holds b, but a answers first.
    let (status, _) = post(&envoy, &[], &chat_request("a")).await;
    assert_eq!(status, 200);
    let (status, body) = post(&envoy, &[], &chat_request("b")).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"b\""), "b is probed, not sidelined: {body}");
    assert_eq!(models(&seen), ["b", "c", "a", "b"]);
}

/// A stream whose content says `[DONE]` or `response.completed` as text, and that
/// then ends without the marker line, is cut: it gets the `stream_truncated` event.
#[tokio::test]
async fn end_markers_inside_content_do_not_end_a_stream() {
    let (port, _) = raw_upstream(|_, _, _| {
        let event = |content: &str| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": content}}]})
            )
        };
        let body = format!("{}{}", event("say [DONE]"), event("response.completed"));
        response(
            "200 OK",
            &[("content-type", "text/event-stream")],
            body.as_bytes(),
        )
    });
    let envoy = Envoy::start(&example_config(port, &json!({"chains": {"m": ["n"]}})));
    let request = json!({"model": "m", "stream": true, "messages": []});
    let (status, text) = post(&envoy, &[], &request).await;
    assert_eq!(status, 200);
    assert!(text.contains("say [DONE]"), "{text}");
    assert!(text.contains("stream_truncated"), "{text}");
}

/// One chunk of a chunked HTTP/1.1 body.
fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// The head of an answer with `content-length`, its body to come later.
fn head(status: &str, content_type: &str, body_len: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: {content_type}\r\n\
         content-length: {body_len}\r\n\r\n"
    )
    .into_bytes()
}

/// An answer whose headers came in time is not cut by the per-try timeout while
/// the attempt role reads its body: a 200 whose body takes 2.5 s, and a stream that
/// sent a comment at once and its first event after 2.5 s, with a 1 s limit.
#[tokio::test]
async fn a_slow_body_after_timely_headers_is_not_thrown_away() {
    let (port, seen) = raw_upstream_in_parts(|model, _, _| match model {
        "slow-body" => {
            let body = br#"{"model":"slow-body","choices":[]}"#.to_vec();
            vec![
                (0, head("200 OK", "application/json", body.len())),
                (2500, body),
            ]
        }
        "slow-stream" => {
            let head = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\
                content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let mut first = head.to_vec();
            first.extend(chunk(": keep-alive\n\n"));
            let mut rest = chunk("data: {\"choices\":[]}\n\n");
            rest.extend(chunk("data: [DONE]\n\n"));
            rest.extend(b"0\r\n\r\n");
            vec![(0, first), (2500, rest)]
        }
        other => vec![(0, json_ok(other))],
    });
    let envoy = Envoy::start(&example_config(
        port,
        &json!({"chains": {"slow-body": ["backup"], "slow-stream": ["backup"]},
                "attempt_timeout_ms": 1000, "first_byte_timeout_ms": 1000}),
    ));
    let (status, body) = post(&envoy, &[], &chat_request("slow-body")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slow-body"), "{body}");
    let request = json!({"model": "slow-stream", "stream": true, "messages": []});
    let (status, text) = post(&envoy, &[], &request).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("data: {\"choices\":[]}"), "{text}");
    assert_eq!(
        models(&seen),
        ["slow-body", "slow-stream"],
        "no model billed twice"
    );
}

/// When the last model's failure comes with a body that stalls, the client gets the
/// JSON error at once (the body is waited for 200 ms at most), not Envoy's
/// plain-text timeout.
#[tokio::test]
async fn a_last_failure_whose_body_stalls_gets_the_json_error_in_time() {
    let (port, _) = raw_upstream_in_parts(|_, _, _| {
        vec![
            (0, head("502 Bad Gateway", "application/json", 100)),
            (0, br#"{"error": {"mess"#.to_vec()),
            (10_000, vec![b' '; 84]),
        ]
    });
    let mut config = example_config(port, &json!({"chains": {"a": ["b"]}}));
    connection_manager(&mut config)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        ["timeout"] = json!("8s");
    let envoy = Envoy::start(&config);
    let started = Instant::now();
    let (status, body) = post(&envoy, &[], &chat_request("a")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 502, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "fallbacks_exhausted", "{body}");
    assert_eq!(error["error"]["attempts"].as_array().unwrap().len(), 2);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

/// Envoy does not retry once a 1xx (`103 Early Hints` here) went on to the client:
/// the fallback cannot happen, and the error says so instead of "all failed".
#[tokio::test]
async fn a_1xx_before_a_failure_is_reported_as_a_fallback_envoy_could_not_make() {
    let (port, seen) = raw_upstream(|model, _, _| match model {
        "early" => {
            let mut bytes =
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n".to_vec();
            bytes.extend(bad_gateway());
            bytes
        }
        other => json_ok(other),
    });
    let envoy = Envoy::start(&example_config(
        port,
        &json!({"chains": {"early": ["backup"]}}),
    ));
    let (status, body) = post(&envoy, &[], &chat_request("early")).await;
    assert_eq!(status, 502, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("1 of 2 model(s) tried"), "{message}");
    assert_eq!(models(&seen), ["early"], "Envoy does not retry after a 1xx");
}
