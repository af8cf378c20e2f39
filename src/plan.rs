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
use crate::config::{ChainEntry, Settings};
use crate::cooldown::health_key;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;

/// The filter state name of the plan: a single path segment, visible to Envoy as
/// `wasm.ai_fallback.plan`.
pub const PLAN_PROPERTY: &str = "ai_fallback.plan";

/// The filter state name of attempt `attempt`'s record.
pub fn attempt_property(attempt: u32) -> String {
    format!("ai_fallback.attempt.{attempt}")
}

/// The most attempts a request can make: a first one and a retry for each entry of
/// its three chains.
pub const MAX_ATTEMPTS: u32 = 3 * crate::config::MAX_CHAIN_LENGTH as u32 + 1;

/// The request header carrying the attempt number, added by the router when the
/// virtual host sets `include_request_attempt_count: true`.
pub const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";

/// The response header by which the attempt role asks the router for the next
/// attempt (`retry_on: retriable-headers`). The gateway removes it before the
/// client could see it.
pub const RETRY_HEADER: &str = "x-ai-fallback-retry";

/// Set by the attempt role of a hedging rule on each answer it read, with its
/// attempt number: the router lets one of several attempts answer, and the
/// gateway needs to know which. The gateway removes it.
pub const ANSWERING_ATTEMPT_HEADER: &str = "x-ai-fallback-attempt";

/// The request header by which a client shortens the request's time budget, in
/// milliseconds. It can shorten the configured budget, never lengthen it.
pub const DEADLINE_HEADER: &str = "x-ai-fallback-timeout-ms";

/// The request header by which a client turns fallbacks off for its request (`off`).
pub const SWITCH_HEADER: &str = "x-ai-fallback";

/// The request header by which a client names its request's fallback models, within
/// what `client_chains.allow` permits.
pub const CLIENT_CHAIN_HEADER: &str = "x-ai-fallback-models";

/// The client's headers to the filter: the gateway reads them and removes them from
/// every request, acted on or not, so no provider sees them.
pub const CLIENT_HEADERS: [&str; 3] = [DEADLINE_HEADER, SWITCH_HEADER, CLIENT_CHAIN_HEADER];

/// Whether a client's `x-ai-fallback` header turns fallbacks off.
pub fn client_turns_off(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"off")
}

/// What became of a client's `x-ai-fallback-models`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientChain {
    /// It replaces the request's chain.
    Used(Vec<ChainEntry>),
    /// It was ignored, and why: the configured chain applies.
    Ignored(&'static str),
}

/// The chain a client names in `x-ai-fallback-models` (comma-separated models),
/// used only when every model is one `client_chains.allow` lists.
pub fn client_chain(settings: &Settings, header: &[u8]) -> ClientChain {
    let Some(allow) = &settings.client_chain_allow else {
        return ClientChain::Ignored("client chains are off (client_chains)");
    };
    let Ok(text) = std::str::from_utf8(header) else {
        return ClientChain::Ignored("not a comma-separated list of models");
    };
    let names: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() || names.len() > crate::config::MAX_CHAIN_LENGTH {
        return ClientChain::Ignored("not a comma-separated list of models");
    }
    let entries: Option<Vec<ChainEntry>> = names
        .iter()
        .map(|name| allow.iter().find(|entry| entry.model == *name).cloned())
        .collect();
    match entries {
        Some(entries) => ClientChain::Used(entries),
        None => ClientChain::Ignored("names a model client_chains.allow does not list"),
    }
}

/// Longer model names are not planned: no real model has one, and a name a client
/// sends is echoed in records, errors and headers.
pub const MAX_MODEL_NAME_BYTES: usize = 256;

const PLAN_VERSION: &str = "v6";

/// One request's fallback plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Length of the whole request body, to compute each attempt's content-length.
    pub body_len: usize,
    /// Where the `model` value lies in the body, quotes included.
    pub model_span: Range<usize>,
    /// The request asked for a streamed answer.
    pub stream: bool,
    /// The chain's models: the requested model at `requested_index`, the others in
    /// the order they are tried.
    pub chain: Vec<String>,
    /// The larger-context models, tried after a context-length answer.
    pub context_chain: Vec<String>,
    /// The models tried after a content-policy answer.
    pub content_chain: Vec<String>,
    /// Index of the rule whose settings apply (0: the top-level settings).
    pub rule: usize,
    /// When the request started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// The time budget after the client's deadline header, if any.
    pub budget_ms: Option<u64>,
    /// Where the requested model is in `chain`: 0, unless it is cooling down and
    /// went to the end, when the first attempt sends another model.
    pub requested_index: usize,
    /// The provider of each chain entry (`None`: the route's cluster decides).
    pub chain_providers: Vec<Option<String>>,
    /// The provider of each context chain entry.
    pub context_providers: Vec<Option<String>>,
    /// The provider of each content chain entry.
    pub content_providers: Vec<Option<String>>,
    /// The request's path, kept when an entry names a provider: each attempt writes
    /// its provider's path from it (attempts share one header map).
    pub path: Option<String>,
}

/// Which chain of a plan a step is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// The requested model and its fallbacks.
    #[default]
    Main,
    /// Larger-context models, after a context-length answer.
    Context,
    /// Models for prompts a content policy blocked.
    Content,
}

/// Which model an attempt sends: a position in one of the plan's chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub lane: Lane,
    pub index: usize,
}

impl Step {
    pub const FIRST: Step = Step {
        lane: Lane::Main,
        index: 0,
    };

    fn first_of(lane: Lane) -> Step {
        Step { lane, index: 0 }
    }
}

