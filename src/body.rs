//! Reading and rewriting the top level of a JSON request body without parsing it.
//!
//! The filter needs two top-level fields (`model`, `stream`) and, later, to replace the
//! bytes of one value. A full parse and re-serialisation would cost time proportional
//! to the body and could change numbers, escapes or key order; this scanner walks the
//! top-level object once, skipping nested values by bracket matching, and reports where
//! the `model` value lies so that only those bytes are ever replaced.

use std::ops::Range;

/// What the top level of a request body says, as far as the filter cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopLevel {
    /// The raw bytes of the `model` value (quotes included for a string), if present.
    pub model: Option<Range<usize>>,
    /// `stream` is the literal `true`.
    pub stream: bool,
}

/// Why a body is not a JSON object the filter can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// The body does not start with `{` (after whitespace).
    NotAnObject,
    /// The JSON is broken at this byte offset.
    Malformed(usize),
    /// `model` appears twice at the top level: which one a provider reads is not
    /// defined, so the filter will not pick one.
    DuplicateModel,
}

/// Scans the top-level object of `body`.
pub fn scan(body: &[u8]) -> Result<TopLevel, ScanError> {
    let mut scanner = Scanner { body, pos: 0 };
    scanner.skip_whitespace();
    if scanner.peek() != Some(b'{') {
        return Err(ScanError::NotAnObject);
    }
    scanner.pos += 1;
    let mut found = TopLevel {
        model: None,
        stream: false,
    };
    scanner.skip_whitespace();
    if scanner.peek() == Some(b'}') {
        scanner.pos += 1;
        return scanner.finish(found);
    }
    loop {
        scanner.skip_whitespace();
        let key = scanner.string()?;
        scanner.skip_whitespace();
        scanner.expect(b':')?;
        scanner.skip_whitespace();
        let value = scanner.value()?;
        match key_name(body, key)? {
            KeyName::Model if found.model.is_some() => return Err(ScanError::DuplicateModel),
            KeyName::Model => found.model = Some(value),
            KeyName::Stream => found.stream = body.get(value) == Some(b"true".as_slice()),
            KeyName::Other => {}
        }
        scanner.skip_whitespace();
        match scanner.next_byte() {
            Some(b',') => continue,
            Some(b'}') => return scanner.finish(found),
            _ => return Err(ScanError::Malformed(scanner.pos.saturating_sub(1))),
        }
    }
}

/// Decodes the `model` value as a string; `None` when it is not a JSON string.
pub fn model_name(body: &[u8], span: Range<usize>) -> Option<String> {
    body.get(span)
        .filter(|raw| raw.first() == Some(&b'"'))
        .and_then(|raw| serde_json::from_slice::<String>(raw).ok())
}

/// The JSON literal for a model name, as written into a body.
pub fn model_literal(model: &str) -> String {
    // Serialising a str cannot fail; fall back to a quoted form that is still valid JSON
    // for the names the config accepts, rather than unwrapping.
    serde_json::to_string(model).unwrap_or_else(|_| format!("\"{model}\""))
}

/// The new first bytes of a body whose `model` value at `span` becomes `literal`:
/// everything before the value, then the literal. Envoy replaces a body prefix in
/// place, so only `span.end` bytes are ever rewritten, whatever the body's size.
pub fn rewritten_prefix(before_model: &[u8], literal: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(before_model.len() + literal.len());
    prefix.extend_from_slice(before_model);
    prefix.extend_from_slice(literal.as_bytes());
    prefix
}

enum KeyName {
    Model,
    Stream,
    Other,
}

fn key_name(body: &[u8], key: Range<usize>) -> Result<KeyName, ScanError> {
    let start = key.start;
    let raw = body.get(key).ok_or(ScanError::Malformed(start))?;
    let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
    let name = if inner.contains(&b'\\') {
        // An escaped key ("mod\u0065l") still names the field for a JSON reader.
        match serde_json::from_slice::<String>(raw) {
            Ok(decoded) => return Ok(classify(decoded.as_bytes())),
            Err(_) => return Err(ScanError::Malformed(start)),
        }
    } else {
        inner
    };
    Ok(classify(name))
}

