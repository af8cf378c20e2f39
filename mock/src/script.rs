//! Parsing of the behaviour directives embedded in a request's `model` name.
//!
//! The model name is split on `+`; every part that is a known directive changes
//! how the mock answers, every other part is just a name. So `primary+status-502`
//! fails with a 502 while `backup` succeeds.

use std::time::Duration;

use hyper::StatusCode;

/// A canned response body chosen by `html` or one of the `body-*` directives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CannedBody {
    /// A CDN-style HTML error page (`html`).
    Html,
    /// `{"detail":"No instances available"}` (`body-noinstances`).
    NoInstances,
    /// `{"detail":"chute not found"}` (`body-chutenotfound`).
    ChuteNotFound,
    /// OpenAI-style "model is overloaded" error (`body-overloaded`).
    Overloaded,
    /// An error envelope that providers send even with status 200 (`body-errorenvelope`).
    ErrorEnvelope,
    /// OpenAI-style context length error (`body-ctxlen`).
    ContextLength,
    /// A zero-length body (`body-empty`).
    Empty,
    /// OpenAI's `insufficient_quota` error, sent with a 429 (`body-quota`).
    Quota,
    /// Azure OpenAI's `content_filter` error, sent with a 400 (`body-contentfilter`).
    ContentFilter,
    /// Anthropic's error shape for an overloaded model, sent with a 529
    /// (`body-anthropic-overloaded`).
    AnthropicOverloaded,
    /// An OpenAI-style error whose message quotes the request's API key, in the shape
    /// numbered N (`body-keyecho-N`, see [`KEY_ECHO_SHAPES`]): a provider that echoes
    /// the key Envoy injected.
    KeyEcho(u8),
}

/// How many `body-keyecho-N` shapes there are (N from 0).
pub(crate) const KEY_ECHO_SHAPES: u8 = 8;

impl CannedBody {
    fn from_directive(name: &str) -> Option<CannedBody> {
        Some(match name {
            "html" => CannedBody::Html,
            "body-noinstances" => CannedBody::NoInstances,
            "body-chutenotfound" => CannedBody::ChuteNotFound,
            "body-overloaded" => CannedBody::Overloaded,
            "body-errorenvelope" => CannedBody::ErrorEnvelope,
            "body-ctxlen" => CannedBody::ContextLength,
            "body-empty" => CannedBody::Empty,
            "body-quota" => CannedBody::Quota,
            "body-contentfilter" => CannedBody::ContentFilter,
            "body-anthropic-overloaded" => CannedBody::AnthropicOverloaded,
            _ => {
                let shape = name.strip_prefix("body-keyecho-")?.parse().ok()?;
                if shape >= KEY_ECHO_SHAPES {
                    return None;
                }
                CannedBody::KeyEcho(shape)
            }
        })
    }
}

/// How a streamed answer goes wrong, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamFailure {
    /// A single `event: error` SSE event, then a clean end of stream (`sse-error`).
    ErrorEvent,
    /// A single `data: {"error":...}` SSE event, then a clean end of stream (`sse-dataerror`).
    DataError,
    /// The role chunk and N content chunks, then the connection is aborted (`break-N`).
    BreakAfter(u32),
}

/// Everything the directives of one model name ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Script {
    pub status: Option<StatusCode>,
    pub body: Option<CannedBody>,
    pub retry_after: Option<String>,
    pub delay: Duration,
    pub drop_connection: bool,
    pub garbage: bool,
    pub chunks: u32,
    pub gap: Duration,
    pub stream_failure: Option<StreamFailure>,
    /// `cut`: a non-streamed answer breaks off halfway through its body.
    pub cut: bool,
    /// `chaos-P`: fail with probability P% (see `chaos`).
    pub chaos: Option<u32>,
    /// `latin1-NAME`: the answer's header NAME carries [`crate::LATIN1_VALUE`], bytes
    /// that are not UTF-8, instead of its usual value.
    pub latin1_header: Option<String>,
}

pub(crate) const DEFAULT_CHUNKS: u32 = 3;

impl Default for Script {
    fn default() -> Self {
        Script {
            status: None,
            body: None,
            retry_after: None,
            delay: Duration::ZERO,
            drop_connection: false,
            garbage: false,
            chunks: DEFAULT_CHUNKS,
            gap: Duration::ZERO,
            stream_failure: None,
            cut: false,
            chaos: None,
            latin1_header: None,
        }
    }
}

impl Script {
    /// Turns a chaos draw into the directives that produce it.
    pub fn apply_chaos(&mut self, failure: crate::chaos::ChaosFailure, stream: bool) {
        use crate::chaos::{ChaosFailure, CHAOS_TIMEOUT};
        match failure {
            ChaosFailure::Status(code) => {
                self.status = StatusCode::from_u16(code).ok();
                self.body = None;
            }
            ChaosFailure::Timeout => self.delay = CHAOS_TIMEOUT,
            ChaosFailure::Reset => self.drop_connection = true,
            ChaosFailure::Garbage => self.garbage = true,
            ChaosFailure::Break if stream => {
                self.stream_failure = Some(StreamFailure::BreakAfter(1));
            }
            ChaosFailure::Break => self.cut = true,
        }
    }

