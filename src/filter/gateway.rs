//! The gateway role: runs once per client request, before the router. It plans the
//! fallbacks from the body, and on the way back decides how the request ended.

use super::{health, host, Prepared};
use crate::access::{
    self, find_usage, AccessRecord, AttemptView, SkippedView, Usage, ATTEMPTS_PROPERTY,
    FINAL_MODEL_PROPERTY, OUTCOME_PROPERTY, RECORD_PROPERTY, USAGE_TAIL_BYTES,
};
use crate::config::{RouteFacts, Settings};
use crate::cooldown::health_key;
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
    /// Why an acted-on request was let through untouched.
    passthrough_reason: Option<&'static str>,
    /// The last bytes of the answer, where providers put `usage`.
    usage_tail: Vec<u8>,
    /// The access record and stats are written once.
    recorded: bool,
    /// Models left out of the chain because they are cooling down, and why.
    skipped: Vec<(String, String)>,
    /// The request's path, for providers with their own API root.
    path: String,
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
            passthrough_reason: None,
            usage_tail: Vec::new(),
            recorded: false,
            skipped: Vec::new(),
            path: String::new(),
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
        match host::send_json(413, &reply::body_too_large(limit)) {
            Ok(()) => Action::Pause,
            Err(status) => {
                // Never hold a request that no answer will end.
                warn!("#{} cannot send the 413 answer: {status:?}", self.id);
                Action::Continue
            }
        }
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
        let cooldowns_on = self.settings().cooldown.failures > 0;
        let mut skipped: Vec<(String, String)> = Vec::new();
        let mut usable = |model: &str| {
            if !cooldowns_on {
                return true;
            }
            match health::usable(model, start.started_ms) {
                Ok(()) => true,
                Err(reason) => {
                    skipped.push((model.to_string(), reason));
                    false
                }
            }
        };
        let decision = decide(self.settings(), start, &self.path, &body, &mut usable);
        let plan = match decision {
            BodyDecision::Passthrough(reason) => {
                debug!("#{} passthrough: {reason}", self.id);
                self.passthrough_reason = Some(reason);
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
        // When every model was cooling, all are tried in order: none was skipped.
        let first_key =
            plan.chain
                .first()
                .zip(plan.chain_providers.first())
                .map(|(literal, provider)| {
                    let model = serde_json::from_str::<String>(literal).unwrap_or_default();
                    health_key(&model, provider.as_deref())
                });
        if skipped
            .iter()
            .any(|(key, _)| Some(key) == first_key.as_ref())
        {
            skipped.clear();
        }
        self.skipped = skipped;
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
    /// Returns the action for the held answer: paused when the error replaced it,
    /// let go otherwise, so that an answer is never held with nothing to end it.
    fn send_shaped_error(&mut self, final_body: &[u8]) -> Action {
        let (Some(plan), Some(finished)) = (&self.plan, &mut self.finished) else {
            return Action::Continue;
        };
        if let Some(last) = finished.records.last_mut() {
            if last.error_excerpt.is_none() {
                last.error_excerpt = provider_message(final_body);
            }
        }
        let now = host::now_ms();
        let shaped = shaped_error(
            plan,
            &finished.records,
            finished.outcome,
            finished.status,
            now,
        );
        let Some(shaped) = shaped else {
            return Action::Continue;
        };
        finished.status = u16::try_from(shaped.status).unwrap_or(finished.status);
        // Recorded first: the reply may end the stream, access log included, before
        // this call returns.
        self.write_record();
        match host::send_json(shaped.status, &shaped.body) {
            Ok(()) => Action::Pause,
            Err(status) => {
                warn!("#{} cannot send the final error ({status:?})", self.id);
                Action::Continue
            }
        }
    }

    /// Writes the access record and counts the request in Envoy stats, once, for a
    /// request the gateway acted on.
    fn write_record(&mut self) {
        if self.recorded {
            return;
        }
        let Some(start) = self.start else {
            return;
        };
        self.recorded = true;
        let route = host::property_text(vec!["xds", "route_name"]).unwrap_or_default();
        let request_id = host::property_text(vec!["request", "id"]).unwrap_or_default();
        let no_records = Vec::new();
        let (mut outcome, records) = match &self.finished {
            Some(finished) => (finished.outcome, &finished.records),
            None if self.plan.is_some() => (Outcome::Exhausted, &no_records),
            None => (Outcome::Passthrough, &no_records),
        };
        if records.iter().any(|record| record.truncated) {
            outcome = Outcome::Truncated;
        }
        let requested = self
            .plan
            .as_ref()
            .and_then(|plan| plan.chain.first())
            .and_then(|literal| serde_json::from_str::<String>(literal).ok());
        let completed_last;
        let records = match records.split_last() {
            Some((last, earlier)) if last.cluster.is_none() => {
                let mut last = last.clone();
                last.cluster = host::property_text(vec!["xds", "cluster_name"]);
                last.host = host::property_text(vec!["upstream", "address"]);
                last.end_ms = Some(host::now_ms().saturating_sub(last.start_ms));
                completed_last = earlier.iter().cloned().chain([last]).collect::<Vec<_>>();
                &completed_last
            }
            _ => records,
        };
        let final_model = records.last().map(|record| record.model.as_str());
        let usage = find_usage(&self.usage_tail).unwrap_or_default();
        let elapsed_ms = host::now_ms().saturating_sub(start.started_ms);
        let record = AccessRecord {
            request_id: &request_id,
            route: &route,
            rule: self.prepared.config.rule_name(self.rule),
            requested_model: requested.as_deref(),
            final_model,
            outcome: outcome.name(),
            stream: self.plan.as_ref().is_some_and(|plan| plan.stream),
            budget_ms: self.plan.as_ref().and_then(|plan| plan.budget_ms),
            elapsed_ms,
            passthrough_reason: self.passthrough_reason,
            attempts: records.iter().map(AttemptView::from).collect(),
            skipped: self
                .skipped
                .iter()
                .map(|(model, reason)| SkippedView { model, reason })
                .collect(),
            usage,
        };
        let properties = [
            (RECORD_PROPERTY, record.to_json()),
            (
                FINAL_MODEL_PROPERTY,
                final_model.unwrap_or_default().to_string(),
            ),
            (ATTEMPTS_PROPERTY, records.len().to_string()),
            (OUTCOME_PROPERTY, outcome.name().to_string()),
        ];
        for (name, value) in properties {
            if let Err(status) = host::set_property(name, value.as_bytes()) {
                warn!("#{} cannot write {name} ({status:?})", self.id);
            }
        }
        self.count_stats(
            &route,
            requested.as_deref(),
            records,
            outcome,
            usage,
            elapsed_ms,
        );
    }

    fn count_stats(
        &self,
        route: &str,
        requested: Option<&str>,
        records: &[AttemptRecord],
        outcome: Outcome,
        usage: Usage,
        elapsed_ms: u64,
    ) {
        let prepared = &self.prepared;
        let bounded = |model: &str| -> String {
            access::bounded_model(model, |m| prepared.known_models.contains(m)).to_string()
        };
        let requested = bounded(requested.unwrap_or_default());
        let name = access::stat_name;
        let outcome_tag = Some(("outcome", outcome.name()));
        prepared.count(
            &name("requests_total", route, Some(&requested), outcome_tag),
            1,
        );
        for record in records {
            let class = Some(("class", record.class.as_deref().unwrap_or("no_answer")));
            let model = bounded(&record.model);
            prepared.count(&name("attempts_total", route, Some(&model), class), 1);
        }
        let fallbacks = records.len().saturating_sub(1) as u64;
        if fallbacks > 0 {
            let stat = name("fallbacks_total", route, Some(&requested), None);
            prepared.count(&stat, fallbacks);
        }
        for (model, _) in &self.skipped {
            let stat = name("skipped_total", route, Some(&bounded(model)), None);
            prepared.count(&stat, 1);
        }
        if outcome == Outcome::BudgetExceeded {
            prepared.count(&name("budget_exhausted_total", route, None, None), 1);
        }
        if let Some(last) = records.last() {
            let model = bounded(&last.model);
            let tokens = [
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
            ];
            for (kind, count) in tokens
                .into_iter()
                .filter(|(_, count)| count.unwrap_or(0) > 0)
            {
                let stat = name("tokens_total", route, Some(&model), Some(("kind", kind)));
                prepared.count(&stat, count.unwrap_or(0));
            }
        }
        if self.plan.is_some() {
            let attempts = records.len() as u64;
            prepared.observe(&name("attempts_per_request", route, None, None), attempts);
        }
        if access::is_success(outcome) {
            prepared.observe(&name("time_to_success_ms", route, None, None), elapsed_ms);
        }
    }

    /// Keeps the last bytes of the answer for its `usage`.
    fn keep_usage_tail(&mut self, body_size: usize) {
        if body_size == 0 {
            return;
        }
        let start = body_size.saturating_sub(USAGE_TAIL_BYTES);
        if let Some(chunk) = host::response_body(start, body_size - start) {
            self.usage_tail.extend_from_slice(&chunk);
            let excess = self.usage_tail.len().saturating_sub(USAGE_TAIL_BYTES);
            self.usage_tail.drain(..excess);
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
        self.path = path;
        let deadline = host::request_header(DEADLINE_HEADER);
        if deadline.is_some() {
            // The filter's own header: no provider needs it.
            let _ = host::set_request_header(DEADLINE_HEADER, None);
        }
        let client_deadline_ms = deadline
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
            if end_of_stream {
                self.write_record();
            }
            return Action::Continue;
        };
        // Present only when the router could not retry (a circuit breaker): the
        // client must not see it.
        if let Err(status) = host::set_response_header(RETRY_HEADER, None) {
            warn!("#{} cannot remove {RETRY_HEADER} ({status:?})", self.id);
        }
        let mut records = Gateway::attempt_records(plan);
        // An attempt refused for lack of time never reached a provider.
        let budget_refused = records.last().is_some_and(|r| r.refused_for_budget);
        if budget_refused {
            records.pop();
        }
        let status = host::response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        // Envoy's own replies are failures: a success needs no look at their details.
        let details = if status < 400 {
            String::new()
        } else {
            host::property_text(vec!["response", "code_details"]).unwrap_or_default()
        };
        let source = Source::from_details(&details, budget_refused);
        if source == Source::Upstream {
            // A successful attempt leaves its record for the gateway to complete.
            if let Some(last) = records.last_mut().filter(|r| r.class.is_none()) {
                last.status = Some(status);
                last.class = Some(crate::classify::Class::Success.name().to_string());
                last.first_byte_ms = Some(host::now_ms().saturating_sub(last.start_ms));
            }
        }
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
                return self.send_shaped_error(&[]);
            }
            self.replacing_answer = true;
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
            if self.plan.is_some() {
                self.keep_usage_tail(body_size);
            }
            if end_of_stream {
                self.write_record();
            }
            return Action::Continue;
        }
        if !end_of_stream && body_size < ERROR_EXCERPT_READ_BYTES {
            return Action::Pause;
        }
        self.replacing_answer = false;
        let read = body_size.min(ERROR_EXCERPT_READ_BYTES);
        let final_body = host::response_body(0, read).unwrap_or_default();
        self.send_shaped_error(&final_body)
    }

    fn on_log(&mut self) {
        // A request whose answer never ended (the client went away) is recorded here.
        self.write_record();
    }
}
