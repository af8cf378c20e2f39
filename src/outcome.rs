//! How a planned request ended, and the answer the client gets when nothing worked.
//!
//! The gateway reads the records the attempts left and what reached it (an upstream
//! answer, or a local reply of the router or of the attempt role), decides the
//! outcome, and for an exhausted chain or budget replaces the answer with one
//! OpenAI-style JSON error that lists every attempt.

use crate::classify::Class;
use crate::plan::{AttemptRecord, Plan};
use serde_json::json;

/// How a request the filter acted on ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The filter did not act on it.
    Passthrough,
    /// The first model answered.
    Ok,
    /// A later model answered.
    FallbackOk,
    /// Every model failed.
    Exhausted,
    /// The time budget ran out.
    BudgetExceeded,
    /// A final answer (400, 401, ...) passed to the client as it came.
    ClientError,
    /// A stream that broke after content began.
    Truncated,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Passthrough => "passthrough",
            Outcome::Ok => "ok",
            Outcome::FallbackOk => "fallback_ok",
            Outcome::Exhausted => "exhausted",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::ClientError => "client_error",
            Outcome::Truncated => "truncated",
        }
    }
}

/// Where the answer that reached the gateway came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An upstream answer (`response.code_details` is `via_upstream`).
    Upstream,
    /// The router's own reply: the request's timeout ran out.
    RouterTimeout,
    /// Another reply of the router: a per-attempt timeout, a reset, a refused
    /// connection, an overflow.
    RouterOther,
    /// The attempt role refused to start an attempt with too little time left.
    BudgetRefused,
}

impl Source {
    /// Reads Envoy's `response.code_details`.
    pub fn from_details(details: &str, budget_refused: bool) -> Source {
        if budget_refused {
            Source::BudgetRefused
        } else if details.is_empty() || details == "via_upstream" {
            Source::Upstream
        } else if details == "response_timeout" {
            Source::RouterTimeout
        } else {
            Source::RouterOther
        }
    }
}

/// The outcome of a planned request from its attempts' records, the answering one
/// last; `first_answered`: that one is the request's first attempt.
pub fn outcome(
    records: &[AttemptRecord],
    first_answered: bool,
    source: Source,
    status: u16,
) -> Outcome {
    match source {
        Source::RouterTimeout | Source::BudgetRefused => return Outcome::BudgetExceeded,
        Source::RouterOther => return Outcome::Exhausted,
        Source::Upstream => {}
    }
    let class = records.last().and_then(AttemptRecord::class);
    match class {
        // A refused key with no other provider left is the client's to see.
        Some(Class::Final | Class::ProviderDenied) => Outcome::ClientError,
        Some(class) if class.is_retryable() => Outcome::Exhausted,
        _ if status >= 500 => Outcome::Exhausted,
        _ if !first_answered => Outcome::FallbackOk,
        _ => Outcome::Ok,
    }
}

/// The error a client gets when the filter ends the request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapedError {
    pub status: u32,
    pub body: String,
}

/// The longest provider message quoted in an error.
const EXCERPT_CHARS: usize = 160;

