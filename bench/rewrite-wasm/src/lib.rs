//! The bench's Lua arm (`LUA_GATEWAY` and `LUA_ATTEMPT` in bench/src/envoy_config.rs)
//! written as a proxy-wasm filter, call for call: the gateway holds the request,
//! finds `model` in the buffered body and sets the router's retry headers; the
//! attempt strips them and, from the second attempt on, rewrites `model`.
//!
//! It measures the least a proxy-wasm filter doing the Lua script's job costs on
//! Envoy's V8, the floor under anything ai-fallback could do in wasm. Like the Lua
//! script it is a user's first version: it trusts its input, and it calls the SDK's
//! getters and setters, which panic on a status Envoy does not return for these
//! calls; a header or body that is absent makes it pass the request on.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { attempt: false }));
}}

/// The same chains as the Lua script's.
fn chain(model: &[u8]) -> Option<&'static [&'static str]> {
    match model {
        b"bench-model" | b"bench-model+status-502" => Some(&["bench-fallback"]),
        _ => None,
    }
}

const PATHS: [&[u8]; 4] = [
    b"/v1/chat/completions",
    b"/v1/completions",
    b"/v1/responses",
    b"/v1/embeddings",
];

const CONTROL: [&str; 6] = [
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-attempt-count",
];

/// Where the value of the first `"model"` key is, as the Lua pattern
/// `"model"%s*:%s*"([^"\\]*)"` finds it: the quoted value's span, quotes included.
fn model_span(body: &[u8]) -> Option<(usize, usize)> {
    const KEY: &[u8] = b"\"model\"";
    let mut from = 0;
    while let Some(found) = body
        .get(from..)?
        .windows(KEY.len())
        .position(|window| window == KEY)
    {
        let key_start = from + found;
        let mut at = key_start + KEY.len();
        let skip_space = |at: &mut usize| {
            while body.get(*at).is_some_and(u8::is_ascii_whitespace) {
                *at += 1;
            }
        };
        skip_space(&mut at);
        if body.get(at) == Some(&b':') {
            at += 1;
            skip_space(&mut at);
            if body.get(at) == Some(&b'"') {
                let value = at + 1;
                let len = body
                    .get(value..)?
                    .iter()
                    .position(|b| *b == b'"' || *b == b'\\')?;
                if body.get(value + len) == Some(&b'"') {
                    return Some((key_start, value + len + 1));
                }
            }
        }
        from = key_start + 1;
    }
    None
}

/// One per root id; the role is read once, when the plugin is configured, so that a
/// request pays for no property read the Lua script does not make.
struct Root {
    attempt: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.attempt =
            self.get_property(vec!["plugin_root_id"]).as_deref() == Some(b"rewrite_attempt");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.attempt {
            Some(Box::new(Attempt { number: 1 }))
        } else {
            Some(Box::new(Gateway { acting: false }))
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Gateway {
    acting: bool,
}

impl Context for Gateway {}

impl HttpContext for Gateway {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let post = self.get_http_request_header_bytes(":method").as_deref() == Some(b"POST");
        let path = self
            .get_http_request_header_bytes(":path")
            .unwrap_or_default();
        let path = path.split(|b| *b == b'?').next().unwrap_or_default();
        self.acting = post && !end_of_stream && PATHS.contains(&path);
        if self.acting {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.acting {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.acting = false;
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let chain = model_span(&body)
            .and_then(|(start, end)| body.get(start..end))
            .and_then(|span| span.rsplit(|b| *b == b'"').nth(1))
            .and_then(chain);
        if let Some(chain) = chain {
            self.set_http_request_header(
                "x-envoy-retry-on",
                Some("retriable-status-codes,reset,connect-failure,refused-stream"),
            );
            self.set_http_request_header("x-envoy-max-retries", Some(&chain.len().to_string()));
            self.set_http_request_header(
                "x-envoy-retriable-status-codes",
                Some("500,502,503,504,524"),
            );
        }
        Action::Continue
    }
}

struct Attempt {
    number: usize,
}

impl Context for Attempt {}

impl HttpContext for Attempt {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.number = self
            .get_http_request_header_bytes("x-envoy-attempt-count")
            .and_then(|count| std::str::from_utf8(&count).ok()?.parse().ok())
            .unwrap_or(1);
        for name in CONTROL {
            self.set_http_request_header(name, None);
        }
        if self.number < 2 || end_of_stream {
            self.number = 1;
            return Action::Continue;
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.number < 2 {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let attempt = std::mem::replace(&mut self.number, 1);
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let Some((start, end)) = model_span(&body) else {
            return Action::Continue;
        };
        let model = body
            .get(start..end)
            .and_then(|span| span.rsplit(|b| *b == b'"').nth(1));
        let Some(chain) = model.and_then(chain) else {
            return Action::Continue;
        };
        let next = chain
            .get(attempt - 2)
            .or(chain.last())
            .copied()
            .unwrap_or_default();
        let mut rewritten = Vec::with_capacity(body.len() + next.len());
        rewritten.extend_from_slice(body.get(..start).unwrap_or_default());
        rewritten.extend_from_slice(b"\"model\":\"");
        rewritten.extend_from_slice(next.as_bytes());
        rewritten.push(b'"');
        rewritten.extend_from_slice(body.get(end..).unwrap_or_default());
        self.set_http_request_body(0, body_size, &rewritten);
        self.set_http_request_header("content-length", Some(&rewritten.len().to_string()));
        Action::Continue
    }
}
