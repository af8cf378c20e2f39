//! The plugin configuration: one JSON document, parsed and validated as a whole.
//!
//! Parsing walks a `serde_json::Value` by hand instead of deriving `Deserialize`, so
//! that every error names the exact field it is about (`chains["gpt-4o"][1]`), which
//! serde's derive cannot do without another dependency.

use crate::cooldown::{CooldownSettings, MAX_FAILURES};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Which of the two places in Envoy this instance of the module runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// In the HTTP connection manager's `http_filters`, before the router: reads the
    /// request once, plans the fallback chain and drives the router's retries.
    Gateway,
    /// In the router's `upstream_http_filters`: runs once per upstream attempt and
    /// writes that attempt's model into the body.
    Attempt,
}

/// Statuses that trigger a fallback when the operator does not list their own:
/// internal error, bad gateway, unavailable, gateway timeout, Cloudflare's 524 and
/// Anthropic-style 529 "overloaded".
pub const DEFAULT_FALLBACK_STATUSES: [u16; 6] = [500, 502, 503, 504, 524, 529];

/// Statuses whose body is read for the no-capacity patterns.
pub const DEFAULT_NO_CAPACITY_STATUSES: [u16; 2] = [404, 503];

/// The words providers use when a model has no live workers.
pub const DEFAULT_NO_CAPACITY_PATTERNS: [&str; 4] = [
    "no instances available",
    "chute not found",
    "model is overloaded",
    "model not found",
];

/// 64 KiB: error bodies and first events are far smaller; a larger answer is judged
/// on this prefix.
pub const DEFAULT_INSPECT_MAX_BYTES: usize = 64 * 1024;

/// The POST endpoints acted on by default: OpenAI-compatible ones, and Anthropic's
/// Messages API.
pub const DEFAULT_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
];

/// Statuses that say a provider refused the key or account: the next model is tried
/// only when it is on another provider. A 429 counts only when its body says the
/// quota, billing or credits are gone.
pub const DEFAULT_ACROSS_PROVIDER_STATUSES: [u16; 4] = [401, 402, 403, 429];

/// 4 MiB: above the largest chat requests seen in practice, small enough to buffer.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Envoy keeps at most this many retries sensible for one request; longer chains are
/// almost certainly a configuration mistake.
pub const MAX_CHAIN_LENGTH: usize = 16;

/// Upper bound for `max_body_bytes`: the router keeps a copy of the body per request.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// Upper bound for `inspect_max_bytes`: an answer is held in memory while read.
pub const MAX_INSPECT_MAX_BYTES: usize = 1024 * 1024;

/// 100 ms: less than that cannot bring back an LLM answer.
pub const DEFAULT_MIN_ATTEMPT_MS: u64 = 100;

/// Every settings field, for the error on an unknown one.
const FIELDS: [&str; 31] = [
    "role",
    "rules",
    "chains",
    "default_chain",
    "context_chains",
    "default_context_chain",
    "content_policy_chains",
    "default_content_policy_chain",
    "fallback_across_providers_on",
    "client_chains",
    "fallback_statuses",
    "fallback_on_rate_limit",
    "no_capacity_statuses",
    "no_capacity_patterns",
    "fallback_on_error_envelope",
    "fallback_on_stream_error",
    "inspect_max_bytes",
    "fallback_on_reset",
    "paths",
    "max_body_bytes",
    "budget_ms",
    "attempt_timeout_ms",
    "first_byte_timeout_ms",
    "hedge_after_ms",
    "min_attempt_ms",
    "response_headers",
    "cooldown_failures",
    "cooldown_window_ms",
    "cooldown_ms",
    "max_cooldown_ms",
    "providers",
];

/// One validated configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `role`: "gateway" or "attempt". When absent, the role follows the plugin's
    /// root id (one ending in "attempt" is the attempt role), so both filters can
    /// share one configuration document.
    pub role: Option<Role>,
    /// The top-level settings: used where no rule matches, and inherited by rules.
    pub defaults: Settings,
    /// `rules`: settings for some routes, chosen per request (see [`Config::select`]).
    pub rules: Vec<Rule>,
}

/// A rule: which requests it applies to, and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `name`: how a route's metadata picks this rule, and its name in records.
    pub name: String,
    /// `match`: the requests this rule applies to; all given conditions must hold
    /// (`{}` matches every request). Without it, only a route's metadata selects it.
    pub matcher: Option<RuleMatch>,
    /// Every other field of the rule; fields it leaves out come from the top level.
    pub settings: Settings,
}

/// `match` of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMatch {
    /// `route_name`: Envoy's route name (`xds.route_name`), exactly.
    pub route_name: Option<String>,
    /// `host`: the request's `:authority` without port, exactly (case-insensitive).
    pub host: Option<String>,
    /// `path_prefix`: the request path starts with it.
    pub path_prefix: Option<String>,
}

/// What a request needs to know to pick its rule.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteFacts<'a> {
    pub route_name: &'a str,
    /// The rule a route names in its metadata
    /// (`filter_metadata: {ai_fallback: {rule: NAME}}`).
    pub metadata_rule: Option<&'a str>,
    pub host: &'a str,
    pub path: &'a str,
}

/// Time limits for one request, all attempts included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// `budget_ms`: the whole request, every attempt and backoff. For a stream, the
    /// time until its first byte. Unset: Envoy's route timeout applies.
    pub total_ms: Option<u64>,
    /// `attempt_timeout_ms`: one attempt of a non-streamed request, until its answer's
    /// headers. Unset: no limit per attempt.
    pub attempt_timeout_ms: Option<u64>,
    /// `first_byte_timeout_ms`: one attempt of a streamed request, until its first
    /// byte. Unset: `attempt_timeout_ms`.
    pub first_byte_timeout_ms: Option<u64>,
    /// `hedge_after_ms`: an attempt without its answer's headers this long gets the
    /// next model started alongside it, and the first answer wins. Unset or 0: no
    /// hedging.
    pub hedge_after_ms: Option<u64>,
    /// `min_attempt_ms`: an attempt is not started with less time left than this;
    /// the request ends with a 504 instead. Default 100.
    pub min_attempt_ms: u64,
}

