//! Everything the filter asks of its host, as one trait: the roles call nothing else.
//!
//! Values come as bytes: a header or property is whatever a client, a provider or
//! Envoy put there, and is decoded only where text is needed (`text`), a value that
//! is not UTF-8 counting as absent. Calls return the host's status instead of
//! panicking; `abi` implements them on the raw proxy-wasm ABI for Envoy, and `fake`
//! in memory for unit tests, where any call can be made to fail.

use log::debug;
use proxy_wasm::types::{MetricType, Status};

/// Which header map a call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Map {
    Request,
    Response,
}

/// Which body buffer a call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Body {
    Request,
    Response,
    PluginConfiguration,
}

/// Shared data: a value and its compare-and-swap token.
pub type Shared = (Option<Vec<u8>>, Option<u32>);

pub trait Host {
    /// Milliseconds since the Unix epoch (0 if the host cannot tell).
    fn now_ms(&self) -> u64;
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // read by the wasm root
    fn log_level(&self) -> Option<proxy_wasm::types::LogLevel>;
    /// A header's value as the host holds it; `None` when absent or unreadable.
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Every header of a map, in one call; `None` when unreadable.
    fn headers(&self, map: Map) -> Option<Headers>;
    /// Sets (`Some`) or removes (`None`) a header.
    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), Status>;
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Writes filter state under a single-segment name.
    fn set_property(&self, name: &str, value: &[u8]) -> Result<(), Status>;
    /// Up to `len` bytes of a buffer from `start`; `None` when unreadable.
    fn body(&self, body: Body, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Replaces `len` bytes at `start` (Envoy: 0 for a prefix, or the end) by `bytes`.
    fn set_body(&self, body: Body, start: usize, len: usize, bytes: &[u8]) -> Result<(), Status>;
    /// Ends the stream with a local answer.
    fn send_response(
        &self,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status>;
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status>;
    /// Calls the root context's tick every `ms` milliseconds (0: never).
    fn set_tick_period(&self, ms: u64) -> Result<(), Status>;
    /// Makes the calls that follow act on stream `context_id` (from the root context).
    fn set_effective_context(&self, context_id: u32) -> Result<(), Status>;
    /// Lets a held answer go on.
    fn resume_response(&self) -> Result<(), Status>;
    /// Calls one of Envoy's foreign functions.
    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<(), Status>;
    fn shared_data(&self, key: &str) -> Result<Shared, Status>;
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status>;
}

/// A header map as one read: a request or answer that reads several headers asks
/// the host once (every host call crosses into Envoy and back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(Vec<u8>, Vec<u8>)>);

impl Headers {
    /// Envoy's serialized map: a little-endian u32 count, each pair's key and value
    /// lengths, then each key and value followed by a NUL. `None` when it does not
    /// add up.
    pub fn parse(bytes: &[u8]) -> Option<Headers> {
        let word = |at: usize| -> Option<usize> {
            let four: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(four)).ok()
        };
        let count = word(0)?;
        if count > bytes.len() / 8 {
            return None;
        }
        let mut data = count.checked_mul(8)?.checked_add(4)?;
        let mut pairs = Vec::with_capacity(count);
        for index in 0..count {
            let sizes = index.checked_mul(8)?.checked_add(4)?;
            let (key_len, value_len) = (word(sizes)?, word(sizes.checked_add(4)?)?);
            let mut field = |len: usize| -> Option<Vec<u8>> {
                let end = data.checked_add(len)?;
                let bytes = bytes.get(data..end.checked_add(1)?)?;
                let (field, nul) = bytes.split_at(len);
                data = end.checked_add(1)?;
                (nul == [0]).then(|| field.to_vec())
            };
            let key = field(key_len)?;
            let value = field(value_len)?;
            pairs.push((key, value));
        }
        Some(Headers(pairs))
    }

    /// A header's value (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value.as_slice())
    }

    /// A header's value as text; `None` when absent or not UTF-8.
    pub fn text(&self, name: &str) -> Option<String> {
        text(name, self.get(name)?.to_vec())
    }

    /// The answer's `:status`, 0 when missing or not a number.
    pub fn status(&self) -> u16 {
        self.get(":status").and_then(parse_number).unwrap_or(0)
    }
}

/// Bytes as text, or `None` (logged) when they are not UTF-8.
pub fn text(what: &str, bytes: Vec<u8>) -> Option<String> {
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(_) => {
            debug!("ai-fallback: {what} is not UTF-8; treated as absent");
            None
        }
    }
}

/// The text helpers every role uses; each decodes once, where the value is read.
pub trait HostExt: Host {
    fn set_request_header(&self, name: &str, value: Option<&str>) -> Result<(), Status> {
        self.set_header(Map::Request, name, value.map(str::as_bytes))
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) -> Result<(), Status> {
        self.set_header(Map::Response, name, value.map(str::as_bytes))
    }

    /// The answer's `:status`, 0 when missing or not a number.
    fn response_status(&self) -> u16 {
        self.header(Map::Response, ":status")
            .and_then(|status| parse_number(&status))
            .unwrap_or(0)
    }

    fn property_text(&self, path: &[&str]) -> Option<String> {
        text(
            path.last().copied().unwrap_or_default(),
            self.property(path)?,
        )
    }

    /// An integer property (Envoy returns integers as 8 little-endian bytes), if it fits.
    fn property_u64<T: TryFrom<u64>>(&self, path: &[&str]) -> Option<T> {
        let bytes: [u8; 8] = self.property(path)?.as_slice().try_into().ok()?;
        T::try_from(u64::from_le_bytes(bytes)).ok()
    }

    /// Ends the request with a local JSON answer.
    fn send_json(&self, status: u32, body: &str) -> Result<(), Status> {
        self.send_response(
            status,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }
}

impl<H: Host + ?Sized> HostExt for H {}

/// A decimal number in a header (surrounding spaces allowed), if it is one.
pub fn parse_number<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::Headers;

    fn serialized(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
        for (key, value) in pairs {
            bytes.extend((key.len() as u32).to_le_bytes());
            bytes.extend((value.len() as u32).to_le_bytes());
        }
        for (key, value) in pairs {
            bytes.extend(key.as_bytes());
            bytes.push(0);
            bytes.extend(*value);
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn a_serialized_map_reads_back_and_a_broken_one_is_refused() {
        let bytes = serialized(&[(":status", b"200"), ("x-empty", b""), ("bin", b"\xff\x00")]);
        let headers = Headers::parse(&bytes).unwrap();
        assert_eq!(headers.status(), 200);
        assert_eq!(headers.get("X-EMPTY"), Some(&b""[..]));
        assert_eq!(headers.get("bin"), Some(&b"\xff\x00"[..]));
        assert_eq!(headers.text("bin"), None, "not UTF-8: absent as text");
        assert_eq!(Headers::parse(&[]), None);
        for cut in 1..bytes.len() {
            assert_eq!(Headers::parse(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Headers::parse(&huge), None);
        assert_eq!(
            Headers::parse(&0u32.to_le_bytes()),
            Some(Headers::default())
        );
    }
}
