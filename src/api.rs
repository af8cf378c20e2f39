//! Which API a request speaks, for the errors the filter itself answers with:
//! OpenAI-compatible endpoints get OpenAI's error shape, Anthropic's Messages API
//! its own (`{"type": "error", "error": {"type": ..., "message": ...}}`).

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    /// `/v1/messages` (under any prefix, query ignored) is Anthropic's.
    pub fn of_path(path: &str) -> Api {
        let path = path.split('?').next().unwrap_or(path);
        if path.ends_with("/v1/messages") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }

    /// An error the filter built in OpenAI's shape, in this API's shape; the
    /// filter's own fields (`code`, `attempts`) stay inside `error`.
    pub fn error_body(self, status: u32, openai_body: &str) -> String {
        if self == Api::OpenAi {
            return openai_body.to_string();
        }
        let Ok(Value::Object(mut outer)) = serde_json::from_str::<Value>(openai_body) else {
            return openai_body.to_string();
        };
        let mut error = match outer.remove("error") {
            Some(Value::Object(error)) => error,
            _ => serde_json::Map::new(),
        };
        let anthropic_type = match status {
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        error.insert("type".into(), json!(anthropic_type));
        json!({"type": "error", "error": error}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_paths_get_anthropic_errors() {
        assert_eq!(Api::of_path("/v1/messages?beta=true"), Api::Anthropic);
        assert_eq!(Api::of_path("/anthropic/v1/messages"), Api::Anthropic);
        assert_eq!(Api::of_path("/v1/chat/completions"), Api::OpenAi);
        let openai = r#"{"error":{"message":"All 2 attempt(s) failed.","type":"upstream_error","code":"fallbacks_exhausted","attempts":[]}}"#;
        assert_eq!(Api::OpenAi.error_body(502, openai), openai);
        let anthropic: Value =
            serde_json::from_str(&Api::Anthropic.error_body(529, openai)).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "overloaded_error");
        assert_eq!(anthropic["error"]["message"], "All 2 attempt(s) failed.");
        assert_eq!(anthropic["error"]["code"], "fallbacks_exhausted");
        let timeout: Value = serde_json::from_str(&Api::Anthropic.error_body(504, openai)).unwrap();
        assert_eq!(timeout["error"]["type"], "api_error");
    }
}
