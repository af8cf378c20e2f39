//! The gateway role: runs once per client request, before the router.

use super::{host, Prepared};
use crate::plan::{decide, BodyDecision, PLAN_PROPERTY, RETRY_HEADER};
use crate::reply;
use log::{debug, warn};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct Gateway {
    id: u32,
    prepared: Rc<Prepared>,
    /// The request is one the gateway acts on and its body is being buffered.
    buffering: bool,
    /// A plan was made: the response may carry the attempt role's retry header.
    planned: bool,
}

impl Gateway {
    pub fn new(id: u32, prepared: Rc<Prepared>) -> Gateway {
        Gateway {
            id,
            prepared,
            buffering: false,
            planned: false,
        }
    }

    fn reject_too_large(&mut self) -> Action {
        self.buffering = false;
        let limit = self.prepared.config.max_body_bytes;
        debug!("#{} body over {limit} bytes: 413", self.id);
        if let Err(status) = host::send_json(413, &reply::body_too_large(limit)) {
            warn!("#{} cannot send the 413 answer: {status:?}", self.id);
        }
        Action::Pause
    }

    /// The whole body is buffered: plan the fallbacks and let the request go on.
    fn plan(&mut self, body_size: usize) -> Action {
        self.buffering = false;
        let Some(body) = host::request_body(0, body_size) else {
            warn!(
                "#{} cannot read the buffered body; passing it through",
                self.id
            );
            return Action::Continue;
        };
        let plan = match decide(&self.prepared.config, &body) {
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
        for (name, value) in self.prepared.router.headers(&plan) {
            if let Err(status) = host::set_request_header(name, Some(&value)) {
                warn!("#{} cannot set {name} ({status:?})", self.id);
            }
        }
        self.planned = true;
        debug!(
            "#{} up to {} fallbacks planned",
            self.id,
            plan.max_retries()
        );
        Action::Continue
    }
}

impl Context for Gateway {}

impl HttpContext for Gateway {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return Action::Continue;
        }
        let config = &self.prepared.config;
        let method = host::request_header(":method").unwrap_or_default();
        let path = host::request_header(":path").unwrap_or_default();
        if !config.acts_on(&method, &path) {
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
        if declared_len.is_some_and(|len| len > config.max_body_bytes) {
            return self.reject_too_large();
        }
        // Hold the headers: the router reads its retry headers when it gets them, and
        // they depend on the model, which is in the body.
        self.buffering = true;
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.buffering {
            return Action::Continue;
        }
        if body_size > self.prepared.config.max_body_bytes {
            return self.reject_too_large();
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.plan(body_size)
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Present only when the router could not retry (a circuit breaker, the
        // budget): the answer goes to the client as it came, without our marker.
        if self.planned {
            if let Err(status) = host::set_response_header(RETRY_HEADER, None) {
                warn!("#{} cannot remove {RETRY_HEADER} ({status:?})", self.id);
            }
        }
        Action::Continue
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
}
