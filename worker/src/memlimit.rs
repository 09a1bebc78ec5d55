//! The worker's own memory ceiling. ONNX Runtime allocates what a graph
//! asks for at run time, and some graphs ask for what the request says (an
//! `Expand` to a client's shape): with Linux's overcommit a 40 GB request
//! is granted and the process is OOM-killed while it writes. Under
//! `RLIMIT_DATA` (private writable memory: the heap and anonymous mappings,
//! not glibc's reserved-but-unused arenas, unlike `RLIMIT_AS`) the same
//! allocation fails at once, ONNX Runtime turns the failure into an error,
//! and the job fails `inference_out_of_memory` while the worker goes on.
//!
//! `--max-memory-mb` sets it; 0 derives it from the container: 90 % of the
//! cgroup's memory limit when there is one (the rest is for what the kernel
//! counts but `RLIMIT_DATA` does not: code, stacks, page cache), else none.

use std::io;

/// Sets a resource limit of this process (or, between fork and exec, of a
/// child: the call is async-signal-safe and allocates nothing).
#[allow(unsafe_code)] // each block has its SAFETY note
pub(crate) fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a plain syscall on a valid, initialised struct.
    if unsafe { libc::setrlimit(resource, &rl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an ONNX Runtime (or C++) error says an allocation failed.
pub(crate) fn is_allocation_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("alloc") && (m.contains("fail") || m.contains("bad_alloc"))
}

/// The container's memory limit, in bytes (cgroup v2, then v1).
fn cgroup_limit() -> Option<u64> {
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(n) = text.trim().parse::<u64>()
            // v1 reports "no limit" as a huge number.
            && n < (1 << 50)
        {
            return Some(n);
        }
    }
    None
}

/// The ceiling `--max-memory-mb` asks for, in bytes (see the module docs).
pub(crate) fn ceiling(max_mb: u64) -> Option<u64> {
    match max_mb {
        0 => cgroup_limit().map(|n| n / 10 * 9),
        mb => Some(mb.saturating_mul(1 << 20)),
    }
}

/// Applies the ceiling to this process (soft limit only, so an operator
/// can still raise it with `prlimit`); returns it.
#[allow(unsafe_code)] // each block has its SAFETY note
pub(crate) fn apply(max_mb: u64) -> io::Result<Option<u64>> {
    let Some(bytes) = ceiling(max_mb) else {
        return Ok(None);
    };
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall writing into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft = bytes.min(rl.rlim_max);
    set_rlimit(libc::RLIMIT_DATA, soft, rl.rlim_max)?;
    Ok(Some(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_are_told_from_other_errors() {
        assert!(is_allocation_failure(
            "Non-zero status code returned while running Expand node. Failed to allocate memory for requested buffer of size 3600000000"
        ));
        assert!(is_allocation_failure("std::bad_alloc"));
        assert!(!is_allocation_failure("Invalid input shape"));
    }

    #[test]
    fn an_explicit_ceiling_is_in_mebibytes() {
        assert_eq!(ceiling(512), Some(512 << 20));
    }
}
