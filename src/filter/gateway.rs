//! The gateway role: runs once per client request, before the router. It plans the
//! fallbacks from the body, and on the way back decides how the request ended.

use super::deadlines::OnExpiry;
use super::host::{parse_number, Body, Headers, Host, HostExt, Map};
use super::{health, Prepared};
use crate::access::{
    self, find_usage, AccessRecord, AttemptView, SkippedView, Usage, ATTEMPTS_PROPERTY,
    FINAL_MODEL_PROPERTY, OUTCOME_PROPERTY, RECORD_PROPERTY, USAGE_TAIL_BYTES,
};
use crate::api::Api;
use crate::classify::Class;
use crate::config::{RouteFacts, Settings};
use crate::cooldown::health_key;
use crate::outcome::{outcome, provider_message, shaped_error, Outcome, ShapedError, Source};
use crate::plan::{
    attempt_property, client_chain, client_turns_off, decide, AttemptRecord, BodyDecision,
    ClientChain, Plan, RequestStart, Skipped, Unprotected, ANSWERING_ATTEMPT_HEADER,
    CLIENT_CHAIN_HEADER, CLIENT_HEADERS, DEADLINE_HEADER, MAX_ATTEMPTS, PLAN_PROPERTY,
    RETRY_HEADER, SWITCH_HEADER,
};
use crate::reply;
use log::{debug, warn};
use proxy_wasm::types::{Action, Status};
use std::rc::Rc;

/// How much of a failed final answer is read for the provider's message.
const ERROR_EXCERPT_READ_BYTES: usize = 4096;

/// How long a failed final answer's body is waited for, to quote it.
const FINAL_BODY_WAIT_MS: u64 = 200;

pub struct Gateway {
    id: u32,
    prepared: Rc<Prepared>,
    host: Rc<dyn Host>,
    /// The rule whose settings apply (0: the top level).
    rule: usize,
    start: Option<RequestStart>,
    /// How the request's body reaches the plan, while it is being read.
    reading: Reading,
    plan: Option<Plan>,
    /// Set once the answer's headers came back.
    finished: Option<Finished>,
    /// The failed final answer's body is being read before it is replaced.
    replacing_answer: bool,
    /// Why an acted-on request was let through untouched.
    unprotected: Option<Unprotected>,
    /// The last bytes of the answer, where providers put `usage`.
    usage_tail: Vec<u8>,
    /// The access record and stats are written once.
    recorded: bool,
    /// Models put at the end of the chain because they are cooling down.
    skipped: Vec<Skipped>,
    /// The request's path, for providers with their own API root.
    path: String,
    /// The API the request speaks, for the shape of the filter's own errors.
    api: Api,
    /// The route's name (`xds.route_name`), once read.
    route: Option<String>,
    /// What became of the client's `x-ai-fallback-models`, if it sent one.
    client_chain: Option<ClientChain>,
    /// The body so far, while it passes (`Reading::Passing`).
    body: Vec<u8>,
    /// Envoy's `x-request-id` (its `request.id`), for the record.
    request_id: String,
    /// The attempts' records as the answer's headers found them, and whether the
    /// last was refused for the budget; only the last can change after.
    answered: Option<(Vec<AttemptRecord>, bool)>,
    /// Under hedging, the number of the attempt whose answer reached the gateway;
    /// `None` without hedging, or when no attempt's answer did.
    answering: Option<u32>,
    /// The answer's end came through.
    answer_complete: bool,
    /// The client asked for an encoding (removed with the router's control headers).
    accept_encoding: bool,
}

/// How the gateway reads an acted-on request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// Not (any more).
    Done,
    /// The headers are held and Envoy buffers the body: the router's headers depend
    /// on it (see `RouterControl::hold`).
    Held,
    /// The request went on; the body is copied as it passes to the router.
    Passing,
}

/// How the request ended, as far as its answer's headers tell.
struct Finished {
    outcome: Outcome,
    status: u16,
}

