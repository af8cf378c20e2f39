//! What the gateway decides for one request, and how it tells the attempt role.
//!
//! The gateway reads the body once and writes a `Plan` into Envoy filter state; the
//! attempt role, run by the router once per upstream attempt on a fresh copy of the
//! buffered body, reads it back and splices in that attempt's model. The plan is a
//! few short text lines so that reading it on every attempt costs next to nothing.

use crate::body::{self, ScanError};
use crate::config::Config;
use std::ops::Range;

/// The filter state name of the plan: a single path segment, visible to Envoy as
/// `wasm.ai_fallback.plan`.
pub const PLAN_PROPERTY: &str = "ai_fallback.plan";

/// The request header carrying the attempt number, added by the router when the
/// virtual host sets `include_request_attempt_count: true`.
pub const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";

/// Router control headers. The gateway sets the first three; all of them are
/// removed by the attempt role so that no provider ever sees them.
pub const ROUTER_CONTROL_HEADERS: [&str; 6] = [
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    ATTEMPT_COUNT_HEADER,
];

const PLAN_VERSION: &str = "v1";

/// One request's fallback plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Length of the whole request body, to compute each attempt's content-length.
    pub body_len: usize,
    /// Where the `model` value lies in the body, quotes included.
    pub model_span: Range<usize>,
    /// The request asked for a streamed answer.
    pub stream: bool,
    /// JSON literals of the models for attempts 2, 3, ... in order.
    pub fallbacks: Vec<String>,
}

impl Plan {
    /// Plain text, one item per line; a JSON string literal never holds a raw newline.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{PLAN_VERSION} {} {} {} {}",
            self.body_len, self.model_span.start, self.model_span.end, self.stream as u8
        );
        for literal in &self.fallbacks {
            text.push('\n');
            text.push_str(literal);
        }
        text
    }

    pub fn decode(bytes: &[u8]) -> Option<Plan> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split('\n');
        let mut head = lines.next()?.split(' ');
        if head.next()? != PLAN_VERSION {
            return None;
        }
        let mut number = || head.next()?.parse::<usize>().ok();
        let (body_len, start, end, stream) = (number()?, number()?, number()?, number()?);
        if start >= end || end > body_len {
            return None;
        }
        Some(Plan {
            body_len,
            model_span: start..end,
            stream: stream == 1,
            fallbacks: lines.map(str::to_string).collect(),
        })
    }

    /// The model literal for attempt `attempt` (1-based), or `None` for the first
    /// attempt, which sends the body as the client wrote it. Should the router try
    /// more often than planned (a route's own retry policy), the last model repeats.
    pub fn literal_for_attempt(&self, attempt: u32) -> Option<&str> {
        let index = usize::try_from(attempt).ok()?.checked_sub(2)?;
        self.fallbacks
            .get(index)
            .or_else(|| self.fallbacks.last())
            .map(String::as_str)
    }

    /// The body length once the model value is replaced by `literal`.
    pub fn rewritten_len(&self, literal: &str) -> usize {
        self.body_len - self.model_span.len() + literal.len()
    }
}

/// What the gateway does with a fully buffered request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyDecision {
    /// Send it on untouched, with no retries added; the reason is for debug logs.
    Passthrough(&'static str),
    /// Drive the router through the plan's fallbacks.
    Fallback(Plan),
}

/// Decides what to do with a request body the gateway has buffered completely.
pub fn decide(config: &Config, body_bytes: &[u8]) -> BodyDecision {
    let top = match body::scan(body_bytes) {
        Ok(top) => top,
        Err(ScanError::NotAnObject) => {
            return BodyDecision::Passthrough("body is not a JSON object")
        }
        Err(ScanError::Malformed(_)) => return BodyDecision::Passthrough("body is not valid JSON"),
        Err(ScanError::DuplicateModel) => {
            return BodyDecision::Passthrough("body has two top-level model fields")
        }
    };
    let Some(span) = top.model else {
        return BodyDecision::Passthrough("body has no model");
    };
    let Some(requested) = body::model_name(body_bytes, span.clone()) else {
        return BodyDecision::Passthrough("model is not a string");
    };
    let chain = config.chain_for(&requested);
    if chain.is_empty() {
        return BodyDecision::Passthrough("model has no fallback chain");
    }
    BodyDecision::Fallback(Plan {
        body_len: body_bytes.len(),
        model_span: span,
        stream: top.stream,
        fallbacks: chain
            .iter()
            .filter(|entry| entry.model != requested)
            .map(|entry| body::model_literal(&entry.model))
            .collect(),
    })
}

