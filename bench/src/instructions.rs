//! Instructions per job of every process of the system, counted by
//! `valgrind --tool=callgrind`: unlike times, these repeat on a shared,
//! noisy machine, so they are what an optimisation is judged by.
//!
//! A second system (its own `redis-server`, API and workers) runs with every
//! process under callgrind. After a warm-up, for each closed loop
//! ([`Loop`]), the counters of every process are zeroed
//! (`callgrind_control -z`), a fixed number of jobs runs, and the counters
//! are dumped (`callgrind_control -d`); the dump's `summary:` line is the
//! instructions that process executed for those jobs. Timers (heartbeats,
//! upkeep, pings) run by the clock, and the clock runs tens of times longer
//! under callgrind: their rate with no load is measured first, listed on its
//! own, and subtracted over each window.
//!
//! The figures are compared with [`BASELINE_FILE`], the same measurement
//! made at the commit the CPU work started from; `--instructions-save`
//! rewrites it (run against that commit's binaries with `E2E_BIN_DIR`).
//! The dumps stay under `target/bench-callgrind/` for `callgrind_annotate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{Api, RedisServer, Worker, repo_root, unique_namespace};

use crate::closed::{submit_and_wait, submit_then_poll, warm_up};
use crate::http::Http;
use crate::profiles::parse_commandstats;
use crate::report::Report;
use crate::{MODEL, progress};

/// Instructions per job measured at the commit the CPU work started from.
pub(crate) const BASELINE_FILE: &str = "bench/instructions-baseline.tsv";

/// The two closed loops, counted separately: their costs per job differ
/// (see the README's performance section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Loop {
    /// No load: what timers (heartbeats, lease checks, pings) cost, per
    /// second rather than per job.
    Idle,
    /// Each client submits, then long-polls its job, then the next.
    SubmitWait,
    /// All jobs submitted, then each read until terminal.
    SubmitThenPoll,
}

impl Loop {
    fn name(self) -> &'static str {
        match self {
            Loop::Idle => "idle",
            Loop::SubmitWait => "submit-and-wait",
            Loop::SubmitThenPoll => "submit-then-poll",
        }
    }

    fn parse(s: &str) -> Option<Loop> {
        [Loop::Idle, Loop::SubmitWait, Loop::SubmitThenPoll]
            .into_iter()
            .find(|l| l.name() == s)
    }
}

/// Instructions per job, by loop and process name.
pub(crate) type Counts = BTreeMap<(Loop, String), f64>;

/// Per loop, how the jobs were grouped, read from the profiled Redis's
/// `INFO commandstats`: Redis's and the workers' counts per job depend on
/// it (a start and a finish script per batch), and it follows the timing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Grouping {
    /// Jobs per worker read (`XREADGROUP` calls that returned or not).
    pub jobs_per_read: f64,
    /// Script calls (`EVALSHA`) per job, all processes together.
    pub scripts_per_job: f64,
}

pub(crate) type Groupings = BTreeMap<Loop, Grouping>;

/// One process under callgrind: its name in the report, pid, and the dump
/// file prefix (`<prefix>.<n>` is the n-th dump).
struct Profiled {
    name: String,
    pid: u32,
    out: PathBuf,
    dumps: u32,
}

impl Profiled {
    fn new(name: &str, pid: u32, out: PathBuf) -> Profiled {
        Profiled {
            name: name.to_owned(),
            pid,
            out,
            dumps: 0,
        }
    }

