//! Flamegraphs of the closed loop (`--profile-only`): where each process's
//! CPU goes, to decide what to optimise next (the instruction counts of
//! [`crate::instructions`] then say by how much a change helped).
//!
//! A system of its own (redis-server, the API, `--workers` workers) runs
//! the same closed loops as the bench, while `perf record -g` samples the
//! API, the first worker and Redis by their pids. Each profile is folded and
//! drawn by inferno (`inferno-collapse-perf`, `inferno-flamegraph`, installed
//! by `scripts/profile` from crates.io) into `<dir>/<process>.svg`, and
//! Redis's own per-command figures (`INFO commandstats`, reset before the
//! loop) go to `<dir>/redis-commandstats.txt`, per job. `<dir>/<process>-top.txt`
//! lists the frames with the most samples; the folded stacks stay in
//! `target/bench-profiles/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use e2e::{Api, RedisServer, unique_namespace};

use crate::closed::{closed_loop, warm_up};
use crate::http::Http;
use crate::workers::spawn_workers;
use crate::{MODEL, progress};

pub(crate) struct Run<'a> {
    pub dir: &'a Path,
    pub jobs: usize,
    pub concurrency: usize,
    pub workers: usize,
    pub worker_args: &'a [String],
}

pub(crate) async fn record(run: Run<'_>) -> Result<()> {
    std::fs::create_dir_all(run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
    progress("profiles: starting redis-server, workers and api");
    let redis = RedisServer::start();
    let ns = unique_namespace("bench");
    let workers = spawn_workers(&redis.url(), &ns, run.workers, run.worker_args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    api.client()
        .wait_for_models(&[MODEL], std::time::Duration::from_secs(60))
        .await;
    let http = Http::new(&api.base_url)?;
    warm_up(&http).await?;
    let redis_pid = redis.pid().context("redis-server has no pid")?;
    let worker = workers.first().context("no worker")?;
    let targets = [
        ("api", api.proc.pid()),
        ("worker", worker.proc.pid()),
        ("redis-server", redis_pid),
    ];
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut conn)
        .await?;
    let mut perfs = Vec::new();
    for (name, pid) in targets {
        perfs.push((name, start_perf(run.dir, name, pid)?));
    }
    progress(&format!(
        "profiles: {} jobs (burst, then submit-and-wait) under perf record",
        run.jobs
    ));
    let closed = closed_loop(&http, run.jobs, run.concurrency).await;
    for (_, child) in &mut perfs {
        stop_perf(child)?;
    }
    let closed = closed?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    // closed_loop runs the jobs twice: a burst, then submit-and-wait.
    let per_job = commandstats_per_job(&stats, 2 * run.jobs);
    let stats_file = run.dir.join("redis-commandstats.txt");
    std::fs::write(&stats_file, per_job)?;
    drop(api);
    drop(workers);
    drop(redis);
    for (name, _) in &perfs {
        let svg = draw(run.dir, name)?;
        println!("{}", svg.display());
    }
    println!("{}", stats_file.display());
    println!(
        "closed loop while profiled: burst {:.0} jobs/s, submit-and-wait {:.0} jobs/s",
        closed.burst_jps, closed.e2e_jps
    );
    Ok(())
}

fn start_perf(dir: &Path, name: &str, pid: u32) -> Result<Child> {
    Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(dir.join(format!("{name}.perf.data")))
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (scripts/profile installs it)")
}

fn stop_perf(child: &mut Child) -> Result<()> {
    // perf writes its data file on SIGINT, as after a Ctrl-C.
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    if !st.success() {
        bail!("could not stop perf record {}", child.id());
    }
    child.wait()?;
    Ok(())
}

/// `perf script | inferno-collapse-perf | inferno-flamegraph`.
fn draw(dir: &Path, name: &str) -> Result<PathBuf> {
    let data = dir.join(format!("{name}.perf.data"));
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    let folded = pipe("inferno-collapse-perf", &[], &script.stdout)?;
    let title = format!("{name}, closed loop (scripts/profile)");
    let svg = pipe("inferno-flamegraph", &["--title", &title], &folded)?;
    let out = dir.join(format!("{name}.svg"));
    std::fs::write(&out, svg)?;
    // The folded stacks, for inferno-flamegraph options or a diff
    // (inferno-diff-folded) against another build's; too big to keep in git.
    let keep = Path::new("target").join("bench-profiles");
    std::fs::create_dir_all(&keep)?;
    std::fs::write(keep.join(format!("{name}.folded")), &folded)?;
    std::fs::write(
        dir.join(format!("{name}-top.txt")),
        top_frames(name, &String::from_utf8_lossy(&folded), 30),
    )?;
    std::fs::remove_file(&data)?;
    Ok(out)
}

fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd} (scripts/profile installs inferno)"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if !out.status.success() {
        bail!("{cmd} failed");
    }
    Ok(out.stdout)
}

/// The frames with the most samples of their own (leaves of the folded
/// stacks) and the most samples under them (any frame of a stack, counted
/// once per stack): the flamegraph's widest towers, as text.
fn top_frames(name: &str, folded: &str, n: usize) -> String {
    use std::collections::{HashMap, HashSet};
    let mut own: HashMap<&str, u64> = HashMap::new();
    let mut under: HashMap<&str, u64> = HashMap::new();
    let mut total = 0u64;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        total += count;
        let frames: Vec<&str> = stack.split(';').collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_default() += count;
        }
        let distinct: HashSet<&str> = frames.into_iter().collect();
        for f in distinct {
            *under.entry(f).or_default() += count;
        }
    }
    let pct = |c: u64| 100.0 * c as f64 / total.max(1) as f64;
    let mut out = format!("# {name}: {total} samples (perf record -F 999 -g, closed loop)\n");
    for (title, map) in [("own samples", &own), ("samples under the frame", &under)] {
        let mut rows: Vec<(&str, u64)> = map.iter().map(|(k, v)| (*k, *v)).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        out.push_str(&format!("\n## {title}\n"));
        for (frame, c) in rows.into_iter().take(n) {
            out.push_str(&format!("{:5.1}%  {frame}\n", pct(c)));
        }
    }
    out
}

/// One row of `INFO commandstats`.
pub(crate) struct CmdStat {
    pub name: String,
    pub calls: f64,
    pub usec: f64,
    pub usec_per_call: f64,
}

/// The rows of `INFO commandstats` (`cmdstat_<name>:calls=..,usec=..,...`).
pub(crate) fn parse_commandstats(info: &str) -> Vec<CmdStat> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            Some(CmdStat {
                name: name.to_owned(),
                calls: field("calls")?,
                usec: field("usec")?,
                usec_per_call: field("usec_per_call")?,
            })
        })
        .collect()
}

/// `INFO commandstats` as calls and µs per job, busiest first.
fn commandstats_per_job(info: &str, jobs: usize) -> String {
    let mut rows = parse_commandstats(info);
    rows.sort_by(|a, b| b.usec.total_cmp(&a.usec));
    let n = jobs.max(1) as f64;
    let mut out = format!(
        "# INFO commandstats over {jobs} jobs of the closed loop (scripts/profile), per job\n\
         # commands a script calls count too (under evalsha's time as well as their own)\n\
         # command\tcalls per job\tµs per job\tµs per call\n"
    );
    for r in rows {
        out.push_str(&format!(
            "{}\t{:.2}\t{:.2}\t{:.2}\n",
            r.name,
            r.calls / n,
            r.usec / n,
            r.usec_per_call
        ));
    }
    out
}
