//! Property test of the body scanner and the model rewrite, on generated JSON: random
//! objects with `model` at a random position (its key sometimes escaped), nested
//! decoys named `model`, unicode and escapes in strings, numbers of every JSON form,
//! random whitespace. For each body: the scan finds the model and the stream flag
//! that a JSON parser sees, and the rewrite keeps every byte but the model's value,
//! so that `serde_json` reads the same document with only `model` changed.
//!
//! Deterministic: case `i` uses seed `BASE_SEED + i`; `REWRITE_PROPERTY_SEED=<n>`
//! runs one case (as named in a failure message), `REWRITE_PROPERTY_CASES` the count.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ai_fallback::body::{model_literal, model_name, rewritten_prefix, scan};
use serde_json::Value;

const BASE_SEED: u64 = 0x5eed_0000;
const DEFAULT_CASES: u64 = 3000;

/// SplitMix64: small, seedable, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn whitespace(rng: &mut Rng, out: &mut String) {
    for _ in 0..rng.below(4).saturating_sub(1) {
        out.push(*rng.pick(&[' ', '\t', '\n', '\r']));
    }
}

/// A JSON string literal (quotes included) and the text it decodes to.
fn string(rng: &mut Rng, max_len: usize) -> (String, String) {
    let mut literal = String::from('"');
    let mut decoded = String::new();
    for _ in 0..rng.below(max_len + 1) {
        match rng.below(10) {
            0..=3 => {
                let c = char::from(b' ' + rng.below(95) as u8);
                if c == '"' || c == '\\' {
                    literal.push('\\');
                }
                literal.push(c);
                decoded.push(c);
            }
            4 | 5 => {
                let c = *rng.pick(&['é', 'ö', '✓', '日', '本', '🎉', '\u{2028}', '\u{7f}', 'ß']);
                literal.push(c);
                decoded.push(c);
            }
            6 => {
                let (escape, c) = *rng.pick(&[
                    ("\\\"", '"'),
                    ("\\\\", '\\'),
                    ("\\/", '/'),
                    ("\\b", '\u{8}'),
                    ("\\f", '\u{c}'),
                    ("\\n", '\n'),
                    ("\\r", '\r'),
                    ("\\t", '\t'),
                ]);
                literal.push_str(escape);
                decoded.push(c);
            }
            7 => {
                let c = *rng.pick(&['\u{0}', '\u{1f}', 'A', 'é', '\u{2028}', '"', '\\', '}']);
                literal.push_str(&format!("\\u{:04x}", u32::from(c)));
                decoded.push(c);
            }
            8 => {
                // A character outside the BMP as an escaped surrogate pair.
                literal.push_str("\\ud83d\\ude00");
                decoded.push('😀');
            }
            _ => {
                let piece = *rng.pick(&["model", "\"model\":", "{", "}", "[", "]", ",", ":"]);
                let escaped = piece.replace('"', "\\\"");
                literal.push_str(&escaped);
                decoded.push_str(piece);
            }
        }
    }
    literal.push('"');
    (literal, decoded)
}

fn number(rng: &mut Rng) -> String {
    let mut text = String::new();
    if rng.chance(30) {
        text.push('-');
    }
    if rng.chance(20) {
        text.push('0');
    } else {
        text.push(char::from(b'1' + rng.below(9) as u8));
        for _ in 0..rng.below(12) {
            text.push(char::from(b'0' + rng.below(10) as u8));
        }
    }
    if rng.chance(40) {
        text.push('.');
        for _ in 0..=rng.below(8) {
            text.push(char::from(b'0' + rng.below(10) as u8));
        }
    }
    if rng.chance(30) {
        text.push(*rng.pick(&['e', 'E']));
        if rng.chance(50) {
            text.push(*rng.pick(&['+', '-']));
        }
        text.push_str(&rng.below(30).to_string());
    }
    text
}

/// Any JSON value, nested at most `depth` more levels; nested objects may hold
/// `model` and `stream` keys of their own, which the scanner must not take.
fn value(rng: &mut Rng, depth: usize, out: &mut String) {
    let kind = if depth == 0 {
        rng.below(4)
    } else {
        rng.below(6)
    };
    match kind {
        0 => out.push_str(&string(rng, 12).0),
        1 => out.push_str(&number(rng)),
        2 => {
            let literal: &&str = rng.pick(&["true", "false", "null"]);
            out.push_str(literal);
        }
        3 => out.push_str(&string(rng, 3).0),
        4 => {
            out.push('[');
            let len = rng.below(4);
            for i in 0..len {
                whitespace(rng, out);
                value(rng, depth - 1, out);
                whitespace(rng, out);
                if i + 1 < len {
                    out.push(',');
                }
            }
            whitespace(rng, out);
            out.push(']');
        }
        _ => {
            out.push('{');
            let len = rng.below(4);
            for i in 0..len {
                whitespace(rng, out);
                let key = match rng.below(4) {
                    0 => "\"model\"".to_string(),
                    1 => "\"stream\"".to_string(),
                    _ => {
                        let (key, _) = string(rng, 6);
                        format!("{}#{i}\"", key.strip_suffix('"').unwrap())
                    }
                };
                out.push_str(&key);
                whitespace(rng, out);
                out.push(':');
                whitespace(rng, out);
                value(rng, depth - 1, out);
                whitespace(rng, out);
                if i + 1 < len {
                    out.push(',');
                }
            }
            whitespace(rng, out);
            out.push('}');
        }
    }
}

/// One generated body.
struct Case {
    body: Vec<u8>,
    /// The model value's literal as written, and the name it decodes to.
    model_literal: String,
    model: String,
    /// The top level has `"stream": true`.
    stream: bool,
}

