//! Envoy as the integration tests, the soak and the bench run it: a config written
//! to a file, free ports learnt from the admin interface, the log in a file, the
//! process killed when the handle is dropped.

use crate::{http_get, process};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to run Envoy. Every run has `--disable-hot-restart`, `--log-level`, its admin
/// address written to a file (`--admin-address-path`) and its log in a file
/// (`--log-path`); the rest is chosen here.
#[derive(Clone, Debug)]
pub struct Launch {
    bin: PathBuf,
    concurrency: Option<usize>,
    log_level: String,
    component_log_level: Option<String>,
    extra_args: Vec<String>,
    cpus: Option<String>,
    dir: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    ready_within: Duration,
}

impl Launch {
    /// `bin` with Envoy's own worker count, log level `info`, ready within 30 s, its
    /// files in a temporary directory removed when Envoy is dropped.
    pub fn new(bin: impl Into<PathBuf>) -> Launch {
        Launch {
            bin: bin.into(),
            concurrency: None,
            log_level: "info".to_owned(),
            component_log_level: None,
            extra_args: Vec::new(),
            cpus: None,
            dir: None,
            current_dir: None,
            ready_within: Duration::from_secs(30),
        }
    }

    /// `--concurrency workers`.
    pub fn concurrency(mut self, workers: usize) -> Launch {
        self.concurrency = Some(workers);
        self
    }

    /// `--log-level level`.
    pub fn log_level(mut self, level: &str) -> Launch {
        self.log_level = level.to_owned();
        self
    }

    /// `--component-log-level levels`, e.g. `wasm:debug`.
    pub fn component_log_level(mut self, levels: &str) -> Launch {
        self.component_log_level = Some(levels.to_owned());
        self
    }

    /// More arguments, after all the others.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.extra_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs Envoy under `taskset -c cpus` ([`process::pinned`]); `None`: anywhere.
    pub fn pinned(mut self, cpus: Option<&str>) -> Launch {
        self.cpus = cpus.map(str::to_owned);
        self
    }

