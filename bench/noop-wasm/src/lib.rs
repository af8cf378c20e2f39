//! A proxy-wasm HTTP filter that does nothing: every callback continues at once.
//!
//! Loaded where ai-fallback's two roles go (before the router and in the router's
//! upstream filters), it measures what Envoy charges for any wasm filter at all, so
//! that the bench can tell the plumbing's cost from ai-fallback's own.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {}