impl Gateway {
    pub fn new(id: u32, prepared: Rc<Prepared>, host: Rc<dyn Host>) -> Gateway {
        Gateway {
            id,
            prepared,
            host,
            rule: 0,
            start: None,
            reading: Reading::Done,
            body: Vec::new(),
            request_id: String::new(),
            answered: None,
            answering: None,
            answer_complete: false,
            accept_encoding: false,
            plan: None,
            finished: None,
            replacing_answer: false,
            unprotected: None,
            usage_tail: Vec::new(),
            recorded: false,
            skipped: Vec::new(),
            path: String::new(),
            api: Api::OpenAi,
            route: None,
            client_chain: None,
        }
    }

    /// The route's name, read from the host once.
    fn route_name(&mut self) -> &str {
        let host = &self.host;
        self.route.get_or_insert_with(|| {
            host.property_text(&["xds", "route_name"])
                .unwrap_or_default()
        })
    }

    fn settings(&self) -> &Settings {
        self.prepared.config.settings(self.rule)
    }

    /// Picks the rule for this request; reads route properties only when rules exist.
    fn select_rule(&mut self, path: &str, headers: &Headers) {
        if self.prepared.config.rules.is_empty() {
            return;
        }
        let route_name = self.route_name().to_string();
        let metadata_rule = self.host.property_text(&[
            "xds",
            "route_metadata",
            "filter_metadata",
            "ai_fallback",
            "rule",
        ]);
        let authority = headers.text(":authority").unwrap_or_default();
        let facts = RouteFacts {
            route_name: &route_name,
            metadata_rule: metadata_rule.as_deref(),
            host: &authority,
            path,
        };
        self.rule = self.prepared.config.select(&facts).0;
    }

    /// Lets an acted-on request go on untouched; the record and a stat say why.
    fn pass_through(&mut self, reason: Unprotected) -> Action {
        debug!("#{} passthrough: {}", self.id, reason.message());
        self.unprotected = Some(reason);
        Action::Continue
    }

    /// Ends the request with one of the filter's errors, in the request's API shape.
    fn send_error(&self, status: u32, openai_body: &str) -> Result<(), Status> {
        let body = self.api.error_body(status, openai_body);
        self.host.send_json(status, &body)
    }

    fn reject_too_large(&mut self) -> Action {
        self.reading = Reading::Done;
        self.body = Vec::new();
        let limit = self.settings().max_body_bytes;
        debug!("#{} body over {limit} bytes: 413", self.id);
        match self.send_error(413, &reply::body_too_large(limit)) {
            Ok(()) => Action::Pause,
            Err(status) => {
                // Never hold a request that no answer will end.
                warn!("#{} cannot send the 413 answer: {status:?}", self.id);
                Action::Continue
            }
        }
    }

