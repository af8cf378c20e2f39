//! The response classifier and the SSE first-event reader, on any answer an upstream
//! can send, and the provider-message excerpt quoted in the filter's errors.
//!
//! Beyond "no panic": a verdict reached on a prefix of a stream is the verdict on
//! the whole of it (the attempt role decides as soon as it can), a complete body
//! always gets a verdict, and an excerpt stays short.
#![no_main]

use ai_fallback::classify::{
    classify_body, classify_headers, first_event, is_error_envelope, BodyKind, BodyVerdict,
    RequestFacts, StreamEnd,
};
use ai_fallback::config::Config;
use ai_fallback::outcome::provider_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let config = Config::default();
    let classes = &config.defaults.classes;
    let request = RequestFacts {
        stream: control & 1 == 1,
        has_context_chain: control & 2 == 2,
        has_content_chain: control & 4 == 4,
    };
    let status = [200, 400, 404, 429, 500, 503][usize::from(control >> 2) % 6];
    let content_type = String::from_utf8_lossy(body.get(..body.len().min(40)).unwrap_or_default());
    let _ = classify_headers(classes, request, status, &content_type);

    let _ = is_error_envelope(body);
    // The end marker is found wherever the stream's chunks are cut.
    let mut whole = StreamEnd::default();
    whole.feed(body);
    whole.finish();
    let mut chunked = StreamEnd::default();
    for chunk in body.chunks(usize::from(control % 16) + 1) {
        chunked.feed(chunk);
    }
    chunked.finish();
    assert_eq!(whole.seen, chunked.seen);
    if let Some(message) = provider_message(body) {
        assert!(message.chars().count() <= 200, "{message}");
    }
    if let Some(event) = first_event(body) {
        assert!(event.len() <= body.len());
    }

    let split = usize::from(control).min(body.len());
    let prefix = &body[..split];
    for kind in [
        BodyKind::ErrorBody,
        BodyKind::JsonSuccess,
        BodyKind::EventStream,
    ] {
        let whole = classify_body(classes, request, status, kind, body, true);
        assert!(
            matches!(whole, BodyVerdict::Decided(_)),
            "{kind:?}: {whole:?}"
        );
        let early = classify_body(classes, request, status, kind, prefix, false);
        if let BodyVerdict::Decided(class) = early {
            assert_eq!(whole, BodyVerdict::Decided(class), "{kind:?} decided early");
        }
    }
});
