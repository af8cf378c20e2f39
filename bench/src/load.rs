//! Running the load (`bench-load`, src/bin/bench-load.rs) and reading its summary.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::process::pinned;

/// How the load drives an arm.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Open loop: `rate` requests per second whatever the answers' latency, latency
    /// counted from when each request was due.
    Open { rate: u32, connections: u32 },
    /// Closed loop: `connections` clients, each sending its next request as soon as
    /// the previous answer arrived.
    Closed { connections: u32 },
    /// A fixed number of requests, closed loop (the memory burst).
    Count { requests: u32, connections: u32 },
}

/// What one load run measured. Latencies in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub requests: u64,
    /// Answers with the expected status.
    pub expected: u64,
    /// Seconds the run lasted, the last answers included.
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

pub struct LoadTool<'a> {
    pub bin: &'a Path,
    pub cpus: Option<&'a str>,
}

impl LoadTool<'_> {
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
        command.args(["--url", url]).arg("--body").arg(body_file);
        let millis = duration.as_millis().to_string();
        match load {
            Load::Open { rate, connections } => {
                command
                    .args(["--rate", &rate.to_string(), "--duration", &millis])
                    .args(["--connections", &connections.to_string()]);
            }
            Load::Closed { connections } => {
                command
                    .args(["--duration", &millis])
                    .args(["--connections", &connections.to_string()]);
            }
            Load::Count {
                requests,
                connections,
            } => {
                command
                    .args(["--requests", &requests.to_string()])
                    .args(["--connections", &connections.to_string()]);
            }
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                self.bin.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let json: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "the load's output is not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        Ok(parse(&json, expected_status))
    }
}

fn parse(json: &Value, expected_status: u16) -> Run {
    let micros = |key: &str| json[key].as_f64().unwrap_or(f64::NAN);
    let count = |map: Option<&serde_json::Map<String, Value>>| -> u64 {
        map.into_iter()
            .flatten()
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum()
    };
    let codes = json["statuses"].as_object();
    let errors_map = json["errors"].as_object();
    let expected = codes
        .and_then(|c| c.get(&expected_status.to_string()))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let describe = |map: Option<&serde_json::Map<String, Value>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Run {
        requests: count(codes) + count(errors_map),
        expected,
        seconds: json["seconds"].as_f64().unwrap_or(0.0),
        p50_us: micros("p50_us"),
        p90_us: micros("p90_us"),
        p99_us: micros("p99_us"),
        statuses: describe(codes),
        errors: describe(errors_map),
    }
}
