//! The bodies the mock answers with: OpenAI-shaped successes, canned provider
//! errors, and the server-sent-event stream of a chat completion.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::script::{CannedBody, StreamFailure};

/// Token counts reported by every successful answer.
const PROMPT_TOKENS: u32 = 11;
const COMPLETION_TOKENS: u32 = 7;

/// Which OpenAI endpoint a request was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    /// Anthropic's Messages API.
    Messages,
}

impl Endpoint {
    /// The endpoint for a request path (query excluded), if it is one the mock scripts.
    /// The endpoint of a path under any API root that ends in `/v1`
    /// (`/v1/chat/completions`, `/api/v1/chat/completions`, ...), as providers differ.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let (root, endpoint) = path.rsplit_once("/v1/")?;
        if !(root.is_empty() || root.starts_with('/')) {
            return None;
        }
        Some(match endpoint {
            "chat/completions" => Endpoint::ChatCompletions,
            "completions" => Endpoint::Completions,
            "responses" => Endpoint::Responses,
            "embeddings" => Endpoint::Embeddings,
            "messages" => Endpoint::Messages,
            _ => return None,
        })
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

pub(crate) fn failure_json(status: StatusCode, model: &str) -> Value {
    let code = status.as_u16();
    json!({"error": {
        "message": format!("mock failure {code} for model {model}"),
        "type": "server_error",
        "code": format!("mock_{code}"),
    }})
}

pub(crate) fn invalid_api_key_json() -> Value {
    json!({"error": {
        "message": "invalid api key",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }})
}

/// The key `body-keyecho-N` quotes when a request carries no `authorization`.
pub(crate) const FAKE_KEY: &str = "sk-mock-fake-key-0123456789abcdef";

/// The error bodies of `body-keyecho-N`: the ways providers have been seen quoting
/// the key they were sent. `authorization` is the request's header value.
pub(crate) fn key_echo_json(shape: u8, authorization: Option<&str>) -> Value {
    let authorization = authorization.map_or_else(|| format!("Bearer {FAKE_KEY}"), str::to_owned);
    let key = authorization
        .strip_prefix("Bearer ")
        .unwrap_or(&authorization)
        .to_owned();
    let message = |text: String| json!({"error": {"message": text, "type": "server_error"}});
    match shape {
        0 => message(format!("model not found for key={key}")),
        1 => message(format!("Incorrect API key provided: {key}.")),
        2 => message(format!("Authorization='{authorization}'")),
        3 => message(format!("invalid credential \"{key}\"")),
        4 => message(format!("the key {key} is not valid for this model")),
        5 => json!({"detail": format!("request denied: {authorization}")}),
        6 => json!({"error": key}),
        _ => json!({"message": format!("upstream refused {key} today")}),
    }
}

/// The content type and bytes of a canned body; `authorization` is the request's.
pub(crate) fn canned(
    body: CannedBody,
    status: StatusCode,
    authorization: Option<&str>,
) -> (&'static str, Bytes) {
    const JSON: &str = "application/json";
    let value = match body {
        CannedBody::KeyEcho(shape) => key_echo_json(shape, authorization),
        CannedBody::Html => return ("text/html", Bytes::from(cdn_error_page(status))),
        CannedBody::Empty => return (JSON, Bytes::new()),
        CannedBody::NoInstances => json!({"detail": "No instances available"}),
        CannedBody::ChuteNotFound => json!({"detail": "chute not found"}),
        CannedBody::Overloaded => json!({"error": {
            "message": "The model is overloaded. Please try again later.",
            "type": "server_error",
            "code": "model_overloaded",
        }}),
        CannedBody::ErrorEnvelope => json!({"error": {
            "message": "upstream provider error",
            "type": "provider_error",
            "code": 500,
        }}),
        CannedBody::Quota => json!({"error": {
            "message": "You exceeded your current quota, please check your plan and \
                        billing details.",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }}),
        CannedBody::ContentFilter => json!({"error": {
            "message": "The response was filtered due to the prompt triggering Azure \
                        OpenAI's content management policy.",
            "type": null,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
        }}),
        CannedBody::AnthropicOverloaded => json!({"type": "error", "error": {
            "type": "overloaded_error",
            "message": "Overloaded",
        }}),
        CannedBody::ContextLength => json!({"error": {
            "message": "This model's maximum context length is 8192 tokens. \
                        However, your messages resulted in 9000 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }}),
    };
    (JSON, Bytes::from(value.to_string()))
}

/// An error page shaped like the ones CDNs put in front of a dead origin.
fn cdn_error_page(status: StatusCode) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<!DOCTYPE html><html><head><title>{title}</title></head>\
         <body><h1>{title}</h1><hr><center>cloudflare</center></body></html>"
    )
}

pub(crate) fn chat_completion_json(id: &str, model: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": format!("Hello from {model}")},
            "finish_reason": "stop",
        }],
        "usage": usage_json(COMPLETION_TOKENS),
    })
}