    /// The whole body is in: plan the fallbacks and let the request go on.
    fn plan(&mut self, body_size: usize) -> Action {
        let reading = std::mem::replace(&mut self.reading, Reading::Done);
        let Some(start) = self.start else {
            return Action::Continue;
        };
        let body = match reading {
            Reading::Passing => std::mem::take(&mut self.body),
            _ => match self.host.body(Body::Request, 0, body_size) {
                Some(body) => body,
                None => {
                    warn!("#{} cannot read the buffered body", self.id);
                    return self.pass_through(Unprotected::BodyUnreadable);
                }
            },
        };
        let cooldowns_on = self.settings().cooldown.failures > 0;
        let (host, known_models) = (self.host.as_ref(), &self.prepared.known_models);
        // The first model chosen is where the first attempt goes: its probe, if due,
        // is claimed now; a later one's by the attempt that sends to it.
        let mut first_chosen = true;
        let mut usable = |model: &str, provider: Option<&str>| {
            if !cooldowns_on || !known_models.contains(model) {
                first_chosen = false;
                return Ok(());
            }
            let key = health_key(model, provider);
            let usable = if first_chosen {
                health::claim_probe(host, &key, start.started_ms)
            } else {
                health::usable(host, &key, start.started_ms)
            };
            first_chosen &= usable.is_err();
            usable
        };
        let client_chain = match &self.client_chain {
            Some(ClientChain::Used(entries)) => Some(entries.as_slice()),
            _ => None,
        };
        let decision = decide(
            self.settings(),
            self.rule,
            start,
            &self.path,
            &body,
            client_chain,
            &mut usable,
        );
        let (plan, skipped) = match decision {
            BodyDecision::Passthrough(reason) => return self.pass_through(reason),
            BodyDecision::Fallback(plan, skipped) => (*plan, skipped),
        };
        // The plan goes first: retries without it would resend the same model.
        if let Err(status) = self
            .host
            .set_property(PLAN_PROPERTY, plan.encode().as_bytes())
        {
            warn!("#{} cannot store the plan ({status:?})", self.id);
            return self.pass_through(Unprotected::PlanNotStored);
        }
        if reading == Reading::Held {
            if let Some(router) = self.prepared.routers.get(self.rule) {
                self.control_router(router.headers(&plan));
            }
        }
        debug!(
            "#{} up to {} fallbacks planned",
            self.id,
            plan.max_retries()
        );
        self.skipped = skipped;
        self.plan = Some(plan);
        Action::Continue
    }

    /// Sets the router's control headers, and removes what would make the answer
    /// unreadable: an answer the attempt role may have to read must not come
    /// compressed (the client's own encoding is Envoy's compressor's business).
    fn control_router(&self, headers: Vec<(&'static str, String)>) {
        if self.accept_encoding {
            if let Err(status) = self.host.set_request_header("accept-encoding", None) {
                warn!("#{} cannot remove accept-encoding ({status:?})", self.id);
            }
        }
        if cfg!(feature = "ablate-control") {
            return;
        }
        for (name, value) in headers {
            if let Err(status) = self.host.set_request_header(name, Some(&value)) {
                warn!("#{} cannot set {name} ({status:?})", self.id);
            }
        }
    }

    /// The records the attempts left, in order, the one that answered last; the
    /// attempt role is their only writer, and an attempt refused for lack of time,
    /// which never reached a provider, is left out (`true` when there was one).
    fn attempt_records(&self) -> (Vec<AttemptRecord>, bool) {
        if let Some((records, budget_refused)) = &self.answered {
            let mut records = records.clone();
            // A success is written again only when its stream was cut short.
            let settled = records.last().is_some_and(|last| {
                last.class.as_deref() == Some(Class::Success.name())
                    && !self.plan.as_ref().is_some_and(|plan| plan.stream)
            });
            if settled {
                return (records, *budget_refused);
            }
            let last_attempt = self
                .answering
                .unwrap_or_else(|| u32::try_from(records.len()).unwrap_or(u32::MAX));
            let last = self
                .host
                .property(&[&attempt_property(last_attempt)])
                .and_then(|bytes| AttemptRecord::decode(&bytes));
            if let (Some(kept), Some(last)) = (records.last_mut(), last) {
                *kept = last;
            }
            return (records, *budget_refused);
        }
        let hedging = self.settings().budget.hedge_after_ms.is_some();
        let mut records: Vec<AttemptRecord> = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(record) = self
                .host
                .property(&[&attempt_property(attempt)])
                .and_then(|bytes| AttemptRecord::decode(&bytes))
            else {
                break;
            };
            // Without hedging, an answer that asked for no retry was the last one.
            let last = !hedging
                && match (&self.plan, record.class()) {
                    (Some(plan), Some(class)) => !plan.has_next(record.step(), class),
                    _ => false,
                };
            records.push(record);
            if last {
                break;
            }
        }
        let budget_refused = records.last().is_some_and(|r| r.refused_for_budget);
        if budget_refused {
            records.pop();
        }
        if let Some(answering) = self.answering {
            put_answer_last(&mut records, answering);
        }
        (records, budget_refused)
    }

