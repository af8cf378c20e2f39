//! What a request leaves behind for operators: one access record (JSON in Envoy filter
//! state, for any access log format), token usage read from the final answer, and
//! the names of the filter's Envoy stats.
//!
//! Field names follow the OpenTelemetry GenAI semantic conventions where one exists.

use crate::outcome::Outcome;
use crate::plan::AttemptRecord;
use serde::Serialize;

/// Filter state names, read as `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub const RECORD_PROPERTY: &str = "ai_fallback.record";
pub const FINAL_MODEL_PROPERTY: &str = "ai_fallback.model";
pub const ATTEMPTS_PROPERTY: &str = "ai_fallback.attempts";
pub const OUTCOME_PROPERTY: &str = "ai_fallback.outcome";

/// The most bytes of a flat filter-state value.
pub const FLAT_VALUE_BYTES: usize = 256;

/// A value for the flat filter-state names (`wasm.ai_fallback.model`), which text
/// access-log formats print as they are: a model name a client sent may carry a
/// newline that would start a forged log line. Written like the inside of a JSON
/// string, so nothing is lost and nothing is ambiguous: control characters (C0, DEL,
/// C1), the Unicode line and paragraph separators and the bidirectional controls
/// become `\n`, `\r`, `\t` or `\uXXXX`, and `\` and `"` are escaped. At most
/// [`FLAT_VALUE_BYTES`] bytes, cut between characters (never inside an escape),
/// ending in `…` when cut.
pub fn flat_value(text: &str) -> String {
    const CUT: &str = "…";
    let mut flat = String::with_capacity(text.len().min(FLAT_VALUE_BYTES));
    // Where the last piece that leaves room for the marker ends.
    let mut cut_at = 0;
    for c in text.chars() {
        match c {
            '\n' => flat.push_str("\\n"),
            '\r' => flat.push_str("\\r"),
            '\t' => flat.push_str("\\t"),
            '\\' => flat.push_str("\\\\"),
            '"' => flat.push_str("\\\""),
            c if must_escape(c) => flat.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => flat.push(c),
        }
        if flat.len() > FLAT_VALUE_BYTES {
            flat.truncate(cut_at);
            flat.push_str(CUT);
            return flat;
        }
        if flat.len() + CUT.len() <= FLAT_VALUE_BYTES {
            cut_at = flat.len();
        }
    }
    flat
}

/// Characters a log line must not carry raw.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Token counts from an answer's `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    #[serde(rename = "gen_ai.usage.input_tokens")]
    pub input_tokens: Option<u64>,
    #[serde(rename = "gen_ai.usage.output_tokens")]
    pub output_tokens: Option<u64>,
    #[serde(rename = "gen_ai.usage.total_tokens")]
    pub total_tokens: Option<u64>,
}

/// How much of an answer's end is kept to find its `usage`: the last event of a
/// stream, or the end of a JSON answer, where providers put it.
pub const USAGE_TAIL_BYTES: usize = 4096;

/// The last `"usage": {...}` object in `tail` (chat completions' prompt/completion
/// tokens, or the Responses API's input/output tokens).
pub fn find_usage(tail: &[u8]) -> Option<Usage> {
    let key = b"\"usage\"";
    let at = tail.windows(key.len()).rposition(|w| w == key)?;
    let after_key = tail.get(at + key.len()..)?;
    let open = after_key.iter().position(|b| *b == b'{')?;
    let between = after_key.get(..open)?;
    if !between
        .iter()
        .all(|b| b.is_ascii_whitespace() || *b == b':')
    {
        return None;
    }
    let object = after_key.get(open..)?;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut end = None;
    for (index, byte) in object.iter().enumerate() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{') => depth += 1,
            (false, _, b'}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    end = Some(index + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let value: serde_json::Value = serde_json::from_slice(object.get(..end?)?).ok()?;
    let count = |names: &[&str]| names.iter().find_map(|name| value.get(*name)?.as_u64());
    let usage = Usage {
        input_tokens: count(&["prompt_tokens", "input_tokens"]),
        output_tokens: count(&["completion_tokens", "output_tokens"]),
        total_tokens: count(&["total_tokens"]),
    };
    (usage != Usage::default()).then_some(usage)
}

/// One attempt as the access record shows it.
#[derive(Debug, Serialize)]
pub struct AttemptView<'a> {
    pub model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// The answer's status, or "timeout_or_reset" when none came.
    pub status: serde_json::Value,
    pub class: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<&'a str>,
    /// Started alongside an attempt that had no answer yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hedged: bool,
}

impl<'a> From<&'a AttemptRecord> for AttemptView<'a> {
    fn from(record: &'a AttemptRecord) -> Self {
        AttemptView {
            model: &record.model,
            provider: record.provider.as_deref(),
            cluster: record.cluster.as_deref(),
            host: record.host.as_deref(),
            status: record
                .status
                .map_or_else(|| "timeout_or_reset".into(), serde_json::Value::from),
            class: record.class.as_deref().unwrap_or("no_answer"),
            first_byte_ms: record.first_byte_ms,
            end_ms: record.end_ms,
            retry_after: record.retry_after.as_deref(),
            hedged: record.hedged,
        }
    }
}

