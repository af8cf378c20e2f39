//! The gateway role: runs once per client request, before the router. It plans the
//! fallbacks from the body, and on the way back decides how the request ended.

use super::{host, Prepared, BUDGET_REFUSED_PROPERTY};
use crate::config::{RouteFacts, Settings};
use crate::outcome::{outcome, provider_message, shaped_error, Outcome, Source};
use crate::plan::{
    attempt_property, decide, AttemptRecord, BodyDecision, Plan, RequestStart, DEADLINE_HEADER,
    PLAN_PROPERTY, RETRY_HEADER,
};
use crate::reply;
use log::{debug, warn};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// How much of a failed final answer is read for the provider's message.
const ERROR_EXCERPT_READ_BYTES: usize = 4096;

pub struct Gateway {
    id: u32,
    prepared: Rc<Prepared>,
    /// The rule whose settings apply (0: the top level).
    rule: usize,
    start: Option<RequestStart>,
    /// The request is one the gateway acts on and its body is being buffered.
    buffering: bool,
    plan: Option<Plan>,
    /// Set once the answer's headers came back.
    finished: Option<Finished>,
    /// The failed final answer's body is being read before it is replaced.
    replacing_answer: bool,
}

struct Finished {
    outcome: Outcome,
    status: u16,
    records: Vec<AttemptRecord>,
}

impl Gateway {
    pub fn new(id: u32, prepared: Rc<Prepared>) -> Gateway {
        Gateway {
            id,
            prepared,
            rule: 0,
            start: None,
            buffering: false,
            plan: None,
            finished: None,
            replacing_answer: false,
        }
    }

    fn settings(&self) -> &Settings {
        self.prepared.config.settings(self.rule)
    }

    /// Picks the rule for this request; reads route properties only when rules exist.
    fn select_rule(&mut self, path: &str) {
        if self.prepared.config.rules.is_empty() {
            return;
        }
        let route_name = host::property_text(vec!["xds", "route_name"]).unwrap_or_default();
        let metadata_rule = host::property_text(vec![
            "xds",
            "route_metadata",
            "filter_metadata",
            "ai_fallback",
            "rule",
        ]);
        let authority = host::request_header(":authority").unwrap_or_default();
        let facts = RouteFacts {
            route_name: &route_name,
            metadata_rule: metadata_rule.as_deref(),
            host: &authority,
            path,
        };
        self.rule = self.prepared.config.select(&facts).0;
    }

    fn reject_too_large(&mut self) -> Action {
        self.buffering = false;
        let limit = self.settings().max_body_bytes;
        debug!("#{} body over {limit} bytes: 413", self.id);
        if let Err(status) = host::send_json(413, &reply::body_too_large(limit)) {
            warn!("#{} cannot send the 413 answer: {status:?}", self.id);
        }
        Action::Pause
    }

    /// The whole body is buffered: plan the fallbacks and let the request go on.
    fn plan(&mut self, body_size: usize) -> Action {
        self.buffering = false;
        let Some(start) = self.start else {
            return Action::Continue;
        };
        let Some(body) = host::request_body(0, body_size) else {
            warn!(
                "#{} cannot read the buffered body; passing it through",
                self.id
            );
            return Action::Continue;
        };
        let plan = match decide(self.settings(), start, &body) {
            BodyDecision::Passthrough(reason) => {
                debug!("#{} passthrough: {reason}", self.id);
                return Action::Continue;
            }
            BodyDecision::Fallback(plan) => plan,
        };
        // The plan goes first: retries without it would resend the same model.
        if let Err(status) = host::set_property(PLAN_PROPERTY, plan.encode().as_bytes()) {
            warn!(
                "#{} cannot store the plan ({status:?}); passing through",
                self.id
            );
            return Action::Continue;
        }
        if let Some(router) = self.prepared.routers.get(self.rule) {
            for (name, value) in router.headers(&plan) {
                if let Err(status) = host::set_request_header(name, Some(&value)) {
                    warn!("#{} cannot set {name} ({status:?})", self.id);
                }
            }
        }
        debug!(
            "#{} up to {} fallbacks planned",
            self.id,
            plan.max_retries()
        );
        self.plan = Some(plan);
        Action::Continue
    }

    /// The records every attempt left, in order.
    fn attempt_records(plan: &Plan) -> Vec<AttemptRecord> {
        (1..=plan.max_retries() as u32 + 1)
            .map_while(|attempt| {
                host::property(&attempt_property(attempt))
                    .and_then(|bytes| AttemptRecord::decode(&bytes))
            })
            .collect()
    }