/// The router control header values for a config, computed once at configure time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterControl {
    /// `x-envoy-retry-on`
    pub retry_on: String,
    /// `x-envoy-retriable-status-codes`
    pub retriable_status_codes: String,
}

impl RouterControl {
    pub fn new(config: &Config) -> RouterControl {
        let mut retry_on = String::from("retriable-status-codes");
        if config.fallback_on_reset {
            retry_on.push_str(",reset,connect-failure,refused-stream");
        }
        let codes: Vec<String> = config
            .fallback_statuses
            .iter()
            .map(u16::to_string)
            .collect();
        RouterControl {
            retry_on,
            retriable_status_codes: codes.join(","),
        }
    }

    /// The headers that make the router try each fallback of `plan` in turn.
    pub fn headers(&self, plan: &Plan) -> [(&'static str, String); 3] {
        [
            ("x-envoy-retry-on", self.retry_on.clone()),
            ("x-envoy-max-retries", plan.fallbacks.len().to_string()),
            (
                "x-envoy-retriable-status-codes",
                self.retriable_status_codes.clone(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(br#"{"chains":{"a":["b","c"],"x":["x","y"]},"fallback_statuses":[502,500]}"#)
            .unwrap()
    }

    fn plan_of(body: &str) -> Plan {
        match decide(&config(), body.as_bytes()) {
            BodyDecision::Fallback(plan) => plan,
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    #[test]
    fn plan_round_trips() {
        let plan = plan_of(r#"{"stream":true,"model":"a","messages":[]}"#);
        assert_eq!(plan.fallbacks, ["\"b\"", "\"c\""]);
        assert!(plan.stream);
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan));
    }

    #[test]
    fn attempts_map_to_models() {
        let plan = plan_of(r#"{"model":"a"}"#);
        assert_eq!(plan.literal_for_attempt(0), None);
        assert_eq!(plan.literal_for_attempt(1), None);
        assert_eq!(plan.literal_for_attempt(2), Some("\"b\""));
        assert_eq!(plan.literal_for_attempt(3), Some("\"c\""));
        assert_eq!(plan.literal_for_attempt(9), Some("\"c\""));
        assert_eq!(plan.rewritten_len("\"bbb\""), r#"{"model":"a"}"#.len() + 2);
    }

    #[test]
    fn the_requested_model_is_not_tried_twice() {
        assert_eq!(plan_of(r#"{"model":"x"}"#).fallbacks, ["\"y\""]);
    }

    #[test]
    fn passthrough_cases() {
        for body in [
            "not json",
            "[1]",
            r#"{"model":"zzz"}"#,
            r#"{"messages":[]}"#,
            r#"{"model":5}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"a""#,
        ] {
            assert!(
                matches!(
                    decide(&config(), body.as_bytes()),
                    BodyDecision::Passthrough(_)
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn corrupt_plans_are_refused() {
        for text in [
            "",
            "v2 1 0 1 0",
            "v1 5 3 2 0",
            "v1 5 0 9 0",
            "v1 x 0 1 0",
            "v1 5 0 1",
        ] {
            assert_eq!(Plan::decode(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn router_headers() {
        let control = RouterControl::new(&config());
        let headers = control.headers(&plan_of(r#"{"model":"a"}"#));
        assert_eq!(
            headers[0].1,
            "retriable-status-codes,reset,connect-failure,refused-stream"
        );
        assert_eq!(headers[1].1, "2");
        assert_eq!(headers[2].1, "502,500");
    }
}