    /// Keeps the config, the admin address and the log in `dir` (created if need
    /// be, and left in place) instead of a temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Launch {
        self.dir = Some(dir.into());
        self
    }

    /// Envoy's working directory, against which the config's relative paths resolve.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Launch {
        self.current_dir = Some(dir.into());
        self
    }

    /// How long Envoy may take to answer `/ready` with 200.
    pub fn ready_within(mut self, limit: Duration) -> Launch {
        self.ready_within = limit;
        self
    }

    /// Envoy's arguments for `config_path`, with its admin address and log in `dir`.
    fn envoy_args(&self, config_path: &Path, dir: &Path) -> Vec<String> {
        let mut args = vec!["-c".to_owned(), config_path.display().to_string()];
        args.push("--disable-hot-restart".to_owned());
        if let Some(workers) = self.concurrency {
            args.extend(["--concurrency".to_owned(), workers.to_string()]);
        }
        args.extend(["--log-level".to_owned(), self.log_level.clone()]);
        if let Some(levels) = &self.component_log_level {
            args.extend(["--component-log-level".to_owned(), levels.clone()]);
        }
        args.extend([
            "--admin-address-path".to_owned(),
            dir.join(ADMIN_ADDRESS).display().to_string(),
            "--log-path".to_owned(),
            dir.join(LOG).display().to_string(),
        ]);
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts Envoy with `config` and waits until it is ready; on failure, why and
    /// Envoy's log.
    pub fn start(&self, config: &Value) -> Result<Envoy, String> {
        let (temp, dir) = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        // A kept directory may hold the address of an Envoy that ran before.
        let _ = std::fs::remove_file(dir.join(ADMIN_ADDRESS));
        let config_path = dir.join("envoy.json");
        let text = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;
        std::fs::write(&config_path, text)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let mut command = process::pinned(self.cpus.as_deref(), &self.bin);
        command
            .args(self.envoy_args(&config_path, &dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(current_dir) = &self.current_dir {
            command.current_dir(current_dir);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let mut envoy = Envoy {
            child,
            dir,
            _temp: temp,
            port: 0,
            admin_port: 0,
            listeners: Vec::new(),
        };
        match envoy.wait_ready(self.ready_within) {
            Ok(()) => Ok(envoy),
            Err(why) => Err(format!("{why}\n{}", envoy.log())),
        }
    }
}

const ADMIN_ADDRESS: &str = "admin-address";
const LOG: &str = "envoy.log";

/// A running Envoy. Dropping it kills Envoy; when the thread is panicking (a failing
/// test), Envoy's log is printed first.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// Removes `dir` when Envoy is dropped, unless the launch kept its files.
    _temp: Option<tempfile::TempDir>,
    /// Port of the first listener.
    pub port: u16,
    pub admin_port: u16,
    /// Every listener's name and port, in Envoy's order.
    listeners: Vec<(String, u16)>,
}

impl Envoy {
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status}"));
            }
            if self.admin_port == 0 {
                self.admin_port = std::fs::read_to_string(self.dir.join(ADMIN_ADDRESS))
                    .ok()
                    .and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
                    .unwrap_or(0);
            }
            if self.admin_port != 0 && self.admin_get("/ready").0 == 200 {
                let (_, body) = self.admin_get("/listeners?format=json");
                self.listeners = listener_ports(&body)?;
                self.port = self.listeners.first().ok_or("no listener port")?.1;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "Envoy was not ready within {} s",
            limit.as_secs_f64()
        ))
    }

    /// The port of the listener named `name`.
    pub fn listener_port(&self, name: &str) -> Result<u16, String> {
        self.listeners
            .iter()
            .find(|(listener, _)| listener == name)
            .map(|(_, port)| *port)
            .ok_or_else(|| format!("Envoy has no listener {name}"))
    }

    /// Every listener's name and port, in Envoy's order.
    pub fn listeners(&self) -> &[(String, u16)] {
        &self.listeners
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for Envoy to exit by itself (a config it refuses): its
    /// exit status if it did.
    pub fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Where Envoy writes its log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
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

    /// Every counter and gauge, by name.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.admin_get("/stats")
            .1
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// The admin `/memory` answer (tcmalloc's view): allocated, heap_size, ...
    pub fn memory(&self) -> Value {
        serde_json::from_str(&self.admin_get("/memory").1).unwrap_or(Value::Null)
    }

    /// Bytes allocated on Envoy's heap, from `/memory`; 0 when unknown.
    pub fn heap_allocated(&self) -> u64 {
        let allocated = &self.memory()["allocated"];
        allocated
            .as_str()
            .and_then(|v| v.parse().ok())
            .or_else(|| allocated.as_u64())
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

/// The name and port of every listener in an admin `/listeners?format=json` answer.
fn listener_ports(body: &str) -> Result<Vec<(String, u16)>, String> {
    let listeners: Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    Ok(listeners["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|status| {
            let name = status["name"].as_str().unwrap_or_default().to_owned();
            let port = status["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0);
            (name, port)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_read_by_name_in_envoy_order() {
        let body = r#"{"listener_statuses": [
            {"name": "router", "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 4001}}},
            {"name": "wasm", "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 4002}}}
        ]}"#;
        assert_eq!(
            listener_ports(body).unwrap(),
            [("router".to_owned(), 4001), ("wasm".to_owned(), 4002)]
        );
        assert_eq!(listener_ports(r#"{"listener_statuses": []}"#).unwrap(), []);
        assert!(listener_ports("not json").is_err());
    }

    #[test]
    fn the_arguments_are_the_chosen_ones_in_a_fixed_order() {
        let dir = Path::new("/d");
        let plain = Launch::new("envoy").envoy_args(Path::new("/d/envoy.json"), dir);
        assert_eq!(
            plain,
            [
                "-c",
                "/d/envoy.json",
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--admin-address-path",
                "/d/admin-address",
                "--log-path",
                "/d/envoy.log"
            ]
        );
        let chosen = Launch::new("envoy")
            .concurrency(2)
            .log_level("warning")
            .component_log_level("wasm:debug")
            .args(["--file-flush-interval-msec", "50"])
            .envoy_args(Path::new("/d/envoy.json"), dir);
        assert_eq!(
            chosen,
            [
                "-c",
                "/d/envoy.json",
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:debug",
                "--admin-address-path",
                "/d/admin-address",
                "--log-path",
                "/d/envoy.log",
                "--file-flush-interval-msec",
                "50"
            ]
        );
    }

    #[test]
    fn a_binary_that_is_not_there_is_an_error_naming_it() {
        let error = Launch::new("/nonexistent/envoy")
            .start(&serde_json::json!({}))
            .err()
            .unwrap();
        assert!(
            error.starts_with("cannot run /nonexistent/envoy: "),
            "{error}"
        );
    }

    #[test]
    fn a_process_that_exits_is_reported_with_its_status() {
        // `false` takes any arguments and exits 1, as Envoy does on a config it refuses.
        let error = Launch::new("false")
            .start(&serde_json::json!({}))
            .err()
            .unwrap();
        assert!(
            error.starts_with("Envoy exited with exit status: 1"),
            "{error}"
        );
    }
}
