//! The routes the soak sends, what each request must get, and what it got.

use mock_upstream::{chaos_draw, chaos_percent, ChaosFailure};
use serde_json::Value;

/// A requested model, its fallbacks (the plugin's chain), and its share of requests.
pub struct Route {
    pub model: &'static str,
    pub chain: &'static [&'static str],
    pub weight: u64,
}

/// `steady` never fails; `chaos-P` models fail P% of the time.
pub const ROUTES: [Route; 5] = [
    Route {
        model: "flaky-a+chaos-40",
        chain: &["flaky-b+chaos-40", "steady"],
        weight: 40,
    },
    Route {
        model: "flaky-c+chaos-50",
        chain: &["flaky-d+chaos-50", "flaky-e+chaos-50"],
        weight: 25,
    },
    Route {
        model: "down+chaos-100",
        chain: &["flaky-b+chaos-40", "steady"],
        weight: 15,
    },
    Route {
        model: "steady-first",
        chain: &["flaky-b+chaos-40"],
        weight: 10,
    },
    Route {
        model: "healthy",
        chain: &[],
        weight: 10,
    },
];

/// What a request must get, from the mock's draws for its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// This model answers (the first of the chain whose draw is no failure).
    Success(String),
    /// This model's stream breaks after content began: no fallback is possible.
    CutStream(String),
    /// Every model failed; the last one this way.
    Exhausted(ChaosFailure),
    /// With cooldowns, which models are tried depends on the requests before: any
    /// answer their order allows (see `matches`).
    AnyOrder,
}

fn models_of(route: &Route) -> impl Iterator<Item = &'static str> {
    std::iter::once(route.model).chain(route.chain.iter().copied())
}

pub fn predict(seed: u64, route: &Route, stream: bool) -> Expected {
    let models = models_of(route);
    let mut last = None;
    for model in models {
        let failure = chaos_percent(model).and_then(|percent| chaos_draw(seed, model, percent));
        match failure {
            None => return Expected::Success(model.to_string()),
            Some(ChaosFailure::Break) if stream => return Expected::CutStream(model.to_string()),
            Some(failure) => last = Some(failure),
        }
    }
    match last {
        Some(failure) => Expected::Exhausted(failure),
        None => Expected::Success(route.model.to_string()),
    }
}

impl Expected {
    pub fn kind(&self) -> &'static str {
        match self {
            Expected::Success(_) => "success",
            Expected::CutStream(_) => "cut stream",
            Expected::Exhausted(ChaosFailure::Status(_)) => "exhausted (status)",
            Expected::Exhausted(ChaosFailure::Timeout) => "exhausted (timeout)",
            Expected::Exhausted(_) => "exhausted (no answer)",
            Expected::AnyOrder => "an answer some order of the chain gives",
        }
    }

    /// The chain has a healthy model that the request reaches (no stream broke
    /// after content began before it).
    pub fn reaches_a_healthy_model(&self) -> bool {
        matches!(self, Expected::Success(_))
    }

    /// With cooldowns: the chain has a model that never fails, and no stream broke
    /// before the request got there.
    pub fn has_a_healthy_model(&self, route: &Route, got: &Got) -> bool {
        *self == Expected::AnyOrder
            && models_of(route).any(|model| chaos_percent(model).is_none())
            && !matches!(got, Got::CutStream { .. })
    }

    pub fn matches(&self, got: &Got, route: &Route) -> bool {
        match (self, got) {
            (Expected::AnyOrder, Got::Success { model }) => models_of(route).any(|m| m == model),
            (Expected::AnyOrder, Got::CutStream { model }) => {
                models_of(route).any(|m| m == model && chaos_percent(m).is_some())
            }
            (Expected::AnyOrder, Got::JsonError { code, .. }) => {
                code == "fallbacks_exhausted"
                    && models_of(route).all(|m| chaos_percent(m).is_some())
            }
            (
                Expected::Success(model),
                Got::Success {
                    model: answered, ..
                },
            ) => model == answered,
            (Expected::CutStream(model), Got::CutStream { model: answered }) => model == answered,
            (Expected::Exhausted(failure), Got::JsonError { status, code }) => {
                code == "fallbacks_exhausted"
                    && match failure {
                        ChaosFailure::Status(expected) => status == expected,
                        // The router's own reply for the last attempt: 504 for its
                        // per-attempt timeout, 502/503 for a reset or garbage.
                        ChaosFailure::Timeout => *status == 504,
                        _ => matches!(status, 502 | 503),
                    }
            }
            _ => false,
        }
    }
}

