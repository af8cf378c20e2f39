//! Client-side scenarios shared by the native integration tests and the Docker
//! harness: what a client sends through Envoy, what it gets back, and what the
//! upstream received. Each takes a [`Target`]: an Envoy URL and a handle on the mock
//! upstream behind it, either the in-process [`Mock`] of a native test
//! (tests/fallback.rs starts an Envoy and a mock per test) or the mock container of
//! `make docker-test`, read over its `/__mock/requests` endpoint (tests/docker.rs).
//!
//! The chains they rely on are those of the plugin configuration that the Docker
//! stack runs, `envoy/envoy-docker.yaml`; native tests start Envoy with that same
//! configuration ([`plugin`]). Against one long-lived stack the scenarios run one
//! after the other, each clearing the mock's record first.

#![allow(dead_code)] // each test file uses its own part

use crate::common::{chat_body, client, connection_manager, load_yaml, repo_root, with_model};
use crate::common::{Envoy, Mock};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The Envoy configuration `envoy/docker-compose.yaml` runs.
pub const DOCKER_CONFIG: &str = "envoy/envoy-docker.yaml";

const CHAT: &str = "/v1/chat/completions";

/// Headers only Envoy and the filter may see; a provider never should.
pub const INTERNAL_HEADERS: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-attempt-count",
    "x-envoy-expected-rq-timeout-ms",
];

/// The plugin configuration (the JSON both roles share) of `envoy/envoy-docker.yaml`.
pub fn plugin() -> Value {
    let mut config = load_yaml(&repo_root().join(DOCKER_CONFIG));
    let gateway = &connection_manager(&mut config)["http_filters"][0]["typed_config"]["config"];
    assert_eq!(gateway["root_id"], "ai_fallback_gateway", "{DOCKER_CONFIG}");
    let text = gateway["configuration"]["value"]
        .as_str()
        .expect("the gateway's configuration value");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{DOCKER_CONFIG}: {e}"))
}

/// Where the mock upstream's record is read.
pub enum Upstream<'a> {
    InProcess(&'a Mock),
    /// The base URL of a mock-upstream binary (`http://127.0.0.1:PORT`).
    Remote(String),
}

/// An Envoy running ai-fallback with [`plugin`]'s chains, and the mock behind it.
pub struct Target<'a> {
    envoy_url: String,
    upstream: Upstream<'a>,
}