    /// Replaces the answer with the shaped error, once the provider's message (if
    /// any) was read from `final_body`.
    fn send_shaped_error(&mut self, final_body: &[u8]) {
        let (Some(plan), Some(finished)) = (&self.plan, &mut self.finished) else {
            return;
        };
        if let Some(last) = finished.records.last_mut() {
            if last.error_excerpt.is_none() {
                last.error_excerpt = provider_message(final_body);
            }
        }
        let now = host::now_ms();
        if let Some(shaped) = shaped_error(
            plan,
            &finished.records,
            finished.outcome,
            finished.status,
            now,
        ) {
            if let Err(status) = host::send_json(shaped.status, &shaped.body) {
                warn!("#{} cannot send the final error ({status:?})", self.id);
            }
        }
    }
}

impl Context for Gateway {}

impl HttpContext for Gateway {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return Action::Continue;
        }
        let method = host::request_header(":method").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_default();
        self.select_rule(&path);
        let settings = self.settings();
        if !settings.acts_on(&method, &path) {
            return Action::Continue;
        }
        if let Some(encoding) = host::request_header("content-encoding") {
            if !encoding.eq_ignore_ascii_case("identity") {
                debug!("#{} passthrough: body is {encoding}-encoded", self.id);
                return Action::Continue;
            }
        }
        let declared_len =
            host::request_header("content-length").and_then(|len| len.trim().parse::<usize>().ok());
        if declared_len.is_some_and(|len| len > settings.max_body_bytes) {
            return self.reject_too_large();
        }
        let client_deadline_ms = host::request_header(DEADLINE_HEADER)
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0);
        self.start = Some(RequestStart {
            rule: self.rule,
            started_ms: host::now_ms(),
            client_deadline_ms,
        });
        // Hold the headers: the router reads its retry headers when it gets them, and
        // they depend on the model, which is in the body.
        self.buffering = true;
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.buffering {
            return Action::Continue;
        }
        if body_size > self.settings().max_body_bytes {
            return self.reject_too_large();
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.plan(body_size)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if self.buffering {
            // Trailers on a JSON request are too rare to plan for; nothing is lost by
            // sending it on without fallbacks.
            debug!("#{} passthrough: request has trailers", self.id);
            self.buffering = false;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(plan) = &self.plan else {
            return Action::Continue;
        };
        // Present only when the router could not retry (a circuit breaker): the
        // client must not see it.
        if let Err(status) = host::set_response_header(RETRY_HEADER, None) {
            warn!("#{} cannot remove {RETRY_HEADER} ({status:?})", self.id);
        }
        let records = Gateway::attempt_records(plan);
        let status = host::response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let details = host::property_text(vec!["response", "code_details"]).unwrap_or_default();
        let budget_refused = host::property(BUDGET_REFUSED_PROPERTY).is_some();
        let source = Source::from_details(&details, budget_refused);
        let outcome = outcome(&records, source, status);
        let answered_by = records.last().map(|record| record.model.clone());
        let attempts = records.len();
        self.finished = Some(Finished {
            outcome,
            status,
            records,
        });
        if matches!(outcome, Outcome::Exhausted | Outcome::BudgetExceeded) {
            debug!("#{} {}: replacing the answer", self.id, outcome.name());
            if end_of_stream {
                self.send_shaped_error(&[]);
            } else {
                self.replacing_answer = true;
            }
            return Action::Pause;
        }
        if self.settings().response_headers {
            // Model names may hold any character; a header only visible ASCII.
            if let Some(model) =
                answered_by.filter(|m| m.bytes().all(|b| (0x20..0x7f).contains(&b)))
            {
                let _ = host::set_response_header("x-ai-fallback-model", Some(&model));
            }
            let _ =
                host::set_response_header("x-ai-fallback-attempts", Some(&attempts.to_string()));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.replacing_answer {
            return Action::Continue;
        }
        if !end_of_stream && body_size < ERROR_EXCERPT_READ_BYTES {
            return Action::Pause;
        }
        self.replacing_answer = false;
        let read = body_size.min(ERROR_EXCERPT_READ_BYTES);
        let final_body = host::response_body(0, read).unwrap_or_default();
        self.send_shaped_error(&final_body);
        Action::Pause
    }
}