/// The settings a rule can set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `chains`: requested model -> the models tried after it, in order.
    pub chains: BTreeMap<String, Vec<ChainEntry>>,
    /// `default_chain`: the models tried after any requested model that has no chain
    /// of its own. Empty (the default) means such requests pass through untouched.
    pub default_chain: Vec<ChainEntry>,
    /// `context_chains`: requested model -> larger-context models tried, in order,
    /// only after a "context length exceeded" answer.
    pub context_chains: BTreeMap<String, Vec<ChainEntry>>,
    /// `default_context_chain`: the context chain of models without their own.
    pub default_context_chain: Vec<ChainEntry>,
    /// `content_policy_chains`: requested model -> models tried, in order, only after
    /// an answer that says a content policy blocked the prompt or the output.
    pub content_policy_chains: BTreeMap<String, Vec<ChainEntry>>,
    /// `default_content_policy_chain`: the content-policy chain of models without one.
    pub default_content_policy_chain: Vec<ChainEntry>,
    /// `client_chains.allow`: the models a client may name in `x-ai-fallback-models`
    /// to replace its request's chain. `None` (the default): clients may not.
    pub client_chain_allow: Option<Vec<ChainEntry>>,
    /// How upstream answers are classified.
    pub classes: Classes,
    /// `fallback_on_reset`: also move on when the upstream refuses the connection or
    /// resets it before answering, or a per-try timeout fires. Default true.
    pub fallback_on_reset: bool,
    /// `paths`: request paths acted on (query string ignored). An entry ending in `*`
    /// matches as a prefix. Only POST requests are acted on.
    pub paths: Vec<String>,
    /// `max_body_bytes`: largest request body the gateway buffers; a larger one gets a
    /// 413 JSON error, because Envoy would otherwise drop its retries silently.
    pub max_body_bytes: usize,
    /// Time limits.
    pub budget: Budget,
    /// `response_headers`: tell the client which model answered and after how many
    /// attempts (`x-ai-fallback-model`, `x-ai-fallback-attempts`). Default true.
    pub response_headers: bool,
    /// Skipping models that are failing right now (off unless `cooldown_failures` > 0).
    pub cooldown: CooldownSettings,
    /// `providers`: name -> provider, for chain entries that name one.
    pub providers: BTreeMap<String, Provider>,
}

/// The classification settings, read by the attempt role on every answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classes {
    /// `fallback_statuses`: upstream statuses that move on to the next model.
    pub fallback_statuses: Vec<u16>,
    /// `fallback_on_rate_limit`: a 429 moves on to the next model at once. Default true.
    pub rate_limits: bool,
    /// `no_capacity_statuses`: statuses whose body is read for `no_capacity_patterns`.
    pub no_capacity_statuses: Vec<u16>,
    /// `no_capacity_patterns`: phrases (matched case-insensitively) that mean "this
    /// model has no capacity", so another model is tried. Stored lowercased.
    pub no_capacity_patterns: Vec<String>,
    /// `fallback_on_error_envelope`: a 2xx JSON answer that is an `{"error": ...}`
    /// envelope without choices moves on. Default true.
    pub error_envelopes: bool,
    /// `fallback_on_stream_error`: a stream whose first event is an error moves on;
    /// a stream that ends early after content gets an SSE error event. Default true.
    pub stream_errors: bool,
    /// `inspect_max_bytes`: the most of an answer's body read to classify it.
    pub inspect_max_bytes: usize,
    /// `fallback_across_providers_on`: statuses that move on only when the next model
    /// is on another provider (a 429 only when it says the quota is gone).
    pub across_providers: Vec<u16>,
}

impl Default for Classes {
    fn default() -> Self {
        Classes {
            fallback_statuses: DEFAULT_FALLBACK_STATUSES.to_vec(),
            rate_limits: true,
            no_capacity_statuses: DEFAULT_NO_CAPACITY_STATUSES.to_vec(),
            no_capacity_patterns: DEFAULT_NO_CAPACITY_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            error_envelopes: true,
            stream_errors: true,
            inspect_max_bytes: DEFAULT_INSPECT_MAX_BYTES,
            across_providers: DEFAULT_ACROSS_PROVIDER_STATUSES.to_vec(),
        }
    }
}

/// One step of a fallback chain. Written in JSON as a model name, or as an object
/// `{"model": "...", "provider": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEntry {
    /// The model name written into the request body for this step: the name the
    /// provider knows the model by.
    pub model: String,
    /// The provider (a key of `providers`) that serves it under that name; `None`:
    /// whichever cluster the route sends the attempt to.
    pub provider: Option<String>,
}

/// `providers.<name>`: where a chain entry's model is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// `cluster`: the Envoy cluster of this provider (default: the provider's name).
    /// The route's `priority_group` cluster specifier sends each attempt to it.
    pub cluster: String,
    /// `base_path`: the provider's API root, replacing the request path's `/v1`
    /// (`"/api/v1"` sends `/v1/chat/completions` as `/api/v1/chat/completions`).
    pub base_path: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            chains: BTreeMap::new(),
            default_chain: Vec::new(),
            context_chains: BTreeMap::new(),
            default_context_chain: Vec::new(),
            content_policy_chains: BTreeMap::new(),
            default_content_policy_chain: Vec::new(),
            client_chain_allow: None,
            classes: Classes::default(),
            fallback_on_reset: true,
            paths: DEFAULT_PATHS.iter().map(|p| p.to_string()).collect(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            budget: Budget {
                min_attempt_ms: DEFAULT_MIN_ATTEMPT_MS,
                ..Budget::default()
            },
            response_headers: true,
            cooldown: CooldownSettings::default(),
            providers: BTreeMap::new(),
        }
    }
}

