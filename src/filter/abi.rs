//! `Host` on Envoy, through the raw proxy-wasm ABI.
//!
//! proxy-wasm 0.2.5's own wrappers panic on any status they did not expect and its
//! header getters unwrap UTF-8; a panic kills the worker's VM. These call the same
//! imports and return every status as it came.

use super::host::{Body, Headers, Host, Map, Shared};
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use std::ptr::{null, null_mut};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

/// Envoy, the only real host.
pub struct Envoy;

fn status(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        3 => Err(Status::SerializationFailure),
        4 => Err(Status::ParseFailure),
        7 => Err(Status::Empty),
        8 => Err(Status::CasMismatch),
        _ => Err(Status::InternalFailure),
    }
}

/// Takes ownership of bytes the host allocated through the SDK's exported
/// allocator (`proxy_on_memory_allocate`, a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` is null or was returned by the host with `size` for the call just made.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

fn map_type(map: Map) -> u32 {
    match map {
        Map::Request => MapType::HttpRequestHeaders as u32,
        Map::Response => MapType::HttpResponseHeaders as u32,
    }
}

fn buffer_type(body: Body) -> u32 {
    match body {
        Body::Request => BufferType::HttpRequestBody as u32,
        Body::Response => BufferType::HttpResponseBody as u32,
        Body::PluginConfiguration => BufferType::PluginConfiguration as u32,
    }
}

/// A property path as the ABI wants it: segments separated by NUL bytes.
fn property_path(path: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(path.iter().map(|part| part.len() + 1).sum());
    for part in path {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    bytes.pop();
    bytes
}

/// Headers as the ABI wants them: a count, the lengths, then NUL-terminated names
/// and values.
fn serialized_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let length = |len: usize| u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&length(headers.len()));
    for (name, value) in headers {
        bytes.extend_from_slice(&length(name.len()));
        bytes.extend_from_slice(&length(value.len()));
    }
    for (name, value) in headers {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

impl Host for Envoy {
    fn now_ms(&self) -> u64 {
        let mut nanos = 0u64;
        match status(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }) {
            Ok(()) => nanos / 1_000_000,
            Err(_) => 0,
        }
    }

    fn log_level(&self) -> Option<LogLevel> {
        let mut level = 0u32;
        status(unsafe { proxy_get_log_level(&mut level) }).ok()?;
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        })
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        let (mut data, mut size) = (null_mut(), 0usize);
        let code = unsafe {
            proxy_get_header_map_value(
                map_type(map),
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        // Envoy hands back null for an empty value.
        status(code)
            .ok()
            .map(|()| unsafe { owned(data, size) }.unwrap_or_default())
    }

    fn headers(&self, map: Map) -> Option<Headers> {
        let (mut data, mut size) = (null_mut(), 0usize);
        let code = unsafe { proxy_get_header_map_pairs(map_type(map), &mut data, &mut size) };
        status(code).ok()?;
        let bytes = unsafe { owned(data, size) }?;
        Headers::parse(&bytes)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), Status> {
        status(unsafe {
            match value {
                Some(value) => proxy_replace_header_map_value(
                    map_type(map),
                    name.as_ptr(),
                    name.len(),
                    value.as_ptr(),
                    value.len(),
                ),
                None => proxy_remove_header_map_value(map_type(map), name.as_ptr(), name.len()),
            }
        })
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let path = property_path(path);
        let (mut data, mut size) = (null_mut(), 0usize);
        let code = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        status(code).ok()?;
        unsafe { owned(data, size) }
    }

    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        status(unsafe {
            proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len())
        })
    }

    fn body(&self, body: Body, start: usize, len: usize) -> Option<Vec<u8>> {
        if len == 0 {
            return Some(Vec::new());
        }
        let (mut data, mut size) = (null_mut(), 0usize);
        let code =
            unsafe { proxy_get_buffer_bytes(buffer_type(body), start, len, &mut data, &mut size) };
        status(code).ok()?;
        Some(unsafe { owned(data, size) }.unwrap_or_default())
    }

    fn set_body(&self, body: Body, start: usize, len: usize, bytes: &[u8]) -> Result<(), Status> {
        status(unsafe {
            proxy_set_buffer_bytes(buffer_type(body), start, len, bytes.as_ptr(), bytes.len())
        })
    }

    fn send_response(
        &self,
        status_code: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status> {
        let headers = serialized_headers(headers);
        status(unsafe {
            proxy_send_local_response(
                status_code,
                null(),
                0,
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        })
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut id = 0u32;
        status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        status(unsafe { proxy_increment_metric(id, offset) })
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        status(unsafe { proxy_record_metric(id, value) })
    }

    fn set_tick_period(&self, ms: u64) -> Result<(), Status> {
        let ms = u32::try_from(ms).unwrap_or(u32::MAX);
        status(unsafe { proxy_set_tick_period_milliseconds(ms) })
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Status> {
        status(unsafe { proxy_set_effective_context(context_id) })
    }

    fn resume_response(&self) -> Result<(), Status> {
        status(unsafe { proxy_continue_stream(StreamType::HttpResponse as u32) })
    }

    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<(), Status> {
        let (mut data, mut size) = (null_mut(), 0usize);
        let code = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut size,
            )
        };
        // The result, if any, is freed here: no function called needs it.
        drop(unsafe { owned(data, size) });
        status(code)
    }

    fn shared_data(&self, key: &str) -> Result<Shared, Status> {
        let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
        let code = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status(code) {
            Ok(()) => Ok((unsafe { owned(data, size) }, (cas != 0).then_some(cas))),
            Err(Status::NotFound) => Ok((None, None)),
            Err(other) => Err(other),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        status(unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        })
    }
}
