//! Child processes: spawning a workspace binary with its log file, the
//! [`Proc`] handle that kills it on drop, and the small waits the harness
//! builds on (a free port, a condition polled until a deadline).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::paths::{binary, log_dir};

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

pub(crate) fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok()
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub(crate) child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Whether the process has exited, with its exit code if it did.
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.try_exit() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn(name: &str, args: &[String], stdout: Stdio) -> Proc {
    spawn_via(name, None, args, stdout)
}

/// Like [`spawn`], with the process started by `launcher` (a command that
/// ends by exec-ing the binary, such as `prlimit --nofile=...`, so the pid
/// is the binary's).
pub(crate) fn spawn_via(
    name: &str,
    launcher: Option<&[String]>,
    args: &[String],
    stdout: Stdio,
) -> Proc {
    static N: AtomicU64 = AtomicU64::new(0);
    let log = log_dir().join(format!(
        "{name}-{}-{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&log).expect("cannot create log file");
    let mut cmd = match launcher {
        Some([program, rest @ ..]) => {
            let mut c = Command::new(program);
            c.args(rest).arg(binary(name));
            c
        }
        _ => Command::new(binary(name)),
    };
    let child = cmd
        .args(args)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { child, log }
}
