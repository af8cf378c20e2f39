//! Falling back the way a person would, under the real Envoy binary: a blocked
//! prompt takes its own chain, a client turns fallbacks off or names its own
//! models within what the operator allows, and Anthropic's Messages API falls back
//! and gets errors in its own shape. (A refused key across providers is in
//! tests/providers.rs, which has two providers.)

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

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";

/// A 400 that says a content policy blocked the prompt goes to the content-policy
/// chain, and only there; another 400 stays final.
#[tokio::test]
async fn a_blocked_prompt_takes_the_content_policy_chain_only() {
    let blocked = "cf+status-400+body-contentfilter";
    let plain_400 = "bad+status-400";
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {blocked: ["general"], plain_400: ["general"]},
        "content_policy_chains": {blocked: ["lenient"], plain_400: ["lenient"]}
    }));
    let (status, body) = post_json(&envoy, CHAT, &[], &chat_request(blocked)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(models_seen(&mock), [blocked, "lenient"]);
    mock.clear();
    let (status, _) = post_json(&envoy, CHAT, &[], &chat_request(plain_400)).await;
    assert_eq!(status, 400);
    assert_eq!(models_seen(&mock), [plain_400]);
    let (_, stats) = envoy.admin_get("/stats?filter=class.content_policy");
    assert!(stats.contains(": 1"), "{stats}");
}

/// `x-ai-fallback: off` sends the request once and passes the answer on as it came;
/// the header never reaches the provider.
#[tokio::test]
async fn a_client_can_turn_fallbacks_off() {
    let (envoy, mock) = start_with_plugin(json!({"chains": {"p+status-502": ["backup"]}}));
    let headers = [("x-ai-fallback", "off")];
    let (status, body) = post_json(&envoy, CHAT, &headers, &chat_request("p+status-502")).await;
    assert_eq!(status, 502);
    assert!(
        body.contains("mock failure 502"),
        "the mock's own answer: {body}"
    );
    assert_eq!(models_seen(&mock), ["p+status-502"]);
    assert_eq!(mock.requests()[0].header("x-ai-fallback"), None);
}

/// `x-ai-fallback-models` replaces the chain only with models `client_chains.allow`
/// lists; anything else is ignored (the configured chain applies). The header never
/// reaches the provider.
#[tokio::test]
async fn a_client_chain_is_used_only_within_the_allowed_models() {
    let (envoy, mock) = start_with_plugin(json!({
        "chains": {"p+status-502": ["configured"]},
        "client_chains": {"allow": ["cheap", "fast"]}
    }));
    let request = chat_request("p+status-502");
    let outside = [("x-ai-fallback-models", "cheap, expensive")];
    let (status, _) = post_json(&envoy, CHAT, &outside, &request).await;
    assert_eq!(status, 200);
    assert_eq!(models_seen(&mock), ["p+status-502", "configured"]);
    mock.clear();
    let allowed = [("x-ai-fallback-models", "fast,cheap")];
    let (status, body) = post_json(&envoy, CHAT, &allowed, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(models_seen(&mock), ["p+status-502", "fast"]);
    for request in mock.requests() {
        assert_eq!(request.header("x-ai-fallback-models"), None);
    }
}

/// Anthropic's Messages API: a 529 with Anthropic's error body, and a stream whose
/// first event is `event: error`, fall back; a complete Anthropic stream (ending in
/// `message_stop`) is left alone.
#[tokio::test]
async fn anthropic_messages_fall_back() {
    let (envoy, mock) = start_with_plugin(json!({"chains": {
        "claude+status-529+body-anthropic-overloaded": ["claude-backup"],
        "claude-stream+sse-error": ["claude-backup"]
    }}));
    let request = chat_request("claude+status-529+body-anthropic-overloaded");
    let (status, body) = post_json(&envoy, MESSAGES, &[], &request).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["model"], "claude-backup");
    let stream = json!({"model": "claude-stream+sse-error", "stream": true, "messages": []});
    let (status, text) = post_json(&envoy, MESSAGES, &[], &stream).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("data: {\"type\":\"message_stop\"}"),
        "{text}"
    );
    assert!(!text.contains("stream_truncated"), "{text}");
    assert_eq!(
        models_seen(&mock),
        [
            "claude+status-529+body-anthropic-overloaded",
            "claude-backup",
            "claude-stream+sse-error",
            "claude-backup"
        ]
    );
}

/// When every model failed on `/v1/messages`, the client's error is in Anthropic's
/// shape.
#[tokio::test]
async fn the_final_error_on_the_messages_api_has_anthropics_shape() {
    let (envoy, _mock) = start_with_plugin(json!({"chains": {
        "claude+status-529": ["claude-2+status-529"]
    }}));
    let (status, body) = post_json(&envoy, MESSAGES, &[], &chat_request("claude+status-529")).await;
    assert_eq!(status, 529, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["type"], "error", "{body}");
    assert_eq!(error["error"]["type"], "overloaded_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("All 2 attempt(s) failed."));
    let (status, body) = post_json(&envoy, CHAT, &[], &chat_request("claude+status-529")).await;
    assert_eq!(status, 529);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error["error"]["code"], "fallbacks_exhausted",
        "OpenAI's shape on chat"
    );
}