/// An Anthropic Messages API answer.
pub(crate) fn message_json(id: &str, model: &str) -> Value {
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello from the mock."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": COMPLETION_TOKENS},
    })
}

pub(crate) fn embeddings_json(model: &str) -> Value {
    json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": model,
        "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
    })
}

fn usage_json(completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    })
}

/// What a streamed answer sends, decided before the response headers go out.
pub(crate) struct StreamPlan {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub chunks: u32,
    pub gap: Duration,
    pub include_usage: bool,
    pub failure: Option<StreamFailure>,
    /// Anthropic's events (`message_start` ... `message_stop`) instead of OpenAI's.
    pub anthropic: bool,
}

/// One item for the response body: a complete SSE event, or the instruction to
/// abort the connection where it stands.
pub(crate) enum StreamItem {
    Event(Bytes),
    Abort,
}

impl StreamPlan {
    /// Sends the events one by one into `tx`, sleeping `gap` between them, so that
    /// each event leaves the server as its own HTTP chunk and at its own time.
    /// Returns early if the client went away (the receiver was dropped).
    pub async fn run(self, tx: mpsc::Sender<StreamItem>) {
        let mut sender = PacedSender {
            tx,
            gap: self.gap,
            first: true,
        };
        let error_event = |prefix: &str| {
            let error = json!({"error": {
                "message": "stream failed before content",
                "type": "server_error",
                "code": "stream_error",
            }});
            format!("{prefix}data: {error}\n\n")
        };
        let content_chunks = match self.failure {
            Some(StreamFailure::ErrorEvent) => {
                sender.event(error_event("event: error\n")).await;
                return;
            }
            Some(StreamFailure::DataError) => {
                sender.event(error_event("")).await;
                return;
            }
            Some(StreamFailure::BreakAfter(n)) => n,
            None => self.chunks,
        };

        if self.anthropic {
            self.run_anthropic(&mut sender, content_chunks).await;
            return;
        }
        let role = self.chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        if !sender.event(data_event(&role)).await {
            return;
        }
        for i in 0..content_chunks {
            let content = self.chunk(json!({"content": format!("tok{i} ")}), Value::Null);
            if !sender.event(data_event(&content)).await {
                return;
            }
        }
        if matches!(self.failure, Some(StreamFailure::BreakAfter(_))) {
            // Whatever the client was sent so far must reach it before the break,
            // so give the server a moment (with nothing to write it flushes).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = sender.tx.send(StreamItem::Abort).await;
            return;
        }

        let stop = self.chunk(json!({}), json!("stop"));
        if !sender.event(data_event(&stop)).await {
            return;
        }
        if self.include_usage {
            let usage = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(self.chunks),
            });
            if !sender.event(data_event(&usage)).await {
                return;
            }
        }
        sender.event("data: [DONE]\n\n".to_owned()).await;
    }

    /// Anthropic's stream: `message_start`, a `content_block_delta` per chunk, and
    /// `message_stop`, each with its `event:` line.
    async fn run_anthropic(&self, sender: &mut PacedSender, content_chunks: u32) {
        let named = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let start = json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "usage": {"input_tokens": 10, "output_tokens": 1}}});
        if !sender.event(named("message_start", start)).await {
            return;
        }
        for i in 0..content_chunks {
            let delta = json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": format!("tok{i} ")}});
            if !sender.event(named("content_block_delta", delta)).await {
                return;
            }
        }
        if matches!(self.failure, Some(StreamFailure::BreakAfter(_))) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = sender.tx.send(StreamItem::Abort).await;
            return;
        }
        let stop = json!({"type": "message_stop"});
        sender.event(named("message_stop", stop)).await;
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }
}