fn classify(name: &[u8]) -> KeyName {
    match name {
        b"model" => KeyName::Model,
        b"stream" => KeyName::Stream,
        _ => KeyName::Other,
    }
}

struct Scanner<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek();
        self.pos += 1;
        byte
    }

    fn expect(&mut self, wanted: u8) -> Result<(), ScanError> {
        match self.next_byte() {
            Some(byte) if byte == wanted => Ok(()),
            _ => Err(ScanError::Malformed(self.pos.saturating_sub(1))),
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn finish(mut self, found: TopLevel) -> Result<TopLevel, ScanError> {
        self.skip_whitespace();
        if self.pos < self.body.len() {
            return Err(ScanError::Malformed(self.pos));
        }
        Ok(found)
    }

    /// A string starting at the current position; returns its span, quotes included.
    /// Its content is not validated: only where it ends matters here.
    fn string(&mut self) -> Result<Range<usize>, ScanError> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return Err(ScanError::Malformed(start));
        }
        let mut from = start + 1;
        loop {
            let at = find_any(self.body, from, b"\"\\").ok_or(ScanError::Malformed(start))?;
            if self.body.get(at) == Some(&b'"') {
                self.pos = at + 1;
                return Ok(start..self.pos);
            }
            from = at + 2; // past the backslash and the byte it escapes
        }
    }

    /// Any JSON value; nested containers are skipped by matching brackets, with an
    /// explicit stack so that deep nesting costs memory, never the call stack.
    fn value(&mut self) -> Result<Range<usize>, ScanError> {
        let start = self.pos;
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'{' | b'[') => self.container(),
            Some(_) => {
                while let Some(byte) = self.peek() {
                    match byte {
                        b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => {
                            self.pos += 1
                        }
                        _ => break,
                    }
                }
                let literal = self.body.get(start..self.pos).unwrap_or_default();
                if is_scalar(literal) {
                    Ok(start..self.pos)
                } else {
                    Err(ScanError::Malformed(start))
                }
            }
            None => Err(ScanError::Malformed(start)),
        }
    }

    fn container(&mut self) -> Result<Range<usize>, ScanError> {
        let start = self.pos;
        let mut closers: Vec<u8> = Vec::new();
        loop {
            // Only brackets and strings matter inside: jump from one to the next.
            self.pos =
                find_any(self.body, self.pos, b"\"{}[]").ok_or(ScanError::Malformed(start))?;
            let Some(byte) = self.peek() else {
                return Err(ScanError::Malformed(start));
            };
            match byte {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' => closers.push(b'}'),
                b'[' => closers.push(b']'),
                _ => {
                    if closers.pop() != Some(byte) {
                        return Err(ScanError::Malformed(self.pos));
                    }
                    if closers.is_empty() {
                        self.pos += 1;
                        return Ok(start..self.pos);
                    }
                }
            }
            self.pos += 1;
        }
    }
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` equal to `byte`, as their high bits. Bits above the first match
/// may be wrong (a borrow), so only the lowest one is used.
fn equal_bytes(word: u64, byte: u8) -> u64 {
    let x = word ^ (LOW_BITS * u64::from(byte));
    x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS
}

/// The first position at or after `from` holding one of `needles`: request bodies
/// are mostly long strings, so this is where the time goes.
#[cfg(not(target_arch = "wasm32"))]
fn find_any(body: &[u8], from: usize, needles: &[u8]) -> Option<usize> {
    find_any_in_words(body, from, needles)
}

/// Sixteen bytes a step with wasm's 128-bit SIMD (V8 runs it on SSE or NEON): twice
/// as fast in V8 as eight bytes a step, on the bench's chat bodies. V8, the runtime
/// of Envoy, Istio and Envoy Gateway, and Wasmtime have it.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
fn find_any(body: &[u8], from: usize, needles: &[u8]) -> Option<usize> {
    use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128, v128_load, v128_or};
    let mut pos = from;
    while let Some(chunk) = body.get(pos..pos.saturating_add(16)) {
        // SAFETY: `chunk` holds 16 readable bytes; `v128_load` needs no alignment.
        let block = unsafe { v128_load(chunk.as_ptr().cast::<v128>()) };
        let hits = needles.iter().fold(u8x16_splat(0), |hits, needle| {
            v128_or(hits, u8x16_eq(block, u8x16_splat(*needle)))
        });
        let mask = u8x16_bitmask(hits);
        if mask != 0 {
            return Some(pos + mask.trailing_zeros() as usize);
        }
        pos += 16;
    }
    find_any_in_words(body, pos, needles)
}

/// `find_any` eight bytes a step, then byte by byte for the last few.
fn find_any_in_words(body: &[u8], from: usize, needles: &[u8]) -> Option<usize> {
    let mut pos = from;
    while let Some(chunk) = body.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let hits = needles
            .iter()
            .fold(0, |hits, needle| hits | equal_bytes(word, *needle));
        if hits != 0 {
            return Some(pos + (hits.trailing_zeros() / 8) as usize);
        }
        pos += 8;
    }
    let rest = body.get(pos..)?;
    rest.iter()
        .position(|byte| needles.contains(byte))
        .map(|offset| pos + offset)
}

fn is_scalar(literal: &[u8]) -> bool {
    match literal {
        b"true" | b"false" | b"null" => true,
        number => is_json_number(number),
    }
}

/// RFC 8259's number: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`. Anything
/// else (`+1`, `01`, `1.`, `.5`, `1e`, `NaN`) is not JSON, and a provider's parser
/// may read it otherwise or not at all, so such a body is malformed.
fn is_json_number(number: &[u8]) -> bool {
    fn digits(rest: &[u8]) -> (usize, &[u8]) {
        let count = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        (count, rest.get(count..).unwrap_or_default())
    }
    let rest = number.strip_prefix(b"-").unwrap_or(number);
    let rest = match rest {
        [b'0', rest @ ..] => rest,
        [b'1'..=b'9', ..] => digits(rest).1,
        _ => return false,
    };
    let rest = match rest.strip_prefix(b".") {
        Some(fraction) => match digits(fraction) {
            (0, _) => return false,
            (_, rest) => rest,
        },
        None => rest,
    };
    let rest = match rest {
        [b'e' | b'E', exponent @ ..] => {
            let exponent = exponent
                .strip_prefix(b"+")
                .or_else(|| exponent.strip_prefix(b"-"))
                .unwrap_or(exponent);
            match digits(exponent) {
                (0, _) => return false,
                (_, rest) => rest,
            }
        }
        rest => rest,
    };
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_of(body: &str) -> Option<String> {
        let found = scan(body.as_bytes()).unwrap();
        found
            .model
            .and_then(|span| model_name(body.as_bytes(), span))
    }

    #[test]
    fn finds_model_and_stream() {
        let body =
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let found = scan(body.as_bytes()).unwrap();
        assert_eq!(&body[found.model.clone().unwrap()], "\"gpt-4o\"");
        assert!(found.stream);
        assert_eq!(model_of(body).as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn model_last_and_nested_models_ignored() {
        let body = r#" { "messages" : [ {"model":"inner"} ], "x": {"model": "deep"}, "model" : "outer" } "#;
        assert_eq!(model_of(body).as_deref(), Some("outer"));
    }

    #[test]
    fn stream_must_be_literal_true() {
        for (body, stream) in [
            (r#"{"stream":true}"#, true),
            (r#"{"stream":false}"#, false),
            (r#"{"stream":"true"}"#, false),
            (r#"{"stream":1}"#, false),
            (r#"{}"#, false),
        ] {
            assert_eq!(scan(body.as_bytes()).unwrap().stream, stream, "{body}");
        }
    }

    #[test]
    fn escaped_strings_and_keys() {
        let body = r#"{"a":"q\"}{[","mod\u0065l":"x\u00e9\"y","b":"\\"}"#;
        assert_eq!(model_of(body).as_deref(), Some("xé\"y"));
    }

    #[test]
    fn model_that_is_not_a_string() {
        for body in [r#"{"model":7}"#, r#"{"model":null}"#, r#"{"model":["a"]}"#] {
            let found = scan(body.as_bytes()).unwrap();
            assert!(found.model.is_some());
            assert_eq!(model_of(body), None, "{body}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        for body in ["", "  ", "[1]", "\"model\"", "null", "\u{feff}{}"] {
            assert_eq!(
                scan(body.as_bytes()),
                Err(ScanError::NotAnObject),
                "{body:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_json() {
        for body in [
            "{",
            r#"{"model"}"#,
            r#"{"model":}"#,
            r#"{"model":"a",}"#,
            r#"{"model":"a"} x"#,
            r#"{"a":[1,2}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":tru e}"#,
            r#"{model:"a"}"#,
            r#"{"a":1 "b":2}"#,
        ] {
            assert!(
                matches!(scan(body.as_bytes()), Err(ScanError::Malformed(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn numbers_must_be_json_numbers() {
        for number in [
            "0",
            "-0",
            "7",
            "-7",
            "10",
            "1.5",
            "-0.25",
            "0.0",
            "1e5",
            "1E5",
            "1e+5",
            "1e-5",
            "-2.5E-3",
            "10e05",
            "123456789012345678901234567890",
            "0e0",
        ] {
            let body = format!(r#"{{"n":{number},"model":"m"}}"#);
            assert!(
                serde_json::from_str::<serde_json::Value>(&body).is_ok(),
                "{body}"
            );
            assert_eq!(model_of(&body).as_deref(), Some("m"), "{body}");
            let last = format!(r#"{{"model":"m","n":{number}}}"#);
            assert_eq!(model_of(&last).as_deref(), Some("m"), "{last}");
        }
        for number in [
            "+1",
            "1.2.3e",
            "01",
            "-01",
            "00",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "1E-",
            "1.e5",
            "-.5",
            "--1",
            "NaN",
            "-NaN",
            "Infinity",
            "-Infinity",
            "0x10",
            "1E5.0",
            "1e5e5",
            "1-",
            "1+1",
            "0.5.",
            "e5",
            "-e5",
            "TRUE",
            "nul",
            "truex",
        ] {
            for body in [
                format!(r#"{{"n":{number},"model":"m"}}"#),
                format!(r#"{{"model":"m","n":{number}}}"#),
                format!(r#"{{"model":{number}}}"#),
            ] {
                assert!(
                    serde_json::from_str::<serde_json::Value>(&body).is_err(),
                    "{body}"
                );
                assert!(
                    matches!(scan(body.as_bytes()), Err(ScanError::Malformed(_))),
                    "{body}"
                );
            }
        }
    }

    #[test]
    fn duplicate_model_is_refused() {
        assert_eq!(
            scan(br#"{"model":"a","model":"b"}"#),
            Err(ScanError::DuplicateModel)
        );
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let depth = 100_000;
        let body = format!(
            r#"{{"model":"m","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(model_of(&body).as_deref(), Some("m"));
    }

    #[test]
    fn invalid_utf8_outside_model_is_fine() {
        let mut body = br#"{"a":""#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#"","model":"m"}"#);
        let found = scan(&body).unwrap();
        assert_eq!(
            model_name(&body, found.model.unwrap()).as_deref(),
            Some("m")
        );
    }

    #[test]
    fn find_any_matches_a_byte_by_byte_search() {
        let body: Vec<u8> = (0..300u32)
            .map(|i| b"ab\"c{x]\\yz"[(i * 7 % 10) as usize])
            .collect();
        for from in 0..body.len() {
            let expected = body[from..]
                .iter()
                .position(|b| b"\"\\".contains(b))
                .map(|i| from + i);
            assert_eq!(find_any(&body, from, b"\"\\"), expected, "{from}");
        }
        assert_eq!(find_any(b"abc", 5, b"a"), None);
        // Bytes just above and below a needle never match (borrow effects).
        assert_eq!(find_any(&[0x21, 0x23, 0xa2, 0x22], 0, b"\""), Some(3));
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let body = r#"{"messages":[{"content":"héllo ✓ 1.0e10"}],"model":"a","n":1.50}"#;
        let span = scan(body.as_bytes()).unwrap().model.unwrap();
        let literal = model_literal("b\"é");
        let mut rewritten = rewritten_prefix(&body.as_bytes()[..span.start], &literal);
        rewritten.extend_from_slice(&body.as_bytes()[span.end..]);
        assert_eq!(
            String::from_utf8(rewritten).unwrap(),
            r#"{"messages":[{"content":"héllo ✓ 1.0e10"}],"model":"b\"é","n":1.50}"#
        );
    }
}
