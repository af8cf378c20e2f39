//! The attempt role: the router runs it once per upstream attempt, on a fresh copy of
//! the buffered request. It writes that attempt's model into the body, reads the
//! answer, and asks the router for the next attempt when another model may succeed.

use super::deadlines::{OnExpiry, TICK_MS};
use super::host::{parse_number, Body, Host, HostExt, Map};
use super::{health, Prepared};
use crate::body::{model_literal, rewritten_prefix};
use crate::classify::{
    classify_body, classify_headers, truncation_event, BodyKind, BodyVerdict, Class, HeaderVerdict,
    StreamEnd,
};
use crate::cooldown::{health_key, retry_after_ms};
use crate::outcome::provider_message;
use crate::plan::{
    attempt_property, AttemptRecord, Lane, Plan, Step, ANSWERING_ATTEMPT_HEADER,
    ATTEMPT_COUNT_HEADER, PLAN_PROPERTY, RETRY_HEADER,
};
use log::{debug, warn};
use proxy_wasm::types::Action;
use std::ops::Range;
use std::rc::Rc;

pub struct Attempt {
    id: u32,
    prepared: Rc<Prepared>,
    host: Rc<dyn Host>,
    /// This attempt's place in a planned request; `None` passes everything through.
    planned: Option<Planned>,
    /// The model value to replace in this attempt's body, once enough of it arrived.
    pending_rewrite: Option<Rewrite>,
    /// When this first attempt started, while it waits for the plan.
    first_without_plan: Option<u64>,
    /// This attempt ended itself with no model left to send (hedging only): its
    /// own reply passes untouched.
    replied_beyond_chain: bool,
    /// The answer came with the router's retry header: the upstream's, never the
    /// router's to act on.
    upstream_asked_for_retry: bool,
    response: Response,
}

/// What an attempt does, from the attempts before it.
enum Next {
    Step {
        step: Step,
        hedged: bool,
    },
    /// The router started an attempt after the chain's end: a hedging rule's last
    /// model hedged or failed while an earlier attempt may still answer.
    BeyondChain,
}

struct Planned {
    plan: Plan,
    attempt: u32,
    /// What this attempt did so far. This role is the record's only writer: it
    /// writes it as the attempt starts (a reset or timeout leaves it so), when the
    /// answer is classified, and when the answer ends.
    record: AttemptRecord,
}

/// How much earlier than `hedge_after_ms` after an attempt's start (as this role saw
/// it) the router's per-try timeout can start the next one: libevent counts Envoy's
/// timers from the time its loop woke at, which under load is a few milliseconds
/// behind (seen in CI: a hedge recorded as an ordinary retry).
const HEDGE_TIMER_EARLY_MS: u64 = 5;

/// How long before the router's per-try timeout a held answer goes on: a few ticks.
const RELEASE_MARGIN_MS: u64 = 3 * TICK_MS;

/// The class of an answer that went on before it could be read: passed on as it
/// came, never retried.
fn uninspected(status: u16) -> Class {
    if (200..300).contains(&status) {
        Class::Success
    } else {
        Class::Final
    }
}

/// The longest `Retry-After` value kept: a date is 29 bytes.
const RETRY_AFTER_MAX: usize = 64;

struct Rewrite {
    model_span: Range<usize>,
    literal: String,
}

enum Response {
    /// Nothing to look at (yet, or any more).
    Idle,
    /// Headers are held until the body tells what the answer is.
    Inspecting { kind: BodyKind, status: u16 },
    /// A successful stream: watched for an end that comes too early.
    Streaming(StreamEnd),
}

impl Attempt {
    pub fn new(id: u32, prepared: Rc<Prepared>, host: Rc<dyn Host>) -> Attempt {
        Attempt {
            id,
            prepared,
            host,
            planned: None,
            pending_rewrite: None,
            first_without_plan: None,
            replied_beyond_chain: false,
            upstream_asked_for_retry: false,
            response: Response::Idle,
        }
    }