/// What a request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    /// 200 with a complete chat completion, or a complete stream ending in [DONE].
    Success { model: String },
    /// A stream of well-formed events that the upstream broke: the client saw a
    /// transport error after content, never a stream that looks complete.
    CutStream { model: String },
    /// A clean OpenAI-style JSON error.
    JsonError { status: u16, code: String },
    /// No answer within the client's timeout.
    Hung,
    /// Anything else: not the JSON or SSE it should be, or no answer at all.
    Malformed(String),
}

impl Got {
    pub fn kind(&self) -> &'static str {
        match self {
            Got::Success { .. } => "success",
            Got::CutStream { .. } => "cut stream",
            Got::JsonError { .. } => "clean JSON error",
            Got::Hung => "hung",
            Got::Malformed(_) => "malformed",
        }
    }
}

/// Reads an answer: `cut` is the transport error that ended the body, if any.
pub fn classify_answer(
    status: u16,
    content_type: &str,
    body: &[u8],
    cut: Option<String>,
    stream: bool,
) -> Got {
    let text = String::from_utf8_lossy(body);
    let excerpt = || text.chars().take(200).collect::<String>();
    if status != 200 {
        if cut.is_some() || !content_type.starts_with("application/json") {
            return Got::Malformed(format!("{status} {content_type} {cut:?}: {}", excerpt()));
        }
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Got::Malformed(format!("{status} not JSON: {}", excerpt()));
        };
        let error = &value["error"];
        return match (error["message"].as_str(), error["code"].as_str()) {
            (Some(_), Some(code)) => Got::JsonError {
                status,
                code: code.to_string(),
            },
            _ => Got::Malformed(format!("{status} not an OpenAI error: {}", excerpt())),
        };
    }
    if !stream {
        if cut.is_some() {
            return Got::Malformed(format!("200 body cut: {cut:?}: {}", excerpt()));
        }
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Got::Malformed(format!("200 not JSON: {}", excerpt()));
        };
        return match (
            value["model"].as_str(),
            value["choices"][0]["message"]["content"].as_str(),
        ) {
            (Some(model), Some(_)) => Got::Success {
                model: model.to_string(),
            },
            _ => Got::Malformed(format!("200 not a chat completion: {}", excerpt())),
        };
    }
    if !content_type.starts_with("text/event-stream") {
        return Got::Malformed(format!("200 stream as {content_type}: {}", excerpt()));
    }
    // Complete events only: a cut may leave half an event at the end.
    let mut events: Vec<&str> = text.split("\n\n").collect();
    let tail = events.pop().unwrap_or_default();
    if cut.is_none() && !tail.is_empty() {
        return Got::Malformed(format!("stream ends mid-event: {}", excerpt()));
    }
    let mut model = None;
    let mut done = false;
    for event in events {
        let Some(data) = event.strip_prefix("data: ") else {
            return Got::Malformed(format!("not a data event: {event}"));
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return Got::Malformed(format!("event is not JSON: {data}"));
        };
        if chunk.get("error").is_some() {
            return Got::Malformed(format!("error event in a 200 stream: {data}"));
        }
        model = model.or_else(|| chunk["model"].as_str().map(str::to_string));
    }
    let Some(model) = model else {
        return Got::Malformed(format!("stream without a chunk: {cut:?} {}", excerpt()));
    };
    match (cut, done) {
        (None, true) => Got::Success { model },
        (Some(_), false) => Got::CutStream { model },
        (cut, done) => Got::Malformed(format!("stream: cut {cut:?}, [DONE] {done}: {}", excerpt())),
    }
}