fn data_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

struct PacedSender {
    tx: mpsc::Sender<StreamItem>,
    gap: Duration,
    first: bool,
}

impl PacedSender {
    /// Sends one event, after the gap unless it is the first. False once the
    /// client is gone.
    async fn event(&mut self, event: String) -> bool {
        if !self.first && !self.gap.is_zero() {
            tokio::time::sleep(self.gap).await;
        }
        self.first = false;
        self.tx
            .send(StreamItem::Event(Bytes::from(event)))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_echo_quotes_the_key_in_every_shape() {
        for shape in 0..crate::script::KEY_ECHO_SHAPES {
            let with_key = key_echo_json(shape, Some("Bearer k3yZ9qW1")).to_string();
            assert!(with_key.contains("k3yZ9qW1"), "{shape}: {with_key}");
            let without = key_echo_json(shape, None).to_string();
            assert!(without.contains(FAKE_KEY), "{shape}: {without}");
        }
        assert_eq!(
            key_echo_json(2, Some("Bearer abc")).to_string(),
            r#"{"error":{"message":"Authorization='Bearer abc'","type":"server_error"}}"#
        );
    }

    async fn collect(plan: StreamPlan) -> (String, bool) {
        let (tx, mut rx) = mpsc::channel(64);
        plan.run(tx).await;
        let mut text = String::new();
        let mut aborted = false;
        while let Some(item) = rx.recv().await {
            match item {
                StreamItem::Event(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                StreamItem::Abort => aborted = true,
            }
        }
        (text, aborted)
    }

    fn plan(failure: Option<StreamFailure>, include_usage: bool) -> StreamPlan {
        StreamPlan {
            id: "chatcmpl-mock-1".into(),
            model: "m+chunks-2".into(),
            created: 1,
            chunks: 2,
            gap: Duration::ZERO,
            include_usage,
            failure,
            anthropic: false,
        }
    }

    #[tokio::test]
    async fn anthropic_streams_end_with_message_stop() {
        let anthropic = StreamPlan {
            anthropic: true,
            ..plan(None, false)
        };
        let (text, aborted) = collect(anthropic).await;
        assert!(!aborted);
        assert!(text.starts_with("event: message_start\n"), "{text}");
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert_eq!(text.matches("content_block_delta").count(), 4, "{text}");
    }

    fn data_payloads(text: &str) -> Vec<&str> {
        text.split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .collect()
    }

    #[tokio::test]
    async fn full_stream_with_usage() {
        let (text, aborted) = collect(plan(None, true)).await;
        assert!(!aborted);
        let payloads = data_payloads(&text);
        // role, 2 content, stop, usage, [DONE]
        assert_eq!(payloads.len(), 6, "{text}");
        assert_eq!(payloads[5], "[DONE]");
        let chunks: Vec<Value> = payloads[..5]
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "tok0 ");
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], "tok1 ");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
        assert!(chunks.iter().all(|c| c["model"] == "m+chunks-2"));
    }

    #[tokio::test]
    async fn no_usage_chunk_unless_asked() {
        let (text, _) = collect(plan(None, false)).await;
        assert_eq!(data_payloads(&text).len(), 5);
        assert!(!text.contains("usage"));
    }

    #[tokio::test]
    async fn error_event_only() {
        let (text, aborted) = collect(plan(Some(StreamFailure::ErrorEvent), true)).await;
        assert!(!aborted);
        assert!(text.starts_with("event: error\ndata: {\"error\""), "{text}");
        assert_eq!(text.matches("\n\n").count(), 1);
    }

    #[tokio::test]
    async fn break_stops_without_end() {
        let (text, aborted) = collect(plan(Some(StreamFailure::BreakAfter(1)), true)).await;
        assert!(aborted);
        assert_eq!(data_payloads(&text).len(), 2);
        assert!(!text.contains("[DONE]"));
    }
}
