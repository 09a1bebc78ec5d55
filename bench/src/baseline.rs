//! The Python baseline of `bench/baseline/` (FastAPI on one uvicorn
//! process, Celery with a prefork pool of 2 and `acks_late`, Redis as
//! broker and result backend, onnxruntime in each child), measured in the
//! same run as our system with the same client and loops, and its rows:
//! its jobs/s and ours ÷ its for the same loop.
//!
//! It owns the Python processes' lives: each runs in a process group of
//! its own, so stopping it (SIGTERM, then SIGKILL after a grace period)
//! reaches the prefork children too and leaves no stray `python` behind.
//! It runs only while our system is stopped: the two share the cores.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{RedisServer, free_port, repo_root};

use crate::closed::{Closed, submit_and_wait, submit_then_poll, warm_up};
use crate::http::Http;
use crate::progress;
use crate::report::{Report, ms};

/// How long uvicorn and the Celery workers may take to come up (imports,
/// model loads) on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// SIGTERM to SIGKILL: Celery's warm shutdown finishes the tasks it holds.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Starts the baseline on a private Redis, runs the submit-then-poll and
/// submit-then-wait loops of `jobs` jobs at concurrency `conc`, stops it,
/// and adds its rows with the ratios to `ours` (our system's closed loop of
/// the same run; ratios are of jobs/s, so the job counts may differ).
pub(crate) async fn measure(
    rep: &mut Report,
    jobs: usize,
    conc: usize,
    ours: &Closed,
) -> Result<()> {
    let dir = repo_root().join("bench").join("baseline");
    let venv = repo_root().join(".local").join("baseline-venv").join("bin");
    // `python -m`, not the venv's console scripts: their `#!` lines name
    // the path the venv was built at, which a moved or linked `.local/`
    // no longer has.
    let python = venv.join("python");
    if !python.exists() {
        bail!(
            "no Python baseline venv at {}: run bench/baseline/setup (scripts/bench does)",
            venv.display()
        );
    }
    progress("python baseline: starting redis-server, celery worker and uvicorn");
    let redis = RedisServer::start();
    let env = [
        ("BASELINE_REDIS_URL", format!("{}/0", redis.url())),
        ("PYTHONUNBUFFERED", "1".to_owned()),
    ];
    let mut celery = Group::spawn(
        "celery",
        &python,
        &[
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--loglevel",
            "warning",
        ],
        &dir,
        &env,
    )?;
    let port = free_port();
    let port_arg = port.to_string();
    let mut uvicorn = Group::spawn(
        "uvicorn",
        &python,
        &[
            "-m",
            "uvicorn",
            "api:api",
            "--host",
            "127.0.0.1",
            "--port",
            &port_arg,
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        &dir,
        &env,
    )?;
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        uvicorn.check_running()?;
        celery.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "uvicorn did not listen within {START_TIMEOUT:?}; see {}",
                uvicorn.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = Http::new(&format!("http://127.0.0.1:{port}"))?;
    // Jobs queue until the prefork children have loaded the model, so
    // warm-up jobs coming back means both processes serve.
    warm_up(&http).await.with_context(|| {
        format!(
            "python baseline warm-up; see {} and {}",
            celery.log.display(),
            uvicorn.log.display()
        )
    })?;

    progress(&format!("python baseline, submit then poll: {jobs} jobs"));
    let burst = submit_then_poll(&http, jobs, conc).await;
    progress(&format!("python baseline, submit then ?wait=: {jobs} jobs"));
    let e2e = submit_and_wait(&http, jobs, conc).await;

    // The front first, so nothing is submitted to a stopping worker.
    uvicorn.stop().await?;
    celery.stop().await?;
    drop(redis);

    let sec = "python baseline (FastAPI + Celery)";
    rep.row(
        sec,
        "what runs",
        String::new(),
        format!(
            "uvicorn 1 process, celery prefork 2, acks_late, Redis broker + backend; {jobs} jobs per loop at concurrency {conc}"
        ),
    );
    rep.row(
        sec,
        "submit burst (no waiting)",
        format!("{:.0} req/s", burst.submit_rps),
        String::new(),
    );
    rep.row(
        sec,
        "submit latency p99",
        ms(burst.submit_p99),
        String::new(),
    );
    rep.row(
        sec,
        "burst: 1st submit to last result",
        format!("{:.0} jobs/s", burst.jps),
        String::new(),
    );
    rep.row(
        sec,
        "end-to-end (submit, then ?wait=)",
        format!("{:.0} jobs/s", e2e.jps),
        String::new(),
    );
    rep.row(sec, "end-to-end latency p50", ms(e2e.p50), String::new());
    rep.row(sec, "end-to-end latency p99", ms(e2e.p99), String::new());
    let mut errors = burst.errors;
    errors.merge(e2e.errors);
    rep.row(sec, "errors", errors.total().to_string(), errors.summary());

    let sec = "ours ÷ python baseline";
    for (loop_name, ours, theirs) in [
        (
            "burst: 1st submit to last result",
            ours.burst_jps,
            burst.jps,
        ),
        ("end-to-end (submit, then ?wait=)", ours.e2e_jps, e2e.jps),
    ] {
        rep.row(
            sec,
            loop_name,
            format!("{:.1}×", ours / theirs),
            format!("{ours:.0} vs {theirs:.0} jobs/s, same loop and client, same run"),
        );
    }
    Ok(())
}

/// A process started as the leader of its own process group, so a signal
/// to the group reaches whatever it forked (Celery's pool children).
struct Group {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Group {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[&str],
        dir: &Path,
        env: &[(&str, String)],
    ) -> Result<Group> {
        let logs = repo_root().join("target").join("e2e-logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let log = logs.join(format!("baseline-{name}-{}.log", std::process::id()));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file handle")?;
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Group { name, child, log })
    }

    fn pgid(&self) -> String {
        format!("-{}", self.child.id())
    }

    /// An error, with where its log is, when the leader has exited.
    fn check_running(&mut self) -> Result<()> {
        match self
            .child
            .try_wait()
            .context("waiting on a baseline process")?
        {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            ),
        }
    }

    /// Whether any process of the group is left. The leader is reaped
    /// first: a zombie still counts as a member.
    fn alive(&mut self) -> bool {
        let _ = self.child.try_wait();
        signal("0", &self.pgid())
    }

    /// SIGTERM to the group, SIGKILL to what is left after [`STOP_GRACE`];
    /// an error if anything of it is still there after that.
    async fn stop(&mut self) -> Result<()> {
        signal("TERM", &self.pgid());
        let deadline = Instant::now() + STOP_GRACE;
        while self.alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.alive() {
            progress(&format!("{} did not stop on SIGTERM: SIGKILL", self.name));
            signal("KILL", &self.pgid());
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.alive() {
                bail!(
                    "{} (process group {}) survived SIGKILL",
                    self.name,
                    self.child.id()
                );
            }
        }
        Ok(())
    }
}

impl Drop for Group {
    /// On an early return (an error mid-run), still no stray processes.
    fn drop(&mut self) {
        if self.alive() {
            signal("KILL", &self.pgid());
            let _ = self.child.wait();
        }
    }
}

/// `kill -SIG -- target` (a negative target is a process group); whether
/// it reached a process. Through kill(1): the workspace denies `unsafe`.
fn signal(sig: &str, target: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
