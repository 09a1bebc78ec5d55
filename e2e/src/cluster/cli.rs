//! `redis-cli --cluster` runs for the cluster harness: the one-off `create`
//! and the slot movements (`reshard`, `rebalance`) as child processes a test
//! can wait on while its own load runs. Each run's output goes to its own
//! file in the cluster's log directory, quoted when a run fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::RedisCluster;

/// A `redis-cli --cluster` process still running (or finished and not yet
/// waited on). Dropping it kills the process.
pub struct ReshardRun {
    what: String,
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

impl ReshardRun {
    /// Starts `redis-cli` with `args`, output to a new file in `log_dir`
    /// named after `what`.
    pub(super) fn spawn(log_dir: &Path, what: &str, args: &[String]) -> ReshardRun {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = log_dir.join(format!("{what}-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the handle of {}: {e}", log.display()));
        let child = Command::new("redis-cli")
            .args(args)
            // --cluster-yes answers the prompts; a closed stdin makes sure a
            // prompt it does not cover ends the run instead of hanging it.
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-cli: {e} (is redis-tools installed?)"));
        ReshardRun {
            what: format!("redis-cli {}", args.join(" ")),
            child: Some(child),
            log,
            started: Instant::now(),
        }
    }

    /// Whether the run has ended (successfully or not); never blocks, so a
    /// load loop can poll it.
    pub fn is_finished(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// The file the run's output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits for the run to end and returns how long it took since it
    /// started; panics, quoting its output, if it failed or takes longer
    /// than two minutes (redis-cli's own per-key MIGRATE timeout is 60 s).
    pub fn wait(mut self) -> Duration {
        let status = self.wait_status(Duration::from_secs(120));
        let took = self.started.elapsed();
        match status {
            Some(s) if s.success() => took,
            Some(s) => panic!(
                "{} failed ({s}) after {took:?}; output ({}):\n{}",
                self.what,
                self.log.display(),
                self.output()
            ),
            None => panic!(
                "{} still running after {took:?}; output ({}):\n{}",
                self.what,
                self.log.display(),
                self.output()
            ),
        }
    }

    fn wait_status(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => return None,
                Err(e) => panic!("cannot wait for {}: {e}", self.what),
            }
        }
    }

    /// The run's output so far, without the ANSI colours redis-cli writes
    /// even to a file.
    pub fn output(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for ReshardRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Drops `ESC [ ... m` sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl RedisCluster {
    /// Starts `redis-cli --cluster reshard` moving `slots` slots from the
    /// master on `from_port` to the master on `to_port`, once the cluster is
    /// healthy (redis-cli refuses while the nodes disagree, as they do for a
    /// moment after any change). The returned run goes on while the caller
    /// drives load; [`ReshardRun::wait`] ends it.
    pub fn spawn_reshard(&self, from_port: u16, to_port: u16, slots: u32) -> ReshardRun {
        self.wait_healthy();
        let args = reshard_args(
            from_port,
            self.node_id(from_port),
            self.node_id(to_port),
            slots,
        );
        ReshardRun::spawn(&self.logs, "reshard", &args)
    }

    /// [`RedisCluster::spawn_reshard`], waited for, and then the cluster
    /// healthy again. Returns how long redis-cli took.
    pub fn reshard(&self, from_port: u16, to_port: u16, slots: u32) -> Duration {
        let took = self.spawn_reshard(from_port, to_port, slots).wait();
        self.wait_healthy();
        took
    }

    /// Starts `redis-cli --cluster rebalance --cluster-use-empty-masters`
    /// with a 1% threshold (redis-cli's 2% default leaves a master a hundred
    /// slots off its share alone), once the cluster is healthy.
    pub fn spawn_rebalance(&self) -> ReshardRun {
        self.wait_healthy();
        let entry = self
            .masters()
            .into_iter()
            .map(|n| n.port)
            .find(|&p| self.is_running(p))
            .unwrap_or_else(|| panic!("no live master to rebalance from"));
        ReshardRun::spawn(&self.logs, "rebalance", &rebalance_args(entry, 1.0))
    }

    /// [`RedisCluster::spawn_rebalance`], waited for, and then the cluster
    /// healthy again. Returns how long redis-cli took.
    pub fn rebalance(&self) -> Duration {
        let took = self.spawn_rebalance().wait();
        self.wait_healthy();
        took
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

pub(super) fn create_args(ports: &[u16], replicas: usize) -> Vec<String> {
    let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
    args.extend(ports.iter().map(|&p| addr(p)));
    args.extend([
        "--cluster-replicas".to_owned(),
        replicas.to_string(),
        "--cluster-yes".to_owned(),
    ]);
    args
}

pub(super) fn reshard_args(entry: u16, from_id: &str, to_id: &str, slots: u32) -> Vec<String> {
    [
        "--cluster",
        "reshard",
        &addr(entry),
        "--cluster-from",
        from_id,
        "--cluster-to",
        to_id,
        "--cluster-slots",
        &slots.to_string(),
        "--cluster-yes",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `threshold` is redis-cli's `--cluster-threshold` in percent: a master
/// further than that from its share is rebalanced (redis-cli's default, 2%,
/// ignores a move of a hundred slots out of ~5461).
pub(super) fn rebalance_args(entry: u16, threshold: f32) -> Vec<String> {
    [
        "--cluster",
        "rebalance",
        &addr(entry),
        "--cluster-use-empty-masters",
        "--cluster-threshold",
        &threshold.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[32;1m[OK] All 16384 slots covered.\n\u{1b}[0mdone"),
            "[OK] All 16384 slots covered.\ndone"
        );
    }
}