    /// The step this attempt takes: after the previous attempt's, as its answer says.
    /// Only the latest attempt can make the router start another (a hedged one
    /// never asks twice), so the previous one is the one this attempt follows.
    fn step_for(&self, plan: &Plan, attempt: u32, now: u64) -> Next {
        if attempt <= 1 {
            return Next::Step {
                step: Step::FIRST,
                hedged: false,
            };
        }
        let hedge_after = self.hedge_after_ms(plan);
        let previous = self
            .host
            .property(&[&attempt_property(attempt - 1)])
            .and_then(|bytes| AttemptRecord::decode(&bytes));
        let Some(record) = previous else {
            if hedge_after.is_some() {
                // The previous attempt was past the chain too.
                return Next::BeyondChain;
            }
            // Without a record (it could not be written) go on down the chain.
            let index = usize::try_from(attempt - 1)
                .unwrap_or(usize::MAX)
                .min(plan.chain.len().saturating_sub(1));
            return Next::Step {
                step: Step {
                    lane: Lane::Main,
                    index,
                },
                hedged: false,
            };
        };
        let unanswered = record.class.is_none();
        // The router's per-try timeout starts no earlier than the previous attempt:
        // an attempt that follows an unanswered one sooner followed its reset.
        let hedged = unanswered
            && hedge_after.is_some_and(|after| {
                now.saturating_sub(record.start_ms) >= after.saturating_sub(HEDGE_TIMER_EARLY_MS)
            });
        if hedge_after.is_some() {
            let has_next = match record.class() {
                Some(class) => plan.has_next(record.step(), class),
                None => plan.has_next(record.step(), Class::FailureStatus),
            };
            if !has_next {
                return Next::BeyondChain;
            }
        }
        if unanswered && !hedged {
            // No answer came: a timeout or a reset, which the router retried.
            self.note_health(plan, &record, Class::FailureStatus, "no_answer");
        }
        Next::Step {
            step: plan.next_step(record.step(), record.class()),
            hedged,
        }
    }

    fn hedge_after_ms(&self, plan: &Plan) -> Option<u64> {
        self.prepared
            .config
            .settings(plan.rule)
            .budget
            .hedge_after_ms
    }

    /// Whether an attempt before `attempt` has not answered yet, as far as its
    /// record tells (a reset one looks the same: it is waited for in vain only
    /// until the router's retries run out).
    fn earlier_unanswered(&self, attempt: u32) -> bool {
        (1..attempt).any(|earlier| {
            self.host
                .property(&[&attempt_property(earlier)])
                .and_then(|bytes| AttemptRecord::decode(&bytes))
                .is_some_and(|record| record.class.is_none() && !record.refused_for_budget)
        })
    }

    /// Ends an attempt that has no model to send. While an earlier attempt may
    /// still answer, the reply asks for a retry the router cannot make, which makes
    /// it wait for that attempt; otherwise it reaches the gateway, which answers
    /// for the exhausted chain.
    fn answer_beyond_chain(&mut self, attempt: u32) -> Action {
        self.replied_beyond_chain = true;
        let wait = self.earlier_unanswered(attempt);
        debug!(
            "#{} attempt {attempt} is past the chain (waiting for an earlier one: {wait})",
            self.id
        );
        let body = crate::reply::openai_error(
            "no model of the chain is left to try",
            "upstream_error",
            "fallbacks_exhausted",
        );
        let mut headers = vec![("content-type", "application/json")];
        if wait {
            headers.push((RETRY_HEADER, "wait"));
        }
        if let Err(status) = self.host.send_response(502, &headers, body.as_bytes()) {
            warn!("#{} cannot end the attempt ({status:?})", self.id);
            return Action::Continue;
        }
        Action::Pause
    }

    fn write_record(&self) {
        let Some(planned) = &self.planned else {
            return;
        };
        let name = attempt_property(planned.attempt);
        let record = planned.record.encode();
        if let Err(status) = self.host.set_property(&name, record.as_bytes()) {
            warn!(
                "#{} cannot record attempt {} ({status:?})",
                self.id, planned.attempt
            );
        }
    }