/// A configuration error: the field it is about, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "configuration: {}", self.message)
        } else {
            write!(f, "configuration field `{}`: {}", self.field, self.message)
        }
    }
}

fn error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    /// Parses and validates the plugin configuration. Empty input means all defaults.
    pub fn parse(input: &[u8]) -> Result<Config, ConfigError> {
        if input.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Config::default());
        }
        let value: Value =
            serde_json::from_slice(input).map_err(|e| error("", format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(error("", "must be a JSON object"));
        };
        Config::from_fields(&fields)
    }

    fn from_fields(fields: &Map<String, Value>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for (name, value) in fields {
            match name.as_str() {
                "role" => config.role = Some(parse_role(value)?),
                "rules" => {} // after the defaults they inherit
                _ => config.defaults.set(name, value, name)?,
            }
        }
        config.defaults.check_providers("")?;
        config.defaults.check_cooldown("", fields)?;
        config.defaults.check_hedging("")?;
        if let Some(rules) = fields.get("rules") {
            config.rules = parse_rules(rules, &config.defaults)?;
        }
        Ok(config)
    }

    /// The settings for a request: the rule its route's metadata names, else the
    /// first rule that matches, else the top-level settings. Returns the rule's
    /// index (0 for the defaults, i + 1 for `rules[i]`) and its settings.
    pub fn select(&self, route: &RouteFacts<'_>) -> (usize, &Settings) {
        let by_metadata = route
            .metadata_rule
            .and_then(|name| self.rules.iter().position(|rule| rule.name == name));
        let by_match = || {
            self.rules.iter().position(|rule| {
                rule.matcher
                    .as_ref()
                    .is_some_and(|matcher| matcher.matches(route))
            })
        };
        match by_metadata.or_else(by_match) {
            Some(index) => self
                .rules
                .get(index)
                .map_or((0, &self.defaults), |rule| (index + 1, &rule.settings)),
            None => (0, &self.defaults),
        }
    }

    /// The settings of a rule index returned by [`Config::select`].
    pub fn settings(&self, rule_index: usize) -> &Settings {
        rule_index
            .checked_sub(1)
            .and_then(|i| self.rules.get(i))
            .map_or(&self.defaults, |rule| &rule.settings)
    }

    /// The name of a rule index, for records: "default" for the top level.
    pub fn rule_name(&self, rule_index: usize) -> &str {
        rule_index
            .checked_sub(1)
            .and_then(|i| self.rules.get(i))
            .map_or("default", |rule| rule.name.as_str())
    }

    /// Every settings block, the defaults first, in rule index order.
    pub fn all_settings(&self) -> impl Iterator<Item = &Settings> {
        std::iter::once(&self.defaults).chain(self.rules.iter().map(|rule| &rule.settings))
    }

    /// The role: the `role` field, else the one the plugin's root id names.
    pub fn role_for_root_id(&self, root_id: &str) -> Role {
        self.role.unwrap_or(if root_id.ends_with("attempt") {
            Role::Attempt
        } else {
            Role::Gateway
        })
    }
}

impl RuleMatch {
    fn matches(&self, route: &RouteFacts<'_>) -> bool {
        let host = route
            .host
            .rsplit_once(':')
            .map_or(route.host, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    route.host
                }
            });
        self.route_name
            .as_deref()
            .is_none_or(|name| name == route.route_name)
            && self
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| route.path.starts_with(prefix))
    }
}

impl Settings {
    /// Sets one field from its JSON value; `field` is its full name for errors.
    fn set(&mut self, name: &str, value: &Value, field: &str) -> Result<(), ConfigError> {
        match name {
            "chains" => self.chains = parse_chains(field, value)?,
            "default_chain" => self.default_chain = parse_chain(field, value)?,
            "context_chains" => self.context_chains = parse_chains(field, value)?,
            "default_context_chain" => self.default_context_chain = parse_chain(field, value)?,
            "content_policy_chains" => self.content_policy_chains = parse_chains(field, value)?,
            "default_content_policy_chain" => {
                self.default_content_policy_chain = parse_chain(field, value)?
            }
            "fallback_across_providers_on" => {
                self.classes.across_providers = parse_statuses(field, value)?
            }
            "client_chains" => self.client_chain_allow = parse_client_chains(field, value)?,
            "fallback_statuses" => self.classes.fallback_statuses = parse_statuses(field, value)?,
            "fallback_on_rate_limit" => self.classes.rate_limits = parse_bool(field, value)?,
            "no_capacity_statuses" => {
                self.classes.no_capacity_statuses = parse_statuses(field, value)?
            }
            "no_capacity_patterns" => {
                self.classes.no_capacity_patterns = parse_patterns(field, value)?
            }
            "fallback_on_error_envelope" => {
                self.classes.error_envelopes = parse_bool(field, value)?
            }
            "fallback_on_stream_error" => self.classes.stream_errors = parse_bool(field, value)?,
            "inspect_max_bytes" => {
                self.classes.inspect_max_bytes = parse_size(field, value, 1, MAX_INSPECT_MAX_BYTES)?
            }
            "fallback_on_reset" => self.fallback_on_reset = parse_bool(field, value)?,
            "paths" => self.paths = parse_paths(field, value)?,
            "max_body_bytes" => {
                self.max_body_bytes = parse_size(field, value, 1, MAX_BODY_BYTES_LIMIT)?
            }
            "budget_ms" => self.budget.total_ms = Some(parse_millis(field, value)?),
            "attempt_timeout_ms" => {
                self.budget.attempt_timeout_ms = Some(parse_millis(field, value)?)
            }
            "first_byte_timeout_ms" => {
                self.budget.first_byte_timeout_ms = Some(parse_millis(field, value)?)
            }
            "hedge_after_ms" => {
                let after = parse_millis_or_zero(field, value)?;
                self.budget.hedge_after_ms = (after > 0).then_some(after);
            }
            "min_attempt_ms" => self.budget.min_attempt_ms = parse_millis_or_zero(field, value)?,
            "response_headers" => self.response_headers = parse_bool(field, value)?,
            "cooldown_failures" => {
                self.cooldown.failures = parse_size(field, value, 0, MAX_FAILURES as usize)? as u32
            }
            "cooldown_window_ms" => self.cooldown.window_ms = parse_millis(field, value)?,
            "cooldown_ms" => self.cooldown.duration_ms = parse_millis(field, value)?,
            "max_cooldown_ms" => self.cooldown.max_ms = parse_millis(field, value)?,
            "providers" => self.providers = parse_providers(field, value)?,
            _ => {
                return Err(error(
                    field,
                    format!("unknown field; expected one of {}", FIELDS.join(", ")),
                ))
            }
        }
        Ok(())
    }

