//! Memory of which models are failing right now, shared by every worker of one Envoy.
//!
//! Each model has a small state in proxy-wasm shared data (one key per model, updated
//! with compare-and-swap). Retryable failures inside a sliding window past a threshold
//! start a cooldown; while it lasts, new requests skip the model. When it ends, one
//! request probes the model: success clears it, failure starts a new cooldown.
//!
//! Everything here is pure: the filter reads the state, calls these functions, and
//! writes the result back.

/// Cooldown settings (per rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooldownSettings {
    /// `cooldown_failures`: failures within the window that start a cooldown; 0 turns
    /// cooldowns off.
    pub failures: u32,
    /// `cooldown_window_ms`: the sliding window the failures are counted in.
    pub window_ms: u64,
    /// `cooldown_ms`: how long a model is skipped (longer if its Retry-After says so).
    pub duration_ms: u64,
    /// `max_cooldown_ms`: the longest any cooldown lasts, whatever a provider's
    /// `Retry-After` says (`999999999` would be 31 years).
    pub max_ms: u64,
}

/// 5 minutes: a provider that is really down for longer is probed that often, at the
/// cost of one failed attempt.
pub const DEFAULT_MAX_COOLDOWN_MS: u64 = 300_000;

impl Default for CooldownSettings {
    fn default() -> Self {
        CooldownSettings {
            failures: 0,
            window_ms: 10_000,
            duration_ms: 30_000,
            max_ms: DEFAULT_MAX_COOLDOWN_MS,
        }
    }
}

/// A probe claim older than this is given up: the probing request went away.
pub const PROBE_CLAIM_MS: u64 = 30_000;

/// Most failure times kept; the threshold cannot be higher.
pub const MAX_FAILURES: u32 = 32;

/// The state of one model, as kept in shared data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelHealth {
    /// Times (ms since the epoch) of recent retryable failures, oldest first.
    pub failures: Vec<u64>,
    /// Skipped until then (0: not cooling).
    pub cooling_until: u64,
    /// A request claimed the probe at this time (0: no probe running).
    pub probe_since: u64,
    /// Why the cooldown started, for records ("failure_status", "rate_limited", ...).
    pub reason: String,
}

/// What a new request may do with a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Cooling down (or its probe is running elsewhere): skip it.
    Cooling,
    /// The cooldown ended and nobody probes it: claim the probe to use it.
    ProbeDue,
}

impl ModelHealth {
    /// Text form for shared data: `until probe_since reason t1,t2,...`.
    pub fn encode(&self) -> String {
        let failures: Vec<String> = self.failures.iter().map(u64::to_string).collect();
        let reason = if self.reason.is_empty() {
            "-"
        } else {
            &self.reason
        };
        format!(
            "{} {} {} {}",
            self.cooling_until,
            self.probe_since,
            reason,
            failures.join(",")
        )
    }

    pub fn decode(bytes: &[u8]) -> ModelHealth {
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let mut fields = text.split(' ');
        let mut number = || {
            fields
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let cooling_until = number();
        let probe_since = number();
        let mut fields = text.split(' ').skip(2);
        let reason = fields
            .next()
            .filter(|r| *r != "-")
            .unwrap_or_default()
            .to_string();
        let failures = fields
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|t| t.parse().ok())
            .take(MAX_FAILURES as usize)
            .collect();
        ModelHealth {
            failures,
            cooling_until,
            probe_since,
            reason,
        }
    }

    pub fn availability(&self, now_ms: u64) -> Availability {
        if self.cooling_until == 0 {
            return Availability::Available;
        }
        if now_ms < self.cooling_until {
            return Availability::Cooling;
        }
        let probe_running =
            self.probe_since != 0 && now_ms < self.probe_since.saturating_add(PROBE_CLAIM_MS);
        if probe_running {
            Availability::Cooling
        } else {
            Availability::ProbeDue
        }
    }

    /// Claims the probe (call only when `ProbeDue`).
    pub fn claim_probe(&mut self, now_ms: u64) {
        self.probe_since = now_ms;
    }

    /// A retryable failure at `now_ms`; `retry_after_ms` is the provider's word, capped
    /// like every cooldown by `max_ms`. Returns whether a cooldown started.
    pub fn record_failure(
        &mut self,
        settings: &CooldownSettings,
        now_ms: u64,
        retry_after_ms: Option<u64>,
        reason: &str,
    ) -> bool {
        if settings.failures == 0 {
            return false;
        }
        let probing = self.cooling_until != 0 && now_ms >= self.cooling_until;
        let window_start = now_ms.saturating_sub(settings.window_ms);
        self.failures.retain(|t| *t >= window_start);
        self.failures.push(now_ms);
        let keep = settings.failures.min(MAX_FAILURES) as usize;
        let excess = self.failures.len().saturating_sub(keep);
        self.failures.drain(..excess);
        // A failed probe starts a new cooldown at once; otherwise the threshold counts.
        if probing || self.failures.len() >= keep {
            let duration = settings
                .duration_ms
                .max(retry_after_ms.unwrap_or(0))
                .min(settings.max_ms);
            self.cooling_until = now_ms.saturating_add(duration);
            self.probe_since = 0;
            self.failures.clear();
            self.reason = reason.to_string();
            return true;
        }
        false
    }

    /// A success: the model is healthy again.
    pub fn record_success(&mut self) {
        *self = ModelHealth::default();
    }
}