impl Plan {
    /// Plain text, one item per line: each model as a JSON string literal, which
    /// never holds a raw tab or newline.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{PLAN_VERSION} {} {} {} {} {} {} {} {} {} {} {}",
            self.body_len,
            self.model_span.start,
            self.model_span.end,
            self.stream as u8,
            self.chain.len(),
            self.context_chain.len(),
            self.rule,
            self.started_ms,
            self.budget_ms.unwrap_or(0),
            self.requested_index,
            self.path.as_deref().unwrap_or("-"),
        );
        let models = self.chain.iter().chain(&self.context_chain);
        let models = models.chain(&self.content_chain);
        let providers = self.chain_providers.iter().chain(&self.context_providers);
        let providers = providers.chain(&self.content_providers);
        for (model, provider) in models.zip(providers) {
            text.push('\n');
            if let Some(provider) = provider {
                text.push_str(provider);
                text.push('\t');
            }
            text.push_str(&body::model_literal(model));
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
        let mut number = || head.next()?.parse::<u64>().ok();
        let (body_len, start, end, stream, chain_len, context_len, rule) = (
            number()?,
            number()?,
            number()?,
            number()?,
            number()?,
            number()?,
            number()?,
        );
        let (started_ms, budget_ms) = (number()?, number()?);
        let requested_index = number()?;
        let path = head.next().filter(|p| *p != "-").map(str::to_string);
        let size = |n: u64| usize::try_from(n).ok();
        let (body_len, start, end, chain_len, context_len, rule, requested_index) = (
            size(body_len)?,
            size(start)?,
            size(end)?,
            size(chain_len)?,
            size(context_len)?,
            size(rule)?,
            size(requested_index)?,
        );
        let too_long = body_len > crate::config::MAX_BODY_BYTES_LIMIT;
        let requested_outside = requested_index >= chain_len;
        if start >= end || end > body_len || chain_len == 0 || too_long || requested_outside {
            return None;
        }
        let entries = lines
            .map(|line| {
                let (provider, literal) = match line.split_once('\t') {
                    Some((provider, literal)) => (Some(provider.to_string()), literal),
                    None => (None, line),
                };
                let model = serde_json::from_str::<String>(literal).ok()?;
                Some((model, provider))
            })
            .collect::<Option<Vec<_>>>()?;
        let (mut chain, mut chain_providers): (Vec<String>, Vec<Option<String>>) =
            entries.into_iter().unzip();
        if chain.len() < chain_len.checked_add(context_len)? {
            return None;
        }
        let mut context_chain = chain.split_off(chain_len);
        let mut context_providers = chain_providers.split_off(chain_len);
        let content_chain = context_chain.split_off(context_len);
        let content_providers = context_providers.split_off(context_len);
        Some(Plan {
            body_len,
            model_span: start..end,
            stream: stream == 1,
            chain,
            context_chain,
            content_chain,
            rule,
            started_ms,
            budget_ms: (budget_ms != 0).then_some(budget_ms),
            requested_index,
            chain_providers,
            context_providers,
            content_providers,
            path,
        })
    }

    /// Milliseconds left of the budget at `now_ms`; `None` without a budget.
    pub fn remaining_ms(&self, now_ms: u64) -> Option<u64> {
        let elapsed = now_ms.saturating_sub(self.started_ms);
        self.budget_ms.map(|budget| budget.saturating_sub(elapsed))
    }

    /// The provider a step's model is served by, if its entry names one.
    pub fn provider(&self, step: Step) -> Option<&str> {
        let (_, providers) = self.chain_of(step);
        providers
            .get(step.index)
            .or_else(|| providers.last())
            .and_then(|provider| provider.as_deref())
    }

    /// The most retries this plan can use.
    pub fn max_retries(&self) -> usize {
        self.chain.len().saturating_sub(1) + self.context_chain.len() + self.content_chain.len()
    }

    pub fn facts(&self) -> RequestFacts {
        RequestFacts {
            stream: self.stream,
            has_context_chain: !self.context_chain.is_empty(),
            has_content_chain: !self.content_chain.is_empty(),
        }
    }

    /// The chain a step is in: its models and their providers.
    pub fn chain_of(&self, step: Step) -> (&[String], &[Option<String>]) {
        match step.lane {
            Lane::Main => (&self.chain, &self.chain_providers),
            Lane::Context => (&self.context_chain, &self.context_providers),
            Lane::Content => (&self.content_chain, &self.content_providers),
        }
    }

    /// The chain an answer of `class` switches to from `lane`, if it does.
    fn lane_after(&self, lane: Lane, class: Option<Class>) -> Option<Lane> {
        let (to, chain) = match class? {
            Class::ContextLength => (Lane::Context, &self.context_chain),
            Class::ContentPolicy => (Lane::Content, &self.content_chain),
            _ => return None,
        };
        (lane != to && !chain.is_empty()).then_some(to)
    }

    /// The model a step sends.
    pub fn model(&self, step: Step) -> &str {
        let (chain, _) = self.chain_of(step);
        chain
            .get(step.index)
            .or_else(|| chain.last())
            .or_else(|| self.chain.first())
            .map_or("", String::as_str)
    }

    /// Whether a step's body needs its model rewritten: every step but a first one
    /// that sends the body as the client wrote it.
    pub fn rewrites(&self, step: Step) -> bool {
        step != Step::FIRST || self.requested_index != 0
    }

    /// The model the client asked for.
    pub fn requested_model(&self) -> &str {
        self.chain
            .get(self.requested_index)
            .or_else(|| self.chain.first())
            .map_or("", String::as_str)
    }

    /// The step after one whose answer was `class`. When the chain is used up (the
    /// router retried a reset or timeout of the last model), the last model repeats.
    pub fn next_step(&self, previous: Step, class: Option<Class>) -> Step {
        if let Some(lane) = self.lane_after(previous.lane, class) {
            return Step::first_of(lane);
        }
        let last = self.chain_of(previous).0.len().saturating_sub(1);
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
        if self.lane_after(step.lane, Some(class)).is_some() {
            return true;
        }
        let switches_lane = matches!(class, Class::ContextLength | Class::ContentPolicy);
        if switches_lane && step.lane == Lane::Main {
            // No chain for that kind of answer: the next model of this one would
            // fail the same way.
            return false;
        }
        let next = Step {
            index: step.index + 1,
            ..step
        };
        if next.index >= self.chain_of(step).0.len() {
            return false;
        }
        // A refused key or account: only another provider, with its own key, may
        // answer; never the same credentials again.
        class != Class::ProviderDenied
            || self
                .provider(next)
                .is_some_and(|next| Some(next) != self.provider(step))
    }

    /// The body length once the model value is replaced by the JSON `literal`.
    pub fn rewritten_len(&self, literal: &str) -> usize {
        (self.body_len - self.model_span.len()).saturating_add(literal.len())
    }
}