/// The access record of one request.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub rule: &'a str,
    #[serde(
        rename = "gen_ai.request.model",
        skip_serializing_if = "Option::is_none"
    )]
    pub requested_model: Option<&'a str>,
    #[serde(
        rename = "gen_ai.response.model",
        skip_serializing_if = "Option::is_none"
    )]
    pub final_model: Option<&'a str>,
    pub outcome: &'static str,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<u64>,
    pub elapsed_ms: u64,
    /// Why the filter let the request through untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough_reason: Option<&'a str>,
    /// What became of the client's `x-ai-fallback-models`: "used", or why ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_chain: Option<&'a str>,
    pub attempts: Vec<AttemptView<'a>>,
    /// Models left out because they were cooling down.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedView<'a>>,
    #[serde(flatten)]
    pub usage: Usage,
}

/// A model left out of a request's chain.
#[derive(Debug, Serialize)]
pub struct SkippedView<'a> {
    pub model: &'a str,
    /// "cooling_down: <class of the failures that started it>".
    #[serde(serialize_with = "cooling_reason")]
    pub reason: &'a str,
}

fn cooling_reason<S: serde::Serializer>(reason: &&str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("cooling_down: {reason}"))
}

impl AccessRecord<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The record as a serialized `google.protobuf.Struct`.
    pub fn to_struct(&self) -> Vec<u8> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => crate::proto::encode_struct(&fields),
            _ => Vec::new(),
        }
    }
}

/// A name segment for a stat: Envoy splits stat names on dots, and Prometheus
/// accepts few characters, so anything else becomes `_`.
pub fn stat_segment(name: &str) -> String {
    let segment: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if segment.is_empty() {
        "none".into()
    } else {
        segment
    }
}

/// `ai_fallback.<metric>.route.<route>.model.<model>.<tag>.<value>`: the tag regexes
/// in `envoy/envoy.yaml` turn the segments into Prometheus labels.
pub fn stat_name(
    metric: &str,
    route: &str,
    model: Option<&str>,
    tag: Option<(&str, &str)>,
) -> String {
    let mut name = format!("ai_fallback.{metric}.route.{}", stat_segment(route));
    if let Some(model) = model {
        name.push_str(".model.");
        name.push_str(&stat_segment(model));
    }
    if let Some((tag, value)) = tag {
        name.push('.');
        name.push_str(tag);
        name.push('.');
        name.push_str(&stat_segment(value));
    }
    name
}

/// Models outside the configuration count as `other`, so that a client cannot grow
/// the number of stats by inventing model names.
pub fn bounded_model(model: &str, known: impl Fn(&str) -> bool) -> &str {
    if known(model) {
        model
    } else {
        "other"
    }
}