/// The answer for an exhausted chain or budget; `None` for other outcomes, whose
/// answer goes to the client as it came.
pub fn shaped_error(
    plan: &Plan,
    records: &[AttemptRecord],
    outcome: Outcome,
    status: u16,
    now_ms: u64,
) -> Option<ShapedError> {
    let (status, error_type, code, headline) = match outcome {
        Outcome::BudgetExceeded => (
            504,
            "timeout",
            "budget_exceeded",
            match plan.budget_ms {
                Some(budget) => format!(
                    "The request's time budget of {budget} ms ran out after {} attempt(s).",
                    records.len()
                ),
                None => format!("The request timed out after {} attempt(s).", records.len()),
            },
        ),
        Outcome::Exhausted => (
            if (400..=599).contains(&status) {
                status
            } else {
                502
            },
            "upstream_error",
            "fallbacks_exhausted",
            exhausted_headline(plan, records),
        ),
        _ => return None,
    };
    let attempts: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            let end = records
                .get(index + 1)
                .map_or(now_ms, |next| next.start_ms)
                .saturating_sub(record.start_ms);
            let ms = record.end_ms.or(record.first_byte_ms).unwrap_or(end);
            let result = match record.status {
                Some(status) => status.to_string(),
                None => "no answer (timeout or reset)".to_string(),
            };
            (record, ms, result)
        })
        .collect();
    let mut message = headline;
    for (record, ms, result) in &attempts {
        message.push_str(&format!(" {}: {result} after {ms} ms", record.model));
        if let Some(excerpt) = &record.error_excerpt {
            message.push_str(&format!(" ({excerpt:?})"));
        }
        message.push(';');
    }
    message.pop();
    message.push('.');
    let attempts_json: Vec<_> = attempts
        .iter()
        .map(|(record, ms, _)| {
            json!({
                "model": record.model,
                "status": record.status,
                "class": record.class.as_deref().unwrap_or("no_answer"),
                "ms": ms,
            })
        })
        .collect();
    let body = json!({
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "attempts": attempts_json,
        }
    });
    Some(ShapedError {
        status: u32::from(status),
        body: body.to_string(),
    })
}

/// What an exhausted request's error says first. When the last attempt's model had
/// a next one, the router refused to retry: Envoy does not retry once a 1xx
/// (`100 Continue`, `103 Early Hints`) went on to the client, nor past the
/// cluster's retry circuit breaker; the error says so rather than "all failed".
fn exhausted_headline(plan: &Plan, records: &[AttemptRecord]) -> String {
    let cut_short = records
        .last()
        .and_then(|last| Some((last.step(), last.class()?)))
        .is_some_and(|(step, class)| plan.has_next(step, class));
    if cut_short {
        format!(
            "{} of {} model(s) tried: Envoy could not try the next one (a 1xx answer \
             had already reached the client, the cluster's retry limit was reached, or \
             the body was larger than the route's request_body_buffer_limit).",
            records.len(),
            plan.max_retries() + 1
        )
    } else {
        format!("All {} attempt(s) failed.", records.len())
    }
}

/// A short excerpt of a provider's error message from its answer's body: the
/// `message` of an OpenAI-style error, or a `detail`/`message` string. Nothing from a
/// body that is not JSON (a CDN's HTML page says nothing useful), and nothing at all
/// from a message that might quote a credential (see [`may_hold_a_secret`]): a
/// provider that echoes the key Envoy injected must not hand it to the client.
pub fn provider_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = value
        .pointer("/error/message")
        .or_else(|| value.get("error").filter(|e| e.is_string()))
        .or_else(|| value.get("detail"))
        .or_else(|| value.get("message"))?
        .as_str()?;
    // Judged on the whole text: a key cut at the excerpt's end would still leak.
    if may_hold_a_secret(text) {
        return None;
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|word| word.chars().filter(|c| !c.is_control()).collect())
        .collect();
    let joined = words.join(" ");
    let mut excerpt: String = joined.chars().take(EXCERPT_CHARS).collect();
    if joined.chars().count() > EXCERPT_CHARS {
        excerpt.push('…');
    }
    (!excerpt.is_empty()).then_some(excerpt)
}

/// The characters keys and tokens are written with (base64 and base64url included).
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-+/=.".contains(c)
}

/// A run of key characters this long is taken for a key, whatever it says.
const KEY_RUN: usize = 16;

/// Words that announce a credential; a message that has one is never quoted.
const CREDENTIAL_WORDS: [&str; 15] = [
    "key",
    "keys",
    "apikey",
    "api_key",
    "token",
    "authorization",
    "authorisation",
    "auth",
    "bearer",
    "secret",
    "password",
    "passwd",
    "credential",
    "credentials",
    "signature",
];

/// How known keys and tokens begin (OpenAI, Groq, Hugging Face, GitHub, xAI, Google,
/// a JWT, ...).
const KEY_PREFIXES: [&str; 14] = [
    "sk-",
    "sk_",
    "gsk_",
    "rk_",
    "pk_",
    "hf_",
    "ghp_",
    "gho_",
    "github_pat_",
    "xai-",
    "AIza",
    "eyJ",
    "nvapi-",
    "pplx-",
];

