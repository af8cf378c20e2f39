//! The attempt role: the router runs it once per upstream attempt, on a fresh copy of
//! the buffered request, so it writes that attempt's model into the body.

use super::host;
use crate::body::rewritten_prefix;
use crate::plan::{Plan, ATTEMPT_COUNT_HEADER, PLAN_PROPERTY, ROUTER_CONTROL_HEADERS};
use log::{debug, warn};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::ops::Range;

pub struct Attempt {
    id: u32,
    /// The model value to replace in this attempt's body, once enough of it arrived.
    pending: Option<Rewrite>,
}

struct Rewrite {
    model_span: Range<usize>,
    literal: String,
}

impl Attempt {
    pub fn new(id: u32) -> Attempt {
        Attempt { id, pending: None }
    }
}

impl Context for Attempt {}

impl HttpContext for Attempt {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let attempt = host::request_header(ATTEMPT_COUNT_HEADER)
            .and_then(|count| count.parse::<u32>().ok())
            .unwrap_or(1);
        // The router has read its control headers by now; providers must not see them.
        // Removing is idempotent, which matters: attempts share one header map.
        for name in ROUTER_CONTROL_HEADERS {
            if let Err(status) = host::set_request_header(name, None) {
                warn!("#{} cannot remove {name} ({status:?})", self.id);
            }
        }
        if end_of_stream {
            return Action::Continue;
        }
        let Some(plan) = host::property(PLAN_PROPERTY).and_then(|bytes| Plan::decode(&bytes))
        else {
            return Action::Continue;
        };
        let Some(literal) = plan.literal_for_attempt(attempt) else {
            return Action::Continue;
        };
        // Computed from the original length, not the header, which an earlier attempt
        // may already have changed.
        let length = plan.rewritten_len(literal).to_string();
        if let Err(status) = host::set_request_header("content-length", Some(&length)) {
            warn!(
                "#{} cannot set content-length ({status:?}); not rewriting",
                self.id
            );
            return Action::Continue;
        }
        debug!("#{} attempt {attempt} sends model {literal}", self.id);
        self.pending = Some(Rewrite {
            literal: literal.to_string(),
            model_span: plan.model_span,
        });
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rewrite) = &self.pending else {
            return Action::Continue;
        };
        if body_size < rewrite.model_span.end && !end_of_stream {
            return Action::Pause;
        }
        let rewrite = self.pending.take();
        let Some(Rewrite {
            model_span,
            literal,
        }) = rewrite
        else {
            return Action::Continue;
        };
        let before_model = host::request_body(0, model_span.start);
        let current_model = host::request_body(model_span.start, model_span.len());
        match (before_model, current_model) {
            (Some(before), Some(current)) if current.first() == Some(&b'"') => {
                let prefix = rewritten_prefix(&before, &literal);
                if let Err(status) = host::replace_request_body_prefix(model_span.end, &prefix) {
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
}