    /// Whether the request's first attempt gave the answer (no fallback did).
    fn first_attempt_answered(&self, records: &[AttemptRecord]) -> bool {
        match self.answering {
            Some(answering) => answering <= 1,
            None => records.len() <= 1,
        }
    }

    /// The error that replaces a failed final answer, quoting the provider's
    /// message from `final_body` if it has one; `None` for other outcomes.
    fn shaped_error(&self, final_body: &[u8]) -> Option<ShapedError> {
        let (plan, finished) = (self.plan.as_ref()?, self.finished.as_ref()?);
        let (mut records, _) = self.attempt_records();
        if let Some(last) = records.last_mut() {
            if last.error_excerpt.is_none() {
                last.error_excerpt = provider_message(final_body);
            }
        }
        let now = self.host.now_ms();
        shaped_error(plan, &records, finished.outcome, finished.status, now)
    }

    /// Replaces the answer with the shaped error, once the provider's message (if
    /// any) was read from `final_body`.
    /// Returns the action for the held answer: paused when the error replaced it,
    /// let go otherwise, so that an answer is never held with nothing to end it.
    fn send_shaped_error(&mut self, final_body: &[u8]) -> Action {
        let Some(shaped) = self.shaped_error(final_body) else {
            return Action::Continue;
        };
        if let Some(finished) = &mut self.finished {
            finished.status = u16::try_from(shaped.status).unwrap_or(finished.status);
        }
        // Envoy sends the local reply once this callback returns; the record is
        // written now, with the final status, whether or not that reply comes back
        // through this filter (it is written once either way).
        self.write_record();
        match self.send_error(shaped.status, &shaped.body) {
            Ok(()) => Action::Pause,
            Err(status) => {
                warn!("#{} cannot send the final error ({status:?})", self.id);
                Action::Continue
            }
        }
    }

    /// Holds the failed final answer to quote its body, for `FINAL_BODY_WAIT_MS` at
    /// most: a body that stalls gets the error without the quote.
    fn wait_for_final_body(&mut self) -> Action {
        let Some(shaped) = self.shaped_error(&[]) else {
            return Action::Continue;
        };
        if let Some(finished) = &mut self.finished {
            finished.status = u16::try_from(shaped.status).unwrap_or(finished.status);
        }
        let at = self.host.now_ms().saturating_add(FINAL_BODY_WAIT_MS);
        let on_expiry = OnExpiry::Reply {
            status: shaped.status,
            body: self.api.error_body(shaped.status, &shaped.body),
        };
        let deadlines = &self.prepared.deadlines;
        deadlines.set(self.host.as_ref(), self.id, at, on_expiry);
        self.replacing_answer = true;
        Action::Pause
    }