fn case(rng: &mut Rng) -> Case {
    let members = rng.below(8);
    let model_at = rng.below(members + 1);
    let stream_at = if rng.chance(50) {
        Some(rng.below(members + 1))
    } else {
        None
    };
    let (model_lit, model) = string(rng, 24);
    let mut stream = false;
    let mut body = String::new();
    whitespace(rng, &mut body);
    body.push('{');
    let mut first = true;
    let mut separator = |rng: &mut Rng, body: &mut String| {
        if !first {
            whitespace(rng, body);
            body.push(',');
        }
        first = false;
        whitespace(rng, body);
    };
    for index in 0..=members {
        if index == model_at {
            separator(rng, &mut body);
            let key = *rng.pick(&[
                "\"model\"",
                "\"model\"",
                "\"mod\\u0065l\"",
                "\"\\u006Dodel\"",
            ]);
            body.push_str(key);
            whitespace(rng, &mut body);
            body.push(':');
            whitespace(rng, &mut body);
            body.push_str(&model_lit);
        }
        if Some(index) == stream_at {
            separator(rng, &mut body);
            let (literal, is_true) = *rng.pick(&[
                ("true", true),
                ("false", false),
                ("\"true\"", false),
                ("1", false),
            ]);
            body.push_str("\"stream\"");
            whitespace(rng, &mut body);
            body.push(':');
            whitespace(rng, &mut body);
            body.push_str(literal);
            stream = is_true;
        }
        if index < members {
            separator(rng, &mut body);
            // A unique plain suffix keeps decoded keys distinct and never `model`.
            let (key, _) = string(rng, 8);
            body.push_str(key.strip_suffix('"').unwrap());
            body.push_str(&format!("#{index}\""));
            whitespace(rng, &mut body);
            body.push(':');
            whitespace(rng, &mut body);
            value(rng, 4, &mut body);
        }
    }
    whitespace(rng, &mut body);
    body.push('}');
    whitespace(rng, &mut body);
    Case {
        body: body.into_bytes(),
        model_literal: model_lit,
        model,
        stream,
    }
}

fn check(seed: u64) {
    let mut rng = Rng(seed);
    let case = case(&mut rng);
    let body = &case.body;
    let shown = || String::from_utf8_lossy(body).into_owned();
    let parsed: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: generator made invalid JSON ({e}): {}",
            shown()
        )
    });
    assert_eq!(
        parsed["model"],
        Value::String(case.model.clone()),
        "seed {seed}"
    );

    let top = scan(body).unwrap_or_else(|e| panic!("seed {seed}: {e:?} for {}", shown()));
    let span = top
        .model
        .clone()
        .unwrap_or_else(|| panic!("seed {seed}: no model in {}", shown()));
    assert_eq!(
        &body[span.clone()],
        case.model_literal.as_bytes(),
        "seed {seed}"
    );
    assert_eq!(
        model_name(body, span.clone()).as_deref(),
        Some(case.model.as_str()),
        "seed {seed}"
    );
    assert_eq!(top.stream, case.stream, "seed {seed}: {}", shown());
    assert_eq!(
        top.stream,
        parsed["stream"] == Value::Bool(true),
        "seed {seed}"
    );

    let (_, new_model) = string(&mut rng, 24);
    let literal = model_literal(&new_model);
    let mut rewritten = rewritten_prefix(&body[..span.start], &literal);
    rewritten.extend_from_slice(&body[span.end..]);

    // Every byte but the model's value is kept, in place.
    let new_end = span.start + literal.len();
    assert_eq!(
        rewritten.len(),
        body.len() - span.len() + literal.len(),
        "seed {seed}"
    );
    assert_eq!(&rewritten[..span.start], &body[..span.start], "seed {seed}");
    assert_eq!(&rewritten[new_end..], &body[span.end..], "seed {seed}");
    assert_eq!(
        &rewritten[span.start..new_end],
        literal.as_bytes(),
        "seed {seed}"
    );

    // A JSON reader sees the same document with only `model` changed.
    let mut expected = parsed;
    expected["model"] = Value::String(new_model.clone());
    let reread: Value = serde_json::from_slice(&rewritten).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: rewrite is not JSON ({e}): {}",
            String::from_utf8_lossy(&rewritten)
        )
    });
    assert_eq!(reread, expected, "seed {seed}");

    // And the rewritten body scans to the new model at the same place.
    let again = scan(&rewritten).unwrap();
    assert_eq!(again.model, Some(span.start..new_end), "seed {seed}");
    assert_eq!(
        model_name(&rewritten, span.start..new_end).as_deref(),
        Some(new_model.as_str())
    );
    assert_eq!(again.stream, top.stream, "seed {seed}");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}")))
}

#[test]
fn rewrite_keeps_every_byte_but_the_model_value() {
    if let Some(seed) = env_u64("REWRITE_PROPERTY_SEED") {
        check(seed);
        return;
    }
    let cases = env_u64("REWRITE_PROPERTY_CASES").unwrap_or(DEFAULT_CASES);
    for i in 0..cases {
        check(BASE_SEED + i);
    }
}

#[test]
fn non_string_models_are_found_but_not_named() {
    let mut rng = Rng(BASE_SEED);
    for _ in 0..500 {
        let mut literal = String::new();
        value(&mut rng, 3, &mut literal);
        if literal.starts_with('"') {
            continue;
        }
        let body = format!("{{\"a\":1,\"model\":{literal},\"b\":[]}}");
        let top = scan(body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}: {body}"));
        let span = top.model.unwrap();
        assert_eq!(&body[span.clone()], literal);
        assert_eq!(model_name(body.as_bytes(), span), None, "{body}");
    }
}
