//! The integration test harness: the real Envoy binary, the freshly built `.wasm`, and
//! the project's mock upstream, on free ports, cleaned up when a test ends.
//!
//! Tests start from the example a user copies (`envoy/envoy.yaml`) and change only
//! what a test is about (ports, the plugin configuration, a route setting), so the
//! shipped example is exercised by every test.

#![allow(dead_code)] // each test file uses its own part of the harness

pub mod raw;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use mock_upstream::Mock;
use testkit::http_get;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ENVOY_BIN`, or the binary `make setup` installs into the project's venv.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

pub fn wasm_path() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/release/ai_fallback.wasm");
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
    let mut config = load_yaml(&repo_root().join("envoy/envoy.yaml"));
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    for listener in listeners(&mut config) {
        listener["address"]["socket_address"]["port_value"] = json!(0);
    }
    for cluster in as_array(&mut config["static_resources"]["clusters"]) {
        for endpoints in as_array(&mut cluster["load_assignment"]["endpoints"]) {
            for endpoint in as_array(&mut endpoints["lb_endpoints"]) {
                endpoint["endpoint"]["address"]["socket_address"]["port_value"] = json!(mock_port);
            }
        }
    }
    let wasm = wasm_path().display().to_string();
    for_each_wasm_filter(&mut config, |plugin_config| {
        plugin_config["vm_config"]["code"]["local"]["filename"] = json!(wasm);
    });
    set_plugin_config(&mut config, plugin);
    config
}

pub fn load_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces the plugin configuration, which both roles share.
pub fn set_plugin_config(config: &mut Value, plugin: &Value) {
    let text = plugin.to_string();
    for_each_wasm_filter(config, |plugin_config| {
        plugin_config["configuration"]["value"] = json!(text);
    });
}

/// The HTTP connection manager of the first listener.
pub fn connection_manager(config: &mut Value) -> &mut Value {
    &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]
}

fn listeners(config: &mut Value) -> impl Iterator<Item = &mut Value> {
    as_array(&mut config["static_resources"]["listeners"])
}

fn as_array(value: &mut Value) -> impl Iterator<Item = &mut Value> {
    value.as_array_mut().into_iter().flatten()
}

/// Calls `f` with the `config` (PluginConfig) of every wasm filter, downstream and
/// upstream, of every listener.
fn for_each_wasm_filter(config: &mut Value, mut f: impl FnMut(&mut Value)) {
    for listener in listeners(config) {
        for chain in array_at(listener, "filter_chains") {
            for filter in array_at(chain, "filters") {
                let Some(manager) = filter.get_mut("typed_config") else {
                    continue;
                };
                for http_filter in array_at(manager, "http_filters") {
                    let Some(typed) = http_filter.get_mut("typed_config") else {
                        continue;
                    };
                    if is_wasm(typed) {
                        f(&mut typed["config"]);
                    }
                    for upstream in array_at(typed, "upstream_http_filters") {
                        if is_wasm(&upstream["typed_config"]) {
                            f(&mut upstream["typed_config"]["config"]);
                        }
                    }
                }
            }
        }
    }
}

/// The array under `key`, without creating the key as `IndexMut` would.
fn array_at<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

fn is_wasm(typed_config: &Value) -> bool {
    typed_config["@type"]
        .as_str()
        .is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"))
}

/// A running Envoy. Dropping it stops Envoy; if the test is failing, Envoy's log is
/// printed first.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    /// Port of the first listener.
    pub port: u16,
    pub admin_port: u16,
}

impl Envoy {
    pub fn start(config: &Value) -> Envoy {
        Envoy::try_start(config).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    /// Starts Envoy and waits until it is ready; on failure returns Envoy's log.
    pub fn try_start(config: &Value) -> Result<Envoy, String> {
        Envoy::try_start_with(config, &[])
    }

    pub fn try_start_with(config: &Value, extra_args: &[&str]) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, config.to_string()).map_err(|e| e.to_string())?;
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let child = Command::new(envoy_bin())
            .current_dir(repo_root())
            .arg("-c")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .args(if extra_args.contains(&"--concurrency") {
                &["--log-level", "info"][..]
            } else {
                &["--concurrency", "1", "--log-level", "info"][..]
            })
            .args(["--component-log-level", "wasm:debug"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", envoy_bin().display()))?;
        let mut envoy = Envoy {
            child,
            dir,
            port: 0,
            admin_port: 0,
        };
        match envoy.wait_ready() {
            Ok(()) => Ok(envoy),
            Err(why) => Err(format!("{why}\n{}", envoy.log())),
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin_path = self.dir.path().join("admin-address");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status}"));
            }
            if self.admin_port == 0 {
                self.admin_port = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
                    .unwrap_or(0);
            }
            if self.admin_port != 0 && self.admin_get("/ready").0 == 200 {
                let listeners: Value =
                    serde_json::from_str(&self.admin_get("/listeners?format=json").1)
                        .map_err(|e| e.to_string())?;
                self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                    ["port_value"]
                    .as_u64()
                    .ok_or("no listener port")? as u16;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("Envoy was not ready within 30 s".into())
    }

    /// Waits for Envoy to exit by itself (a config it refuses) and returns whether it
    /// did, with its exit status.
    pub fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// A GET on the admin interface: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_port, path)
    }

    /// The value of one counter or gauge from `/stats`, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let (_, body) = self.admin_get(&format!("/stats?filter=^{name}$"));
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- Envoy log -----\n{}\n----- end of Envoy log -----",
                self.log()
            );
        }
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
