//! Envoy for the soak: the shipped example (`envoy/envoy.yaml`) with its ports, the
//! module's path and the plugin configuration changed, run with a quiet log.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::http_get;

pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
}

/// The example config pointed at the mock, with `plugin` as both roles' configuration.
pub fn example_config(
    repo: &Path,
    wasm: &Path,
    mock_port: u16,
    plugin: &Value,
) -> Result<Value, String> {
    let path = repo.join("envoy/envoy.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    config["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let plugin_text = plugin.to_string();
    for listener in array(&mut config["static_resources"]["listeners"]) {
        listener["address"]["socket_address"]["port_value"] = json!(0);
        for chain in array(&mut listener["filter_chains"]) {
            for filter in array(&mut chain["filters"]) {
                for http_filter in array(&mut filter["typed_config"]["http_filters"]) {
                    let typed = &mut http_filter["typed_config"];
                    set_wasm(typed, wasm, &plugin_text);
                    for upstream in array_at(typed, "upstream_http_filters") {
                        set_wasm(&mut upstream["typed_config"], wasm, &plugin_text);
                    }
                }
            }
        }
    }
    for cluster in array(&mut config["static_resources"]["clusters"]) {
        for endpoints in array(&mut cluster["load_assignment"]["endpoints"]) {
            for endpoint in array(&mut endpoints["lb_endpoints"]) {
                endpoint["endpoint"]["address"]["socket_address"]["port_value"] = json!(mock_port);
            }
        }
    }
    Ok(config)
}

fn array(value: &mut Value) -> impl Iterator<Item = &mut Value> {
    value.as_array_mut().into_iter().flatten()
}

/// The array under `key`, without creating the key as `IndexMut` would.
fn array_at<'a>(value: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    value
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

fn set_wasm(typed: &mut Value, wasm: &Path, plugin: &str) {
    let is_wasm = typed["@type"]
        .as_str()
        .is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"));
    if is_wasm {
        let config = &mut typed["config"];
        config["vm_config"]["code"]["local"]["filename"] = json!(wasm.display().to_string());
        config["configuration"]["value"] = json!(plugin);
    }
}

impl Envoy {
    pub fn start(bin: &Path, config: &Value, workers: usize) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, config.to_string()).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                &workers.to_string(),
            ])
            .args(["--log-level", "warning"])
            .arg("--admin-address-path")
            .arg(dir.path().join("admin-address"))
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut envoy = Envoy {
            child,
            dir,
            port: 0,
            admin_port: 0,
        };
        envoy
            .wait_ready()
            .map_err(|why| format!("{why}\n{}", envoy.log()))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status}"));
            }
            if self.admin_port == 0 {
                self.admin_port = std::fs::read_to_string(self.dir.path().join("admin-address"))
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
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or("no listener port")?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("Envoy was not ready within 30 s".into())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_port, path)
    }

    /// Every counter and gauge, by name.
    pub fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        self.admin_get("/stats")
            .1
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// Resident memory of the process (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Envoy's own heap accounting from `/memory`: (allocated, heap_size) in bytes.
    pub fn heap(&self) -> (u64, u64) {
        let memory: Value =
            serde_json::from_str(&self.admin_get("/memory").1).unwrap_or(Value::Null);
        let number = |key: &str| {
            memory[key]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (number("allocated"), number("heap_size"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository root: the soak crate's parent.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