    /// For a chain that names providers: the step whose provider is the cluster the
    /// route sends this attempt to (the route's priority groups follow the chain, but
    /// a skipped model can shift the chain), its provider, and the path it expects.
    /// Without providers, the step as it is.
    fn provider_step(&self, plan: &Plan, step: Step) -> (Step, Option<String>, Option<String>) {
        let Some(original_path) = &plan.path else {
            return (step, None, None);
        };
        let settings = self.prepared.config.settings(plan.rule);
        let cluster_of = |step: Step| {
            plan.provider(step)
                .and_then(|name| settings.providers.get(name))
                .map(|provider| provider.cluster.as_str())
        };
        let cluster = self.host.property_text(&["xds", "cluster_name"]);
        let aligned = match (cluster.as_deref(), cluster_of(step)) {
            (Some(cluster), Some(expected)) if cluster != expected => {
                let chain_len = plan.chain_of(step).0.len();
                let later = (step.index..chain_len)
                    .map(|index| Step { index, ..step })
                    .find(|candidate| cluster_of(*candidate) == Some(cluster));
                if later.is_none() {
                    warn!(
                        "#{} attempt goes to cluster {cluster}, but the chain expects {expected}: \
                         the route's priority groups and the chain disagree",
                        self.id
                    );
                }
                later.unwrap_or(step)
            }
            _ => step,
        };
        let provider = plan.provider(aligned);
        let base_path = provider
            .and_then(|name| settings.providers.get(name))
            .and_then(|provider| provider.base_path.as_deref());
        let path = match base_path {
            Some(base) => {
                let rest = original_path.strip_prefix("/v1").unwrap_or(original_path);
                format!("{base}{rest}")
            }
            None => original_path.clone(),
        };
        (aligned, provider.map(str::to_string), Some(path))
    }

    /// Tells the shared model health about an attempt's answer (when cooldowns are
    /// on). Only models the configuration names have a health: a name a client made
    /// up must not take shared memory.
    fn note_health(&self, plan: &Plan, record: &AttemptRecord, class: Class, reason: &str) {
        let cooldown = &self.prepared.config.settings(plan.rule).cooldown;
        if cooldown.failures == 0 || !self.prepared.known_models.contains(&record.model) {
            return;
        }
        let key = health_key(&record.model, record.provider.as_deref());
        let now = self.host.now_ms();
        let host = self.host.as_ref();
        match class {
            Class::Success => health::record_success(host, &self.prepared, &key, now),
            // A too long or blocked prompt, a refused key, a client error: nothing
            // about the model.
            _ if !class.is_model_failure() => {}
            _ => {
                let retry_after = record.retry_after.as_deref().and_then(retry_after_ms);
                health::record_failure(
                    host,
                    &self.prepared,
                    cooldown,
                    &key,
                    now,
                    retry_after,
                    reason,
                );
            }
        }
    }

    /// A fallback attempt that goes to a model whose cooldown ended probes it: the
    /// claim keeps other requests off it until this one's answer tells.
    fn claim_probe(&self) {
        let Some(planned) = &self.planned else {
            return;
        };
        let cooldown = &self.prepared.config.settings(planned.plan.rule).cooldown;
        let record = &planned.record;
        if cooldown.failures > 0 && self.prepared.known_models.contains(&record.model) {
            let key = health_key(&record.model, record.provider.as_deref());
            // Sent either way: a probe another request claimed meanwhile runs twice.
            let _ = health::claim_probe(self.host.as_ref(), &key, record.start_ms);
        }
    }

