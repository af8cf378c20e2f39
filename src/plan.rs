//! What the gateway decides for one request, and how it and the attempts tell each
//! other what happened.
//!
//! The gateway reads the body once and writes a `Plan` into Envoy filter state. The
//! router then runs the attempt role once per upstream attempt, on a fresh copy of
//! the buffered body; each attempt reads the plan and the record the previous
//! attempt left, picks its model, and leaves its own record. Both are a few short
//! text lines, so reading them on every attempt costs next to nothing.

use crate::body::{self, ScanError};
use crate::classify::{Class, RequestFacts};
use crate::config::Config;
use std::ops::Range;

/// The filter state name of the plan: a single path segment, visible to Envoy as
/// `wasm.ai_fallback.plan`.
pub const PLAN_PROPERTY: &str = "ai_fallback.plan";

/// The filter state name of attempt `attempt`'s record.
pub fn attempt_property(attempt: u32) -> String {
    format!("ai_fallback.attempt.{attempt}")
}

/// The request header carrying the attempt number, added by the router when the
/// virtual host sets `include_request_attempt_count: true`.
pub const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";

/// The response header by which the attempt role asks the router for the next
/// attempt (`retry_on: retriable-headers`). The gateway removes it before the
/// client could see it.
pub const RETRY_HEADER: &str = "x-ai-fallback-retry";

/// Router control headers. The router removes the ones it reads; the attempt role
/// removes all of them again, and the attempt count, so no provider sees them.
pub const ROUTER_CONTROL_HEADERS: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    ATTEMPT_COUNT_HEADER,
];

const PLAN_VERSION: &str = "v2";

/// One request's fallback plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Length of the whole request body, to compute each attempt's content-length.
    pub body_len: usize,
    /// Where the `model` value lies in the body, quotes included.
    pub model_span: Range<usize>,
    /// The request asked for a streamed answer.
    pub stream: bool,
    /// JSON literals of the chain's models; the first is the requested model as the
    /// client wrote it.
    pub chain: Vec<String>,
    /// JSON literals of the larger-context models, tried after a context-length answer.
    pub context_chain: Vec<String>,
}

/// Which model an attempt sends: a position in the chain or in the context chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub in_context_chain: bool,
    pub index: usize,
}

impl Step {
    pub const FIRST: Step = Step {
        in_context_chain: false,
        index: 0,
    };
}

impl Plan {
    /// Plain text, one item per line; a JSON string literal never holds a raw newline.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{PLAN_VERSION} {} {} {} {} {}",
            self.body_len,
            self.model_span.start,
            self.model_span.end,
            self.stream as u8,
            self.chain.len()
        );
        for literal in self.chain.iter().chain(&self.context_chain) {
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
        let (body_len, start, end, stream, chain_len) =
            (number()?, number()?, number()?, number()?, number()?);
        if start >= end || end > body_len || chain_len == 0 {
            return None;
        }
        let mut chain: Vec<String> = lines.map(str::to_string).collect();
        if chain.len() < chain_len {
            return None;
        }
        let context_chain = chain.split_off(chain_len);
        Some(Plan {
            body_len,
            model_span: start..end,
            stream: stream == 1,
            chain,
            context_chain,
        })
    }

    /// The most retries this plan can use.
    pub fn max_retries(&self) -> usize {
        self.chain.len() - 1 + self.context_chain.len()
    }

    pub fn facts(&self) -> RequestFacts {
        RequestFacts {
            stream: self.stream,
            has_context_chain: !self.context_chain.is_empty(),
        }
    }

    fn chain_of(&self, step: Step) -> &[String] {
        if step.in_context_chain {
            &self.context_chain
        } else {
            &self.chain
        }
    }

    /// The model literal a step sends, or `None` for the first step, which sends the
    /// body as the client wrote it.
    pub fn literal(&self, step: Step) -> Option<&str> {
        if step == Step::FIRST {
            return None;
        }
        let chain = self.chain_of(step);
        chain
            .get(step.index)
            .or_else(|| chain.last())
            .map(String::as_str)
    }

    /// The step after one whose answer was `class`. When the chain is used up (the
    /// router retried a reset or timeout of the last model), the last model repeats.
    pub fn next_step(&self, previous: Step, class: Option<Class>) -> Step {
        if class == Some(Class::ContextLength)
            && !previous.in_context_chain
            && !self.context_chain.is_empty()
        {
            return Step {
                in_context_chain: true,
                index: 0,
            };
        }
        let last = self.chain_of(previous).len().saturating_sub(1);
        Step {
            index: (previous.index + 1).min(last),
            ..previous
        }
    }

    /// Whether an answer of `class` to `step` has another model to go to.
    pub fn has_next(&self, step: Step, class: Class) -> bool {
        if !class.is_retryable() {
            return false;
        }
        if class == Class::ContextLength && !step.in_context_chain {
            return !self.context_chain.is_empty();
        }
        step.index + 1 < self.chain_of(step).len()
    }

    /// The body length once the model value is replaced by `literal`.
    pub fn rewritten_len(&self, literal: &str) -> usize {
        self.body_len - self.model_span.len() + literal.len()
    }
}

