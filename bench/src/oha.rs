//! Running oha (the load tool) and reading its JSON summary.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::pinned;

/// How oha drives an arm.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Open loop: `rate` requests per second whatever the answers' latency, latency
    /// counted from when each request was due (oha `--latency-correction`).
    Open { rate: u32, connections: u32 },
    /// Closed loop: `connections` clients, each sending its next request as soon as
    /// the previous answer arrived.
    Closed { connections: u32 },
    /// A fixed number of requests, closed loop (the memory burst).
    Count { requests: u32, connections: u32 },
}

/// What one oha run measured. Latencies in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub requests: u64,
    /// Answers with the expected status.
    pub expected: u64,
    /// Seconds the run lasted, as oha reports it.
    pub seconds: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub statuses: String,
    pub errors: String,
}

impl Run {
    /// Expected answers per second.
    pub fn throughput(&self) -> f64 {
        if self.seconds > 0.0 {
            self.expected as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub struct Oha<'a> {
    pub bin: &'a Path,
    pub cpus: Option<&'a str>,
}

impl Oha<'_> {
    /// POSTs `body_file` to `url` for `duration` (ignored by `Load::Count`).
    pub fn run(
        &self,
        url: &str,
        body_file: &Path,
        load: Load,
        duration: Duration,
        expected_status: u16,
    ) -> Result<Run, String> {
        let mut command: Command = pinned(self.cpus, self.bin);
        command
            .args(["--no-tui", "--output-format", "json"])
            .args(["-m", "POST", "-T", "application/json"])
            .arg("-D")
            .arg(body_file);
        match load {
            Load::Open { rate, connections } => {
                command
                    .arg("-z")
                    .arg(format!("{}ms", duration.as_millis()))
                    .args(["-w", "-q", &rate.to_string(), "--latency-correction"])
                    .args(["-c", &connections.to_string()]);
            }
            Load::Closed { connections } => {
                command
                    .arg("-w")
                    .arg("-z")
                    .arg(format!("{}ms", duration.as_millis()))
                    .args(["-c", &connections.to_string()]);
            }
            Load::Count {
                requests,
                connections,
            } => {
                command
                    .args(["-n", &requests.to_string()])
                    .args(["-c", &connections.to_string()]);
            }
        }
        let output = command
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if !output.status.success() {
            return Err(format!(
                "oha failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let json: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "oha's output is not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        Ok(parse(&json, expected_status))
    }
}

fn parse(json: &Value, expected_status: u16) -> Run {
    let micros = |key: &str| json["latencyPercentiles"][key].as_f64().unwrap_or(f64::NAN) * 1e6;
    let codes = json["statusCodeDistribution"].as_object();
    let requests_ok: u64 = codes
        .into_iter()
        .flatten()
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let expected = codes
        .and_then(|c| c.get(&expected_status.to_string()))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let errors_map = json["errorDistribution"].as_object();
    let errors: u64 = errors_map
        .into_iter()
        .flatten()
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let describe = |map: Option<&serde_json::Map<String, Value>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Run {
        requests: requests_ok + errors,
        expected,
        seconds: json["summary"]["total"].as_f64().unwrap_or(0.0),
        p50_us: micros("p50"),
        p90_us: micros("p90"),
        p99_us: micros("p99"),
        statuses: describe(codes),
        errors: describe(errors_map),
    }
}
