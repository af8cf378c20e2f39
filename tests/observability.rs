//! The access record in Envoy's JSON access log, the filter's stats in
//! `/stats/prometheus`, and the response headers, under the real Envoy binary.

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
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

fn plugin() -> Value {
    json!({
        "chains": {
            "ok-model": ["unused"],
            "fb+status-502": ["fb-backup"],
            "ex+status-500": ["ex2+status-503"],
            "slow+delay-3000": ["slow2+delay-3000"],
            "st": ["st-backup"]
        },
        "budget_ms": 600
    })
}

#[tokio::test]
async fn every_request_leaves_a_record_and_exact_stats() {
    let mock = Mock::start();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("access.log");
    let mut config = example_config(mock.port(), &plugin());
    connection_manager(&mut config)["access_log"][0]["typed_config"]["path"] =
        json!(log_path.display().to_string());
    config["stats_flush_interval"] = json!("0.1s");
    let envoy = Envoy::try_start_with(&config, &["--file-flush-interval-msec", "50"]).unwrap();

    let send = |body: Value| {
        let url = envoy.url(CHAT);
        async move {
            let response = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let headers = response.headers().clone();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, headers, text)
        }
    };

    let (status, headers, _) = send(json!({"model": "ok-model", "messages": []})).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ai-fallback-model"], "ok-model");
    assert_eq!(headers["x-ai-fallback-attempts"], "1");

    let (status, headers, _) = send(json!({"model": "fb+status-502", "messages": []})).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ai-fallback-model"], "fb-backup");
    assert_eq!(headers["x-ai-fallback-attempts"], "2");

    let (status, headers, _) = send(json!({"model": "ex+status-500", "messages": []})).await;
    assert_eq!(status, 503);
    assert!(headers.get("x-ai-fallback-model").is_none());

    let (status, _, _) = send(json!({"model": "slow+delay-3000", "messages": []})).await;
    assert_eq!(status, 504);

    let (status, _, text) = send(json!({"model": "st", "stream": true,
        "stream_options": {"include_usage": true}, "messages": []}))
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("\"usage\""), "{text}");

    let (status, _, _) = send(json!({"model": "nochain", "messages": []})).await;
    assert_eq!(status, 200);

    let lines = access_log_lines(&log_path, 6);
    let records: Vec<Value> = lines.iter().map(record_of).collect();

    // Envoy's own fields sit beside the record.
    assert_eq!(lines[1]["response_code"], 200);
    assert_eq!(lines[1]["ai_fallback_model"], "fb-backup");
    assert_eq!(lines[1]["ai_fallback_attempts"], "2");
    assert_eq!(lines[1]["ai_fallback_outcome"], "fallback_ok");
    assert_eq!(lines[1]["request_id"], records[1]["request_id"]);

    let expect = [
        ("ok-model", Some("ok-model"), "ok", vec![json!(200)]),
        (
            "fb+status-502",
            Some("fb-backup"),
            "fallback_ok",
            vec![json!(502), json!(200)],
        ),
        (
            "ex+status-500",
            Some("ex2+status-503"),
            "exhausted",
            vec![json!(500), json!(503)],
        ),
        (
            "slow+delay-3000",
            Some("slow+delay-3000"),
            "budget_exceeded",
            vec![json!("timeout_or_reset")],
        ),
        ("st", Some("st"), "ok", vec![json!(200)]),
    ];
    for (record, (requested, answered, outcome, statuses)) in records.iter().zip(&expect) {
        assert_eq!(record["gen_ai.request.model"], *requested, "{record}");
        assert_eq!(
            record["gen_ai.response.model"].as_str(),
            *answered,
            "{record}"
        );
        assert_eq!(record["outcome"], *outcome, "{record}");
        assert_eq!(record["route"], "openai");
        assert_eq!(record["budget_ms"], 600);
        let seen: Vec<Value> = record["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|attempt| attempt["status"].clone())
            .collect();
        assert_eq!(&seen, statuses, "{record}");
    }
    let fallback = &records[1]["attempts"];
    assert_eq!(fallback[0]["class"], "failure_status");
    assert_eq!(fallback[0]["cluster"], "provider");
    assert_eq!(fallback[0]["host"], format!("127.0.0.1:{}", mock.port()));
    assert!(fallback[1]["first_byte_ms"].is_u64());
    assert_eq!(records[1]["gen_ai.usage.input_tokens"], 11);
    assert_eq!(records[1]["gen_ai.usage.output_tokens"], 7);
    assert_eq!(records[1]["gen_ai.usage.total_tokens"], 18);
    assert_eq!(records[1]["stream"], false);
    // The stream's usage came in its last event.
    assert_eq!(records[4]["stream"], true);
    assert_eq!(records[4]["gen_ai.usage.input_tokens"], 11);
    assert_eq!(records[4]["gen_ai.usage.output_tokens"], 3);
    assert_eq!(records[3]["attempts"][0]["class"], "no_answer");
    assert_eq!(records[5]["outcome"], "passthrough");
    assert_eq!(
        records[5]["passthrough_reason"],
        "model has no fallback chain"
    );
    assert_eq!(records[5]["attempts"], json!([]));

    let counters = filter_counters(&envoy);
    let expected: BTreeMap<String, u64> = [
        (r#"ai_fallback_requests_total{route="openai",model="ok-model",outcome="ok"}"#, 1),
        (r#"ai_fallback_requests_total{route="openai",model="fb_status-502",outcome="fallback_ok"}"#, 1),
        (r#"ai_fallback_requests_total{route="openai",model="ex_status-500",outcome="exhausted"}"#, 1),
        (r#"ai_fallback_requests_total{route="openai",model="slow_delay-3000",outcome="budget_exceeded"}"#, 1),
        (r#"ai_fallback_requests_total{route="openai",model="st",outcome="ok"}"#, 1),
        (r#"ai_fallback_requests_total{route="openai",model="other",outcome="passthrough"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="ok-model",class="success"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="fb_status-502",class="failure_status"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="fb-backup",class="success"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="ex_status-500",class="failure_status"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="ex2_status-503",class="failure_status"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="slow_delay-3000",class="no_answer"}"#, 1),
        (r#"ai_fallback_attempts_total{route="openai",model="st",class="success"}"#, 1),
        (r#"ai_fallback_fallbacks_total{route="openai",model="fb_status-502"}"#, 1),
        (r#"ai_fallback_fallbacks_total{route="openai",model="ex_status-500"}"#, 1),
        (r#"ai_fallback_budget_exhausted_total{route="openai"}"#, 1),
        (r#"ai_fallback_passthrough_total{route="openai",reason="no_chain"}"#, 1),
        (r#"ai_fallback_tokens_total{route="openai",model="ok-model",kind="input"}"#, 11),
        (r#"ai_fallback_tokens_total{route="openai",model="ok-model",kind="output"}"#, 7),
        (r#"ai_fallback_tokens_total{route="openai",model="fb-backup",kind="input"}"#, 11),
        (r#"ai_fallback_tokens_total{route="openai",model="fb-backup",kind="output"}"#, 7),
        (r#"ai_fallback_tokens_total{route="openai",model="st",kind="input"}"#, 11),
        (r#"ai_fallback_tokens_total{route="openai",model="st",kind="output"}"#, 3),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    assert_eq!(counters, expected);

    // Histograms reach the admin page when Envoy flushes its stats.
    let histogram_counts = || {
        let (_, prometheus) = envoy.admin_get("/stats/prometheus");
        let count_of = |name: &str| {
            prometheus
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}{{route=\"openai\"}} ")))
                .and_then(|value| value.parse::<f64>().ok())
                .map(|value| value.round() as u64)
        };
        (
            count_of("ai_fallback_attempts_per_request_count"),
            count_of("ai_fallback_time_to_success_ms_count"),
            count_of("ai_fallback_attempts_per_request_sum"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while histogram_counts().0 != Some(5) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Five planned requests with 1 + 2 + 2 + 1 + 1 attempts, three of them answered.
    assert_eq!(histogram_counts(), (Some(5), Some(3), Some(7)));
}

/// Requests on an acted-on path that went on unprotected are counted by why, so
/// that an operator sees what the filter silently did not protect.
#[tokio::test]
async fn unprotected_requests_are_counted_by_reason() {
    let (envoy, _mock) = start_with_plugin(json!({"default_chain": ["backup"]}));
    let send = |body: Vec<u8>, headers: Vec<(&'static str, &'static str)>| {
        let url = envoy.url(CHAT);
        async move {
            let mut request = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    let chat = br#"{"model": "m", "messages": []}"#.to_vec();
    send(br#"{"model": "m", "messages": ["#.to_vec(), vec![]).await;
    send(b"[1, 2]".to_vec(), vec![]).await;
    send(br#"{"messages": []}"#.to_vec(), vec![]).await;
    send(chat.clone(), vec![("content-encoding", "br")]).await;
    send(chat.clone(), vec![("x-ai-fallback", "off")]).await;
    send(chat, vec![]).await;
    let reasons: BTreeMap<String, u64> = filter_counters(&envoy)
        .into_iter()
        .filter(|(name, _)| name.starts_with("ai_fallback_passthrough_total"))
        .collect();
    let expected: BTreeMap<String, u64> = [
        "not_json",
        "not_an_object",
        "no_model",
        "compressed",
        "client_off",
    ]
    .into_iter()
    .map(|reason| {
        (
            format!(r#"ai_fallback_passthrough_total{{route="openai",reason="{reason}"}}"#),
            1,
        )
    })
    .collect();
    assert_eq!(reasons, expected, "the planned request is not among them");
}
