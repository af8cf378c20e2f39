//! The plan and attempt records the roles pass through Envoy filter state, decoded
//! from any bytes, and the gateway's decision on any body.
//!
//! Filter state is written only by the filter, but a decoder that panics on a
//! corrupt or foreign value would take the worker's VM down. A decoded plan
//! encodes to text that decodes to the same plan, its body length is one a gateway
//! writes, and every step stays inside the chain.
#![no_main]

use ai_fallback::classify::CLASSES;
use ai_fallback::config::{Config, MAX_BODY_BYTES_LIMIT};
use ai_fallback::plan::{decide, AttemptRecord, BodyDecision, Plan, RequestStart, Step};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;


fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::parse(
            br#"{"chains": {"a": ["b", "c"], "x": ["x", "y"]},
                 "default_chain": ["d", {"model": "e\"\u00e9"}],
                 "context_chains": {"a": ["big"]},
                 "content_policy_chains": {"a": ["lenient"]},
                 "budget_ms": 30000}"#,
        )
        .expect("the fuzz configuration is valid")
    })
}

/// Walks every step a plan can take, whatever the answers' classes.
fn walk(plan: &Plan, classes: &[u8]) {
    let _ = plan.max_retries();
    let _ = plan.facts();
    let _ = plan.remaining_ms(u64::MAX);
    let _ = plan.remaining_ms(0);
    let mut step = Step::FIRST;
    for byte in classes.iter().take(64) {
        let class = CLASSES.get(usize::from(*byte) % 11).copied();
        if let Some(class) = class {
            let _ = plan.has_next(step, class);
        }
        if plan.rewrites(step) {
            let literal = ai_fallback::body::model_literal(plan.model(step));
            assert!(plan.rewritten_len(&literal) >= literal.len());
        }
        step = plan.next_step(step, class);
        let chain = plan.chain_of(step).0;
        assert!(step.index < chain.len().max(1), "{step:?} outside {plan:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(plan) = Plan::decode(data) {
        assert!(plan.body_len <= MAX_BODY_BYTES_LIMIT);
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan.clone()));
        walk(&plan, data);
    }
    if let Some(record) = AttemptRecord::decode(data) {
        let _ = (record.step(), record.class());
        assert_eq!(
            AttemptRecord::decode(record.encode().as_bytes()),
            Some(record)
        );
    }

    let config = config();
    let start = RequestStart {
        started_ms: 1_700_000_000_000,
        client_deadline_ms: data.first().map(|b| u64::from(*b) * 100),
    };
    // Models alternate between cooling and not, as the input's bytes say.
    let mut cooling = data.iter().map(|b| b & 1 == 1).cycle();
    let mut usable = |_: &str, _: Option<&str>| match cooling.next() {
        Some(true) => Err("failure_status".to_string()),
        _ => Ok(()),
    };
    let path = "/v1/chat/completions";
    let decision = decide(config.settings(0), 0, start, path, data, None, &mut usable);
    if let BodyDecision::Fallback(plan, skipped) = decision {
        let plan = *plan;
        assert!(skipped.len() < plan.chain.len() || skipped.is_empty());
        assert!(!plan.chain.is_empty());
        assert!(plan.model_span.end <= data.len());
        assert_eq!(plan.body_len, data.len());
        assert_eq!(Plan::decode(plan.encode().as_bytes()), Some(plan.clone()));
        walk(&plan, data);
    }
});