    /// Writes the access record and counts the request in Envoy stats, once, for a
    /// request the gateway acted on. The attempts' records are read here, complete:
    /// each attempt wrote its own when its answer ended.
    fn write_record(&mut self) {
        if self.recorded {
            return;
        }
        let Some(start) = self.start else {
            return;
        };
        self.recorded = true;
        if cfg!(feature = "ablate-record") && cfg!(feature = "ablate-stats") {
            return;
        }
        let route = self.route_name().to_string();
        let mut records = match &self.plan {
            Some(_) => self.attempt_records().0,
            None => Vec::new(),
        };
        let now = self.host.now_ms();
        if let (true, Some(last)) = (self.answer_complete, records.last_mut()) {
            // The attempt role leaves a success's end to this role, which sees it too.
            last.end_ms = last.end_ms.or(Some(now.saturating_sub(last.start_ms)));
        }
        let mut outcome = match &self.finished {
            Some(finished) => finished.outcome,
            None if self.plan.is_some() => Outcome::Exhausted,
            None => Outcome::Passthrough,
        };
        if records.iter().any(|record| record.truncated) {
            outcome = Outcome::Truncated;
        }
        let requested = self.plan.as_ref().map(Plan::requested_model);
        let final_model = records.last().map(|record| record.model.as_str());
        let usage = find_usage(&self.usage_tail).unwrap_or_default();
        let client_chain_note = self.client_chain.as_ref().map(|chain| match chain {
            ClientChain::Used(_) => "used".to_string(),
            ClientChain::Ignored(why) => format!("ignored: {why}"),
        });
        let elapsed_ms = now.saturating_sub(start.started_ms);
        let record = AccessRecord {
            request_id: &self.request_id,
            route: &route,
            rule: self.prepared.config.rule_name(self.rule),
            requested_model: requested,
            final_model,
            outcome: outcome.name(),
            stream: self.plan.as_ref().is_some_and(|plan| plan.stream),
            budget_ms: self.plan.as_ref().and_then(|plan| plan.budget_ms),
            elapsed_ms,
            passthrough_reason: self.unprotected.map(Unprotected::message),
            client_chain: client_chain_note.as_deref(),
            attempts: records.iter().map(AttemptView::from).collect(),
            skipped: self
                .skipped
                .iter()
                .map(|skipped| SkippedView {
                    model: &skipped.key,
                    reason: &skipped.reason,
                })
                .collect(),
            usage,
        };
        if cfg!(feature = "ablate-record") {
            self.count_stats(&route, requested, &records, outcome, usage, elapsed_ms);
            return;
        }
        let record = if self.prepared.typed_record {
            record.to_struct()
        } else {
            record.to_json().into_bytes()
        };
        let properties = [
            (RECORD_PROPERTY, record),
            (
                FINAL_MODEL_PROPERTY,
                access::flat_value(final_model.unwrap_or_default()).into_bytes(),
            ),
            (ATTEMPTS_PROPERTY, records.len().to_string().into_bytes()),
            (OUTCOME_PROPERTY, outcome.name().as_bytes().to_vec()),
        ];
        for (name, value) in properties {
            if let Err(status) = self.host.set_property(name, &value) {
                warn!("#{} cannot write {name} ({status:?})", self.id);
            }
        }
        if !cfg!(feature = "ablate-stats") {
            self.count_stats(&route, requested, &records, outcome, usage, elapsed_ms);
        }
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
        let host = self.host.as_ref();
        let bounded = |model: &str| -> String {
            access::bounded_model(model, |m| prepared.known_models.contains(m)).to_string()
        };
        let requested = bounded(requested.unwrap_or_default());
        let name = access::stat_name;
        let outcome_tag = Some(("outcome", outcome.name()));
        let stat = name("requests_total", route, Some(&requested), outcome_tag);
        prepared.count(host, &stat, 1);
        let answering = self.answering.and(records.len().checked_sub(1));
        for (position, record) in records.iter().enumerate() {
            let class = Some(("class", record.class.as_deref().unwrap_or("no_answer")));
            let model = bounded(&record.model);
            prepared.count(host, &name("attempts_total", route, Some(&model), class), 1);
            if record.hedged {
                let result = if answering == Some(position) {
                    "won"
                } else {
                    "lost"
                };
                let stat = name(
                    "hedges_total",
                    route,
                    Some(&model),
                    Some(("result", result)),
                );
                prepared.count(host, &stat, 1);
            }
        }
        let fallbacks = records.len().saturating_sub(1) as u64;
        if fallbacks > 0 {
            let stat = name("fallbacks_total", route, Some(&requested), None);
            prepared.count(host, &stat, fallbacks);
        }
        for skipped in &self.skipped {
            let stat = name("skipped_total", route, Some(&bounded(&skipped.key)), None);
            prepared.count(host, &stat, 1);
        }
        if let Some(reason) = self.unprotected {
            let tag = Some(("reason", reason.tag()));
            prepared.count(host, &name("passthrough_total", route, None, tag), 1);
        }
        if outcome == Outcome::BudgetExceeded {
            prepared.count(host, &name("budget_exhausted_total", route, None, None), 1);
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
                prepared.count(host, &stat, count.unwrap_or(0));
            }
        }
        if self.plan.is_some() {
            let attempts = records.len() as u64;
            prepared.observe(
                host,
                &name("attempts_per_request", route, None, None),
                attempts,
            );
        }
        if access::is_success(outcome) {
            prepared.observe(
                host,
                &name("time_to_success_ms", route, None, None),
                elapsed_ms,
            );
        }
    }

    /// Keeps the last bytes of the answer for its `usage`.
    fn keep_usage_tail(&mut self, body_size: usize) {
        if body_size == 0 || cfg!(feature = "ablate-usage") {
            return;
        }
        let start = body_size.saturating_sub(USAGE_TAIL_BYTES);
        let len = body_size.saturating_sub(start);
        if let Some(chunk) = self.host.body(Body::Response, start, len) {
            self.usage_tail.extend_from_slice(&chunk);
            let excess = self.usage_tail.len().saturating_sub(USAGE_TAIL_BYTES);
            self.usage_tail.drain(..excess);
        }
    }

    /// Removes the client's headers to the filter, those present.
    fn remove_client_headers(&self, headers: &Headers) {
        for name in CLIENT_HEADERS {
            if headers.get(name).is_some() {
                if let Err(status) = self.host.set_request_header(name, None) {
                    warn!("#{} cannot remove {name} ({status:?})", self.id);
                }
            }
        }
    }

    pub fn request_headers(&mut self, end_of_stream: bool) -> Action {
        // One read for every header this role looks at.
        let headers = self.host.headers(Map::Request).unwrap_or_default();
        self.remove_client_headers(&headers);
        if end_of_stream {
            return Action::Continue;
        }
        let method = headers.text(":method").unwrap_or_default();
        let path = headers.text(":path").unwrap_or_default();
        self.select_rule(&path, &headers);
        let settings = self.settings();
        if !settings.acts_on(&method, &path) {
            return Action::Continue;
        }
        let declared_len = headers
            .get("content-length")
            .and_then(parse_number::<usize>);
        if declared_len.is_some_and(|len| len > settings.max_body_bytes) {
            return self.reject_too_large();
        }
        self.request_id = headers.text("x-request-id").unwrap_or_default();
        self.accept_encoding = headers.get("accept-encoding").is_some();
        self.api = Api::of_path(&path);
        self.path = path;
        self.start = Some(RequestStart {
            started_ms: self.host.now_ms(),
            client_deadline_ms: None,
        });
        if let Some(encoding) = headers.get("content-encoding") {
            if !encoding.eq_ignore_ascii_case(b"identity") {
                return self.pass_through(Unprotected::Compressed);
            }
        }
        let turned_off = headers.get(SWITCH_HEADER).is_some_and(client_turns_off);
        if turned_off {
            return self.pass_through(Unprotected::TurnedOffByClient);
        }
        self.client_chain = headers
            .get(CLIENT_CHAIN_HEADER)
            .map(|value| client_chain(self.settings(), value));
        let client_deadline_ms = headers
            .get(DEADLINE_HEADER)
            .and_then(parse_number::<u64>)
            .filter(|ms| *ms > 0);
        if let Some(start) = &mut self.start {
            start.client_deadline_ms = client_deadline_ms;
        }
        let Some(router) = self.prepared.routers.get(self.rule) else {
            return Action::Continue;
        };
        if let Some(hold) = router.hold {
            // Hold the headers: the router reads its control headers when it gets
            // them, and under this rule they depend on the body.
            debug!("#{} held until its body is read ({hold:?})", self.id);
            self.reading = Reading::Held;
            return Action::Pause;
        }
        // The router starts the first attempt now, with as many retries as the
        // rule's longest chain; the plan, made when the body has passed, says which
        // of them this request uses.
        let client_chain_len = match &self.client_chain {
            Some(ClientChain::Used(entries)) => Some(entries.len()),
            _ => None,
        };
        self.control_router(router.headers_before_body(client_chain_len, client_deadline_ms));
        if !cfg!(feature = "ablate-plan") {
            self.reading = Reading::Passing;
        }
        Action::Continue
    }

    pub fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.reading {
            Reading::Done => return Action::Continue,
            Reading::Held => {
                if body_size > self.settings().max_body_bytes {
                    return self.reject_too_large();
                }
                if !end_of_stream {
                    return Action::Pause;
                }
            }
            Reading::Passing => {
                // Without a hold `body_size` is this chunk's.
                if self.body.len().saturating_add(body_size) > self.settings().max_body_bytes {
                    return self.reject_too_large();
                }
                if body_size > 0 {
                    match self.host.body(Body::Request, 0, body_size) {
                        // Most bodies come in one chunk: it becomes the body as it is.
                        Some(chunk) if self.body.is_empty() => self.body = chunk,
                        Some(chunk) => self.body.extend_from_slice(&chunk),
                        None => {
                            warn!("#{} cannot read the body", self.id);
                            self.reading = Reading::Done;
                            self.body = Vec::new();
                            return self.pass_through(Unprotected::BodyUnreadable);
                        }
                    }
                }
                if !end_of_stream {
                    return Action::Continue;
                }
            }
        }
        self.plan(body_size)
    }

    pub fn request_trailers(&mut self) -> Action {
        if self.reading != Reading::Done {
            // Trailers on a JSON request are too rare to plan for; nothing is lost by
            // sending it on without fallbacks.
            self.reading = Reading::Done;
            self.body = Vec::new();
            return self.pass_through(Unprotected::Trailers);
        }
        Action::Continue
    }

    pub fn response_headers(&mut self, end_of_stream: bool) -> Action {
        self.answer_complete = end_of_stream;
        if self.plan.is_none() {
            if end_of_stream {
                self.write_record();
            }
            return Action::Continue;
        }
        let hedging = self.settings().budget.hedge_after_ms.is_some();
        if hedging {
            self.answering = self
                .host
                .header(Map::Response, ANSWERING_ATTEMPT_HEADER)
                .and_then(|number| parse_number::<u32>(&number))
                .filter(|number| (1..=MAX_ATTEMPTS).contains(number));
            if let Err(status) = self
                .host
                .set_response_header(ANSWERING_ATTEMPT_HEADER, None)
            {
                warn!(
                    "#{} cannot remove {ANSWERING_ATTEMPT_HEADER} ({status:?})",
                    self.id
                );
            }
        }
        let (records, budget_refused) = self.attempt_records();
        // Present only when the last attempt asked for a retry and the router could
        // not make it (a circuit breaker): the client must not see it.
        // Under hedging, also when it made the router wait for another attempt.
        let asked_for_retry = match (&self.plan, records.last()) {
            _ if hedging => true,
            (Some(plan), Some(last)) => last
                .class()
                .is_none_or(|class| plan.has_next(last.step(), class)),
            _ => true,
        };
        if asked_for_retry {
            if let Err(status) = self.host.set_response_header(RETRY_HEADER, None) {
                warn!("#{} cannot remove {RETRY_HEADER} ({status:?})", self.id);
            }
        }
        let status = self.host.response_status();
        // Envoy's own replies are failures: a success needs no look at their details.
        let details = if status < 400 {
            String::new()
        } else {
            self.host
                .property_text(&["response", "code_details"])
                .unwrap_or_default()
        };
        let source = Source::from_details(&details, budget_refused);
        let first_answered = self.first_attempt_answered(&records);
        let outcome = outcome(&records, first_answered, source, status);
        self.finished = Some(Finished { outcome, status });
        self.answered = Some((records.clone(), budget_refused));
        if matches!(outcome, Outcome::Exhausted | Outcome::BudgetExceeded) {
            debug!("#{} {}: replacing the answer", self.id, outcome.name());
            if end_of_stream {
                return self.send_shaped_error(&[]);
            }
            return self.wait_for_final_body();
        }
        if self.settings().response_headers {
            // Model names may hold any character; a header only visible ASCII.
            if let Some(model) = records
                .last()
                .map(|record| record.model.as_str())
                .filter(|m| m.bytes().all(|b| (0x20..0x7f).contains(&b)))
            {
                let _ = self
                    .host
                    .set_response_header("x-ai-fallback-model", Some(model));
            }
            let attempts = records.len().to_string();
            let _ = self
                .host
                .set_response_header("x-ai-fallback-attempts", Some(&attempts));
        }
        if end_of_stream {
            self.write_record();
        }
        Action::Continue
    }

    pub fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.answer_complete |= end_of_stream;
        if !self.replacing_answer {
            if self.plan.is_some() {
                self.keep_usage_tail(body_size);
            }
            if end_of_stream {
                self.write_record();
            }
            return Action::Continue;
        }
        if self.prepared.deadlines.expired(self.id) {
            // The deadline sent the error already.
            self.replacing_answer = false;
            return Action::Continue;
        }
        if !end_of_stream && body_size < ERROR_EXCERPT_READ_BYTES {
            return Action::Pause;
        }
        self.replacing_answer = false;
        self.prepared.deadlines.clear(self.host.as_ref(), self.id);
        let read = body_size.min(ERROR_EXCERPT_READ_BYTES);
        let final_body = self.host.body(Body::Response, 0, read).unwrap_or_default();
        self.send_shaped_error(&final_body)
    }

    /// A request whose answer never ended (the client went away) is recorded here.
    pub fn log(&mut self) {
        self.prepared.deadlines.clear(self.host.as_ref(), self.id);
        self.write_record();
    }
}