    /// Records the answer and, when another model may succeed, marks it for the
    /// router to retry. The last model's answer goes to the client as it came.
    fn conclude(&mut self, class: Class, excerpt: Option<String>) {
        let mut hedging = false;
        if let Some(planned) = &self.planned {
            self.note_health(&planned.plan, &planned.record, class, class.name());
            hedging = self.hedge_after_ms(&planned.plan).is_some();
        }
        let Some(planned) = &mut self.planned else {
            return;
        };
        planned.record.class = Some(class.name().to_string());
        planned.record.error_excerpt = excerpt;
        planned.record.cluster = self.host.property_text(&["xds", "cluster_name"]);
        planned.record.host = self.host.property_text(&["upstream", "address"]);
        let attempt = planned.attempt;
        if hedging {
            let number = attempt.to_string();
            if let Err(status) = self
                .host
                .set_response_header(ANSWERING_ATTEMPT_HEADER, Some(&number))
            {
                warn!("#{} cannot mark the answer ({status:?})", self.id);
            }
        }
        let has_next = planned.plan.has_next(planned.record.step(), class);
        // A failure with no model after it must not end a request another attempt
        // may still answer: asking for a retry the router cannot make (or that finds
        // the chain's end) makes the router wait for that attempt.
        let wait_for_earlier =
            !has_next && hedging && class.is_retryable() && self.earlier_unanswered(attempt);
        let Some(planned) = &mut self.planned else {
            return;
        };
        if has_next || wait_for_earlier {
            debug!(
                "#{} attempt {} answered {:?} ({}): next model",
                self.id,
                planned.attempt,
                planned.record.status,
                class.name()
            );
            if let Err(status) = self
                .host
                .set_response_header(RETRY_HEADER, Some(class.name()))
            {
                warn!("#{} cannot ask for a retry ({status:?})", self.id);
            }
        } else if self.upstream_asked_for_retry {
            // An upstream that sends the header itself must not make the router retry.
            if let Err(status) = self.host.set_response_header(RETRY_HEADER, None) {
                warn!("#{} cannot remove {RETRY_HEADER} ({status:?})", self.id);
            }
        }
        let watch_stream = class == Class::Success
            && planned.plan.stream
            && self
                .prepared
                .config
                .settings(planned.plan.rule)
                .classes
                .stream_errors;
        self.response = if watch_stream {
            // An error event may be appended at its end: a declared length would
            // cut it off (Envoy frames the stream itself without one).
            if let Err(status) = self.host.set_response_header("content-length", None) {
                warn!("#{} cannot remove content-length ({status:?})", self.id);
            }
            Response::Streaming(StreamEnd::default())
        } else {
            Response::Idle
        };
        self.write_record();
    }

    /// Ends the request at once: too little of the budget is left for an attempt.
    fn refuse_for_budget(&mut self, remaining_ms: u64) -> Action {
        debug!("#{} {remaining_ms} ms left: no further attempt", self.id);
        if let Some(planned) = &mut self.planned {
            planned.record.refused_for_budget = true;
        }
        self.write_record();
        // The gateway replaces this with the full error; it is a fallback only.
        let body = crate::reply::openai_error(
            "the request's time budget ran out",
            "timeout",
            "budget_exceeded",
        );
        if let Err(status) = self.host.send_json(504, &body) {
            warn!("#{} cannot end the request ({status:?})", self.id);
            return Action::Continue;
        }
        Action::Pause
    }

    fn watch_stream(&mut self, chunk_size: usize, end_of_stream: bool) {
        let Response::Streaming(end) = &mut self.response else {
            return;
        };
        if !end.seen && chunk_size > 0 {
            if let Some(chunk) = self.host.body(Body::Response, 0, chunk_size) {
                end.feed(&chunk);
            }
        }
        if end_of_stream {
            end.finish();
        }
        if end_of_stream && !end.seen {
            // The upstream ended the stream cleanly but before its end marker: say so
            // in the stream rather than let it look complete.
            debug!("#{} stream ended early: appending an error event", self.id);
            let event = truncation_event();
            if let Err(status) = self
                .host
                .set_body(Body::Response, chunk_size, 0, event.as_bytes())
            {
                warn!(
                    "#{} cannot end the stream with an error ({status:?})",
                    self.id
                );
            }
            if let Some(planned) = &mut self.planned {
                planned.record.truncated = true;
            }
        }
        if end_of_stream {
            self.response = Response::Idle;
        }
    }

    /// The answer ended. A success's end is the gateway's to note (it sees the
    /// same end): its record is written again only when the stream was cut short.
    fn answer_ended(&mut self) {
        let Some(planned) = &mut self.planned else {
            return;
        };
        let success = planned.record.class.as_deref() == Some(Class::Success.name());
        if !success || planned.record.truncated {
            planned.record.end_ms =
                Some(self.host.now_ms().saturating_sub(planned.record.start_ms));
            self.write_record();
        }
    }

