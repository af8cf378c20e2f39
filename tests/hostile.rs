//! Odd and hostile traffic under the real Envoy binary (issue 14): a provider that
//! quotes the key Envoy injected, a `Retry-After` of decades, a model name that
//! tries to forge an access-log line, numbers that are not JSON. README.md's "Bad
//! input" table lists these answers.

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

/// What the client got.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn post(envoy: &Envoy, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Answer {
    let mut request = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.expect("response");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

// ---------------------------------------------------------------------------------
// 1. A provider's error that quotes the key Envoy injected.

/// The example config with Envoy's `credential_injector` in the router's upstream
/// filters, after the attempt role: every attempt leaves with
/// `authorization: Bearer <key>`, as a provider cluster's does in
/// `envoy/envoy-two-providers.yaml`.
fn with_injected_key(mock: &Mock, plugin: &Value, key: &str) -> Value {
    let mut config = example_config(mock.port(), plugin);
    config["static_resources"]["secrets"] = json!([{
        "name": "provider_key",
        "generic_secret": {"secret": {"inline_string": key}}
    }]);
    let router = connection_manager(&mut config)["http_filters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.router")
        .unwrap();
    let upstream = router["typed_config"]["upstream_http_filters"]
        .as_array_mut()
        .unwrap();
    upstream.insert(
        1,
        json!({
            "name": "envoy.filters.http.credential_injector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                "overwrite": true,
                "credential": {
                    "name": "envoy.http.injected_credentials.generic",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                        "credential": {"name": "provider_key"},
                        "header_value_prefix": "Bearer "
                    }
                }
            }
        }),
    );
    config
}

/// The mock's `body-keyecho-N` shapes (see mock/src/lib.rs) and whether the shape is
/// an `{"error": ...}` envelope: then the first model answers it with a 200, which
/// the attempt role reads (an error envelope); the others fail with a 500 on both
/// models, and only the gateway reads the last one.
const KEY_SHAPES: [(u8, bool); 8] = [
    (0, true),  // model not found for key=KEY
    (1, true),  // Incorrect API key provided: KEY.
    (2, true),  // Authorization='Bearer KEY'
    (3, true),  // invalid credential "KEY"
    (4, true),  // the key KEY is not valid for this model
    (5, false), // {"detail": "request denied: Bearer KEY"}
    (6, true),  // {"error": "KEY"}
    (7, false), // {"message": "upstream refused KEY today"}
];

fn key_chain(shape: u8, envelope: bool) -> (String, String) {
    let first = if envelope {
        format!("first{shape}+body-keyecho-{shape}")
    } else {
        format!("first{shape}+status-500+body-keyecho-{shape}")
    };
    (
        first,
        format!("last{shape}+status-500+body-keyecho-{shape}"),
    )
}

/// Every part of `key` of 5 bytes or more that appears in `text`.
fn key_parts_in(text: &str, key: &str) -> Vec<String> {
    let part = key.len().min(5);
    (0..=key.len() - part)
        .map(|at| &key[at..at + part])
        .filter(|window| text.contains(window))
        .map(str::to_string)
        .collect()
}

async fn assert_key_never_reaches_the_client(key: &str) {
    let chains: serde_json::Map<String, Value> = KEY_SHAPES
        .iter()
        .map(|(shape, envelope)| {
            let (first, last) = key_chain(*shape, *envelope);
            (first, json!([last]))
        })
        .collect();
    let mock = Mock::start();
    let envoy = Envoy::start(&with_injected_key(&mock, &json!({"chains": chains}), key));
    for (shape, envelope) in KEY_SHAPES {
        let (first, last) = key_chain(shape, envelope);
        mock.clear();
        // The client's own key is replaced by the injected one.
        let answer = post(
            &envoy,
            &[("authorization", "Bearer client-own")],
            chat_body(&first),
        )
        .await;
        let requests = mock.requests();
        assert_eq!(
            requests
                .iter()
                .map(|r| (
                    r.model.clone().unwrap_or_default(),
                    r.header("authorization").unwrap_or_default().to_string()
                ))
                .collect::<Vec<_>>(),
            [
                (first.clone(), format!("Bearer {key}")),
                (last.clone(), format!("Bearer {key}"))
            ],
            "shape {shape}: Envoy injected the key on both attempts"
        );
        assert_eq!(answer.status, 500, "shape {shape}: {}", answer.body);
        assert_eq!(
            answer.json()["error"]["code"],
            "fallbacks_exhausted",
            "{}",
            answer.body
        );
        let leaked = key_parts_in(&answer.body, key);
        assert!(
            leaked.is_empty(),
            "shape {shape}: the client's error quotes {leaked:?} of the key: {}",
            answer.body
        );
        let headers = format!("{:?}", answer.headers);
        assert!(key_parts_in(&headers, key).is_empty(), "{headers}");
    }
}

#[tokio::test]
async fn a_long_injected_key_quoted_by_the_provider_never_reaches_the_client() {
    assert_key_never_reaches_the_client("gsk_4fJ9qLx2VbN7sT1wZp8RkD3mY6hC0eGa5uWiQo").await;
}