/// What one attempt did, as far as the next attempt and the access record care.
/// Kept as JSON in filter state; times are milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The model this attempt sent.
    pub model: String,
    /// The provider it went to, when its chain entry names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Its step: the chain, and the index there.
    #[serde(default, skip_serializing_if = "is_main")]
    pub lane: Lane,
    pub index: usize,
    /// When it started, since the Unix epoch.
    pub start_ms: u64,
    /// From its start to its answer's headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    /// From its start to its answer's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The answer's class name (see `classify::Class::name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The provider's `Retry-After`, as it came (bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A short, bounded excerpt of the provider's error message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_excerpt: Option<String>,
    /// The stream ended early after content began (an SSE error event was added).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Not started: too little of the budget was left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused_for_budget: bool,
    /// Started alongside an earlier attempt that had no answer yet (`hedge_after_ms`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hedged: bool,
}

impl AttemptRecord {
    pub fn step(&self) -> Step {
        Step {
            lane: self.lane,
            index: self.index,
        }
    }

    pub fn class(&self) -> Option<Class> {
        self.class.as_deref().and_then(Class::from_name)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<AttemptRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

fn is_main(lane: &Lane) -> bool {
    *lane == Lane::Main
}

/// Why a request on an acted-on path went on untouched, unprotected: a bounded set,
/// so that it can be a stat's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unprotected {
    NotAnObject,
    NotJson,
    DuplicateModel,
    NoModel,
    ModelNotAString,
    ModelNameTooLong,
    NoChain,
    Compressed,
    Trailers,
    TurnedOffByClient,
    BodyUnreadable,
    PlanNotStored,
}

impl Unprotected {
    /// The stat label (`reason`).
    pub fn tag(self) -> &'static str {
        match self {
            Unprotected::NotAnObject => "not_an_object",
            Unprotected::NotJson => "not_json",
            Unprotected::DuplicateModel => "duplicate_model",
            Unprotected::NoModel => "no_model",
            Unprotected::ModelNotAString => "model_not_a_string",
            Unprotected::ModelNameTooLong => "model_name_too_long",
            Unprotected::NoChain => "no_chain",
            Unprotected::Compressed => "compressed",
            Unprotected::Trailers => "trailers",
            Unprotected::TurnedOffByClient => "client_off",
            Unprotected::BodyUnreadable => "body_unreadable",
            Unprotected::PlanNotStored => "plan_not_stored",
        }
    }

    /// The access record's `passthrough_reason`.
    pub fn message(self) -> &'static str {
        match self {
            Unprotected::NotAnObject => "body is not a JSON object",
            Unprotected::NotJson => "body is not valid JSON",
            Unprotected::DuplicateModel => "body has two top-level model fields",
            Unprotected::NoModel => "body has no model",
            Unprotected::ModelNotAString => "model is not a string",
            Unprotected::ModelNameTooLong => "model name is longer than 256 bytes",
            Unprotected::NoChain => "model has no fallback chain",
            Unprotected::Compressed => "body is encoded (content-encoding)",
            Unprotected::Trailers => "request has trailers",
            Unprotected::TurnedOffByClient => "the client turned fallbacks off",
            Unprotected::BodyUnreadable => "the buffered body could not be read",
            Unprotected::PlanNotStored => "the plan could not be stored",
        }
    }
}

/// What the gateway does with a fully buffered request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyDecision {
    /// Send it on untouched, with no retries added.
    Passthrough(Unprotected),
    /// Drive the router through the plan's fallbacks.
    Fallback(Box<Plan>, Vec<Skipped>),
}

/// A model put at the end of the chain because it is cooling down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its health key (`model` or `model@provider`).
    pub key: String,
    /// Why it cools: the class of the failures that started it.
    pub reason: String,
}

/// Where a request stands before its body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestStart {
    pub started_ms: u64,
    /// The client's deadline header, in milliseconds, if it sent a valid one.
    pub client_deadline_ms: Option<u64>,
}

/// Whether a model (at a provider, if its entry names one) may be tried now, or
/// why not.
pub type Usable<'a> = dyn FnMut(&str, Option<&str>) -> Result<(), String> + 'a;

