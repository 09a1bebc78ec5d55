//! What the tests read of a process from `/proc` (peak memory, open
//! descriptors) and the one limit they change of their own: tests that
//! hold a thousand sockets need more descriptors than a default soft limit.

/// A value of `/proc/<pid>/status`, in kB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A process's peak resident memory (VmHWM), in MiB.
pub fn peak_mib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM") / 1024
}

/// Descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Raises this test process's descriptor limit to its hard limit, with
/// util-linux's `prlimit`.
pub fn raise_own_nofile() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("Max open files line")
        .to_owned();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string()])
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
}
