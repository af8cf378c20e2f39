//! Host calls that cannot panic. The SDK's trait methods unwrap every host status and a
//! panic kills the worker's VM, so the filter calls `proxy_wasm::hostcalls` directly
//! and treats a failed call as "not available".

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, MapType, Status};
use std::time::UNIX_EPOCH;

/// Host time in milliseconds since the Unix epoch (0 if unavailable).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// An integer property (Envoy returns integers as 8 little-endian bytes), if it fits.
pub fn property_u64<T: TryFrom<u64>>(path: Vec<&str>) -> Option<T> {
    let bytes = hostcalls::get_property(path).ok().flatten()?;
    let bytes: [u8; 8] = bytes.as_slice().try_into().ok()?;
    T::try_from(u64::from_le_bytes(bytes)).ok()
}

/// A property read as text (Envoy returns strings as raw bytes).
pub fn property_text(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// Sets (`Some`) or removes (`None`) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value)
}

pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

/// Sets (`Some`) or removes (`None`) a response header.
pub fn set_response_header(name: &str, value: Option<&str>) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value)
}

pub fn response_body(start: usize, len: usize) -> Option<Bytes> {
    if len == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(BufferType::HttpResponseBody, start, len)
        .ok()
        .flatten()
}

/// Appends `bytes` to the response body buffered in this callback (`len` bytes).
pub fn append_response_body(len: usize, bytes: &[u8]) -> Result<(), Status> {
    hostcalls::set_buffer(BufferType::HttpResponseBody, len, 0, bytes)
}

pub fn property(name: &str) -> Option<Bytes> {
    hostcalls::get_property(vec![name]).ok().flatten()
}

pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    hostcalls::set_property(vec![name], Some(value))
}

pub fn request_body(start: usize, len: usize) -> Option<Bytes> {
    if len == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(BufferType::HttpRequestBody, start, len)
        .ok()
        .flatten()
}

/// Replaces the first `len` bytes of the buffered request body with `bytes`.
pub fn replace_request_body_prefix(len: usize, bytes: &[u8]) -> Result<(), Status> {
    hostcalls::set_buffer(BufferType::HttpRequestBody, 0, len, bytes)
}

pub fn plugin_configuration(len: usize) -> Result<Bytes, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, len).map(Option::unwrap_or_default)
}

/// Ends the request with a local JSON answer.
pub fn send_json(status: u32, body: &str) -> Result<(), Status> {
    hostcalls::send_http_response(
        status,
        vec![("content-type", "application/json")],
        Some(body.as_bytes()),
    )
}