/// Decides what to do with a request body the gateway has buffered completely,
/// under the settings of rule `rule`. `usable` says whether a model (at a provider,
/// if its entry names one) may be tried now, or why not; models that may not go to the end of the chain, in
/// order: tried only when every other failed, and all in order when none may, never
/// failing a request the filter itself refused (none is skipped then).
pub fn decide(
    settings: &Settings,
    rule: usize,
    start: RequestStart,
    path: &str,
    body_bytes: &[u8],
    client_chain: Option<&[ChainEntry]>,
    usable: &mut Usable,
) -> BodyDecision {
    let top = match body::scan(body_bytes) {
        Ok(top) => top,
        Err(ScanError::NotAnObject) => return BodyDecision::Passthrough(Unprotected::NotAnObject),
        Err(ScanError::Malformed(_)) => return BodyDecision::Passthrough(Unprotected::NotJson),
        Err(ScanError::DuplicateModel) => {
            return BodyDecision::Passthrough(Unprotected::DuplicateModel)
        }
    };
    let Some(span) = top.model else {
        return BodyDecision::Passthrough(Unprotected::NoModel);
    };
    let Some(requested) = body::model_name(body_bytes, span.clone()) else {
        return BodyDecision::Passthrough(Unprotected::ModelNotAString);
    };
    if requested.len() > MAX_MODEL_NAME_BYTES {
        return BodyDecision::Passthrough(Unprotected::ModelNameTooLong);
    }
    let fallbacks = client_chain.unwrap_or_else(|| settings.chain_for(&requested));
    let context_chain = settings.context_chain_for(&requested);
    let content_chain = settings.content_chain_for(&requested);
    if fallbacks.is_empty() && context_chain.is_empty() && content_chain.is_empty() {
        return BodyDecision::Passthrough(Unprotected::NoChain);
    }
    let requested_entry = ChainEntry {
        model: requested.clone(),
        provider: None,
    };
    // The same model at another provider is a fallback of its own.
    let mut entries: Vec<&ChainEntry> = vec![&requested_entry];
    entries.extend(
        fallbacks
            .iter()
            .filter(|entry| entry.model != requested || entry.provider.is_some()),
    );
    // Cooling models go last rather than away: tried only when every healthy one
    // failed, and in order when all are cooling.
    let mut chosen: Vec<&ChainEntry> = Vec::with_capacity(entries.len());
    let mut cooling: Vec<&ChainEntry> = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        match usable(&entry.model, entry.provider.as_deref()) {
            Ok(()) => chosen.push(entry),
            Err(reason) => {
                cooling.push(entry);
                let key = health_key(&entry.model, entry.provider.as_deref());
                skipped.push(Skipped { key, reason });
            }
        }
    }
    if chosen.is_empty() {
        skipped.clear();
    }
    chosen.extend(cooling);
    let chain: Vec<String> = chosen.iter().map(|entry| entry.model.clone()).collect();
    let chain_providers: Vec<Option<String>> =
        chosen.iter().map(|entry| entry.provider.clone()).collect();
    let other_than_requested = |chain: &[ChainEntry]| -> (Vec<String>, Vec<Option<String>>) {
        chain
            .iter()
            .filter(|entry| entry.model != requested || entry.provider.is_some())
            .map(|entry| (entry.model.clone(), entry.provider.clone()))
            .unzip()
    };
    let (context_chain, context_providers) = other_than_requested(context_chain);
    let (content_chain, content_providers) = other_than_requested(content_chain);
    let uses_providers = chain_providers
        .iter()
        .chain(&context_providers)
        .chain(&content_providers)
        .any(Option::is_some);
    let budget_ms = effective_budget_ms(settings.budget.total_ms, start.client_deadline_ms);
    let plan = Plan {
        body_len: body_bytes.len(),
        model_span: span,
        stream: top.stream,
        requested_index: chosen
            .iter()
            .position(|entry| std::ptr::eq(*entry, &requested_entry))
            .unwrap_or(0),
        chain,
        context_chain,
        content_chain,
        chain_providers,
        context_providers,
        content_providers,
        path: uses_providers.then(|| path.to_string()),
        rule,
        started_ms: start.started_ms,
        budget_ms,
    };
    BodyDecision::Fallback(Box::new(plan), skipped)
}

/// The request's time budget: the configured one, shortened by the client's
/// deadline header; `None` when neither is set.
pub fn effective_budget_ms(configured: Option<u64>, client_deadline: Option<u64>) -> Option<u64> {
    match (configured, client_deadline) {
        (Some(budget), Some(deadline)) => Some(budget.min(deadline)),
        (budget, deadline) => budget.or(deadline),
    }
}

/// Why a rule's requests are held until their body is read: a router control header
/// or the first attempt depends on what the body says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `cooldown_failures`: the first attempt may have to send another model.
    Cooldowns,
    /// `budget_ms`: it limits a non-streamed request's route timeout, not a stream's.
    Budget,
    /// `first_byte_timeout_ms` differs from `attempt_timeout_ms`: the per-try limit
    /// depends on `stream`.
    StreamTimeouts,
    /// `providers`: the first attempt's path and key depend on the chain.
    Providers,
}

/// The router control header values for one settings block, computed once at
/// configure time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterControl {
    /// `x-envoy-retry-on`
    pub retry_on: String,
    /// The configured budget: only it sets the router's request timeout, which a
    /// client's deadline must never lengthen past the route's own.
    budget_ms: Option<u64>,
    /// Per-attempt limits: (non-streamed, streamed).
    attempt_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    /// `hedge_after_ms`: the per-try timeout then starts the next attempt alongside.
    pub hedge_after_ms: Option<u64>,
    /// The most retries a plan of these settings can use: from the longest main
    /// chain, and from the longest context and content-policy chains together. A
    /// request sent on before its body is read gets this many.
    main_retries_bound: usize,
    lane_retries_bound: usize,
    /// Why requests are held until their body is read; `None`: they never are.
    pub hold: Option<Hold>,
}