/// What one attempt did, as far as the next attempt and the access record care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub step: Step,
    /// How its answer was classified; `None` until an answer came.
    pub class: Option<Class>,
    pub status: Option<u16>,
}

impl AttemptRecord {
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            if self.step.in_context_chain { "c" } else { "m" },
            self.step.index,
            self.class.map_or("-", Class::name),
            self.status.map_or(0, u16::from),
        )
    }

    pub fn decode(bytes: &[u8]) -> Option<AttemptRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        let in_context_chain = match fields.next()? {
            "c" => true,
            "m" => false,
            _ => return None,
        };
        let index = fields.next()?.parse().ok()?;
        let class = Class::from_name(fields.next()?);
        let status = fields.next()?.parse().ok().filter(|s| *s != 0);
        Some(AttemptRecord {
            step: Step {
                in_context_chain,
                index,
            },
            class,
            status,
        })
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
    let fallbacks = config.chain_for(&requested);
    let context_chain = config.context_chain_for(&requested);
    if fallbacks.is_empty() && context_chain.is_empty() {
        return BodyDecision::Passthrough("model has no fallback chain");
    }
    let requested_literal = body_bytes
        .get(span.clone())
        .map(|raw| String::from_utf8_lossy(raw).into_owned())
        .unwrap_or_else(|| body::model_literal(&requested));
    let literals = |entries: &[crate::config::ChainEntry]| -> Vec<String> {
        entries
            .iter()
            .filter(|entry| entry.model != requested)
            .map(|entry| body::model_literal(&entry.model))
            .collect()
    };
    let mut chain = vec![requested_literal];
    chain.extend(literals(fallbacks));
    BodyDecision::Fallback(Plan {
        body_len: body_bytes.len(),
        model_span: span,
        stream: top.stream,
        chain,
        context_chain: literals(context_chain),
    })
}

/// The router control header values for a config, computed once at configure time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterControl {
    /// `x-envoy-retry-on`
    pub retry_on: String,
}

impl RouterControl {
    pub fn new(config: &Config) -> RouterControl {
        // The attempt role decides every retry on an answer (by status or body), so
        // the router retries on its header alone; resets and timeouts it sees itself.
        let mut retry_on = String::from("retriable-headers");
        if config.fallback_on_reset {
            retry_on.push_str(",reset,connect-failure,refused-stream");
        }
        RouterControl { retry_on }
    }