    /// Reads the directives of `model`. Parts that are not (well-formed) directives
    /// are ignored; when two directives set the same thing, the later one wins.
    pub fn parse(model: &str) -> Script {
        let mut script = Script::default();
        for part in model.split('+') {
            script.apply(part);
        }
        script
    }

    fn apply(&mut self, part: &str) {
        if let Some(body) = CannedBody::from_directive(part) {
            self.body = Some(body);
            return;
        }
        match part {
            "drop" => self.drop_connection = true,
            "garbage" => self.garbage = true,
            "cut" => self.cut = true,
            "sse-error" => self.stream_failure = Some(StreamFailure::ErrorEvent),
            "sse-dataerror" => self.stream_failure = Some(StreamFailure::DataError),
            _ => self.apply_with_argument(part),
        }
    }

    fn apply_with_argument(&mut self, part: &str) {
        if let Some(code) = part.strip_prefix("status-") {
            if let Some(status) = parse_status(code) {
                self.status = Some(status);
            }
        } else if let Some(seconds) = part.strip_prefix("retry-after-") {
            if !seconds.is_empty() {
                self.retry_after = Some(seconds.to_owned());
            }
        } else if let Some(ms) = part.strip_prefix("delay-") {
            if let Ok(ms) = ms.parse() {
                self.delay = Duration::from_millis(ms);
            }
        } else if let Some(ms) = part.strip_prefix("gap-") {
            if let Ok(ms) = ms.parse() {
                self.gap = Duration::from_millis(ms);
            }
        } else if let Some(n) = part.strip_prefix("chunks-") {
            if let Ok(n) = n.parse() {
                self.chunks = n;
            }
        } else if let Some(n) = part.strip_prefix("break-") {
            if let Ok(n) = n.parse() {
                self.stream_failure = Some(StreamFailure::BreakAfter(n));
            }
        } else if let Some(name) = part.strip_prefix("latin1-") {
            if !name.is_empty() {
                self.latin1_header = Some(name.to_ascii_lowercase());
            }
        } else if part.starts_with("chaos-") {
            if let Some(percent) = crate::chaos::chaos_percent(part) {
                self.chaos = Some(percent);
            }
        }
    }
}

/// Three digits, 200..=999: informational (1xx) codes cannot be a final answer.
fn parse_status(code: &str) -> Option<StatusCode> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    if code < 200 {
        return None;
    }
    StatusCode::from_u16(code).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_name_has_no_directives() {
        assert_eq!(Script::parse("backup"), Script::default());
        assert_eq!(Script::parse("gpt-4o-mini"), Script::default());
    }

    #[test]
    fn directives_combine() {
        let script = Script::parse("primary+status-502+html+retry-after-7+delay-150");
        assert_eq!(script.status, Some(StatusCode::BAD_GATEWAY));
        assert_eq!(script.body, Some(CannedBody::Html));
        assert_eq!(script.retry_after.as_deref(), Some("7"));
        assert_eq!(script.delay, Duration::from_millis(150));
        assert!(!script.drop_connection && !script.garbage);
    }

    #[test]
    fn stream_directives() {
        let script = Script::parse("m+chunks-5+gap-20+break-2");
        assert_eq!(script.chunks, 5);
        assert_eq!(script.gap, Duration::from_millis(20));
        assert_eq!(script.stream_failure, Some(StreamFailure::BreakAfter(2)));
        assert_eq!(
            Script::parse("m+sse-dataerror").stream_failure,
            Some(StreamFailure::DataError)
        );
    }

    #[test]
    fn cut_and_chaos() {
        let script = Script::parse("m+cut+chaos-30");
        assert!(script.cut);
        assert_eq!(script.chaos, Some(30));
        assert_eq!(Script::parse("m+chaos-101").chaos, None);
    }

    #[test]
    fn latin1_names_a_header() {
        let script = Script::parse("m+status-502+latin1-Content-Type");
        assert_eq!(script.latin1_header.as_deref(), Some("content-type"));
        assert_eq!(Script::parse("m+latin1-").latin1_header, None);
    }

    #[test]
    fn malformed_directives_are_names() {
        let script = Script::parse("status-99+status-1234+status-abc+delay-x+status-100");
        assert_eq!(script, Script::default());
    }

    #[test]
    fn key_echo_shapes() {
        assert_eq!(
            Script::parse("m+status-500+body-keyecho-3").body,
            Some(CannedBody::KeyEcho(3))
        );
        assert_eq!(Script::parse("m+body-keyecho-8").body, None);
        assert_eq!(Script::parse("m+body-keyecho-x").body, None);
    }

    #[test]
    fn later_directive_wins() {
        let script = Script::parse("status-500+status-429+body-empty+body-ctxlen");
        assert_eq!(script.status, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(script.body, Some(CannedBody::ContextLength));
    }
}