/// Whether `text` might quote a credential. Errs on the side of yes: a message that
/// is not quoted costs the operator a hint, a key that is quoted costs the key.
///
/// Yes when it has: a run of 16 or more key characters; a word such as `key`,
/// `token`, `authorization`, `bearer`, `secret`, `password`; an `=`; after a `:`,
/// a value of 6 or more key characters that is not a plain word; in quotes, a
/// single token of 6 or more characters; a word that begins like a known key; a
/// part of a word, 6 or more letters and digits, that mixes both (or mixes case
/// like a random string).
pub fn may_hold_a_secret(text: &str) -> bool {
    if text.contains('=') {
        return true;
    }
    let runs: Vec<(usize, &str)> = key_runs(text).collect();
    if runs.iter().any(|(_, run)| run.chars().count() >= KEY_RUN) {
        return true;
    }
    let has_credential_word = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .flat_map(|word| std::iter::once(word).chain(word.split('_')))
        .any(|word| {
            CREDENTIAL_WORDS
                .iter()
                .any(|credential| word.eq_ignore_ascii_case(credential))
        });
    if has_credential_word {
        return true;
    }
    runs.iter().any(|(at, run)| {
        let before = text.get(..*at).unwrap_or_default();
        let after = text.get(at + run.len()..).unwrap_or_default();
        KEY_PREFIXES.iter().any(|prefix| run.starts_with(prefix))
            || run
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(looks_random)
            || (run.len() >= 6 && after_a_colon(before) && !is_plain_word(run))
            || (run.len() >= 6 && quoted(before, after))
    })
}

/// The maximal runs of key characters in `text`, with their byte offsets.
fn key_runs(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while rest.next_if(|(_, c)| !is_key_char(*c)).is_some() {}
        let (start, _) = *rest.peek()?;
        let mut end = start;
        while let Some((at, c)) = rest.next_if(|(_, c)| is_key_char(*c)) {
            end = at + c.len_utf8();
        }
        Some((start, text.get(start..end).unwrap_or_default()))
    })
}

/// Letters and digits mixed in 6 or more characters (`abc123`), or a random mix of
/// cases in 8 or more letters (`ZqXwLpMn`, not `OpenRouter`).
fn looks_random(part: &str) -> bool {
    let letters = part.chars().filter(char::is_ascii_alphabetic).count();
    let digits = part.chars().filter(char::is_ascii_digit).count();
    let inner_capitals = part
        .chars()
        .skip(1)
        .filter(char::is_ascii_uppercase)
        .count();
    let lowercase = part.chars().any(|c| c.is_ascii_lowercase());
    (part.len() >= 6 && letters > 0 && digits > 0)
        || (part.len() >= 8 && lowercase && inner_capitals >= 2)
}

/// A word of letters only, capitalised at most at its start.
fn is_plain_word(run: &str) -> bool {
    run.chars().all(|c| c.is_ascii_alphabetic())
        && !run.chars().skip(1).any(|c| c.is_ascii_uppercase())
}

const QUOTES: [char; 3] = ['"', '\'', '`'];

/// Whether the text before a run ends with a `:`, then spaces or a quote.
fn after_a_colon(before: &str) -> bool {
    before
        .trim_end_matches(|c: char| c.is_whitespace() || QUOTES.contains(&c))
        .ends_with(':')
}