    /// The headers that make the router try each fallback of `plan` in turn.
    pub fn headers(&self, plan: &Plan) -> [(&'static str, String); 3] {
        [
            ("x-envoy-retry-on", self.retry_on.clone()),
            ("x-envoy-max-retries", plan.max_retries().to_string()),
            ("x-envoy-retriable-header-names", RETRY_HEADER.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            br#"{"chains":{"a":["b","c"],"x":["x","y"]},"context_chains":{"a":["big"],"k":["k2"]}}"#,
        )
        .unwrap()
    }

    fn plan_of(body: &str) -> Plan {
        match decide(&config(), body.as_bytes()) {
            BodyDecision::Fallback(plan) => plan,
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    const MAIN_1: Step = Step {
        in_context_chain: false,
        index: 1,
    };
    const CONTEXT_0: Step = Step {
        in_context_chain: true,
        index: 0,
    };

    #[test]
    fn plan_round_trips() {
        let plan = plan_of(r#"{"stream":true,"model" : "a","messages":[]}"#);
        assert_eq!(plan.chain, ["\"a\"", "\"b\"", "\"c\""]);
        assert_eq!(plan.context_chain, ["\"big\""]);
        assert!(plan.stream);
        assert_eq!(plan.max_retries(), 3);
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan));
    }

    #[test]
    fn steps_follow_the_chain_then_repeat_the_last() {
        let plan = plan_of(r#"{"model":"a"}"#);
        assert_eq!(plan.literal(Step::FIRST), None);
        let second = plan.next_step(Step::FIRST, Some(Class::FailureStatus));
        assert_eq!(second, MAIN_1);
        assert_eq!(plan.literal(second), Some("\"b\""));
        let third = plan.next_step(second, Some(Class::NoCapacity));
        assert_eq!(plan.literal(third), Some("\"c\""));
        assert!(!plan.has_next(third, Class::FailureStatus));
        assert_eq!(
            plan.next_step(third, None),
            third,
            "a reset of the last model"
        );
        assert_eq!(plan.rewritten_len("\"bbb\""), r#"{"model":"a"}"#.len() + 2);
    }

    #[test]
    fn context_length_switches_to_the_context_chain() {
        let plan = plan_of(r#"{"model":"a"}"#);
        assert!(plan.has_next(MAIN_1, Class::ContextLength));
        let step = plan.next_step(MAIN_1, Some(Class::ContextLength));
        assert_eq!(step, CONTEXT_0);
        assert_eq!(plan.literal(step), Some("\"big\""));
        assert!(!plan.has_next(step, Class::FailureStatus));
        assert!(!plan.has_next(step, Class::ContextLength));
        assert!(!plan.has_next(Step::FIRST, Class::Final));
    }

    #[test]
    fn a_context_chain_alone_makes_a_plan() {
        let plan = plan_of(r#"{"model":"k"}"#);
        assert_eq!(plan.chain, ["\"k\""]);
        assert!(!plan.has_next(Step::FIRST, Class::FailureStatus));
        assert!(plan.has_next(Step::FIRST, Class::ContextLength));
    }

    #[test]
    fn the_requested_model_is_not_tried_twice() {
        assert_eq!(plan_of(r#"{"model":"x"}"#).chain, ["\"x\"", "\"y\""]);
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
            "v1 5 0 1 0",
            "v2 5 3 2 0 1\n\"a\"",
            "v2 5 0 9 0 1\n\"a\"",
            "v2 x 0 1 0 1\n\"a\"",
            "v2 5 0 1 0 2\n\"a\"",
            "v2 5 0 1 0 0",
        ] {
            assert_eq!(Plan::decode(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn attempt_records_round_trip() {
        for record in [
            AttemptRecord {
                step: CONTEXT_0,
                class: Some(Class::RateLimited),
                status: Some(429),
            },
            AttemptRecord {
                step: Step::FIRST,
                class: None,
                status: None,
            },
        ] {
            assert_eq!(
                AttemptRecord::decode(record.encode().as_bytes()),
                Some(record)
            );
        }
        assert_eq!(AttemptRecord::decode(b"x 1 - 0"), None);
    }

    #[test]
    fn router_headers() {
        let control = RouterControl::new(&config());
        let headers = control.headers(&plan_of(r#"{"model":"a"}"#));
        assert_eq!(
            headers[0].1,
            "retriable-headers,reset,connect-failure,refused-stream"
        );
        assert_eq!(headers[1].1, "3");
        assert_eq!(headers[2].1, RETRY_HEADER);
    }
}
