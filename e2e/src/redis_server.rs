//! The single private `redis-server` most tests run against: a free
//! loopback port, persistence off unless asked for, and the faults the
//! reliability tests inflict on it (SIGKILL, graceful SHUTDOWN, restart on
//! the same port and data directory). Its log goes to
//! `target/e2e-logs/redis-<port>.log`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, log_dir, wait_until};

/// A private redis-server. Persistence is off unless asked for.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    appendonly: bool,
    /// A command that execs `redis-server` (a profiler such as valgrind),
    /// empty for none.
    launcher: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// With AOF and `appendfsync always`. Production's `everysec` may reply
    /// before it writes when a background fsync is slow (Redis postpones
    /// the write up to 2 s), so a kill -9 on a busy disk can lose the last
    /// acknowledged writes: that window is Redis's, documented in the
    /// README, and a test of ours that the queue loses nothing Redis kept
    /// must not depend on the disk's speed that day.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(true)
    }

    /// Without persistence, started through `launcher`: a command that
    /// runs `redis-server` in its own process (`valgrind --tool=callgrind`),
    /// so the pid is the server's.
    pub fn start_via(launcher: &[String]) -> RedisServer {
        RedisServer::start_with_launcher(false, launcher.to_vec())
    }

    fn start_with(appendonly: bool) -> RedisServer {
        RedisServer::start_with_launcher(appendonly, Vec::new())
    }

    fn start_with_launcher(appendonly: bool, launcher: Vec<String>) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("e2e-redis-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut server = RedisServer {
            port,
            dir,
            appendonly,
            launcher,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(log_dir().join(format!("redis-{}.log", self.port)))
            .expect("cannot create redis log");
        let mut cmd = match self.launcher.as_slice() {
            [program, rest @ ..] => {
                let mut c = Command::new(program);
                c.args(rest).arg("redis-server");
                c
            }
            [] => Command::new("redis-server"),
        };
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args([
                "--appendfsync",
                if self.appendonly {
                    "always"
                } else {
                    "everysec"
                },
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cannot start redis-server: run scripts/setup");
        self.child = Some(child);
        assert!(
            // A profiled server starts tens of times slower.
            wait_until(
                Duration::from_secs(if self.launcher.is_empty() { 10 } else { 60 }),
                || self.ping()
            ),
            "redis-server on port {} did not answer PING",
            self.port
        );
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The server's pid while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking client connection, for inspecting keys from a test.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// kill -9: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// SHUTDOWN the way an operator restart does (SIGTERM: the AOF is
    /// flushed), then start again on the same port and data directory.
    pub fn restart_graceful(&mut self) {
        self.stop_graceful();
        self.spawn();
    }

    /// SIGTERM and wait for the exit, leaving the server down.
    pub fn stop_graceful(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a server stopped by [`RedisServer::stop_graceful`] again.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }
}
