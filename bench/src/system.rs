//! Processes the bench runs (Envoy, the mock), a tiny blocking HTTP client for the
//! admin interface and the sanity checks, and what /proc says about a process.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `taskset -c CPUS program`, or just `program` when no CPU list is given. taskset
/// execs the program, so the child's pid is the program's.
pub fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A running Envoy with `--concurrency 1`; killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    /// Listener name -> port.
    pub ports: HashMap<String, u16>,
    pub log_path: PathBuf,
}

impl Envoy {
    pub fn start(
        envoy_bin: &Path,
        config: &Value,
        dir: &Path,
        cpus: Option<&str>,
    ) -> Result<Envoy, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config_path = dir.join("envoy.json");
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let _ = std::fs::remove_file(&admin_path);
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(config).unwrap_or_default(),
        )
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let child = pinned(cpus, envoy_bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", envoy_bin.display()))?;
        let mut envoy = Envoy {
            child,
            admin_port: 0,
            ports: HashMap::new(),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!("Envoy exited with {status}:\n{}", envoy.log()));
            }
            if envoy.admin_port == 0 {
                envoy.admin_port = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
                    .unwrap_or(0);
            }
            if envoy.admin_port != 0 && http_get(envoy.admin_port, "/ready").0 == 200 {
                let (_, body) = http_get(envoy.admin_port, "/listeners?format=json");
                let listeners: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                for status in listeners["listener_statuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let name = status["name"].as_str().unwrap_or_default().to_owned();
                    let port = status["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                        .unwrap_or(0) as u16;
                    envoy.ports.insert(name, port);
                }
                return Ok(envoy);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("Envoy was not ready within 60 s:\n{}", envoy.log()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self, listener: &str) -> Result<u16, String> {
        self.ports
            .get(listener)
            .copied()
            .ok_or_else(|| format!("Envoy has no listener {listener}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// One counter from `/stats`, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.admin_port, &format!("/stats?filter=^{name}$"));
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The admin `/memory` answer (tcmalloc's view): allocated, heap_size, ...
    pub fn memory(&self) -> Value {
        serde_json::from_str(&http_get(self.admin_port, "/memory").1).unwrap_or(Value::Null)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's mock upstream (`mock-upstream` binary) on a free port. It records
/// every request it gets, bodies included; a background thread clears the record
/// every 200 ms so that a minute of 1 MiB bodies does not fill the machine's memory.
pub struct Mock {
    child: Child,
    pub port: u16,
    stop: Arc<AtomicBool>,
    clearer: Option<JoinHandle<()>>,
}

impl Mock {
    pub fn start(mock_bin: &Path, cpus: Option<&str>) -> Result<Mock, String> {
        let mut child = pinned(cpus, mock_bin)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", mock_bin.display()))?;
        let stdout = child.stdout.take().ok_or("no mock stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the mock's address: {e}"))?;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("the mock printed {line:?}, not its address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let clearer = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = http(port, "DELETE", "/__mock/requests", &[], &[]);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Ok(Mock {
            child,
            port,
            stop,
            clearer: Some(clearer),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(clearer) = self.clearer.take() {
            let _ = clearer.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use testkit::{http, http_get};

/// utime + stime of a process, all its threads, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; the fields that follow it are fixed.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14, stime 15.
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Resident set size in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The largest resident set size the process ever had, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `nproc` and the CPU model, for the report.
pub fn machine() -> (usize, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // Every CPU of the machine, whatever this process's affinity.
    let nproc = info.lines().filter(|l| l.starts_with("processor")).count();
    let model = Some(&info)
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    (nproc, model)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