    fn control(&self, flag: &str) -> Result<()> {
        let st = Command::new("callgrind_control")
            .arg(flag)
            .arg(self.pid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("running callgrind_control (valgrind)")?;
        if !st.success() {
            bail!(
                "callgrind_control {flag} {} ({}) failed",
                self.pid,
                self.name
            );
        }
        Ok(())
    }

    fn zero(&self) -> Result<()> {
        self.control("-z")
    }

    /// Dumps and returns the instructions since the last zero.
    fn dump(&mut self) -> Result<u64> {
        self.control("-d")?;
        self.dumps += 1;
        let file = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        read_summary(&file)
    }
}

fn read_summary(file: &Path) -> Result<u64> {
    // The dump is written by the profiled process after the command returns.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            let found = text.lines().find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            });
            if let Some(n) = found {
                return n
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("bad summary line in {}", file.display()));
            }
        }
        if Instant::now() > deadline {
            bail!("no callgrind dump at {}", file.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn launcher(dir: &Path, name: &str) -> (Vec<String>, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let cmd = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        "--quiet".to_owned(),
    ];
    (cmd, out)
}

/// What [`measure`] needs from the command line.
pub(crate) struct Run<'a> {
    pub(crate) jobs: usize,
    pub(crate) concurrency: usize,
    pub(crate) workers: usize,
    pub(crate) worker_args: &'a [String],
}

/// Starts the profiled system, counts both loops, and stops it.
pub(crate) async fn measure(run: Run<'_>) -> Result<(Counts, Groupings)> {
    let dir = repo_root()
        .join("target")
        .join("bench-callgrind")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    progress("instructions: starting redis-server, api and workers under callgrind");
    let (l, out) = launcher(&dir, "redis-server");
    let redis = RedisServer::start_via(&l);
    let pid = redis.pid().context("redis-server has no pid")?;
    let mut procs = vec![Profiled::new("redis-server", pid, out)];
    let ns = unique_namespace("bench-ir");
    let wargs: Vec<&str> = run.worker_args.iter().map(String::as_str).collect();
    let mut workers = Vec::new();
    for i in 1..=run.workers {
        let (l, out) = launcher(&dir, &format!("worker-{i}"));
        let w = Worker::spawn_via(&redis.url(), &ns, &wargs, &l);
        procs.push(Profiled::new(&format!("worker {i}"), w.proc.pid(), out));
        workers.push(w);
    }
    let (l, out) = launcher(&dir, "api");
    let api = Api::spawn_via(&redis.url(), &ns, &[], Some(&l));
    procs.push(Profiled::new("api", api.proc.pid(), out));
    api.client()
        .wait_for_models(&[MODEL], Duration::from_secs(300))
        .await;
    let http = Http::new(&api.base_url)?;
    warm_up(&http).await?;
    warm_up(&http).await?;

    let mut stats = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let mut counts = Counts::new();
    let mut groupings = Groupings::new();
    // Long enough to see the upkeep timers (100 ms, 1 s) many times over.
    let idle = Duration::from_secs(5);
    for p in &procs {
        p.zero()?;
    }
    tokio::time::sleep(idle).await;
    for p in &mut procs {
        let n = p.dump()?;
        counts.insert((Loop::Idle, p.name.clone()), n as f64 / idle.as_secs_f64());
    }

    for lp in [Loop::SubmitWait, Loop::SubmitThenPoll] {
        progress(&format!(
            "instructions: {} jobs, {}, under callgrind",
            run.jobs,
            lp.name()
        ));
        for p in &procs {
            p.zero()?;
        }
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut stats)
            .await?;
        let t0 = Instant::now();
        let errors = match lp {
            Loop::SubmitWait => {
                submit_and_wait(&http, run.jobs, run.concurrency)
                    .await
                    .errors
            }
            Loop::SubmitThenPoll => {
                submit_then_poll(&http, run.jobs, run.concurrency)
                    .await
                    .errors
            }
            Loop::Idle => continue,
        };
        let secs = t0.elapsed().as_secs_f64();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut stats)
            .await?;
        let stats_rows = parse_commandstats(&info);
        let calls = |name: &str| {
            stats_rows
                .iter()
                .find(|c| c.name == name)
                .map_or(0.0, |c| c.calls)
        };
        groupings.insert(
            lp,
            Grouping {
                jobs_per_read: run.jobs as f64 / calls("xreadgroup").max(1.0),
                scripts_per_job: calls("evalsha") / run.jobs as f64,
            },
        );
        let mut system = 0.0;
        for p in &mut procs {
            // Net of the timers' idle rate over the window: under callgrind
            // the window is tens of times longer than natively, and the
            // timers would be charged to the jobs as many times over.
            let idle = counts
                .get(&(Loop::Idle, p.name.clone()))
                .copied()
                .unwrap_or(0.0);
            let per_job = (p.dump()? as f64 - idle * secs).max(0.0) / run.jobs as f64;
            system += per_job;
            counts.insert((lp, p.name.clone()), per_job);
        }
        counts.insert((lp, SYSTEM.to_owned()), system);
        if errors.total() > 0 {
            bail!(
                "{} failed jobs under callgrind ({}): the counts would not be per job",
                errors.total(),
                errors.summary()
            );
        }
    }
    drop(api);
    drop(workers);
    drop(redis);
    Ok((counts, groupings))
}

