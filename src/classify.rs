//! Reading an upstream answer like a human would: is it a success, a failure another
//! model may not have, or a final answer for the client?
//!
//! The status alone settles most answers. Some failures hide in a body: a 404 that
//! says the model has no instances, a 200 that is an `{"error": ...}` envelope, a
//! stream whose first event is an error, a 400 for a too long prompt. For those the
//! attempt role holds the response until it has read a bounded prefix of the body.

use crate::config::Classes;

/// What an upstream answer means for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A success (or anything the filter does not recognise as a failure).
    Success,
    /// A status listed in `fallback_statuses`.
    FailureStatus,
    /// 429: this model is rate limited; another may answer now.
    RateLimited,
    /// The provider says it has no capacity for this model (404 "No instances").
    NoCapacity,
    /// A 2xx whose JSON body is an error envelope.
    ErrorEnvelope,
    /// A stream whose first event is an error.
    StreamError,
    /// The prompt does not fit this model's context window.
    ContextLength,
    /// The prompt or the output was blocked by the provider's content policy.
    ContentPolicy,
    /// The provider refused this key or account (401, 402, 403, a 429 saying the
    /// quota is gone): another provider may answer, the same one will not.
    ProviderDenied,
    /// An answer for the client as it is (400, 401, 402, 403, 422, ...).
    Final,
}

/// Every class, in the order of their declaration.
pub const CLASSES: [Class; 10] = [
    Class::Success,
    Class::FailureStatus,
    Class::RateLimited,
    Class::NoCapacity,
    Class::ErrorEnvelope,
    Class::StreamError,
    Class::ContextLength,
    Class::ContentPolicy,
    Class::ProviderDenied,
    Class::Final,
];

impl Class {
    /// Whether another model may succeed where this answer failed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Class::Success | Class::Final)
    }

    /// The short name used in records and logs.
    pub fn name(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::FailureStatus => "failure_status",
            Class::RateLimited => "rate_limited",
            Class::NoCapacity => "no_capacity",
            Class::ErrorEnvelope => "error_envelope",
            Class::StreamError => "stream_error",
            Class::ContextLength => "context_length",
            Class::ContentPolicy => "content_policy",
            Class::ProviderDenied => "provider_denied",
            Class::Final => "final",
        }
    }

    pub fn from_name(name: &str) -> Option<Class> {
        CLASSES.into_iter().find(|class| class.name() == name)
    }

    /// Whether the answer says something about the model's health: a too long or
    /// blocked prompt, a refused key and a client error do not.
    pub fn is_model_failure(self) -> bool {
        self.is_retryable()
            && !matches!(
                self,
                Class::ContextLength | Class::ContentPolicy | Class::ProviderDenied
            )
    }
}

/// What the response headers alone tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderVerdict {
    /// Settled without reading the body.
    Decided(Class),
    /// Read up to `inspect_max_bytes` of the body first, then call [`classify_body`].
    Inspect(BodyKind),
}

/// Which reading a held body needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// A failure status whose body may name a no-capacity failure or a too long prompt.
    ErrorBody,
    /// A 2xx JSON answer that may be an error envelope.
    JsonSuccess,
    /// A 2xx event stream whose first event may be an error.
    EventStream,
}

/// What the request looked like, as far as classification cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// The client asked for `"stream": true`.
    pub stream: bool,
    /// A context-length chain exists for this request, so that class matters.
    pub has_context_chain: bool,
    /// A content-policy chain exists for this request.
    pub has_content_chain: bool,
}

/// Classifies by status and content type.
pub fn classify_headers(
    classes: &Classes,
    request: RequestFacts,
    status: u16,
    content_type: &str,
) -> HeaderVerdict {
    let content_type = content_type.to_ascii_lowercase();
    if (200..300).contains(&status) {
        if request.stream && classes.stream_errors && content_type.starts_with("text/event-stream")
        {
            return HeaderVerdict::Inspect(BodyKind::EventStream);
        }
        if !request.stream && classes.error_envelopes && content_type.contains("json") {
            return HeaderVerdict::Inspect(BodyKind::JsonSuccess);
        }
        return HeaderVerdict::Decided(Class::Success);
    }
    if classes.fallback_statuses.contains(&status) {
        return HeaderVerdict::Decided(Class::FailureStatus);
    }
    let across_providers = classes.across_providers.contains(&status);
    if status == 429 && across_providers {
        // A rate limit, or a quota that is gone: the body tells.
        return HeaderVerdict::Inspect(BodyKind::ErrorBody);
    }
    if status == 429 && classes.rate_limits {
        return HeaderVerdict::Decided(Class::RateLimited);
    }
    if across_providers {
        return HeaderVerdict::Decided(Class::ProviderDenied);
    }
    let may_be_no_capacity =
        classes.no_capacity_statuses.contains(&status) && !classes.no_capacity_patterns.is_empty();
    let may_be_prompt_class =
        status == 400 && (request.has_context_chain || request.has_content_chain);
    if may_be_no_capacity || may_be_prompt_class {
        return HeaderVerdict::Inspect(BodyKind::ErrorBody);
    }
    if (300..400).contains(&status) || status < 200 {
        return HeaderVerdict::Decided(Class::Success);
    }
    HeaderVerdict::Decided(Class::Final)
}

