//! The top-level JSON scanner and the model rewrite, on any bytes a client can send.
//!
//! Beyond "no panic": whatever the scanner accepts, rewriting the model keeps every
//! other byte and scans again to the new model; and on every body `serde_json`
//! reads as an object, the scanner agrees with it on `model` and `stream`.
#![no_main]

use ai_fallback::body::{model_literal, model_name, rewritten_prefix, scan, ScanError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let scanned = scan(body);
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
        match &scanned {
            Ok(top) => {
                assert_eq!(top.model.is_some(), fields.contains_key("model"));
                assert_eq!(top.stream, fields.get("stream") == Some(&Value::Bool(true)));
                if let (Some(span), Some(Value::String(model))) = (&top.model, fields.get("model"))
                {
                    assert_eq!(
                        model_name(body, span.clone()).as_deref(),
                        Some(model.as_str())
                    );
                }
            }
            // serde_json keeps the last of two `model` keys; the scanner refuses.
            Err(ScanError::DuplicateModel) => {}
            Err(error) => panic!("valid JSON object refused: {error:?}"),
        }
    }
    let Ok(top) = scanned else { return };
    let Some(span) = top.model else { return };
    assert!(span.start < span.end && span.end <= body.len());
    let Some(model) = model_name(body, span.clone()) else {
        return;
    };
    for new_model in ["", "b", "gpt-4o-mini", "é\"\\\u{1}", model.as_str()] {
        let literal = model_literal(new_model);
        let mut rewritten = rewritten_prefix(&body[..span.start], &literal);
        rewritten.extend_from_slice(&body[span.end..]);
        let new_end = span.start + literal.len();
        assert_eq!(&rewritten[..span.start], &body[..span.start]);
        assert_eq!(&rewritten[new_end..], &body[span.end..]);
        let again = scan(&rewritten).expect("a rewritten body scans");
        assert_eq!(again.model, Some(span.start..new_end));
        assert_eq!(again.stream, top.stream);
        assert_eq!(
            model_name(&rewritten, span.start..new_end).as_deref(),
            Some(new_model)
        );
    }
});
