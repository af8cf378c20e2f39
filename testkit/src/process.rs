//! Processes as the bench and the soak see them: CPU pinning, and what /proc says.

use std::path::Path;
use std::process::Command;

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

/// Resident set size in KiB, from /proc/<pid>/status; 0 when unknown.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set() {
        let pid = std::process::id();
        let rss = rss_kib(pid);
        assert!(rss > 0);
        // Read after: the peak only grows, while other threads allocate meanwhile.
        assert!(peak_rss_kib(pid) >= rss);
        assert_eq!(rss_kib(u32::MAX), 0);
    }

    #[test]
    fn unpinned_runs_the_program_itself() {
        let command = pinned(None, Path::new("/bin/true"));
        assert_eq!(command.get_program(), "/bin/true");
        let command = pinned(Some("0"), Path::new("/bin/true"));
        assert_eq!(command.get_program(), "taskset");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["-c", "0", "/bin/true"]);
    }
}