/// One request as the mock received it.
pub struct Seen {
    pub model: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl<'a> Target<'a> {
    pub fn native(envoy: &Envoy, mock: &'a Mock) -> Target<'a> {
        Target {
            envoy_url: envoy.url(""),
            upstream: Upstream::InProcess(mock),
        }
    }

    pub fn remote(envoy_url: &str, mock_url: &str) -> Target<'static> {
        Target {
            envoy_url: envoy_url.trim_end_matches('/').to_string(),
            upstream: Upstream::Remote(mock_url.trim_end_matches('/').to_string()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.envoy_url)
    }

    /// Every request the mock received since the last [`Target::clear`].
    pub async fn requests(&self) -> Vec<Seen> {
        match &self.upstream {
            Upstream::InProcess(mock) => mock
                .requests()
                .into_iter()
                .map(|r| Seen {
                    model: r.model,
                    headers: r.headers,
                    body: r.body,
                })
                .collect(),
            Upstream::Remote(base) => {
                let response = client()
                    .get(format!("{base}{}", mock_upstream::CONTROL_PATH))
                    .send()
                    .await
                    .expect("the mock's record");
                assert_eq!(response.status(), 200, "GET {base}/__mock/requests");
                let listing: Vec<Value> = response.json().await.expect("the mock's JSON record");
                listing.iter().map(seen_from_json).collect()
            }
        }
    }

    /// Forgets what the mock received so far.
    pub async fn clear(&self) {
        match &self.upstream {
            Upstream::InProcess(mock) => mock.clear(),
            Upstream::Remote(base) => {
                let response = client()
                    .delete(format!("{base}{}", mock_upstream::CONTROL_PATH))
                    .send()
                    .await
                    .expect("clear the mock's record");
                assert!(
                    response.status().is_success(),
                    "DELETE {base}/__mock/requests"
                );
            }
        }
    }

    /// The models the mock received, in order.
    pub async fn models_seen(&self) -> Vec<String> {
        self.requests()
            .await
            .into_iter()
            .map(|r| r.model.unwrap_or_default())
            .collect()
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("response")
    }

    async fn assert_no_internal_headers(&self) {
        for request in self.requests().await {
            for name in INTERNAL_HEADERS {
                assert_eq!(request.header(name), None, "{name} reached the upstream");
            }
        }
    }
}

/// A request from the JSON listing of `GET /__mock/requests` (mock/src/lib.rs,
/// `RecordedRequest`: headers as `[name, value]` pairs, the body as a string).
fn seen_from_json(request: &Value) -> Seen {
    Seen {
        model: request["model"].as_str().map(str::to_string),
        headers: request["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap_or_default().to_string(),
                    pair[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: request["body"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

/// Runs every scenario, one after the other, against one long-lived target.
pub async fn run_all(target: &Target<'_>) {
    macro_rules! run {
        ($($scenario:ident),* $(,)?) => {$(
            eprintln!("scenario {} ...", stringify!($scenario));
            target.clear().await;
            $scenario(target).await;
            eprintln!("scenario {} ok", stringify!($scenario));
        )*};
    }
    run!(
        primary_502_is_answered_by_the_fallback,
        third_model_answers_after_500_then_502,
        client_errors_pass_through_after_one_attempt,
        every_model_failing_gives_the_last_status_and_every_attempt,
        streamed_request_falls_back_then_streams_incrementally,
        other_paths_pass_through_byte_for_byte,
        model_without_chain_passes_through_after_one_attempt,
        non_ascii_body_keeps_every_byte_but_the_model,
        one_mib_body_keeps_every_byte_but_the_model,
    );
}

pub async fn primary_502_is_answered_by_the_fallback(t: &Target<'_>) {
    let response = t.post(CHAT, chat_body("a+status-502")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "b");
    assert_eq!(t.models_seen().await, ["a+status-502", "b"]);
    t.assert_no_internal_headers().await;
}

pub async fn third_model_answers_after_500_then_502(t: &Target<'_>) {
    let response = t.post(CHAT, chat_body("first+status-500")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "third");
    assert_eq!(
        t.models_seen().await,
        ["first+status-500", "second+status-502", "third"]
    );
    t.assert_no_internal_headers().await;
}

pub async fn client_errors_pass_through_after_one_attempt(t: &Target<'_>) {
    for (model, status) in [("bad+status-400", 400), ("auth+status-401", 401)] {
        t.clear().await;
        let response = t.post(CHAT, chat_body(model)).await;
        assert_eq!(response.status(), status);
        let body = json_of(response).await;
        assert_eq!(
            body["error"]["message"],
            format!("mock failure {status} for model {model}"),
            "the provider's body reaches the client unchanged"
        );
        assert_eq!(t.models_seen().await, [model]);
    }
}

pub async fn every_model_failing_gives_the_last_status_and_every_attempt(t: &Target<'_>) {
    let response = t.post(CHAT, chat_body("x+status-500")).await;
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
    assert_eq!(t.models_seen().await, ["x+status-500", "y+status-503"]);
}

pub async fn streamed_request_falls_back_then_streams_incrementally(t: &Target<'_>) {
    let body = json!({"model": "s+status-502", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let started = Instant::now();
    let response = t.post(CHAT, body.to_string()).await;
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
        t.models_seen().await,
        ["s+status-502", "streamer+chunks-5+gap-150"]
    );
}

pub async fn other_paths_pass_through_byte_for_byte(t: &Target<'_>) {
    let body = r#"{"model":"a+status-502", "x": 1.0e0 }"#;
    let response = t.post("/v1/other", body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-mock-echo"], "1");
    assert_eq!(response.bytes().await.unwrap(), body.as_bytes());
    let requests = t.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, body.as_bytes());
}

pub async fn model_without_chain_passes_through_after_one_attempt(t: &Target<'_>) {
    let body = r#"{ "model" : "lonely+status-502","messages":[],"temperature":0.70}"#;
    let response = t.post(CHAT, body).await;
    assert_eq!(response.status(), 502);
    let requests = t.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, body.as_bytes());
}

pub async fn non_ascii_body_keeps_every_byte_but_the_model(t: &Target<'_>) {
    let body = "{\"temperature\":0.70,\"model\":\"a+status-502\",\"messages\":[{\"role\":\"user\",\
                \"content\":\"h\u{e9}llo w\u{f6}rld \u{2713} \u{65e5}\u{672c}\u{8a9e} \u{1f389} \\u00e9 \\\"q\\\"\"}],\
                \"n\":1e2,\"z\":null}";
    let response = t.post(CHAT, body).await;
    assert_eq!(response.status(), 200);
    let requests = t.requests().await;
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

pub async fn one_mib_body_keeps_every_byte_but_the_model(t: &Target<'_>) {
    // model last: the whole body lies before the value that changes.
    let filler: String = (0..1024 * 1024 - 200)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{filler}"}}],"model":"big+status-502"}}"#
    );
    assert!(body.len() >= 1024 * 1024 - 150);
    let response = t.post(CHAT, body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["model"], "ok-big");
    let requests = t.requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, body.as_bytes());
    assert_eq!(
        requests[1].body,
        with_model(body.as_bytes(), "\"big+status-502\"", "\"ok-big\"")
    );
}