#[tokio::test]
async fn a_short_injected_key_quoted_by_the_provider_never_reaches_the_client() {
    assert_key_never_reaches_the_client("Zq7Xw2Lp4Mn8").await;
    assert_key_never_reaches_the_client("k3yZ9qW1").await;
}

// ---------------------------------------------------------------------------------
// 2. `Retry-After` is capped by `max_cooldown_ms`.

#[tokio::test]
async fn a_retry_after_of_decades_cools_a_model_for_max_cooldown_ms_only() {
    let limited = "limited+status-429+retry-after-999999999";
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {limited: ["backup"]},
        "cooldown_failures": 1,
        "cooldown_ms": 500,
        "max_cooldown_ms": 1500
    }));
    let answer = post(&envoy, &[], chat_body(limited)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(models_seen(&mock), [limited, "backup"]);

    // Cooling: the fallback answers at once.
    mock.clear();
    let cooled_at = Instant::now();
    let answer = post(&envoy, &[], chat_body(limited)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(models_seen(&mock), ["backup"], "the limited model cools");

    // Past max_cooldown_ms (1.5 s), although its Retry-After said 31 years: the
    // limited model is tried first again.
    tokio::time::sleep(Duration::from_millis(1800).saturating_sub(cooled_at.elapsed())).await;
    mock.clear();
    let answer = post(&envoy, &[], chat_body(limited)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        models_seen(&mock),
        [limited, "backup"],
        "the cooldown ended after max_cooldown_ms"
    );
}

// ---------------------------------------------------------------------------------
// 3. A model name that would forge an access-log line.

#[tokio::test]
async fn a_model_name_with_control_characters_cannot_forge_an_access_log_line() {
    let mock = Mock::start();
    let mut config = example_config(mock.port(), &json!({"default_chain": ["backup"]}));
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    connection_manager(&mut config)["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log_path.display().to_string(),
            "log_format": {"text_format_source": {
                "inline_string": "model=%FILTER_STATE(wasm.ai_fallback.model:PLAIN)%\n"
            }}
        }
    }]);
    // Envoy flushes access log files every 10 s by default.
    let envoy = Envoy::try_start_with(&config, &["--file-flush-interval-msec", "100"]).unwrap();
    let hostile = [
        "ok\nmodel=forged-by-newline",
        "ok\r\nmodel=forged-by-crlf",
        "ok\u{0b}\u{0c}\u{1b}[2K\u{0}\u{85}\u{2028}model=forged-by-others",
    ];
    for model in hostile {
        let answer = post(&envoy, &[], chat_body(model)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let answer = post(&envoy, &[], chat_body("plain-last")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        models_seen(&mock).len(),
        4,
        "each answered by its own model"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("model=plain-last\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains("model=plain-last\n"), "{log:?}");
    let lines: Vec<&str> = log.split('\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 4, "one line per request: {log:?}");
    for line in &lines {
        assert!(line.starts_with("model="), "{line:?}");
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{2028}'),
            "{line:?}"
        );
    }
    assert!(
        lines[..3].iter().all(|l| l.starts_with("model=ok")),
        "{log:?}"
    );
}

// ---------------------------------------------------------------------------------
// 4. Numbers that are not JSON.

/// Numbers JSON does not allow, at the top level of a body with a chain.
const INVALID_NUMBERS: [&str; 16] = [
    "+1", "1.2.3e", "01", "-01", "1.", ".5", "-", "1e", "1e+", "1.e5", "-.5", "--1", "NaN",
    "Infinity", "0x10", "1E5.0",
];

#[tokio::test]
async fn a_body_with_an_invalid_number_is_passed_through_after_one_attempt() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"a+status-502": ["b"]},
        "default_chain": ["b"]
    }));
    for number in INVALID_NUMBERS {
        for body in [
            format!(r#"{{"model":"a+status-502","n":{number}}}"#),
            format!(r#"{{"n":{number},"model":"a+status-502","messages":[]}}"#),
        ] {
            assert!(
                serde_json::from_str::<Value>(&body).is_err(),
                "{body} is not JSON"
            );
            mock.clear();
            // The mock cannot read the body either: the header scripts its answer.
            let answer = post(
                &envoy,
                &[(mock_upstream::SCRIPT_HEADER, "h+status-502")],
                body.clone(),
            )
            .await;
            assert_eq!(answer.status, 502, "{body}: {}", answer.body);
            assert_eq!(
                answer.json()["error"]["message"],
                "mock failure 502 for model h+status-502",
                "{body}: the mock's answer as it came"
            );
            let requests = mock.requests();
            assert_eq!(requests.len(), 1, "{body}: passed through, never retried");
            assert_eq!(requests[0].body, body.as_bytes(), "{body}: sent as it came");
            assert_eq!(answer.headers.get("x-ai-fallback-model"), None, "{body}");
        }
    }
    // Valid numbers of every form are still acted on.
    for number in [
        "0",
        "-0",
        "1.5",
        "-2.5e-3",
        "1E+5",
        "10e5",
        "123456789012345678901234",
    ] {
        mock.clear();
        let body = format!(r#"{{"n":{number},"model":"a+status-502"}}"#);
        let answer = post(&envoy, &[], body.clone()).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.body);
        assert_eq!(models_seen(&mock), ["a+status-502", "b"], "{body}");
    }
}