    pub fn request_headers(&mut self, end_of_stream: bool) -> Action {
        // Without `include_request_attempt_count` on the virtual host the header is
        // missing; Envoy's own attempt count is the fallback, so that a forgotten
        // setting does not resend the first model on every retry.
        let attempt = self
            .host
            .header(Map::Request, ATTEMPT_COUNT_HEADER)
            .and_then(|count| parse_number::<u32>(&count))
            .or_else(|| {
                self.host
                    .property_u64(&["upstream", "request_attempt_count"])
            })
            .unwrap_or(1);
        // The router removed the control headers it read, the gateway the client's;
        // this one the router adds to each attempt. Removing is idempotent, which
        // matters: attempts share one header map.
        if let Err(status) = self.host.set_request_header(ATTEMPT_COUNT_HEADER, None) {
            warn!(
                "#{} cannot remove {ATTEMPT_COUNT_HEADER} ({status:?})",
                self.id
            );
        }
        let now = self.host.now_ms();
        // Only a held request can have its plan before its first attempt.
        let plan = match attempt {
            1 if !self.prepared.holds_some => None,
            _ => self.read_plan(),
        };
        let Some(plan) = plan else {
            if attempt == 1 {
                // The gateway sent the request on before its body: the plan comes
                // with the body's end.
                self.first_without_plan = Some(now);
            }
            return Action::Continue;
        };
        self.start(plan, attempt, now, !end_of_stream)
    }

    fn read_plan(&self) -> Option<Plan> {
        self.host
            .property(&[PLAN_PROPERTY])
            .and_then(|bytes| Plan::decode(&bytes))
    }

    /// The first attempt of a request sent on before its body was read takes up the
    /// plan the gateway made meanwhile; it sends the body as the client wrote it.
    fn take_up_plan(&mut self) -> Action {
        let Some(started_ms) = self.first_without_plan.take() else {
            return Action::Continue;
        };
        match self.read_plan() {
            Some(plan) => self.start(plan, 1, started_ms, false),
            None => Action::Continue,
        }
    }

    /// Sets this attempt up under `plan`: its model, and its record as it starts.
    /// `body_to_come`: the request headers are still open and a body follows, so the
    /// model can be rewritten.
    fn start(&mut self, plan: Plan, attempt: u32, now: u64, body_to_come: bool) -> Action {
        let (step, hedged) = match self.step_for(&plan, attempt, now) {
            Next::Step { step, hedged } => (step, hedged),
            Next::BeyondChain => return self.answer_beyond_chain(attempt),
        };
        let (step, provider, path) = self.provider_step(&plan, step);
        if let (Some(path), true) = (path, body_to_come) {
            // Each provider takes its own key, injected by Envoy on its cluster: the
            // client's never goes to a provider it was not meant for.
            for (name, value) in [(":path", Some(path.as_str())), ("authorization", None)] {
                if let Err(status) = self.host.set_request_header(name, value) {
                    warn!("#{} cannot set {name} ({status:?})", self.id);
                }
            }
        }
        let model = plan.model(step).to_string();
        let literal = plan.rewrites(step).then(|| model_literal(&model));
        let record = AttemptRecord {
            model,
            provider,
            lane: step.lane,
            index: step.index,
            start_ms: now,
            hedged,
            ..AttemptRecord::default()
        };
        let min_attempt_ms = self
            .prepared
            .config
            .settings(plan.rule)
            .budget
            .min_attempt_ms;
        let too_late = plan.remaining_ms(now).filter(|ms| *ms < min_attempt_ms);
        let model_span = plan.model_span.clone();
        let rewritten_len = literal.as_deref().map(|l| plan.rewritten_len(l));
        self.planned = Some(Planned {
            plan,
            attempt,
            record,
        });
        if let Some(remaining) = too_late {
            return self.refuse_for_budget(remaining);
        }
        if attempt > 1 {
            self.claim_probe();
        }
        if let (Some(literal), Some(length), true) = (literal, rewritten_len, body_to_come) {
            // Computed from the original length, not the header, which an earlier
            // attempt may already have changed.
            match self
                .host
                .set_request_header("content-length", Some(&length.to_string()))
            {
                Ok(()) => {
                    debug!("#{} attempt {attempt} sends model {literal}", self.id);
                    self.pending_rewrite = Some(Rewrite {
                        model_span,
                        literal,
                    });
                }
                Err(status) => warn!(
                    "#{} cannot set content-length ({status:?}); not rewriting",
                    self.id
                ),
            }
        }
        self.write_record();
        Action::Continue
    }

