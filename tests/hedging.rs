//! Hedged fallback (`hedge_after_ms`) under the real Envoy binary: a model without
//! an answer that long gets the next model started beside it, the first usable
//! answer wins, and the record and the stats show every attempt.

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
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

/// Slack for Envoy, the mock and a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(400);

const HEDGE_AFTER: Duration = Duration::from_millis(300);

struct Hedging {
    envoy: Envoy,
    mock: Mock,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// The example config with `chains` and hedging after 300 ms, its access log in a file.
fn start(chains: Value) -> Hedging {
    let mock = Mock::start();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("access.log");
    let plugin = json!({"chains": chains, "hedge_after_ms": HEDGE_AFTER.as_millis() as u64});
    let mut config = example_config(mock.port(), &plugin);
    connection_manager(&mut config)["access_log"][0]["typed_config"]["path"] =
        json!(log_path.display().to_string());
    let envoy = Envoy::try_start_with(&config, &["--file-flush-interval-msec", "50"]).unwrap();
    Hedging {
        envoy,
        mock,
        log_path,
        _log_dir: log_dir,
    }
}

/// Sends a chat request; returns the status, the body, and the time to its end.
async fn chat(envoy: &Envoy, model: &str, stream: bool) -> (u16, String, Duration) {
    let body = json!({"model": model, "stream": stream, "messages": []});
    let started = Instant::now();
    let response = client()
        .post(envoy.url(CHAT))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, text, started.elapsed())
}

/// The model that answered, from a JSON answer or the stream's first chunk.
fn answering_model(text: &str, stream: bool) -> String {
    let json = if stream {
        text.lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap_or_default()
            .to_string()
    } else {
        text.to_string()
    };
    let value: Value = serde_json::from_str(&json).unwrap_or_else(|_| panic!("{text}"));
    value["model"].as_str().unwrap_or_default().to_string()
}

