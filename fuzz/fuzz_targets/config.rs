//! The plugin configuration parser, on any bytes an operator (or a control plane)
//! can put in the plugin's `configuration`.
//!
//! Beyond "no panic": parsing is a function of the JSON value, not of its spelling
//! (re-serialising an accepted document gives the same result), and everything an
//! accepted configuration is asked per request answers without panicking.
#![no_main]

use ai_fallback::config::{Config, RouteFacts};
use ai_fallback::plan::RouterControl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = Config::parse(data);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let respelled = Config::parse(value.to_string().as_bytes());
        assert_eq!(
            parsed.is_ok(),
            respelled.is_ok(),
            "{parsed:?} / {respelled:?}"
        );
    }
    let Ok(config) = parsed else { return };
    let text = String::from_utf8_lossy(data);
    let probe = text.get(..text.len().min(64)).unwrap_or_default();
    let _ = config.role_for_root_id(probe);
    let (rule, _) = config.select(&RouteFacts {
        route_name: probe,
        metadata_rule: Some(probe),
        host: probe,
        path: probe,
    });
    let _ = config.rule_name(rule);
    for settings in config.all_settings() {
        let _ = settings.chain_for(probe);
        let _ = settings.context_chain_for(probe);
        let _ = settings.acts_on("POST", probe);
        let _ = settings.acts_on("POST", "/v1/chat/completions?x");
        let _ = RouterControl::new(settings);
    }
});
