//! ai-fallback: a proxy-wasm filter for Envoy that re-sends a failed OpenAI-compatible
//! request with its `model` rewritten to the next model of a fallback chain.
//!
//! Everything but `filter` is pure logic that never calls the host, so it is tested
//! on the host target; `filter` turns its decisions into proxy-wasm host calls.

pub mod access;
pub mod api;
pub mod body;
pub mod classify;
pub mod config;
pub mod cooldown;
pub mod outcome;
pub mod plan;
pub mod proto;
pub mod reply;

#[cfg(any(target_arch = "wasm32", test))]
mod filter;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    filter::start();
}}