/// The shared-data identity of a model: the same model at two providers fails
/// independently.
pub fn health_key(model: &str, provider: Option<&str>) -> String {
    match provider {
        Some(provider) => format!("{model}@{provider}"),
        None => model.to_string(),
    }
}

/// `Retry-After` as milliseconds: delay-seconds only (an HTTP date is rare from
/// model providers and needs a clock parse this filter does without). A number too
/// large for a u64 saturates (the cooldown's cap applies to it like to any other).
pub fn retry_after_ms(value: &str) -> Option<u64> {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(seconds.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: CooldownSettings = CooldownSettings {
        failures: 3,
        window_ms: 10_000,
        duration_ms: 5_000,
        max_ms: DEFAULT_MAX_COOLDOWN_MS,
    };

    #[test]
    fn threshold_within_the_window_starts_a_cooldown() {
        let mut health = ModelHealth::default();
        assert!(!health.record_failure(&SETTINGS, 1_000, None, "failure_status"));
        assert!(!health.record_failure(&SETTINGS, 2_000, None, "failure_status"));
        assert_eq!(health.availability(2_500), Availability::Available);
        assert!(health.record_failure(&SETTINGS, 3_000, None, "failure_status"));
        assert_eq!(health.cooling_until, 8_000);
        assert_eq!(health.availability(7_999), Availability::Cooling);
        assert_eq!(health.availability(8_000), Availability::ProbeDue);
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let mut health = ModelHealth::default();
        health.record_failure(&SETTINGS, 1_000, None, "x");
        health.record_failure(&SETTINGS, 2_000, None, "x");
        assert!(!health.record_failure(&SETTINGS, 12_500, None, "x"));
        assert_eq!(health.failures, [12_500]);
    }

    #[test]
    fn one_probe_then_success_or_a_new_cooldown() {
        let mut health = ModelHealth::default();
        for t in [1, 2, 3] {
            health.record_failure(&SETTINGS, t, None, "x");
        }
        health.claim_probe(6_000);
        assert_eq!(
            health.availability(6_001),
            Availability::Cooling,
            "probe running"
        );
        assert_eq!(
            health.availability(6_000 + PROBE_CLAIM_MS),
            Availability::ProbeDue,
            "a probe that never reported is given up"
        );
        let mut failed = health.clone();
        assert!(
            failed.record_failure(&SETTINGS, 6_100, None, "x"),
            "one failure is enough"
        );
        assert_eq!(failed.cooling_until, 11_100);
        assert_eq!(failed.probe_since, 0);
        health.record_success();
        assert_eq!(health.availability(6_200), Availability::Available);
    }

    #[test]
    fn retry_after_lengthens_the_cooldown() {
        let mut health = ModelHealth::default();
        for t in [1, 2] {
            health.record_failure(&SETTINGS, t, None, "x");
        }
        health.record_failure(&SETTINGS, 3, retry_after_ms("30"), "rate_limited");
        assert_eq!(health.cooling_until, 30_003);
        assert_eq!(health.reason, "rate_limited");
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn every_cooldown_is_capped_and_nothing_overflows() {
        let mut health = ModelHealth::default();
        for t in [1, 2] {
            health.record_failure(&SETTINGS, t, None, "x");
        }
        // Retry-After: 999999999 (31 years) cools for max_cooldown_ms.
        health.record_failure(&SETTINGS, 3, retry_after_ms("999999999"), "rate_limited");
        assert_eq!(health.cooling_until, 3 + DEFAULT_MAX_COOLDOWN_MS);

        let small_cap = CooldownSettings {
            failures: 1,
            max_ms: 1_500,
            ..SETTINGS
        };
        for retry_after in [
            "999999999",
            "18446744073709551615",
            "99999999999999999999999",
        ] {
            let mut health = ModelHealth::default();
            let ms = retry_after_ms(retry_after);
            assert!(ms >= Some(999_999_999_000), "{retry_after}");
            assert!(health.record_failure(&small_cap, 10, ms, "rate_limited"));
            assert_eq!(health.cooling_until, 1_510, "{retry_after}");
        }
        // cooldown_ms itself is capped too, and the clock's end saturates.
        let long = CooldownSettings {
            duration_ms: 10_000,
            ..small_cap
        };
        let mut health = ModelHealth::default();
        health.record_failure(&long, 10, None, "x");
        assert_eq!(health.cooling_until, 1_510);
        let mut health = ModelHealth::default();
        health.record_failure(&small_cap, u64::MAX - 5, Some(u64::MAX), "x");
        assert_eq!(health.cooling_until, u64::MAX);
        let stray_probe = ModelHealth {
            cooling_until: 1,
            probe_since: u64::MAX,
            ..ModelHealth::default()
        };
        assert_eq!(stray_probe.availability(2), Availability::Cooling);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_ms("30"), Some(30_000));
        assert_eq!(retry_after_ms("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(retry_after_ms(" 0 "), Some(0));
        for bad in [
            "",
            " ",
            "-1",
            "+1",
            "1.5",
            "30s",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(retry_after_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn off_by_default_and_round_trips() {
        let mut health = ModelHealth::default();
        assert!(!health.record_failure(&CooldownSettings::default(), 1, None, "x"));
        let state = ModelHealth {
            failures: vec![5, 6],
            cooling_until: 9,
            probe_since: 7,
            reason: "no_capacity".into(),
        };
        assert_eq!(ModelHealth::decode(state.encode().as_bytes()), state);
        assert_eq!(ModelHealth::decode(b""), ModelHealth::default());
        assert_eq!(ModelHealth::decode(b"garbage here"), ModelHealth::default());
    }
}
