//! Cooldowns shared by every worker of one Envoy: a failing model is skipped until
//! its cooldown ends, then probed by exactly one request.

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
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";

fn plugin() -> Value {
    json!({
        "chains": {
            "primary+status-502": ["backup"],
            "x+status-502": ["y+status-503"],
            "limited+status-429+retry-after-30": ["backup"]
        },
        "cooldown_failures": 3,
        "cooldown_window_ms": 10000,
        "cooldown_ms": 1500
    })
}

/// Envoy with two workers: each request comes on a new connection, so requests
/// spread over both workers' VMs, which share the model health.
fn start() -> (Envoy, Mock) {
    let mock = Mock::start();
    let envoy = Envoy::try_start_with(
        &example_config(mock.port(), &plugin()),
        &["--concurrency", "2"],
    )
    .unwrap();
    (envoy, mock)
}

/// Sends `count` requests at once, each on its own connection; returns the statuses.
async fn send(envoy: &Envoy, model: &str, count: usize) -> Vec<u16> {
    let requests = (0..count).map(|_| {
        let url = envoy.url(CHAT);
        let body = json!({"model": model, "messages": []}).to_string();
        async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            status
        }
    });
    futures_util::future::join_all(requests).await
}

fn attempts_at(mock: &Mock, model: &str) -> usize {
    models_seen(mock).iter().filter(|m| *m == model).count()
}

#[tokio::test]
async fn a_failing_model_is_skipped_then_probed_once() {
    let (envoy, mock) = start();
    let primary = "primary+status-502";
    for _ in 0..3 {
        assert_eq!(send(&envoy, primary, 1).await, [200]);
    }
    assert_eq!(attempts_at(&mock, primary), 3);

    // Cooling down: answered by the fallback, the primary gets no attempt.
    assert_eq!(send(&envoy, primary, 8).await, [200; 8]);
    assert_eq!(attempts_at(&mock, primary), 3, "skipped on every worker");
    assert_eq!(attempts_at(&mock, "backup"), 11);

    // The cooldown ends: one request probes (and fails: a new cooldown), the others
    // still skip the primary.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(send(&envoy, primary, 8).await, [200; 8]);
    assert_eq!(attempts_at(&mock, primary), 4, "exactly one probe");
    assert_eq!(send(&envoy, primary, 4).await, [200; 4]);
    assert_eq!(
        attempts_at(&mock, primary),
        4,
        "the failed probe started a new cooldown"
    );

    let (_, prometheus) = envoy.admin_get("/stats/prometheus");
    assert!(
        prometheus
            .contains(r#"ai_fallback_skipped_total{route="openai",model="primary_status-502"} 19"#),
        "{}",
        prometheus
            .lines()
            .filter(|l| l.contains("skipped") || l.contains("cooling"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        prometheus.contains("ai_fallback_cooling_models{} 1"),
        "the primary cools"
    );
}

#[tokio::test]
async fn a_chain_whose_every_model_cools_is_still_tried() {
    let (envoy, mock) = start();
    for _ in 0..3 {
        assert_eq!(send(&envoy, "x+status-502", 1).await, [503]);
    }
    mock.clear();
    assert_eq!(send(&envoy, "x+status-502", 1).await, [503]);
    assert_eq!(models_seen(&mock), ["x+status-502", "y+status-503"]);
}

#[tokio::test]
async fn retry_after_lengthens_the_cooldown() {
    let (envoy, mock) = start();
    let limited = "limited+status-429+retry-after-30";
    for _ in 0..3 {
        assert_eq!(send(&envoy, limited, 1).await, [200]);
    }
    // Past cooldown_ms (1.5 s) but within the provider's 30 s: still skipped.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(send(&envoy, limited, 4).await, [200; 4]);
    assert_eq!(attempts_at(&mock, limited), 3);
}