    /// The models tried after `requested`, in order; empty when it has no chain.
    pub fn chain_for(&self, requested: &str) -> &[ChainEntry] {
        self.chains
            .get(requested)
            .map(Vec::as_slice)
            .unwrap_or(&self.default_chain)
    }

    /// The larger-context models tried after `requested` answers "context length
    /// exceeded"; empty when there are none.
    pub fn context_chain_for(&self, requested: &str) -> &[ChainEntry] {
        self.context_chains
            .get(requested)
            .map(Vec::as_slice)
            .unwrap_or(&self.default_context_chain)
    }

    /// The models tried after `requested` answers that a content policy blocked it;
    /// empty when there are none.
    pub fn content_chain_for(&self, requested: &str) -> &[ChainEntry] {
        self.content_policy_chains
            .get(requested)
            .map(Vec::as_slice)
            .unwrap_or(&self.default_content_policy_chain)
    }

    /// Whether a request with this method and path is one the gateway looks at.
    pub fn acts_on(&self, method: &str, path: &str) -> bool {
        if method != "POST" {
            return false;
        }
        let path = path.split('?').next().unwrap_or(path);
        self.paths
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == pattern,
            })
    }
}

fn parse_role(value: &Value) -> Result<Role, ConfigError> {
    match value.as_str() {
        Some("gateway") => Ok(Role::Gateway),
        Some("attempt") => Ok(Role::Attempt),
        _ => Err(error("role", "must be \"gateway\" or \"attempt\"")),
    }
}

fn parse_bool(field: &str, value: &Value) -> Result<bool, ConfigError> {
    value
        .as_bool()
        .ok_or_else(|| error(field, "must be true or false"))
}

fn parse_size(field: &str, value: &Value, min: usize, max: usize) -> Result<usize, ConfigError> {
    value
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| error(field, format!("must be an integer from {min} to {max}")))
}

fn parse_chains(
    name: &str,
    value: &Value,
) -> Result<BTreeMap<String, Vec<ChainEntry>>, ConfigError> {
    let Value::Object(chains) = value else {
        return Err(error(
            name,
            "must be an object mapping a requested model to its fallback models",
        ));
    };
    let mut parsed = BTreeMap::new();
    for (requested, chain) in chains {
        let field = format!("{name}[{requested:?}]");
        check_model_name(&field, requested)?;
        let entries = parse_chain(&field, chain)?;
        if entries.is_empty() {
            return Err(error(field, "must list at least one fallback model"));
        }
        parsed.insert(requested.clone(), entries);
    }
    Ok(parsed)
}