/// Whether a run is all there is between two quotes.
fn quoted(before: &str, after: &str) -> bool {
    before.ends_with(QUOTES) && after.starts_with(QUOTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        model: &str,
        start_ms: u64,
        status: Option<u16>,
        class: Option<Class>,
    ) -> AttemptRecord {
        AttemptRecord {
            model: model.into(),
            start_ms,
            status,
            class: class.map(|c| c.name().to_string()),
            ..AttemptRecord::default()
        }
    }

    fn plan(budget_ms: Option<u64>) -> Plan {
        Plan {
            body_len: 20,
            model_span: 9..12,
            stream: false,
            chain: vec!["\"a\"".into(), "\"b\"".into()],
            context_chain: vec![],
            rule: 0,
            started_ms: 1000,
            budget_ms,
            requested_index: 0,
            chain_providers: vec![None, None],
            context_providers: vec![],
            content_chain: vec![],
            content_providers: vec![],
            path: None,
        }
    }

    #[test]
    fn outcomes() {
        let failed = record("a", 1000, Some(502), Some(Class::FailureStatus));
        let ok = record("b", 1010, Some(200), Some(Class::Success));
        let final_answer = record("a", 1000, Some(401), Some(Class::Final));
        use Outcome::*;
        assert_eq!(
            outcome(std::slice::from_ref(&ok), true, Source::Upstream, 200),
            Ok
        );
        assert_eq!(
            outcome(&[failed.clone(), ok], false, Source::Upstream, 200),
            FallbackOk
        );
        assert_eq!(
            outcome(std::slice::from_ref(&failed), true, Source::Upstream, 502),
            Exhausted
        );
        assert_eq!(
            outcome(&[final_answer], true, Source::Upstream, 401),
            ClientError
        );
        assert_eq!(
            outcome(
                std::slice::from_ref(&failed),
                true,
                Source::RouterTimeout,
                504
            ),
            BudgetExceeded
        );
        assert_eq!(
            outcome(
                std::slice::from_ref(&failed),
                true,
                Source::BudgetRefused,
                504
            ),
            BudgetExceeded
        );
        assert_eq!(
            outcome(&[failed], true, Source::RouterOther, 503),
            Exhausted
        );
        let cancelled_hedge = AttemptRecord {
            hedged: true,
            class: Some("cancelled".into()),
            ..AttemptRecord::default()
        };
        let ok = AttemptRecord {
            class: Some("success".into()),
            ..AttemptRecord::default()
        };
        assert_eq!(
            outcome(&[cancelled_hedge, ok], true, Source::Upstream, 200),
            Ok,
            "the first model answered before the hedged one"
        );
        assert_eq!(outcome(&[], true, Source::Upstream, 503), Exhausted);
    }

    #[test]
    fn sources() {
        assert_eq!(
            Source::from_details("via_upstream", false),
            Source::Upstream
        );
        assert_eq!(
            Source::from_details("response_timeout", false),
            Source::RouterTimeout
        );
        assert_eq!(
            Source::from_details("upstream_per_try_timeout", false),
            Source::RouterOther
        );
        assert_eq!(
            Source::from_details("via_upstream", true),
            Source::BudgetRefused
        );
    }

    #[test]
    fn shaped_error_lists_every_attempt() {
        let mut first = record("a", 1000, Some(502), Some(Class::FailureStatus));
        first.error_excerpt = Some("No instances available".into());
        let second = record("b", 1040, None, None);
        let shaped =
            shaped_error(&plan(None), &[first, second], Outcome::Exhausted, 503, 1340).unwrap();
        assert_eq!(shaped.status, 503);
        let value: serde_json::Value = serde_json::from_str(&shaped.body).unwrap();
        let error = &value["error"];
        assert_eq!(error["code"], "fallbacks_exhausted");
        assert_eq!(error["type"], "upstream_error");
        let message = error["message"].as_str().unwrap();
        assert_eq!(
            message,
            "All 2 attempt(s) failed. a: 502 after 40 ms (\"No instances available\"); \
             b: no answer (timeout or reset) after 300 ms."
        );
        assert_eq!(error["attempts"][1]["class"], "no_answer");
        assert_eq!(error["attempts"][0]["status"], 502);
    }

    #[test]
    fn budget_errors_are_504() {
        let records = [record("a", 1000, None, None)];
        let shaped = shaped_error(
            &plan(Some(800)),
            &records,
            Outcome::BudgetExceeded,
            504,
            1800,
        )
        .unwrap();
        assert_eq!(shaped.status, 504);
        assert!(shaped.body.contains("time budget of 800 ms"));
        assert!(shaped.body.contains("\"code\":\"budget_exceeded\""));
        assert_eq!(
            shaped_error(&plan(None), &records, Outcome::Ok, 200, 0),
            None
        );
    }

    #[test]
    fn provider_messages_are_bounded_and_masked() {
        assert_eq!(
            provider_message(br#"{"error":{"message":"The model is overloaded"}}"#).as_deref(),
            Some("The model is overloaded")
        );
        assert_eq!(
            provider_message(br#"{"detail":"No instances available"}"#).as_deref(),
            Some("No instances available")
        );
        assert_eq!(
            provider_message(br#"{"error":"bad key sk-abcdef1234 used"}"#),
            None
        );
        assert_eq!(provider_message(b"<html>502</html>"), None);
        let long = format!(r#"{{"detail":"{}"}}"#, "word ".repeat(100));
        let excerpt = provider_message(long.as_bytes()).unwrap();
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS + 1);
    }

    /// The shapes providers quote keys in, for long and short keys; none may come
    /// back in an excerpt.
    #[test]
    fn a_message_that_may_quote_a_key_is_never_quoted() {
        let keys = [
            "gsk_4fJ9qLx2VbN7sT1wZp8RkD3mY6hC0eGa5uWiQo",
            "sk-proj-abc123def456",
            "Zq7Xw2Lp4Mn8",
            "k3yZ9qW1",
            "abcdwxyz",
            "ZqXwLpMnRt",
            "12345678",
        ];
        let shapes = [
            "model not found for key=KEY",
            "Incorrect API key provided: KEY.",
            "Authorization='Bearer KEY'",
            "invalid credential \"KEY\"",
            "the key KEY is not valid for this model",
            "request denied: Bearer KEY",
            "KEY",
            "upstream refused KEY today",
            "token KEY expired",
            "x-api-key: KEY",
            "denied: `KEY`",
            "secret KEY",
            "password KEY",
            "api_key KEY rejected",
            "rejected 'KEY'",
            "authorisation failed for KEY",
        ];
        for key in keys {
            for shape in shapes {
                let text = shape.replace("KEY", key);
                // Shapes without context are caught only for keys that look random.
                let without_context = ["KEY", "upstream refused KEY today"].contains(&shape);
                let plain_key = key.chars().all(|c| c.is_ascii_lowercase())
                    || key.chars().all(|c| c.is_ascii_digit());
                if without_context && plain_key {
                    continue;
                }
                for body in [
                    json!({"error": {"message": text}}),
                    json!({"error": text}),
                    json!({"detail": text}),
                    json!({"message": text}),
                ] {
                    let excerpt = provider_message(body.to_string().as_bytes());
                    assert_eq!(excerpt, None, "{body}");
                }
            }
        }
    }

    #[test]
    fn plain_provider_messages_are_still_quoted() {
        for text in [
            "No instances available",
            "chute not found",
            "The model is overloaded. Please try again later.",
            "upstream provider error",
            "mock failure 503 for model y+status-503",
            "Error: upstream provider error",
            "model gpt-4o-mini is overloaded",
            "llama-3.3-70b has no capacity (HTTP 503)",
            "This model's maximum context length is 8192 tokens. However, your \
             messages resulted in 9000 tokens.",
            "Service OpenRouter is unavailable",
        ] {
            let body = json!({"error": {"message": text}}).to_string();
            assert_eq!(
                provider_message(body.as_bytes()).as_deref(),
                Some(text),
                "{text}"
            );
        }
    }

    #[test]
    fn what_may_hold_a_secret() {
        for (text, secret) in [
            ("a run of sixteen chars: abcdefghijklmnop", true),
            ("abcdefghijklmnop", true),
            ("abcdefghijklmno", false),
            ("x = y", true),
            ("code: abc123", true),
            ("Error: Upstream failure", false),
            ("Error: HTTPError", true), // not a plain word after a colon: in doubt
            ("Error: SERVICE_UNAVAILABLE", true),
            ("\"abcdef\" is odd", true),
            ("\"abcde\" is fine", false),
            ("org-abc123 is limited", true),
            ("sk-ab", true),
            ("AIzaSy", true),
            ("eyJhb", true),
            ("OpenRouter DeepSeek", false),
            ("ZqXwLpMn", true),
            ("KEYS rotated", true),
            ("", false),
        ] {
            assert_eq!(may_hold_a_secret(text), secret, "{text:?}");
        }
    }
}