/// Whether an outcome counts as success for the time-to-success histogram.
pub fn is_success(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Ok | Outcome::FallbackOk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_a_json_answer_and_a_stream_tail() {
        let answer = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
        assert_eq!(
            find_usage(answer),
            Some(Usage {
                input_tokens: Some(11),
                output_tokens: Some(7),
                total_tokens: Some(18)
            })
        );
        let stream = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\": {\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7,\"details\":{\"a\":\"}\"}}}\n\ndata: [DONE]\n\n";
        assert_eq!(find_usage(stream).unwrap().total_tokens, Some(7));
        let responses_api = br#"{"usage":{"input_tokens":5,"output_tokens":6}}"#;
        assert_eq!(find_usage(responses_api).unwrap().output_tokens, Some(6));
        assert_eq!(find_usage(br#"{"usage":null}"#), None);
        assert_eq!(
            find_usage(br#"{"usage":{"prompt_tokens":1"#),
            None,
            "cut off"
        );
        assert_eq!(find_usage(b"no usage here"), None);
    }

    #[test]
    fn stat_names_are_bounded_and_dot_free() {
        assert_eq!(
            stat_name(
                "requests",
                "openai",
                Some("gpt-4.1+x"),
                Some(("outcome", "ok"))
            ),
            "ai_fallback.requests.route.openai.model.gpt-4_1_x.outcome.ok"
        );
        assert_eq!(
            stat_name("attempts_per_request", "", None, None),
            "ai_fallback.attempts_per_request.route.none"
        );
        assert_eq!(bounded_model("made-up", |m| m == "a"), "other");
        assert_eq!(bounded_model("a", |m| m == "a"), "a");
    }

    #[test]
    fn record_json_uses_gen_ai_names() {
        let attempt = AttemptRecord {
            model: "a".into(),
            status: None,
            ..AttemptRecord::default()
        };
        let record = AccessRecord {
            request_id: "id-1",
            route: "openai",
            rule: "default",
            requested_model: Some("a"),
            final_model: Some("b"),
            outcome: Outcome::FallbackOk.name(),
            stream: false,
            budget_ms: None,
            elapsed_ms: 12,
            passthrough_reason: None,
            client_chain: None,
            attempts: vec![AttemptView::from(&attempt)],
            skipped: vec![SkippedView {
                model: "c",
                reason: "no_capacity",
            }],
            usage: Usage {
                input_tokens: Some(1),
                output_tokens: Some(2),
                total_tokens: Some(3),
            },
        };
        let value: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(value["gen_ai.request.model"], "a");
        assert_eq!(value["gen_ai.response.model"], "b");
        assert_eq!(value["gen_ai.usage.output_tokens"], 2);
        assert_eq!(value["attempts"][0]["status"], "timeout_or_reset");
        assert_eq!(value["attempts"][0]["class"], "no_answer");
        assert_eq!(value["outcome"], "fallback_ok");
        assert!(value.get("budget_ms").is_none());
        assert_eq!(value["skipped"][0]["reason"], "cooling_down: no_capacity");
    }

    #[test]
    fn flat_values_carry_no_control_characters() {
        assert_eq!(flat_value("gpt-4o"), "gpt-4o");
        assert_eq!(flat_value(""), "");
        assert_eq!(flat_value("héllo ✓"), "héllo ✓");
        assert_eq!(flat_value("ok\nforged"), "ok\\nforged");
        assert_eq!(flat_value("a\r\n\tb"), "a\\r\\n\\tb");
        assert_eq!(flat_value("q\"x\\y"), "q\\\"x\\\\y");
        assert_eq!(
            flat_value("\u{0}\u{1b}[2K\u{7f}\u{85}\u{2028}\u{2029}\u{202e}\u{2066}"),
            "\\u0000\\u001b[2K\\u007f\\u0085\\u2028\\u2029\\u202e\\u2066"
        );
        for text in ["a\u{b}\u{c}b", "\u{9f}", "x\u{200f}"] {
            let flat = flat_value(text);
            assert!(!flat.chars().any(must_escape), "{text:?} gave {flat:?}");
        }
    }

    #[test]
    fn flat_values_are_bounded_on_a_char_boundary() {
        let exact = "a".repeat(FLAT_VALUE_BYTES);
        assert_eq!(flat_value(&exact), exact, "a value that fits is kept whole");
        let long = "a".repeat(FLAT_VALUE_BYTES + 1);
        let flat = flat_value(&long);
        assert_eq!(flat.len(), FLAT_VALUE_BYTES);
        assert!(flat.ends_with('…'));
        for text in [
            "é".repeat(300),
            "✓".repeat(300),
            "\n".repeat(300),
            format!("{}\n", "a".repeat(FLAT_VALUE_BYTES - 1)),
            "a\u{1}".repeat(200),
        ] {
            let flat = flat_value(&text);
            assert!(flat.len() <= FLAT_VALUE_BYTES, "{} bytes", flat.len());
            assert!(flat.ends_with('…'), "{flat:?}");
            // No escape is cut in half: the kept part reads back as a JSON string.
            let kept = flat.trim_end_matches('…');
            let decoded: String = serde_json::from_str(&format!("\"{kept}\"")).unwrap();
            assert!(text.starts_with(&decoded), "{flat:?}");
        }
    }
}
