//! Error answers the filter itself sends, shaped like OpenAI's so that every client
//! library already knows how to read them.

/// `{"error": {"message", "type", "code"}}` as a JSON string.
pub fn openai_error(message: &str, error_type: &str, code: &str) -> String {
    serde_json::json!({
        "error": { "message": message, "type": error_type, "code": code }
    })
    .to_string()
}

/// The 413 answer for a body larger than the gateway buffers.
pub fn body_too_large(limit: usize) -> String {
    openai_error(
        &format!(
            "request body is larger than {limit} bytes, the most this gateway buffers to retry a request"
        ),
        "invalid_request_error",
        "request_too_large",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape() {
        let value: serde_json::Value = serde_json::from_str(&body_too_large(10)).unwrap();
        assert_eq!(value["error"]["code"], "request_too_large");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert!(value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10 bytes"));
    }
}