impl RouterControl {
    pub fn new(settings: &Settings) -> RouterControl {
        // The attempt role decides every retry on an answer (by status or body), so
        // the router retries on its header alone; resets and timeouts it sees itself.
        let mut retry_on = String::from("retriable-headers");
        if settings.fallback_on_reset {
            retry_on.push_str(",reset,connect-failure,refused-stream");
        }
        let first_byte_timeout_ms = settings
            .budget
            .first_byte_timeout_ms
            .or(settings.budget.attempt_timeout_ms);
        let longest = |chains: &BTreeMap<String, Vec<ChainEntry>>, default: &[ChainEntry]| {
            chains
                .values()
                .map(Vec::len)
                .fold(default.len(), usize::max)
        };
        let main_retries_bound = longest(&settings.chains, &settings.default_chain);
        let lane_retries_bound = longest(&settings.context_chains, &settings.default_context_chain)
            + longest(
                &settings.content_policy_chains,
                &settings.default_content_policy_chain,
            );
        let hold = if settings.cooldown.failures > 0 {
            Some(Hold::Cooldowns)
        } else if settings.budget.total_ms.is_some() {
            Some(Hold::Budget)
        } else if first_byte_timeout_ms != settings.budget.attempt_timeout_ms {
            Some(Hold::StreamTimeouts)
        } else if !settings.providers.is_empty() {
            Some(Hold::Providers)
        } else {
            None
        };
        RouterControl {
            retry_on,
            budget_ms: settings.budget.total_ms,
            attempt_timeout_ms: settings.budget.attempt_timeout_ms,
            first_byte_timeout_ms,
            hedge_after_ms: settings.budget.hedge_after_ms,
            main_retries_bound,
            lane_retries_bound,
            hold,
        }
    }

    /// The headers that make the router try the plan's models within its budget.
    pub fn headers(&self, plan: &Plan) -> Vec<(&'static str, String)> {
        self.control_headers(plan.max_retries(), plan.stream, plan.budget_ms)
    }

    /// The headers for a request sent on before its body is read (`hold` is `None`):
    /// as many retries as the longest chain (or the client's chain) can use; the
    /// attempt role asks for no more than the plan has.
    pub fn headers_before_body(
        &self,
        client_chain_len: Option<usize>,
        client_deadline_ms: Option<u64>,
    ) -> Vec<(&'static str, String)> {
        // A client's chain replaces the main one.
        let main = client_chain_len.unwrap_or(self.main_retries_bound);
        let max_retries = main + self.lane_retries_bound;
        let budget_ms = effective_budget_ms(self.budget_ms, client_deadline_ms);
        // Without a hold, `stream` changes no header: the per-try limits are equal
        // and no configured budget sets the request timeout.
        self.control_headers(max_retries, false, budget_ms)
    }