/// Moves the record of attempt `answering` (numbered from 1) to the end: the router
/// let it answer. The attempts still without an answer were cancelled for it.
fn put_answer_last(records: &mut Vec<AttemptRecord>, answering: u32) {
    let Some(position) = usize::try_from(answering)
        .ok()
        .and_then(|number| number.checked_sub(1))
        .filter(|position| *position < records.len())
    else {
        return;
    };
    let answer = records.remove(position);
    for record in records.iter_mut().filter(|record| record.class.is_none()) {
        record.class = Some(CANCELLED_CLASS.to_string());
    }
    records.push(answer);
}

/// The class of a hedged request's attempt that was still waiting for its answer
/// when another attempt's answer went to the client.
const CANCELLED_CLASS: &str = "cancelled";

#[cfg(test)]
mod tests {
    use super::*;

    fn record(model: &str, class: Option<&str>) -> AttemptRecord {
        AttemptRecord {
            model: model.into(),
            class: class.map(str::to_string),
            ..AttemptRecord::default()
        }
    }

    fn listed(records: &[AttemptRecord]) -> Vec<(&str, Option<&str>)> {
        records
            .iter()
            .map(|r| (r.model.as_str(), r.class.as_deref()))
            .collect()
    }

    #[test]
    fn the_answering_attempt_goes_last_and_the_waiting_ones_are_cancelled() {
        let mut records = vec![
            record("first", Some("success")),
            record("second", None),
            record("third", Some("failure_status")),
        ];
        put_answer_last(&mut records, 1);
        assert_eq!(
            listed(&records),
            [
                ("second", Some("cancelled")),
                ("third", Some("failure_status")),
                ("first", Some("success"))
            ]
        );
        let mut unchanged = vec![record("first", None)];
        put_answer_last(&mut unchanged, 2);
        put_answer_last(&mut unchanged, 0);
        assert_eq!(listed(&unchanged), [("first", None)], "no such attempt");
    }
}
