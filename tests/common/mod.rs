//! The integration test harness: the real Envoy binary, the freshly built `.wasm`, and
//! the project's mock upstream, on free ports, cleaned up when a test ends.
//!
//! Tests start from the example a user copies (`envoy/envoy.yaml`) and change only
//! what a test is about (ports, the plugin configuration, a route setting), so the
//! shipped example is exercised by every test.

#![allow(dead_code)] // each test file uses its own part of the harness

pub mod raw;

use serde_json::{json, Value};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mock_upstream::Mock;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ENVOY_BIN`, or the binary `make setup` installs into the project's venv.
pub fn envoy_bin() -> PathBuf {
    testkit::envoy_bin()
}

pub fn wasm_path() -> PathBuf {
    let path = testkit::built_wasm();
    assert!(
        path.exists(),
        "{} is missing: run `make build` (or `make test`) first",
        path.display()
    );
    path
}

/// The example config, parsed, with its plugin configuration replaced by `plugin`
/// (the JSON both roles share) and its upstream pointed at `mock_port`. Listener and
/// admin ports become 0: Envoy picks free ones and the harness asks which.
pub fn example_config(mock_port: u16, plugin: &Value) -> Value {
    testkit::config::example_config(
        &repo_root().join("envoy/envoy.yaml"),
        &wasm_path(),
        mock_port,
        &plugin.to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn load_yaml(path: &Path) -> Value {
    testkit::config::load_yaml(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Replaces the plugin configuration, which both roles share.
pub fn set_plugin_config(config: &mut Value, plugin: &Value) {
    testkit::config::set_plugin_configuration(config, &plugin.to_string());
}

/// The HTTP connection manager of the first listener.
pub fn connection_manager(config: &mut Value) -> &mut Value {
    &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]
}

/// A running Envoy ([`testkit::Envoy`]: `port`, `admin_get`, `stat`, `log`, ...).
/// Dropping it stops Envoy; if the test is failing, Envoy's log is printed first.
pub struct Envoy(testkit::Envoy);

impl Envoy {
    pub fn start(config: &Value) -> Envoy {
        Envoy::try_start(config).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    /// Starts Envoy and waits until it is ready; on failure returns Envoy's log.
    pub fn try_start(config: &Value) -> Result<Envoy, String> {
        Envoy::try_start_with(config, &[])
    }

    /// One worker unless `extra_args` choose `--concurrency`, the wasm log at debug.
    pub fn try_start_with(config: &Value, extra_args: &[&str]) -> Result<Envoy, String> {
        let mut launch = testkit::Launch::new(envoy_bin())
            .current_dir(repo_root())
            .log_level("info")
            .component_log_level("wasm:debug")
            .args(extra_args);
        if !extra_args.contains(&"--concurrency") {
            launch = launch.concurrency(1);
        }
        launch.start(config).map(Envoy)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Deref for Envoy {
    type Target = testkit::Envoy;
    fn deref(&self) -> &testkit::Envoy {
        &self.0
    }
}

impl DerefMut for Envoy {
    fn deref_mut(&mut self) -> &mut testkit::Envoy {
        &mut self.0
    }
}

/// Envoy in front of a fresh mock, with the example config and `plugin` as the
/// plugin configuration.
pub fn start_with_plugin(plugin: Value) -> (Envoy, Mock) {
    let mock = Mock::start();
    let envoy = Envoy::start(&example_config(mock.port(), &plugin));
    (envoy, mock)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A chat completion body with `model` first.
pub fn chat_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]}).to_string()
}

/// The models the mock received, in order.
pub fn models_seen(mock: &Mock) -> Vec<String> {
    mock.requests()
        .into_iter()
        .map(|r| r.model.unwrap_or_default())
        .collect()
}

/// Replaces the value of `model` in a body, the one change the filter may make.
pub fn with_model(body: &[u8], old_literal: &str, new_literal: &str) -> Vec<u8> {
    let position = body
        .windows(old_literal.len())
        .position(|w| w == old_literal.as_bytes())
        .expect("old model literal in body");
    let mut expected = body[..position].to_vec();
    expected.extend_from_slice(new_literal.as_bytes());
    expected.extend_from_slice(&body[position + old_literal.len()..]);
    expected
}

/// A JSON POST to `path` with extra `headers`: (status, body text).
pub async fn post_json(
    envoy: &Envoy,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, String) {
    let mut request = client()
        .post(envoy.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("a response");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// A chat request for `model` with one user message.
pub fn chat_request(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads the access log until it has `count` lines.
pub fn access_log_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if lines.len() >= count || std::time::Instant::now() > deadline {
            assert_eq!(lines.len(), count, "{text}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/stats/prometheus` lines of the filter's counters: "name{labels}" -> value.
pub fn filter_counters(envoy: &Envoy) -> std::collections::BTreeMap<String, u64> {
    let (_, text) = envoy.admin_get("/stats/prometheus");
    text.lines()
        .filter(|line| line.starts_with("ai_fallback_") && line.contains("_total{"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The access record, nested in the JSON log line: Envoy renders the typed filter
/// state as `{"@type": "...google.protobuf.Struct", "value": {record}}`.
pub fn record_of(line: &Value) -> Value {
    let typed = &line["ai_fallback"];
    assert_eq!(
        typed["@type"], "type.googleapis.com/google.protobuf.Struct",
        "{line}"
    );
    assert!(typed["value"]["attempts"].is_array(), "{line}");
    typed["value"].clone()
}