fn parse_chain(field: &str, value: &Value) -> Result<Vec<ChainEntry>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(error(field, "must be an array of model names"));
    };
    if items.len() > MAX_CHAIN_LENGTH {
        return Err(error(
            field,
            format!("has {} entries; at most {MAX_CHAIN_LENGTH}", items.len()),
        ));
    }
    let mut entries = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_field = format!("{field}[{index}]");
        let entry = parse_chain_entry(&item_field, item)?;
        if entries.contains(&entry) {
            return Err(error(
                item_field,
                format!("model {:?} appears twice in this chain", entry.model),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_chain_entry(field: &str, value: &Value) -> Result<ChainEntry, ConfigError> {
    let (model, provider) = match value {
        Value::String(model) => (model.clone(), None),
        Value::Object(entry) => {
            let mut model = None;
            let mut provider = None;
            for (name, value) in entry {
                let text = || {
                    value
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| error(format!("{field}.{name}"), "must be a string"))
                };
                match name.as_str() {
                    "model" => model = Some(text()?),
                    "provider" => provider = Some(text()?),
                    other => {
                        return Err(error(
                            format!("{field}.{other}"),
                            "unknown field; expected model, provider",
                        ))
                    }
                }
            }
            let model = model.ok_or_else(|| error(format!("{field}.model"), "is required"))?;
            (model, provider)
        }
        _ => {
            return Err(error(
                field,
                "must be a model name or an object {\"model\": ..., \"provider\": ...}",
            ))
        }
    };
    check_model_name(field, &model)?;
    Ok(ChainEntry { model, provider })
}

/// `{"allow": [models]}`: the models a client may name for its own chain.
fn parse_client_chains(field: &str, value: &Value) -> Result<Option<Vec<ChainEntry>>, ConfigError> {
    let Value::Object(fields) = value else {
        return Err(error(field, "must be an object: {\"allow\": [models]}"));
    };
    if let Some(unknown) = fields.keys().find(|key| *key != "allow") {
        return Err(error(
            format!("{field}.{unknown}"),
            "unknown field; expected allow",
        ));
    }
    let allow_field = format!("{field}.allow");
    let allow = fields
        .get("allow")
        .ok_or_else(|| error(&allow_field, "is required"))?;
    Ok(Some(parse_chain(&allow_field, allow)?))
}

fn parse_providers(field: &str, value: &Value) -> Result<BTreeMap<String, Provider>, ConfigError> {
    let Value::Object(providers) = value else {
        return Err(error(
            field,
            "must be an object mapping a provider name to its settings",
        ));
    };
    let mut parsed = BTreeMap::new();
    for (name, settings) in providers {
        let prefix = format!("{field}.{name}");
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid_name {
            return Err(error(
                prefix,
                "a provider name is 1-64 letters, digits, '_', '.' or '-'",
            ));
        }
        let Value::Object(fields) = settings else {
            return Err(error(prefix, "must be an object"));
        };
        let mut provider = Provider {
            cluster: name.clone(),
            base_path: None,
        };
        for (key, value) in fields {
            let text = value.as_str().filter(|s| !s.is_empty());
            match (key.as_str(), text) {
                ("cluster", Some(cluster)) => provider.cluster = cluster.to_string(),
                ("base_path", Some(path)) if path.starts_with('/') && !path.contains('?') => {
                    provider.base_path = Some(path.trim_end_matches('/').to_string())
                }
                ("cluster" | "base_path", _) => {
                    return Err(error(
                        format!("{prefix}.{key}"),
                        "must be a non-empty string (a base_path starts with '/')",
                    ))
                }
                _ => {
                    return Err(error(
                        format!("{prefix}.{key}"),
                        "unknown field; expected cluster, base_path",
                    ))
                }
            }
        }
        parsed.insert(name.clone(), provider);
    }
    Ok(parsed)
}

impl Settings {
    /// Every chain entry that names a provider names a configured one.
    fn check_providers(&self, prefix: &str) -> Result<(), ConfigError> {
        fn keyed<'a>(
            field: &str,
            chains: &'a BTreeMap<String, Vec<ChainEntry>>,
        ) -> Vec<(String, &'a Vec<ChainEntry>)> {
            chains
                .iter()
                .map(|(requested, chain)| (format!("{field}[{requested:?}]"), chain))
                .collect()
        }
        let mut every_chain = keyed("chains", &self.chains);
        every_chain.extend(keyed("context_chains", &self.context_chains));
        every_chain.extend(keyed("content_policy_chains", &self.content_policy_chains));
        every_chain.push(("default_chain".to_string(), &self.default_chain));
        every_chain.push((
            "default_context_chain".to_string(),
            &self.default_context_chain,
        ));
        every_chain.push((
            "default_content_policy_chain".to_string(),
            &self.default_content_policy_chain,
        ));
        if let Some(allow) = &self.client_chain_allow {
            every_chain.push(("client_chains.allow".to_string(), allow));
        }
        for (field, chain) in every_chain {
            for (index, entry) in chain.iter().enumerate() {
                if let Some(provider) = &entry.provider {
                    if !self.providers.contains_key(provider) {
                        return Err(error(
                            format!("{prefix}{field}[{index}].provider"),
                            format!("names {provider:?}, which is not in providers"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Settings {
    /// `cooldown_ms` within `max_cooldown_ms`. The error names the one of the two
    /// this block sets (`max_cooldown_ms` when it sets both), since the other may be
    /// a default or inherited.
    fn check_cooldown(&self, prefix: &str, fields: &Map<String, Value>) -> Result<(), ConfigError> {
        let CooldownSettings {
            duration_ms,
            max_ms,
            ..
        } = self.cooldown;
        if duration_ms <= max_ms {
            return Ok(());
        }
        if fields.contains_key("max_cooldown_ms") {
            Err(error(
                format!("{prefix}max_cooldown_ms"),
                format!("must be at least cooldown_ms ({duration_ms} ms)"),
            ))
        } else {
            Err(error(
                format!("{prefix}cooldown_ms"),
                format!(
                    "must be at most max_cooldown_ms ({max_ms} ms); raise max_cooldown_ms \
                     for a longer cooldown"
                ),
            ))
        }
    }

    /// Envoy's per-try timeout either cancels an attempt or hedges it, never both:
    /// hedging takes the place of the per-attempt limits.
    fn check_hedging(&self, prefix: &str) -> Result<(), ConfigError> {
        let Some(after) = self.budget.hedge_after_ms else {
            return Ok(());
        };
        let field = format!("{prefix}hedge_after_ms");
        for (other, set) in [
            ("attempt_timeout_ms", self.budget.attempt_timeout_ms),
            ("first_byte_timeout_ms", self.budget.first_byte_timeout_ms),
        ] {
            if set.is_some() {
                return Err(error(
                    field,
                    format!(
                        "cannot be combined with {other}: Envoy's per-try timeout either \
                         hedges an attempt or cancels it; unset one of them (a rule can \
                         set hedge_after_ms to 0)"
                    ),
                ));
            }
        }
        match self.budget.total_ms {
            Some(budget) if after >= budget => Err(error(
                field,
                format!("must be less than budget_ms ({budget} ms), or no attempt is hedged"),
            )),
            _ => Ok(()),
        }
    }
}

fn check_model_name(field: &str, model: &str) -> Result<(), ConfigError> {
    if model.is_empty() {
        return Err(error(field, "model name must not be empty"));
    }
    if model.len() > 256 {
        return Err(error(field, "model name is longer than 256 bytes"));
    }
    if model.chars().any(char::is_control) {
        return Err(error(
            field,
            "model name must not contain control characters",
        ));
    }
    Ok(())
}

/// Longest time limit accepted: a day.
const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;

fn parse_millis(field: &str, value: &Value) -> Result<u64, ConfigError> {
    value
        .as_u64()
        .filter(|ms| (1..=MAX_MILLIS).contains(ms))
        .ok_or_else(|| {
            error(
                field,
                format!("must be milliseconds from 1 to {MAX_MILLIS}"),
            )
        })
}

fn parse_millis_or_zero(field: &str, value: &Value) -> Result<u64, ConfigError> {
    value
        .as_u64()
        .filter(|ms| *ms <= MAX_MILLIS)
        .ok_or_else(|| {
            error(
                field,
                format!("must be milliseconds from 0 to {MAX_MILLIS}"),
            )
        })
}

fn parse_rules(value: &Value, defaults: &Settings) -> Result<Vec<Rule>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(error("rules", "must be an array of rules"));
    };
    let mut rules: Vec<Rule> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let prefix = format!("rules[{index}]");
        let Value::Object(fields) = item else {
            return Err(error(prefix, "must be an object"));
        };
        let mut rule = Rule {
            name: String::new(),
            matcher: None,
            settings: defaults.clone(),
        };
        for (name, value) in fields {
            let field = format!("{prefix}.{name}");
            match name.as_str() {
                "name" => match value.as_str() {
                    Some(rule_name) if !rule_name.is_empty() && rule_name.len() <= 128 => {
                        rule.name = rule_name.to_string()
                    }
                    _ => return Err(error(field, "must be a non-empty string")),
                },
                "match" => rule.matcher = Some(parse_match(&field, value)?),
                _ => rule.settings.set(name, value, &field)?,
            }
        }
        if rule.name.is_empty() {
            return Err(error(format!("{prefix}.name"), "is required"));
        }
        rule.settings.check_providers(&format!("{prefix}."))?;
        rule.settings
            .check_cooldown(&format!("{prefix}."), fields)?;
        rule.settings.check_hedging(&format!("{prefix}."))?;
        if rules.iter().any(|other| other.name == rule.name) {
            return Err(error(
                format!("{prefix}.name"),
                format!("rule {:?} is defined twice", rule.name),
            ));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn parse_match(field: &str, value: &Value) -> Result<RuleMatch, ConfigError> {
    let Value::Object(fields) = value else {
        return Err(error(field, "must be an object"));
    };
    let mut matcher = RuleMatch::default();
    for (name, value) in fields {
        let text = || {
            value
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| error(format!("{field}.{name}"), "must be a non-empty string"))
        };
        match name.as_str() {
            "route_name" => matcher.route_name = Some(text()?),
            "host" => matcher.host = Some(text()?),
            "path_prefix" => matcher.path_prefix = Some(text()?),
            _ => {
                return Err(error(
                    format!("{field}.{name}"),
                    "unknown field; expected one of route_name, host, path_prefix",
                ))
            }
        }
    }
    Ok(matcher)
}

fn parse_patterns(field: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(error(field, "must be an array of phrases"));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item.as_str() {
            Some(pattern) if !pattern.is_empty() && pattern.len() <= 256 => {
                Ok(pattern.to_ascii_lowercase())
            }
            _ => Err(error(
                format!("{field}[{index}]"),
                "must be a non-empty string of at most 256 bytes",
            )),
        })
        .collect()
}

fn parse_statuses(field: &str, value: &Value) -> Result<Vec<u16>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(error(field, "must be an array of HTTP status codes"));
    };
    let mut statuses = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let status = item
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (400..=599).contains(n))
            .ok_or_else(|| {
                error(
                    format!("{field}[{index}]"),
                    "must be an error status from 400 to 599",
                )
            })?;
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    Ok(statuses)
}

fn parse_paths(field: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(error(field, "must be an array of request paths"));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item.as_str() {
            Some(path) if path.starts_with('/') && !path.contains('?') => Ok(path.to_string()),
            _ => Err(error(
                format!("{field}[{index}]"),
                "must be a path starting with '/', without a query; end it with '*' to match a prefix",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes())
    }

    fn field_of(json: &str) -> String {
        parse(json).unwrap_err().field
    }

    #[test]
    fn empty_input_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("{}").unwrap(), Config::default());
        assert_eq!(
            Config::default().defaults.budget.min_attempt_ms,
            DEFAULT_MIN_ATTEMPT_MS
        );
    }

    #[test]
    fn full_config_parses() {
        let config = parse(
            r#"{"role":"gateway","chains":{"a":["b",{"model":"c"}]},"default_chain":["z"],
               "fallback_statuses":[500,429,500],"fallback_on_reset":false,
               "paths":["/v1/chat/completions","/api/*"],"max_body_bytes":1024}"#,
        )
        .unwrap();
        let settings = &config.defaults;
        let models: Vec<_> = settings.chain_for("a").iter().map(|e| &e.model).collect();
        assert_eq!(models, ["b", "c"]);
        assert_eq!(settings.chain_for("other")[0].model, "z");
        assert_eq!(settings.classes.fallback_statuses, [500, 429]);
        assert!(!settings.fallback_on_reset);
        assert_eq!(settings.max_body_bytes, 1024);
    }

    #[test]
    fn max_cooldown_ms_defaults_to_five_minutes_and_is_inherited() {
        let config = parse("{}").unwrap();
        assert_eq!(config.defaults.cooldown.max_ms, 300_000);
        let config = parse(
            r#"{"cooldown_ms":500,"max_cooldown_ms":1500,
               "rules":[{"name":"r"},{"name":"long","max_cooldown_ms":3600000,"cooldown_ms":600000}]}"#,
        )
        .unwrap();
        assert_eq!(config.defaults.cooldown.max_ms, 1_500);
        assert_eq!(config.rules[0].settings.cooldown.max_ms, 1_500);
        assert_eq!(config.rules[1].settings.cooldown.max_ms, 3_600_000);
        assert_eq!(config.rules[1].settings.cooldown.duration_ms, 600_000);
    }

    #[test]
    fn hedging_is_off_by_default_and_a_rule_can_switch_it_off() {
        assert_eq!(parse("{}").unwrap().defaults.budget.hedge_after_ms, None);
        let config = parse(
            r#"{"hedge_after_ms":300,"budget_ms":5000,
               "rules":[{"name":"inherits"},{"name":"off","hedge_after_ms":0,"attempt_timeout_ms":900}]}"#,
        )
        .unwrap();
        assert_eq!(config.defaults.budget.hedge_after_ms, Some(300));
        assert_eq!(config.rules[0].settings.budget.hedge_after_ms, Some(300));
        assert_eq!(config.rules[1].settings.budget.hedge_after_ms, None);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"rolee":"gateway"}"#, "rolee"),
            (r#"{"role":"router"}"#, "role"),
            (
                r#"{"context_chains":{"a":[1]}}"#,
                r#"context_chains["a"][0]"#,
            ),
            (r#"{"default_context_chain":"a"}"#, "default_context_chain"),
            (
                r#"{"no_capacity_statuses":[200]}"#,
                "no_capacity_statuses[0]",
            ),
            (
                r#"{"no_capacity_patterns":[""]}"#,
                "no_capacity_patterns[0]",
            ),
            (r#"{"no_capacity_patterns":"x"}"#, "no_capacity_patterns"),
            (r#"{"fallback_on_rate_limit":1}"#, "fallback_on_rate_limit"),
            (
                r#"{"fallback_on_error_envelope":null}"#,
                "fallback_on_error_envelope",
            ),
            (
                r#"{"fallback_on_stream_error":"no"}"#,
                "fallback_on_stream_error",
            ),
            (r#"{"inspect_max_bytes":0}"#, "inspect_max_bytes"),
            (r#"{"inspect_max_bytes":2000000}"#, "inspect_max_bytes"),
            (r#"{"budget_ms":0}"#, "budget_ms"),
            (r#"{"attempt_timeout_ms":"5s"}"#, "attempt_timeout_ms"),
            (r#"{"first_byte_timeout_ms":-1}"#, "first_byte_timeout_ms"),
            (
                r#"{"hedge_after_ms":300,"attempt_timeout_ms":1000}"#,
                "hedge_after_ms",
            ),
            (
                r#"{"first_byte_timeout_ms":1000,"rules":[{"name":"h","hedge_after_ms":300}]}"#,
                "rules[0].hedge_after_ms",
            ),
            (
                r#"{"hedge_after_ms":500,"budget_ms":500}"#,
                "hedge_after_ms",
            ),
            (r#"{"min_attempt_ms":100000000}"#, "min_attempt_ms"),
            (r#"{"response_headers":"on"}"#, "response_headers"),
            (r#"{"cooldown_failures":33}"#, "cooldown_failures"),
            (r#"{"cooldown_window_ms":0}"#, "cooldown_window_ms"),
            (r#"{"cooldown_ms":true}"#, "cooldown_ms"),
            (r#"{"max_cooldown_ms":0}"#, "max_cooldown_ms"),
            (r#"{"max_cooldown_ms":"5m"}"#, "max_cooldown_ms"),
            (r#"{"max_cooldown_ms":86400001}"#, "max_cooldown_ms"),
            (r#"{"cooldown_ms":300001}"#, "cooldown_ms"),
            (r#"{"max_cooldown_ms":1000}"#, "max_cooldown_ms"),
            (
                r#"{"cooldown_ms":2000,"max_cooldown_ms":1000}"#,
                "max_cooldown_ms",
            ),
            (
                r#"{"cooldown_ms":500,"max_cooldown_ms":1000,"rules":[{"name":"r","cooldown_ms":2000}]}"#,
                "rules[0].cooldown_ms",
            ),
            (r#"{"providers":[]}"#, "providers"),
            (r#"{"providers":{"a b":{}}}"#, "providers.a b"),
            (
                r#"{"providers":{"a":{"cluster":""}}}"#,
                "providers.a.cluster",
            ),
            (
                r#"{"providers":{"a":{"base_path":"api"}}}"#,
                "providers.a.base_path",
            ),
            (
                r#"{"providers":{"a":{"region":"eu"}}}"#,
                "providers.a.region",
            ),
            (
                r#"{"chains":{"m":[{"model":"x","provider":"nope"}]}}"#,
                r#"chains["m"][0].provider"#,
            ),
            (
                r#"{"default_chain":[{"model":"x","provider":"nope"}]}"#,
                "default_chain[0].provider",
            ),
            (
                r#"{"chains":{"m":[{"model":"x","provider":1}]}}"#,
                r#"chains["m"][0].provider"#,
            ),
            (
                r#"{"rules":[{"name":"r","chains":{"m":[{"model":"x","provider":"p"}]}}]}"#,
                r#"rules[0].chains["m"][0].provider"#,
            ),
            (r#"{"rules":{}}"#, "rules"),
            (r#"{"rules":[1]}"#, "rules[0]"),
            (r#"{"rules":[{"match":{}}]}"#, "rules[0].name"),
            (r#"{"rules":[{"name":"a"},{"name":"a"}]}"#, "rules[1].name"),
            (
                r#"{"rules":[{"name":"a","match":{"route":"x"}}]}"#,
                "rules[0].match.route",
            ),
            (
                r#"{"rules":[{"name":"a","match":{"host":""}}]}"#,
                "rules[0].match.host",
            ),
            (
                r#"{"rules":[{"name":"a","budget_ms":"x"}]}"#,
                "rules[0].budget_ms",
            ),
            (
                r#"{"rules":[{"name":"a","chains":{"m":[]}}]}"#,
                r#"rules[0].chains["m"]"#,
            ),
            (
                r#"{"rules":[{"name":"a","role":"attempt"}]}"#,
                "rules[0].role",
            ),
            (r#"{"chains":[]}"#, "chains"),
            (r#"{"chains":{"a":"b"}}"#, r#"chains["a"]"#),
            (r#"{"chains":{"a":[]}}"#, r#"chains["a"]"#),
            (r#"{"chains":{"a":["b",""]}}"#, r#"chains["a"][1]"#),
            (r#"{"chains":{"a":["b","b"]}}"#, r#"chains["a"][1]"#),
            (
                r#"{"chains":{"a":[{"model":"b","x":1}]}}"#,
                r#"chains["a"][0].x"#,
            ),
            (
                r#"{"chains":{"a":[{"model":3}]}}"#,
                r#"chains["a"][0].model"#,
            ),
            (r#"{"chains":{"a":[7]}}"#, r#"chains["a"][0]"#),
            (r#"{"chains":{"":["b"]}}"#, r#"chains[""]"#),
            (r#"{"chains":{"a":["b\nc"]}}"#, r#"chains["a"][0]"#),
            (r#"{"default_chain":{}}"#, "default_chain"),
            (r#"{"fallback_statuses":[500,200]}"#, "fallback_statuses[1]"),
            (r#"{"fallback_statuses":["500"]}"#, "fallback_statuses[0]"),
            (r#"{"fallback_statuses":500}"#, "fallback_statuses"),
            (r#"{"fallback_on_reset":"yes"}"#, "fallback_on_reset"),
            (r#"{"paths":["v1/chat"]}"#, "paths[0]"),
            (r#"{"paths":["/a?b=1"]}"#, "paths[0]"),
            (r#"{"max_body_bytes":0}"#, "max_body_bytes"),
            (r#"{"max_body_bytes":-5}"#, "max_body_bytes"),
            (r#"{"max_body_bytes":1e3}"#, "max_body_bytes"),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json), field, "{json}");
        }
    }

    #[test]
    fn role_follows_the_root_id_unless_set() {
        let shared = parse(r#"{"chains":{"a":["b"]}}"#).unwrap();
        assert_eq!(
            shared.role_for_root_id("ai_fallback_attempt"),
            Role::Attempt
        );
        assert_eq!(
            shared.role_for_root_id("ai_fallback_gateway"),
            Role::Gateway
        );
        assert_eq!(shared.role_for_root_id(""), Role::Gateway);
        let explicit = parse(r#"{"role":"gateway"}"#).unwrap();
        assert_eq!(explicit.role_for_root_id("x_attempt"), Role::Gateway);
    }

    #[test]
    fn patterns_are_lowercased_and_context_chains_found() {
        let config = parse(
            r#"{"no_capacity_patterns":["No Capacity"],"context_chains":{"a":["big"]},
               "default_context_chain":["huge"]}"#,
        )
        .unwrap();
        let settings = &config.defaults;
        assert_eq!(settings.classes.no_capacity_patterns, ["no capacity"]);
        assert_eq!(settings.context_chain_for("a")[0].model, "big");
        assert_eq!(settings.context_chain_for("z")[0].model, "huge");
    }

    #[test]
    fn rules_inherit_and_are_selected() {
        let config = parse(
            r#"{"chains":{"a":["b"]},"budget_ms":9000,
                "rules":[
                  {"name":"fast","match":{"route_name":"r1"},"budget_ms":2000},
                  {"name":"api","match":{"host":"api.example.com","path_prefix":"/v1/"},
                   "chains":{"a":["c"]}},
                  {"name":"meta","attempt_timeout_ms":50}
                ]}"#,
        )
        .unwrap();
        let facts = |route_name, metadata_rule, host, path| RouteFacts {
            route_name,
            metadata_rule,
            host,
            path,
        };
        let (index, fast) = config.select(&facts("r1", None, "x", "/v1/chat"));
        assert_eq!((index, config.rule_name(index)), (1, "fast"));
        assert_eq!(fast.budget.total_ms, Some(2000));
        assert_eq!(fast.chain_for("a")[0].model, "b", "inherited");
        let (index, api) = config.select(&facts("r2", None, "API.example.com:443", "/v1/x"));
        assert_eq!(index, 2);
        assert_eq!(api.chain_for("a")[0].model, "c");
        assert_eq!(api.budget.total_ms, Some(9000));
        assert_eq!(
            config
                .select(&facts("r2", None, "api.example.com", "/v2/x"))
                .0,
            0
        );
        assert_eq!(config.select(&facts("r1", Some("meta"), "x", "/")).0, 3);
        assert_eq!(config.select(&facts("r9", Some("unknown"), "x", "/")).0, 0);
        assert_eq!(config.settings(3).budget.attempt_timeout_ms, Some(50));
        assert_eq!(config.settings(99), &config.defaults);
        assert_eq!(config.rule_name(0), "default");
        assert_eq!(config.all_settings().count(), 4);
    }

    #[test]
    fn providers_are_parsed_and_referenced() {
        let config = parse(
            r#"{"chains":{"m":[{"model":"their-m","provider":"b"}]},
                "providers":{"b":{"base_path":"/api/v1/"},"c":{"cluster":"c_cluster"}}}"#,
        )
        .unwrap();
        let settings = &config.defaults;
        assert_eq!(settings.chain_for("m")[0].provider.as_deref(), Some("b"));
        assert_eq!(settings.providers["b"].cluster, "b");
        assert_eq!(
            settings.providers["b"].base_path.as_deref(),
            Some("/api/v1")
        );
        assert_eq!(settings.providers["c"].cluster, "c_cluster");
    }

    #[test]
    fn too_long_chain_is_rejected() {
        let chain: Vec<String> = (0..=MAX_CHAIN_LENGTH)
            .map(|i| format!("\"m{i}\""))
            .collect();
        let json = format!(r#"{{"chains":{{"a":[{}]}}}}"#, chain.join(","));
        assert_eq!(field_of(&json), r#"chains["a"]"#);
    }

    #[test]
    fn not_an_object_or_not_json() {
        assert_eq!(field_of("[1]"), "");
        assert!(parse("{").unwrap_err().message.contains("not valid JSON"));
        assert!(parse("[]").unwrap_err().to_string().contains("JSON object"));
    }

    #[test]
    fn acts_on_post_to_listed_paths_only() {
        let config = parse(r#"{"paths":["/v1/chat/completions","/openai/*"]}"#)
            .unwrap()
            .defaults;
        assert!(config.acts_on("POST", "/v1/chat/completions"));
        assert!(config.acts_on("POST", "/v1/chat/completions?x=1"));
        assert!(config.acts_on("POST", "/openai/deployments/x"));
        assert!(!config.acts_on("GET", "/v1/chat/completions"));
        assert!(!config.acts_on("POST", "/v1/chat/completions/x"));
        assert!(!config.acts_on("POST", "/v1/models"));
    }
}