    pub fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream && self.first_without_plan.is_some() {
            return self.take_up_plan();
        }
        let Some(rewrite) = &self.pending_rewrite else {
            return Action::Continue;
        };
        if body_size < rewrite.model_span.end && !end_of_stream {
            return Action::Pause;
        }
        let Some(Rewrite {
            model_span,
            literal,
        }) = self.pending_rewrite.take()
        else {
            return Action::Continue;
        };
        let before_model = self.host.body(Body::Request, 0, model_span.start);
        let current_model = self
            .host
            .body(Body::Request, model_span.start, model_span.len());
        match (before_model, current_model) {
            (Some(before), Some(current)) if current.first() == Some(&b'"') => {
                let prefix = rewritten_prefix(&before, &literal);
                let replaced = self
                    .host
                    .set_body(Body::Request, 0, model_span.end, &prefix);
                if let Err(status) = replaced {
                    warn!("#{} cannot rewrite the body ({status:?})", self.id);
                }
            }
            _ => warn!(
                "#{} body does not match the plan; sent without rewrite",
                self.id
            ),
        }
        Action::Continue
    }

    pub fn response_headers(&mut self, end_of_stream: bool) -> Action {
        if self.replied_beyond_chain {
            return Action::Continue;
        }
        if self.first_without_plan.is_some() {
            // An answer before the request's end.
            if self.take_up_plan() == Action::Pause {
                return Action::Pause;
            }
        }
        let Some(planned) = &mut self.planned else {
            // The router may have been told to retry on the header before the body
            // showed the request unplanned: an upstream must not trigger a retry.
            if let Err(status) = self.host.set_response_header(RETRY_HEADER, None) {
                warn!("#{} cannot remove {RETRY_HEADER} ({status:?})", self.id);
            }
            return Action::Continue;
        };
        // One read for every header this role looks at.
        let headers = self.host.headers(Map::Response).unwrap_or_default();
        self.upstream_asked_for_retry = headers.get(RETRY_HEADER).is_some();
        let status = headers.status();
        let now = self.host.now_ms();
        let record = &mut planned.record;
        record.status = Some(status);
        record.first_byte_ms = Some(now.saturating_sub(record.start_ms));
        record.retry_after = headers
            .get("retry-after")
            .filter(|value| value.len() <= RETRY_AFTER_MAX)
            .and_then(|value| String::from_utf8(value.to_vec()).ok());
        let content_type = headers.text("content-type").unwrap_or_default();
        let facts = planned.plan.facts();
        let classes = &self.prepared.config.settings(planned.plan.rule).classes;
        match classify_headers(classes, facts, status, &content_type) {
            HeaderVerdict::Decided(class) => {
                self.conclude(class, None);
                if end_of_stream {
                    self.answer_ended();
                }
                Action::Continue
            }
            HeaderVerdict::Inspect(kind) if end_of_stream => {
                let class = match classify_body(classes, facts, status, kind, &[], true) {
                    BodyVerdict::Decided(class) => class,
                    BodyVerdict::NeedMore => Class::Success,
                };
                self.conclude(class, None);
                self.answer_ended();
                Action::Continue
            }
            HeaderVerdict::Inspect(_) if cfg!(feature = "ablate-inspect") => {
                self.conclude(uninspected(status), None);
                Action::Continue
            }
            HeaderVerdict::Inspect(kind) => {
                // Envoy's per-try timeout runs until the headers go on: they must go
                // before it fires, read or not, or a good answer would be thrown away.
                match self.release_at() {
                    Some(at) if at <= now => {
                        self.conclude(uninspected(status), None);
                        return Action::Continue;
                    }
                    Some(at) => {
                        let deadlines = &self.prepared.deadlines;
                        deadlines.set(self.host.as_ref(), self.id, at, OnExpiry::Release);
                    }
                    None => {}
                }
                self.response = Response::Inspecting { kind, status };
                Action::Pause
            }
        }
    }

    /// When a held answer must go on: shortly before the router's per-try timeout.
    fn release_at(&self) -> Option<u64> {
        let planned = self.planned.as_ref()?;
        if self.hedge_after_ms(&planned.plan).is_some() {
            // There the per-try timeout starts the next model beside this attempt,
            // which may go on reading its answer.
            return None;
        }
        let router = self.prepared.routers.get(planned.plan.rule)?;
        let limit = router.per_try_timeout_ms(&planned.plan)?;
        let at = planned.record.start_ms.saturating_add(limit);
        Some(at.saturating_sub(RELEASE_MARGIN_MS))
    }

    pub fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Response::Inspecting { status, .. } = self.response {
            if self.prepared.deadlines.expired(self.id) {
                // The tick let the headers go before the per-try timeout.
                self.prepared.deadlines.clear(self.host.as_ref(), self.id);
                self.conclude(uninspected(status), None);
            }
        }
        if let Response::Inspecting { kind, status } = self.response {
            let Some(planned) = &self.planned else {
                return Action::Continue;
            };
            let classes = &self.prepared.config.settings(planned.plan.rule).classes;
            let read = body_size.min(classes.inspect_max_bytes);
            let prefix = self.host.body(Body::Response, 0, read).unwrap_or_default();
            // Past the limit the answer is judged on what was read, and then passes on.
            let complete = end_of_stream || body_size >= classes.inspect_max_bytes;
            let facts = planned.plan.facts();
            match classify_body(classes, facts, status, kind, &prefix, complete) {
                BodyVerdict::NeedMore => return Action::Pause,
                BodyVerdict::Decided(class) => {
                    self.prepared.deadlines.clear(self.host.as_ref(), self.id);
                    let excerpt = class
                        .is_retryable()
                        .then(|| provider_message(&prefix))
                        .flatten();
                    self.conclude(class, excerpt);
                }
            }
        }
        // The held part of a stream counts for its end marker too.
        self.watch_stream(body_size, end_of_stream);
        if end_of_stream {
            self.answer_ended();
        }
        Action::Continue
    }

    /// The stream is gone: a hold it had no longer waits.
    pub fn log(&mut self) {
        self.prepared.deadlines.clear(self.host.as_ref(), self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Role};
    use crate::filter::fake::FakeHost;
    use crate::plan::{decide, BodyDecision, RequestStart};

    const STARTED_MS: u64 = 1_000_000;

    /// The second attempt, as it follows a first one that started at `STARTED_MS`
    /// and has no answer yet, `after_ms` later.
    fn second_attempt_after(after_ms: u64) -> Next {
        let config = Config::parse(br#"{"chains": {"a": ["b"]}, "hedge_after_ms": 300}"#).unwrap();
        let prepared = Rc::new(Prepared::new(config, Role::Attempt));
        let host = Rc::new(FakeHost::default());
        let start = RequestStart {
            started_ms: STARTED_MS,
            client_deadline_ms: None,
        };
        let body = br#"{"model":"a","messages":[]}"#;
        let settings = prepared.config.settings(0);
        let path = "/v1/chat/completions";
        let plan = match decide(settings, 0, start, path, body, None, &mut |_, _| Ok(())) {
            BodyDecision::Fallback(plan, _) => *plan,
            other => panic!("expected a plan, got {other:?}"),
        };
        let first = AttemptRecord {
            model: "a".into(),
            start_ms: STARTED_MS,
            ..AttemptRecord::default()
        };
        host.state
            .borrow_mut()
            .properties
            .insert(attempt_property(1), first.encode().into_bytes());
        let attempt = Attempt::new(2, prepared, host);
        attempt.step_for(&plan, 2, STARTED_MS + after_ms)
    }

    fn hedged(next: Next) -> Option<bool> {
        match next {
            Next::Step { hedged, .. } => Some(hedged),
            Next::BeyondChain => None,
        }
    }

    #[test]
    fn an_attempt_started_by_the_per_try_timer_a_little_early_is_a_hedge() {
        assert_eq!(hedged(second_attempt_after(300)), Some(true));
        // Envoy's timer counts from when its loop woke, before this role's clock.
        assert_eq!(hedged(second_attempt_after(297)), Some(true));
        // A retry after a reset, well before the hedge delay, is not one.
        assert_eq!(hedged(second_attempt_after(100)), Some(false));
    }
}