/// The row that sums API, Redis and workers (the load generator is not the
/// system under test).
const SYSTEM: &str = "system (api + redis + workers)";

/// Reads [`BASELINE_FILE`]: `loop<TAB>process<TAB>instructions per job`.
pub(crate) fn load_baseline() -> Result<(String, Counts)> {
    let path = repo_root().join(BASELINE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut about = String::new();
    let mut counts = Counts::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            if about.is_empty() {
                about = c.to_owned();
            }
            continue;
        }
        let mut f = line.split('\t');
        let (Some(l), Some(p), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let lp = Loop::parse(l).with_context(|| format!("unknown loop {l} in {BASELINE_FILE}"))?;
        counts.insert((lp, p.to_owned()), n.parse()?);
    }
    Ok((about, counts))
}

/// Writes `counts` as the new [`BASELINE_FILE`], described by `about`.
pub(crate) fn save_baseline(about: &str, counts: &Counts) -> Result<()> {
    let mut text = format!(
        "# {about}\n# loop\tprocess\tinstructions per job (callgrind; scripts/bench --instructions-save)\n"
    );
    for ((lp, p), n) in counts {
        text.push_str(&format!("{}\t{p}\t{n:.0}\n", lp.name()));
    }
    let path = repo_root().join(BASELINE_FILE);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Rows: per loop and process, the instructions per job, the share of the
/// system, and the ratio to the baseline.
pub(crate) fn report(
    rep: &mut Report,
    jobs: usize,
    (counts, groupings): &(Counts, Groupings),
    baseline: &(String, Counts),
) {
    for ((lp, name), n) in counts {
        let section = match lp {
            Loop::Idle => "instructions per second, idle".to_owned(),
            _ => format!("instructions per job ({}, {jobs} jobs)", lp.name()),
        };
        let system = counts.get(&(*lp, SYSTEM.to_owned())).copied();
        let share = match system {
            Some(s) if name != SYSTEM => {
                format!("{:.0}% of system; ", 100.0 * n / s)
            }
            _ => String::new(),
        };
        let base = match baseline.1.get(&(*lp, name.clone())) {
            Some(b) if *b > 0.0 => format!("baseline {} ({:.2} x)", thousands(*b), n / b),
            _ => String::new(),
        };
        rep.row(&section, name, thousands(*n), format!("{share}{base}"));
    }
    for (lp, g) in groupings {
        let section = format!("instructions per job ({}, {jobs} jobs)", lp.name());
        rep.row(
            &section,
            "jobs per worker read (XREADGROUP)",
            format!("{:.1}", g.jobs_per_read),
            format!(
                "{:.2} script calls per job; Redis's and the workers' counts follow the batching",
                g.scripts_per_job
            ),
        );
    }
    if !baseline.0.is_empty() {
        rep.row(
            "instructions per job: baseline",
            "measured at",
            String::new(),
            baseline.0.clone(),
        );
    }
}

fn thousands(n: f64) -> String {
    let s = format!("{n:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