/// The outcome of reading a held body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyVerdict {
    Decided(Class),
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Classifies a held body from its first bytes. `complete` says the body ended (or
/// the inspection limit was reached: then the answer is judged on what was read).
pub fn classify_body(
    classes: &Classes,
    request: RequestFacts,
    status: u16,
    kind: BodyKind,
    prefix: &[u8],
    complete: bool,
) -> BodyVerdict {
    match kind {
        BodyKind::ErrorBody => {
            if !complete {
                return BodyVerdict::NeedMore;
            }
            if request.has_context_chain && status == 400 && says_context_length(prefix) {
                return BodyVerdict::Decided(Class::ContextLength);
            }
            if request.has_content_chain && status == 400 && says_any(prefix, &CONTENT_POLICY) {
                return BodyVerdict::Decided(Class::ContentPolicy);
            }
            if status == 429 {
                return BodyVerdict::Decided(if says_any(prefix, &QUOTA_GONE) {
                    Class::ProviderDenied
                } else if classes.rate_limits {
                    Class::RateLimited
                } else {
                    Class::Final
                });
            }
            let lowered = prefix.to_ascii_lowercase();
            let no_capacity = classes.no_capacity_statuses.contains(&status)
                && classes
                    .no_capacity_patterns
                    .iter()
                    .any(|pattern| contains(&lowered, pattern.as_bytes()));
            BodyVerdict::Decided(if no_capacity {
                Class::NoCapacity
            } else if classes.fallback_statuses.contains(&status) {
                Class::FailureStatus
            } else {
                Class::Final
            })
        }
        BodyKind::JsonSuccess => {
            if !complete {
                return BodyVerdict::NeedMore;
            }
            BodyVerdict::Decided(if is_error_envelope(prefix) {
                Class::ErrorEnvelope
            } else {
                Class::Success
            })
        }
        BodyKind::EventStream => match first_event(prefix) {
            Some(event) if event_is_error(event) => BodyVerdict::Decided(Class::StreamError),
            Some(_) => BodyVerdict::Decided(Class::Success),
            // A stream that ended before any complete event, with an error in it.
            None if complete && event_is_error(prefix) => BodyVerdict::Decided(Class::StreamError),
            None if complete => BodyVerdict::Decided(Class::Success),
            None => BodyVerdict::NeedMore,
        },
    }
}

/// Providers word it differently; OpenAI's code is `context_length_exceeded`.
fn says_context_length(body: &[u8]) -> bool {
    says_any(
        body,
        &[
            "context_length_exceeded",
            "maximum context length",
            "context window",
            "prompt is too long",
        ],
    )
}

/// A prompt or output blocked by a content policy: OpenAI's
/// `content_policy_violation`, Azure OpenAI's `content_filter` and
/// `ResponsibleAIPolicyViolation`, and "safety" in others' words.
const CONTENT_POLICY: [&str; 5] = [
    "content_filter",
    "content_policy_violation",
    "content policy",
    "responsibleaipolicyviolation",
    "safety",
];

/// A 429 that is about the account, not the rate: OpenAI's `insufficient_quota`,
/// and the quota, billing and credit messages of others.
const QUOTA_GONE: [&str; 3] = ["quota", "billing", "credits"];

/// Whether the body says any of `phrases` (lowercase), in any case.
fn says_any(body: &[u8], phrases: &[&str]) -> bool {
    let lowered = body.to_ascii_lowercase();
    phrases
        .iter()
        .any(|phrase| contains(&lowered, phrase.as_bytes()))
}

/// `{"error": ...}` with no `choices`, `data` or `output`: a failure dressed as success.
pub fn is_error_envelope(body: &[u8]) -> bool {
    // Most answers are successes: a byte search spares them the JSON parse.
    if !contains(body, b"\"error\"") {
        return false;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => {
            fields.get("error").is_some_and(|error| !error.is_null())
                && !["choices", "data", "output"]
                    .iter()
                    .any(|key| fields.contains_key(*key))
        }
        _ => false,
    }
}

/// The first complete server-sent event (up to its blank line), skipping comments.
pub fn first_event(stream: &[u8]) -> Option<&[u8]> {
    let mut rest = stream;
    loop {
        let end = event_end(rest)?;
        let (event, after) = rest.split_at(end.0);
        let after = after.get(end.1..).unwrap_or_default();
        let is_comment_only = event
            .split(|b| *b == b'\n')
            .all(|line| line.is_empty() || line.starts_with(b":") || line == b"\r");
        if !is_comment_only {
            return Some(event);
        }
        rest = after;
    }
}

/// Position of the first blank line: (start of the separator, its length).
fn event_end(stream: &[u8]) -> Option<(usize, usize)> {
    ["\n\n", "\r\n\r\n", "\r\r"]
        .iter()
        .filter_map(|sep| find(stream, sep.as_bytes()).map(|at| (at, sep.len())))
        .min()
}

/// An `event: error`, or a `data:` line whose JSON carries an `error` object.
fn event_is_error(event: &[u8]) -> bool {
    event.split(|b| *b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(name) = line.strip_prefix(b"event:") {
            return name.trim_ascii() == b"error";
        }
        line.strip_prefix(b"data:")
            .map(<[u8]>::trim_ascii)
            .is_some_and(is_error_envelope)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// The SSE event that ends a stream which broke after content began, so that the
/// client sees an error rather than a stream that looks complete.
pub fn truncation_event() -> String {
    let error = crate::reply::openai_error(
        "the upstream stream ended before it was complete",
        "server_error",
        "stream_truncated",
    );
    format!("event: error\ndata: {error}\n\n")
}

/// Watches a stream, chunk by chunk, for the line that ends an OpenAI-compatible
/// stream normally: `data: [DONE]`, `event: response.completed` for the Responses
/// API, or `event: message_stop` for Anthropic's Messages API. A line, not text: content that says `[DONE]` sits inside a JSON
/// string of a `data:` line and never starts one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamEnd {
    /// The stream's last line so far, when it may still become an end marker.
    partial: Vec<u8>,
    /// The partial line is too long to be a marker, or does not start one.
    partial_is_not_a_marker: bool,
    pub seen: bool,
}

/// Longer lines are never end markers (`event: response.completed` is 25 bytes).
const MARKER_LINE_MAX: usize = 40;

impl StreamEnd {
    pub fn feed(&mut self, chunk: &[u8]) {
        for line in chunk.split_inclusive(|byte| *byte == b'\n') {
            if !self.partial_is_not_a_marker {
                if self.partial.len() + line.len() > MARKER_LINE_MAX {
                    self.partial_is_not_a_marker = true;
                    self.partial.clear();
                } else {
                    self.partial.extend_from_slice(line);
                }
            }
            if line.ends_with(b"\n") {
                if !self.partial_is_not_a_marker && is_end_marker(&self.partial) {
                    self.seen = true;
                }
                self.partial.clear();
                self.partial_is_not_a_marker = false;
            }
        }
    }

    /// The stream ended: a last line without its newline counts too.
    pub fn finish(&mut self) {
        if !self.partial_is_not_a_marker && is_end_marker(&self.partial) {
            self.seen = true;
        }
    }
}

fn is_end_marker(line: &[u8]) -> bool {
    let line = line.trim_ascii_end();
    let field_value = |field: &[u8]| {
        line.strip_prefix(field)
            .map(|value| value.strip_prefix(b" ").unwrap_or(value))
    };
    field_value(b"data:") == Some(b"[DONE]")
        || field_value(b"event:") == Some(b"response.completed")
        || field_value(b"event:") == Some(b"message_stop")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ends(chunks: &[&str]) -> bool {
        let mut end = StreamEnd::default();
        for chunk in chunks {
            end.feed(chunk.as_bytes());
        }
        end.finish();
        end.seen
    }

    #[test]
    fn a_stream_ends_on_a_marker_line_not_on_text() {
        assert!(ends(&["data: {}\n\ndata: [DONE]\n\n"]));
        assert!(
            ends(&["data: {}\n\nda", "ta: [DO", "NE]\n\n"]),
            "split anywhere"
        );
        assert!(ends(&["data:[DONE]"]), "no space, no newline at the end");
        assert!(ends(&["event: response.completed\r\ndata: {}\r\n\r\n"]));
        assert!(!ends(&["data: {\"content\":\"[DONE]\"}\n\n"]));
        assert!(!ends(&["data: {\"content\":\"response.completed\"}\n\n"]));
        let long = format!("data: {}", "x".repeat(100));
        assert!(!ends(&[&long, "data: [DONE]\n"]), "inside a long line");
        assert!(!ends(&["data: {}\n\n"]));
    }

    fn classes() -> Classes {
        Config::default().defaults.classes
    }

    const PLAIN: RequestFacts = RequestFacts {
        stream: false,
        has_context_chain: false,
        has_content_chain: false,
    };
    const STREAM: RequestFacts = RequestFacts {
        stream: true,
        has_context_chain: false,
        has_content_chain: false,
    };
    const WITH_CONTEXT_CHAIN: RequestFacts = RequestFacts {
        stream: false,
        has_context_chain: true,
        has_content_chain: false,
    };

    fn by_status(request: RequestFacts, status: u16, content_type: &str) -> HeaderVerdict {
        classify_headers(&classes(), request, status, content_type)
    }

    fn body_class(request: RequestFacts, status: u16, kind: BodyKind, body: &str) -> BodyVerdict {
        classify_body(&classes(), request, status, kind, body.as_bytes(), true)
    }

    #[test]
    fn statuses() {
        use HeaderVerdict::*;
        let json = "application/json";
        for status in [500, 502, 503, 504, 524, 529] {
            assert_eq!(
                by_status(PLAIN, status, "text/html"),
                Decided(Class::FailureStatus)
            );
        }
        // A 429 is read: a rate limit, or a quota that is gone.
        assert_eq!(by_status(PLAIN, 429, json), Inspect(BodyKind::ErrorBody));
        for status in [401, 402, 403] {
            assert_eq!(
                by_status(PLAIN, status, json),
                Decided(Class::ProviderDenied),
                "{status}"
            );
        }
        for status in [400, 422, 413] {
            assert_eq!(
                by_status(PLAIN, status, json),
                Decided(Class::Final),
                "{status}"
            );
        }
        assert_eq!(by_status(PLAIN, 404, json), Inspect(BodyKind::ErrorBody));
        assert_eq!(
            by_status(WITH_CONTEXT_CHAIN, 400, json),
            Inspect(BodyKind::ErrorBody)
        );
        assert_eq!(by_status(PLAIN, 200, json), Inspect(BodyKind::JsonSuccess));
        assert_eq!(by_status(PLAIN, 200, "text/plain"), Decided(Class::Success));
        assert_eq!(
            by_status(STREAM, 200, "text/event-stream"),
            Inspect(BodyKind::EventStream)
        );
        assert_eq!(by_status(STREAM, 200, json), Decided(Class::Success));
        assert_eq!(by_status(PLAIN, 304, ""), Decided(Class::Success));
    }

    #[test]
    fn quota_and_content_policy_answers() {
        let c = &classes();
        let read = |facts, status, body: &str| {
            classify_body(c, facts, status, BodyKind::ErrorBody, body.as_bytes(), true)
        };
        let quota = r#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            read(PLAIN, 429, quota),
            BodyVerdict::Decided(Class::ProviderDenied)
        );
        let rate = r#"{"error":{"message":"Rate limit reached for requests per min"}}"#;
        assert_eq!(
            read(PLAIN, 429, rate),
            BodyVerdict::Decided(Class::RateLimited)
        );
        let blocked = r#"{"error":{"code":"content_filter","message":"filtered"}}"#;
        let with_content_chain = RequestFacts {
            has_content_chain: true,
            ..PLAIN
        };
        assert_eq!(
            by_status(with_content_chain, 400, "application/json"),
            HeaderVerdict::Inspect(BodyKind::ErrorBody)
        );
        assert_eq!(
            read(with_content_chain, 400, blocked),
            BodyVerdict::Decided(Class::ContentPolicy)
        );
        assert_eq!(
            read(PLAIN, 400, blocked),
            BodyVerdict::Decided(Class::Final),
            "no content chain: final"
        );
        assert!(!Class::ContentPolicy.is_model_failure());
        assert!(!Class::ProviderDenied.is_model_failure());
        assert!(Class::NoCapacity.is_model_failure());
        assert_eq!(
            Class::from_name("provider_denied"),
            Some(Class::ProviderDenied)
        );
    }

    #[test]
    fn classes_can_be_switched_off() {
        let config = Config::parse(
            br#"{"fallback_on_rate_limit":false,"fallback_on_error_envelope":false,
                 "fallback_on_stream_error":false,"no_capacity_patterns":[],
                 "fallback_across_providers_on":[]}"#,
        )
        .unwrap();
        let c = &config.defaults.classes;
        assert_eq!(
            classify_headers(c, PLAIN, 429, ""),
            HeaderVerdict::Decided(Class::Final)
        );
        assert_eq!(
            classify_headers(c, PLAIN, 404, ""),
            HeaderVerdict::Decided(Class::Final)
        );
        assert_eq!(
            classify_headers(c, PLAIN, 402, ""),
            HeaderVerdict::Decided(Class::Final)
        );
        assert_eq!(
            classify_headers(c, PLAIN, 200, "application/json"),
            HeaderVerdict::Decided(Class::Success)
        );
        assert_eq!(
            classify_headers(c, STREAM, 200, "text/event-stream"),
            HeaderVerdict::Decided(Class::Success)
        );
    }

    #[test]
    fn no_capacity_bodies() {
        use BodyVerdict::Decided;
        for body in [
            r#"{"detail":"No instances available"}"#,
            r#"{"detail":"chute not found"}"#,
            r#"{"error":{"message":"The model `x` does not exist or Model Not Found"}}"#,
        ] {
            assert_eq!(
                body_class(PLAIN, 404, BodyKind::ErrorBody, body),
                Decided(Class::NoCapacity),
                "{body}"
            );
        }
        assert_eq!(
            body_class(
                PLAIN,
                404,
                BodyKind::ErrorBody,
                r#"{"error":"no such route"}"#
            ),
            Decided(Class::Final)
        );
    }

    #[test]
    fn context_length_only_with_a_chain() {
        let body = r#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#;
        assert_eq!(
            body_class(WITH_CONTEXT_CHAIN, 400, BodyKind::ErrorBody, body),
            BodyVerdict::Decided(Class::ContextLength)
        );
        assert_eq!(
            body_class(
                WITH_CONTEXT_CHAIN,
                400,
                BodyKind::ErrorBody,
                r#"{"error":"bad"}"#
            ),
            BodyVerdict::Decided(Class::Final)
        );
        assert_eq!(
            classify_body(
                &classes(),
                WITH_CONTEXT_CHAIN,
                400,
                BodyKind::ErrorBody,
                b"{",
                false
            ),
            BodyVerdict::NeedMore
        );
    }

    #[test]
    fn error_envelopes() {
        assert!(is_error_envelope(br#"{"error":{"message":"x"}}"#));
        assert!(is_error_envelope(br#" {"error":"x","id":"1"} "#));
        assert!(!is_error_envelope(br#"{"error":null,"choices":[]}"#));
        assert!(!is_error_envelope(br#"{"error":{"m":1},"choices":[{}]}"#));
        assert!(!is_error_envelope(br#"{"choices":[]}"#));
        assert!(!is_error_envelope(b"not json"));
    }

    #[test]
    fn first_events() {
        use BodyVerdict::*;
        let stream = |body: &str, complete| {
            classify_body(
                &classes(),
                STREAM,
                200,
                BodyKind::EventStream,
                body.as_bytes(),
                complete,
            )
        };
        assert_eq!(stream("data: {\"choices\":[]}", false), NeedMore);
        assert_eq!(
            stream("data: {\"choices\":[]}\n\n", false),
            Decided(Class::Success)
        );
        assert_eq!(
            stream(": keepalive\n\ndata: {\"choices\":[]}\n\n", false),
            Decided(Class::Success)
        );
        assert_eq!(stream(": keepalive\n\n", false), NeedMore);
        assert_eq!(
            stream("event: error\ndata: {}\n\n", false),
            Decided(Class::StreamError)
        );
        assert_eq!(
            stream("data: {\"error\":{\"message\":\"x\"}}\r\n\r\n", false),
            Decided(Class::StreamError)
        );
        assert_eq!(
            stream("data: {\"error\":{\"message\":\"x\"}}", true),
            Decided(Class::StreamError)
        );
        assert_eq!(stream("", true), Decided(Class::Success));
    }

    #[test]
    fn class_names_round_trip() {
        for class in [
            Class::Success,
            Class::NoCapacity,
            Class::ContextLength,
            Class::Final,
        ] {
            assert_eq!(Class::from_name(class.name()), Some(class));
        }
        assert!(!Class::Final.is_retryable());
        assert!(Class::RateLimited.is_retryable());
    }

    #[test]
    fn truncation_event_is_valid_sse_json() {
        let event = truncation_event();
        let data = event
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["error"]["code"], "stream_truncated");
        assert!(event.ends_with("\n\n"));
    }
}
