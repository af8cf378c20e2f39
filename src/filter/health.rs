//! Model health in proxy-wasm shared data: one key per model, visible to every worker's
//! VM of one Envoy, updated with compare-and-swap so that concurrent updates from
//! several workers are never lost.

use super::host::Host;
use super::Prepared;
use crate::cooldown::{Availability, CooldownSettings, ModelHealth};
use log::{debug, warn};
use proxy_wasm::types::{MetricType, Status};

/// Attempts at one compare-and-swap update before giving up (another worker kept
/// winning): the update is then lost, which costs one more failed attempt at worst.
const CAS_TRIES: usize = 8;

const GAUGE: &str = "ai_fallback.cooling_models";

fn key(model: &str) -> String {
    format!("ai_fallback.health.{model}")
}

fn read(host: &dyn Host, model: &str) -> (ModelHealth, Option<u32>) {
    match host.shared_data(&key(model)) {
        Ok((Some(bytes), cas)) => (ModelHealth::decode(&bytes), cas),
        Ok((None, cas)) => (ModelHealth::default(), cas),
        Err(_) => (ModelHealth::default(), None),
    }
}

/// Applies `change` to a model's state and stores it; `change` returns false to
/// leave the state alone. Returns the stored state, if one was.
fn update(
    host: &dyn Host,
    model: &str,
    mut change: impl FnMut(&mut ModelHealth) -> bool,
) -> Option<ModelHealth> {
    for _ in 0..CAS_TRIES {
        let (mut health, cas) = read(host, model);
        if !change(&mut health) {
            return None;
        }
        match host.set_shared_data(&key(model), health.encode().as_bytes(), cas) {
            Ok(()) => return Some(health),
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                warn!("ai-fallback: cannot store the health of {model} ({status:?})");
                return None;
            }
        }
    }
    None
}

/// Whether a new request may use `model` now; `Err` carries why it is skipped. A
/// model whose cooldown ended is usable: its probe is claimed by the request that
/// sends to it first (`claim_probe`), so that one probe runs at a time.
pub fn usable(host: &dyn Host, model: &str, now_ms: u64) -> Result<(), String> {
    let (health, _) = read(host, model);
    match health.availability(now_ms) {
        Availability::Available | Availability::ProbeDue => Ok(()),
        Availability::Cooling => Err(health.reason),
    }
}

/// Like `usable`, and claims the probe of `model` when it is due: for the model a
/// request sends to. `Err` when it cools, or another request claimed its probe.
pub fn claim_probe(host: &dyn Host, model: &str, now_ms: u64) -> Result<(), String> {
    let (health, _) = read(host, model);
    match health.availability(now_ms) {
        Availability::Available => return Ok(()),
        Availability::Cooling => return Err(health.reason),
        Availability::ProbeDue => {}
    }
    let claimed = update(host, model, |health| {
        let due = health.availability(now_ms) == Availability::ProbeDue;
        if due {
            health.claim_probe(now_ms);
        }
        due
    });
    match claimed {
        Some(_) => {
            debug!("ai-fallback: probing {model}");
            Ok(())
        }
        None => Err(health.reason),
    }
}

/// Counts a retryable failure of `model`; may start its cooldown.
pub fn record_failure(
    host: &dyn Host,
    prepared: &Prepared,
    settings: &CooldownSettings,
    model: &str,
    now_ms: u64,
    retry_after_ms: Option<u64>,
    reason: &str,
) {
    let mut started = false;
    update(host, model, |health| {
        started = health.record_failure(settings, now_ms, retry_after_ms, reason);
        true
    });
    if started {
        debug!("ai-fallback: {model} cools down ({reason})");
        publish_gauge(host, prepared, now_ms);
    }
}

/// A success of `model`: clears its state, if it had one.
pub fn record_success(host: &dyn Host, prepared: &Prepared, model: &str, now_ms: u64) {
    let cleared = update(host, model, |health| {
        let had_state = *health != ModelHealth::default();
        health.record_success();
        had_state
    });
    if cleared.is_some() {
        publish_gauge(host, prepared, now_ms);
    }
}

/// Sets the gauge of models cooling down now; the set of models is the
/// configuration's, so this reads a bounded number of keys, and only on a change.
fn publish_gauge(host: &dyn Host, prepared: &Prepared, now_ms: u64) {
    let cooling = prepared
        .known_models
        .iter()
        .filter(|model| read(host, model).0.availability(now_ms) != Availability::Available)
        .count();
    if let Some(id) = prepared.metric(host, MetricType::Gauge, GAUGE) {
        let _ = host.record_metric(id, cooling as u64);
    }
}