    fn control_headers(
        &self,
        max_retries: usize,
        stream: bool,
        budget_ms: Option<u64>,
    ) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("x-envoy-retry-on", self.retry_on.clone()),
            ("x-envoy-max-retries", max_retries.to_string()),
            ("x-envoy-retriable-header-names", RETRY_HEADER.to_string()),
        ];
        // Envoy's route timeout covers the whole response, a stream's too: a stream
        // keeps the route's, and its budget is checked as each attempt starts.
        let configured_budget = self.budget_ms.and(budget_ms);
        if let (Some(budget), false) = (configured_budget, stream) {
            headers.push(("x-envoy-upstream-rq-timeout-ms", budget.to_string()));
        }
        if let Some(limit) = self.per_try_limit_ms(stream, budget_ms) {
            headers.push(("x-envoy-upstream-rq-per-try-timeout-ms", limit.to_string()));
        }
        if self.hedge_after_ms.is_some() {
            // The route's own hedge policy is not needed: the router reads this.
            headers.push(("x-envoy-hedge-on-per-try-timeout", "true".to_string()));
        }
        headers
    }

    /// How long the router gives each attempt of the plan for its answer's headers.
    pub fn per_try_timeout_ms(&self, plan: &Plan) -> Option<u64> {
        self.per_try_limit_ms(plan.stream, plan.budget_ms)
    }

    fn per_try_limit_ms(&self, stream: bool, budget_ms: Option<u64>) -> Option<u64> {
        if let Some(after) = self.hedge_after_ms {
            return Some(budget_ms.map_or(after, |budget| after.min(budget)));
        }
        let per_attempt = if stream {
            self.first_byte_timeout_ms
        } else {
            self.attempt_timeout_ms
        };
        // A client's deadline alone limits each attempt, inside the route's timeout.
        match (per_attempt, budget_ms) {
            (Some(limit), Some(budget)) => Some(limit.min(budget)),
            (None, Some(budget)) if self.budget_ms.is_none() => Some(budget),
            (limit, _) => limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings() -> Settings {
        Config::parse(
            br#"{"chains":{"a":["b","c"],"x":["x","y"]},"context_chains":{"a":["big"],"k":["k2"]},
                 "budget_ms":5000,"attempt_timeout_ms":1500,"first_byte_timeout_ms":800}"#,
        )
        .unwrap()
        .defaults
    }

    const START: RequestStart = RequestStart {
        started_ms: 1_000_000,
        client_deadline_ms: None,
    };
    const RULE: usize = 2;

    fn decide_with(
        settings: &Settings,
        start: RequestStart,
        body: &[u8],
        usable: &mut Usable,
    ) -> (Plan, Vec<Skipped>) {
        match decide(
            settings,
            RULE,
            start,
            "/v1/chat/completions",
            body,
            None,
            usable,
        ) {
            BodyDecision::Fallback(plan, skipped) => (*plan, skipped),
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    fn plan_of(body: &str) -> Plan {
        decide_with(&settings(), START, body.as_bytes(), &mut |_, _| Ok(())).0
    }

    const MAIN_1: Step = Step {
        lane: Lane::Main,
        index: 1,
    };
    const CONTEXT_0: Step = Step {
        lane: Lane::Context,
        index: 0,
    };

    #[test]
    fn plan_round_trips() {
        let plan = plan_of(r#"{"stream":true,"model" : "a","messages":[]}"#);
        assert_eq!(plan.chain, ["a", "b", "c"]);
        assert_eq!(plan.context_chain, ["big"]);
        assert!(plan.stream);
        assert_eq!(plan.max_retries(), 3);
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan));
    }

    #[test]
    fn steps_follow_the_chain_then_repeat_the_last() {
        let plan = plan_of(r#"{"model":"a"}"#);
        assert!(!plan.rewrites(Step::FIRST));
        assert_eq!(plan.model(Step::FIRST), "a");
        let second = plan.next_step(Step::FIRST, Some(Class::FailureStatus));
        assert_eq!(second, MAIN_1);
        assert!(plan.rewrites(second));
        assert_eq!(plan.model(second), "b");
        let third = plan.next_step(second, Some(Class::NoCapacity));
        assert_eq!(plan.model(third), "c");
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
        assert_eq!(plan.model(step), "big");
        assert!(!plan.has_next(step, Class::FailureStatus));
        assert!(!plan.has_next(step, Class::ContextLength));
        assert!(!plan.has_next(Step::FIRST, Class::Final));
    }

    #[test]
    fn cooling_models_go_last() {
        let body = br#"{"model":"a"}"#;
        let mut skip_a = |model: &str, _: Option<&str>| match model {
            "a" => Err("failure_status".to_string()),
            _ => Ok(()),
        };
        let (plan, skipped) = decide_with(&settings(), START, body, &mut skip_a);
        assert_eq!(plan.chain, ["b", "c", "a"], "a goes last");
        assert_eq!(
            skipped,
            [Skipped {
                key: "a".into(),
                reason: "failure_status".into()
            }]
        );
        assert_eq!(plan.requested_index, 2);
        assert_eq!(plan.requested_model(), "a");
        assert!(plan.rewrites(Step::FIRST));
        assert_eq!(plan.model(Step::FIRST), "b");
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan));
        let mut all_cooling = |_: &str, _: Option<&str>| Err("no_capacity".to_string());
        let (plan, skipped) = decide_with(&settings(), START, body, &mut all_cooling);
        assert_eq!(plan.chain, ["a", "b", "c"], "all cooling: all tried");
        assert_eq!(skipped, [], "none was left out");
        assert_eq!(plan.requested_index, 0);
    }

    #[test]
    fn providers_travel_with_their_entries() {
        let settings = Config::parse(
            br#"{"chains":{"a":["b",{"model":"a","provider":"p2"},{"model":"their b","provider":"p2"}]},
                 "providers":{"p2":{}}}"#,
        )
        .unwrap()
        .defaults;
        let body = br#"{"model":"a"}"#;
        let (plan, _) = decide_with(&settings, START, body, &mut |_, _| Ok(()));
        assert_eq!(plan.chain, ["a", "b", "a", "their b"]);
        assert_eq!(
            plan.chain_providers,
            [None, None, Some("p2".into()), Some("p2".into())]
        );
        assert_eq!(plan.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(
            plan.provider(Step {
                lane: Lane::Main,
                index: 3
            }),
            Some("p2")
        );
        assert_eq!(plan.provider(Step::FIRST), None);
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan));
    }

    #[test]
    fn a_context_chain_alone_makes_a_plan() {
        let plan = plan_of(r#"{"model":"k"}"#);
        assert_eq!(plan.chain, ["k"]);
        assert!(!plan.has_next(Step::FIRST, Class::FailureStatus));
        assert!(plan.has_next(Step::FIRST, Class::ContextLength));
    }

    #[test]
    fn the_requested_model_is_not_tried_twice() {
        assert_eq!(plan_of(r#"{"model":"x"}"#).chain, ["x", "y"]);
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
                    decide(
                        &settings(),
                        RULE,
                        START,
                        "/v1/chat/completions",
                        body.as_bytes(),
                        None,
                        &mut |_, _| Ok(())
                    ),
                    BodyDecision::Passthrough(_)
                ),
                "{body}"
            );
        }
    }

    /// A plan's encoding as the gateway writes it: `v6`, body length, model span,
    /// stream, chain and context chain lengths, rule, start, budget, requested index,
    /// path; then the models of the chain, the context chain, the content chain.
    const VALID: &str = "v6 20 9 12 0 1 1 0 0 0 0 -\n\"a\"\n\"big\"\n\"safe\"";

    #[test]
    fn corrupt_plans_are_refused_each_for_its_own_reason() {
        assert!(
            Plan::decode(VALID.as_bytes()).is_some(),
            "the base case is valid"
        );
        for (text, reason) in [
            ("", "empty"),
            ("v5 20 9 12 0 1 0 0 0 0 -\n\"a\"", "another version"),
            (
                "v6 20 12 9 0 1 0 0 0 0 0 -\n\"a\"",
                "span ends before it starts",
            ),
            ("v6 20 9 9 0 1 0 0 0 0 0 -\n\"a\"", "empty span"),
            ("v6 20 9 21 0 1 0 0 0 0 0 -\n\"a\"", "span past the body"),
            ("v6 x 9 12 0 1 0 0 0 0 0 -\n\"a\"", "length not a number"),
            ("v6 20 9 12 0 1 0 0 0\n\"a\"", "fields missing"),
            ("v6 20 9 12 0 0 0 0 0 0 0 -\n\"a\"", "empty chain"),
            (
                "v6 20 9 12 0 3 0 0 0 0 0 -\n\"a\"\n\"big\"",
                "fewer models than the chain length",
            ),
            (
                "v6 20 9 12 0 1 2 0 0 0 0 -\n\"a\"\n\"big\"",
                "fewer than the context chain length",
            ),
            ("v6 20 9 12 0 1 0 0 0 0 0 -", "no models at all"),
            (
                "v6 20 9 12 0 1 0 0 0 0 1 -\n\"a\"",
                "the requested model outside the chain",
            ),
            (
                "v6 20 9 12 0 1 0 0 0 0 0 -\na",
                "a model that is not a JSON string",
            ),
            (
                "v6 20 9 12 0 1 0 0 0 0 0 -\np\t\"a",
                "an unterminated model literal",
            ),
            (
                "v6 18446744073709551615 9 12 0 1 0 0 0 0 0 -\n\"a\"",
                "absurd body length",
            ),
            (
                "v6 99999999999 9 12 0 1 0 0 0 0 0 -\n\"a\"",
                "body over the limit",
            ),
        ] {
            assert_eq!(Plan::decode(text.as_bytes()), None, "{reason}: {text}");
        }
        assert_eq!(Plan::decode(&[0xff, 0xfe]), None, "not UTF-8");
    }

    #[test]
    fn attempt_records_round_trip() {
        let record = AttemptRecord {
            model: "b".into(),
            lane: Lane::Context,
            index: 0,
            start_ms: 5,
            status: Some(429),
            class: Some(Class::RateLimited.name().into()),
            retry_after: Some("30".into()),
            ..AttemptRecord::default()
        };
        let decoded = AttemptRecord::decode(record.encode().as_bytes()).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.step(), CONTEXT_0);
        assert_eq!(decoded.class(), Some(Class::RateLimited));
        assert_eq!(AttemptRecord::decode(b"x 1 - 0"), None);
    }

    #[test]
    fn retries_before_the_body_cover_the_longest_chains_or_the_clients() {
        let settings = Config::parse(
            br#"{"chains": {"a": ["b"], "x": ["y", "z"]}, "context_chains": {"a": ["big"]},
                 "default_content_policy_chain": ["safe", "safer"]}"#,
        )
        .unwrap()
        .defaults;
        let router = RouterControl::new(&settings);
        assert_eq!(router.hold, None);
        let retries = |client: Option<usize>| {
            router
                .headers_before_body(client, None)
                .into_iter()
                .find(|(name, _)| *name == "x-envoy-max-retries")
                .map(|(_, value)| value)
        };
        assert_eq!(retries(None).as_deref(), Some("5"), "2 + 1 + 2");
        assert_eq!(
            retries(Some(4)).as_deref(),
            Some("7"),
            "the client's 4 + 1 + 2"
        );
    }

    #[test]
    fn budgets_and_the_client_deadline() {
        let plan = plan_of(r#"{"model":"a"}"#);
        assert_eq!((plan.rule, plan.budget_ms), (2, Some(5000)));
        assert_eq!(plan.remaining_ms(START.started_ms + 4000), Some(1000));
        assert_eq!(plan.remaining_ms(START.started_ms + 9000), Some(0));
        let shorter = RequestStart {
            client_deadline_ms: Some(700),
            ..START
        };
        let longer = RequestStart {
            client_deadline_ms: Some(60_000),
            ..START
        };
        let budget_with = |start| {
            decide_with(&settings(), start, br#"{"model":"a"}"#, &mut |_, _| Ok(()))
                .0
                .budget_ms
        };
        assert_eq!(budget_with(shorter), Some(700));
        assert_eq!(
            budget_with(longer),
            Some(5000),
            "a client cannot lengthen it"
        );
    }

    #[test]
    fn model_names_past_the_limit_are_not_planned() {
        let settings = Config::parse(br#"{"default_chain":["d"]}"#)
            .unwrap()
            .defaults;
        let decide_for = |name: String| {
            let body = format!(r#"{{"model":"{name}"}}"#);
            decide(
                &settings,
                0,
                START,
                "/p",
                body.as_bytes(),
                None,
                &mut |_, _| Ok(()),
            )
        };
        let longest = "m".repeat(MAX_MODEL_NAME_BYTES);
        assert!(matches!(decide_for(longest), BodyDecision::Fallback(..)));
        let too_long = "m".repeat(MAX_MODEL_NAME_BYTES + 1);
        assert!(matches!(
            decide_for(too_long),
            BodyDecision::Passthrough(Unprotected::ModelNameTooLong)
        ));
    }

    #[test]
    fn a_client_deadline_alone_limits_each_attempt_not_the_request() {
        let settings = Config::parse(br#"{"chains":{"a":["b"]}}"#)
            .unwrap()
            .defaults;
        let start = RequestStart {
            client_deadline_ms: Some(30_000),
            ..START
        };
        let body = br#"{"model":"a"}"#;
        let (plan, _) = decide_with(&settings, start, body, &mut |_, _| Ok(()));
        let headers = RouterControl::new(&settings).headers(&plan);
        assert!(
            !headers
                .iter()
                .any(|(name, _)| *name == "x-envoy-upstream-rq-timeout-ms"),
            "the route's timeout stays the total: {headers:?}"
        );
        assert!(headers.contains(&(
            "x-envoy-upstream-rq-per-try-timeout-ms",
            "30000".to_string()
        )));
    }

    #[test]
    fn a_refused_key_moves_on_only_to_another_provider() {
        let settings = Config::parse(
            br#"{"providers":{"a":{},"b":{}},
                 "chains":{"m":[{"model":"m2","provider":"a"},{"model":"m3","provider":"b"},
                                {"model":"m4","provider":"b"}, "m5"]}}"#,
        )
        .unwrap()
        .defaults;
        let (plan, _) = decide_with(&settings, START, br#"{"model":"m"}"#, &mut |_, _| Ok(()));
        let step = |index| Step {
            lane: Lane::Main,
            index,
        };
        let denied = Class::ProviderDenied;
        assert!(plan.has_next(step(0), denied), "route's cluster -> a");
        assert!(plan.has_next(step(1), denied), "a -> b");
        assert!(!plan.has_next(step(2), denied), "b -> b: the same key");
        assert!(!plan.has_next(step(3), denied), "b -> the route's cluster");
        assert!(plan.has_next(step(2), Class::FailureStatus));
        assert_eq!(plan.next_step(step(1), Some(denied)), step(2));
    }

    #[test]
    fn a_blocked_prompt_takes_the_content_chain_only() {
        let settings =
            Config::parse(br#"{"chains":{"m":["n"]},"content_policy_chains":{"m":["lenient"]}}"#)
                .unwrap()
                .defaults;
        let (plan, _) = decide_with(&settings, START, br#"{"model":"m"}"#, &mut |_, _| Ok(()));
        assert_eq!(plan.content_chain, ["lenient"]);
        assert!(plan.facts().has_content_chain);
        let policy = Some(Class::ContentPolicy);
        let content = plan.next_step(Step::FIRST, policy);
        assert_eq!(content, Step::first_of(Lane::Content));
        assert_eq!(plan.model(content), "lenient");
        assert!(
            !plan.has_next(content, Class::ContentPolicy),
            "nothing after it"
        );
        assert_eq!(
            plan.next_step(Step::FIRST, Some(Class::FailureStatus)),
            MAIN_1
        );
        assert_eq!(plan.max_retries(), 2);
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan));
        let none = Config::parse(br#"{"chains":{"m":["n"]}}"#)
            .unwrap()
            .defaults;
        let (plan, _) = decide_with(&none, START, br#"{"model":"m"}"#, &mut |_, _| Ok(()));
        assert!(!plan.has_next(Step::FIRST, Class::ContentPolicy));
    }

    #[test]
    fn client_chains_only_within_what_the_configuration_allows() {
        let off = Config::parse(br#"{"chains":{"m":["n"]}}"#)
            .unwrap()
            .defaults;
        assert_eq!(
            client_chain(&off, b"x"),
            ClientChain::Ignored("client chains are off (client_chains)")
        );
        let settings = Config::parse(
            br#"{"chains":{"m":["n"]},"providers":{"p":{}},
                 "client_chains":{"allow":["x",{"model":"y","provider":"p"}]}}"#,
        )
        .unwrap()
        .defaults;
        let ClientChain::Used(chain) = client_chain(&settings, b" y, x ") else {
            panic!("allowed models are used");
        };
        assert_eq!(chain[0].provider.as_deref(), Some("p"));
        assert_eq!(chain[1].model, "x");
        assert!(matches!(
            client_chain(&settings, b"x,z"),
            ClientChain::Ignored(_)
        ));
        assert!(matches!(
            client_chain(&settings, b" , "),
            ClientChain::Ignored(_)
        ));
        assert!(matches!(
            client_chain(&settings, b"\xff"),
            ClientChain::Ignored(_)
        ));
        let body = br#"{"model":"m"}"#;
        let plan = match decide(
            &settings,
            0,
            START,
            "/p",
            body,
            Some(&chain),
            &mut |_, _| Ok(()),
        ) {
            BodyDecision::Fallback(plan, _) => *plan,
            other => panic!("{other:?}"),
        };
        assert_eq!(plan.chain, ["m", "y", "x"]);
        assert!(client_turns_off(b" OFF "));
        assert!(!client_turns_off(b"on"));
    }

    #[test]
    fn router_headers() {
        let control = RouterControl::new(&settings());
        let headers = control.headers(&plan_of(r#"{"model":"a"}"#));
        assert_eq!(
            headers,
            [
                (
                    "x-envoy-retry-on",
                    "retriable-headers,reset,connect-failure,refused-stream".to_string()
                ),
                ("x-envoy-max-retries", "3".to_string()),
                ("x-envoy-retriable-header-names", RETRY_HEADER.to_string()),
                ("x-envoy-upstream-rq-timeout-ms", "5000".to_string()),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "1500".to_string()),
            ]
        );
        let stream = control.headers(&plan_of(r#"{"model":"a","stream":true}"#));
        assert_eq!(
            stream[3..],
            [("x-envoy-upstream-rq-per-try-timeout-ms", "800".to_string())],
            "a stream keeps the route timeout; its first byte has its own limit"
        );
    }

    #[test]
    fn hedging_sets_the_per_try_timeout_to_hedge_on_without_holding() {
        let settings = Config::parse(br#"{"chains":{"a":["b"]},"hedge_after_ms":300}"#)
            .unwrap()
            .defaults;
        let control = RouterControl::new(&settings);
        assert_eq!(control.hold, None);
        let headers = control.headers_before_body(None, None);
        for expected in [
            ("x-envoy-upstream-rq-per-try-timeout-ms", "300".to_string()),
            ("x-envoy-hedge-on-per-try-timeout", "true".to_string()),
        ] {
            assert!(headers.contains(&expected), "{expected:?} in {headers:?}");
        }
        let short_deadline = control.headers_before_body(None, Some(200));
        assert!(
            short_deadline.contains(&("x-envoy-upstream-rq-per-try-timeout-ms", "200".to_string()))
        );
    }
}