/// The attempts of the one access record: (model, class, hedged), the answering
/// one last.
fn attempts(hedging: &Hedging) -> (String, Vec<(String, String, bool)>) {
    let lines = access_log_lines(&hedging.log_path, 1);
    let record = record_of(&lines[0]);
    let attempts = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| {
            (
                attempt["model"].as_str().unwrap().to_string(),
                attempt["class"].as_str().unwrap().to_string(),
                attempt["hedged"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    (record["outcome"].as_str().unwrap().to_string(), attempts)
}

fn hedge_count(envoy: &Envoy, model: &str, result: &str) -> u64 {
    filter_counters(envoy)
        .into_iter()
        .find(|(name, _)| {
            name.starts_with("ai_fallback_hedges_total{")
                && name.contains(&format!("model=\"{model}\""))
                && name.contains(&format!("result=\"{result}\""))
        })
        .map_or(0, |(_, count)| count)
}

fn attempt(model: &str, class: &str, hedged: bool) -> (String, String, bool) {
    (model.to_string(), class.to_string(), hedged)
}

async fn a_stalled_first_model_is_answered_by_the_hedge(stream: bool) {
    let hedging = start(json!({"stall+delay-10000": ["fast"]}));
    let (status, text, elapsed) = chat(&hedging.envoy, "stall+delay-10000", stream).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answering_model(&text, stream), "fast");
    assert!(
        elapsed >= HEDGE_AFTER,
        "hedged before its time: {elapsed:?}"
    );
    assert!(elapsed < HEDGE_AFTER + MARGIN, "{elapsed:?}");
    assert_eq!(models_seen(&hedging.mock), ["stall+delay-10000", "fast"]);
    let (outcome, attempts) = attempts(&hedging);
    assert_eq!(outcome, "fallback_ok");
    assert_eq!(
        attempts,
        [
            attempt("stall+delay-10000", "cancelled", false),
            attempt("fast", "success", true)
        ]
    );
    assert_eq!(hedge_count(&hedging.envoy, "fast", "won"), 1);
    assert_eq!(hedge_count(&hedging.envoy, "fast", "lost"), 0);
}

#[tokio::test]
async fn a_stalled_first_model_is_answered_by_the_hedge_non_streamed() {
    a_stalled_first_model_is_answered_by_the_hedge(false).await;
}

#[tokio::test]
async fn a_stalled_first_model_is_answered_by_the_hedge_streamed() {
    a_stalled_first_model_is_answered_by_the_hedge(true).await;
}

async fn the_first_model_answering_first_wins(stream: bool) {
    let hedging = start(json!({"first+delay-500": ["second+delay-2000"]}));
    let (status, text, elapsed) = chat(&hedging.envoy, "first+delay-500", stream).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answering_model(&text, stream), "first+delay-500");
    assert!(
        elapsed < Duration::from_millis(500) + MARGIN,
        "the hedge's 2 s were waited for: {elapsed:?}"
    );
    assert_eq!(
        models_seen(&hedging.mock),
        ["first+delay-500", "second+delay-2000"],
        "the hedge was started"
    );
    let (outcome, attempts) = attempts(&hedging);
    assert_eq!(outcome, "ok");
    assert_eq!(
        attempts,
        [
            attempt("second+delay-2000", "cancelled", true),
            attempt("first+delay-500", "success", false)
        ]
    );
    assert_eq!(hedge_count(&hedging.envoy, "second_delay-2000", "lost"), 1);
    assert_eq!(hedge_count(&hedging.envoy, "second_delay-2000", "won"), 0);
}

#[tokio::test]
async fn the_first_model_answering_first_wins_non_streamed() {
    the_first_model_answering_first_wins(false).await;
}

#[tokio::test]
async fn the_first_model_answering_first_wins_streamed() {
    the_first_model_answering_first_wins(true).await;
}

#[tokio::test]
async fn a_hedge_that_fails_waits_for_the_attempt_still_running() {
    let hedging = start(json!({"first+delay-900": ["second+status-502"]}));
    let (status, text, elapsed) = chat(&hedging.envoy, "first+delay-900", false).await;
    assert_eq!(status, 200, "the hedge's 502 ended the request: {text}");
    assert_eq!(answering_model(&text, false), "first+delay-900");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(900) + MARGIN, "{elapsed:?}");
    assert_eq!(
        models_seen(&hedging.mock),
        ["first+delay-900", "second+status-502"],
        "no model was sent twice"
    );
    let (outcome, attempts) = attempts(&hedging);
    assert_eq!(outcome, "ok");
    assert_eq!(
        attempts,
        [
            attempt("second+status-502", "failure_status", true),
            attempt("first+delay-900", "success", false)
        ]
    );
}

#[tokio::test]
async fn when_every_hedged_model_fails_the_client_gets_one_error_listing_them() {
    let hedging = start(json!({"first+delay-700+status-500": ["second+status-502"]}));
    let (status, text, elapsed) = chat(&hedging.envoy, "first+delay-700+status-500", false).await;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
    assert!((500..600).contains(&status), "{status} {text}");
    assert_eq!(body["error"]["code"], "fallbacks_exhausted", "{body}");
    let listed: Vec<&str> = body["error"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["model"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["second+status-502", "first+delay-700+status-500"]);
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(700) + MARGIN, "{elapsed:?}");
    assert_eq!(
        models_seen(&hedging.mock),
        ["first+delay-700+status-500", "second+status-502"]
    );
    let (outcome, _) = attempts(&hedging);
    assert_eq!(outcome, "exhausted");
}

#[tokio::test]
async fn a_fast_failure_falls_back_as_without_hedging() {
    let hedging = start(json!({"first+status-502": ["second"]}));
    let (status, text, elapsed) = chat(&hedging.envoy, "first+status-502", false).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answering_model(&text, false), "second");
    assert!(elapsed < HEDGE_AFTER, "{elapsed:?}");
    let (outcome, attempts) = attempts(&hedging);
    assert_eq!(outcome, "fallback_ok");
    assert_eq!(
        attempts,
        [
            attempt("first+status-502", "failure_status", false),
            attempt("second", "success", false)
        ]
    );
}
