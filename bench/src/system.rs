//! The mock the bench runs as a process, and what /proc says about a process and the
//! machine (Envoy itself runs through `testkit`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use testkit::process::pinned;

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

pub use testkit::http;

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
