//! `bench`: an end-to-end benchmark that reports its own ceilings.
//!
//! Starts a private `redis-server` (no persistence), the release `api` and
//! `--workers` release `worker`s with the demo `models/` (through the `e2e`
//! harness), all on 127.0.0.1, then measures in one run:
//!
//! * closed loop (submit burst, then submit → long-poll per client), and the
//!   burst again as bulk submits of 1,000 ([`bulk`]) and through WebSocket
//!   sessions, results pushed ([`ws`]),
//! * webhook delivery latency, finish to receipt ([`webhooks`]),
//! * open loop at fixed rates until the first saturated one,
//! * the closed loop again with workers on `--read-count 1`,
//! * limits ([`limits`]): in-process ONNX Runtime rows/s, and Redis round
//!   trips/s of the protocol's own calls of one job (submit, read, start,
//!   finish, poll),
//! * resident memory of every process, and process start to the first 202,
//! * the API's memory targets on a fresh API ([`memory`]): long-polls open
//!   and closed, and the peak through the overload,
//! * the dataset parser at the upload size limit ([`parsers`]),
//! * the Python baseline (FastAPI + Celery, [`baseline`]) under the same
//!   closed loops, after our system has stopped,
//! * instructions per job of every process ([`instructions`], callgrind),
//!
//! and prints one aligned table, each figure with a ratio to a baseline from
//! the same run where one exists (the machine is shared and noisy).
//!
//! This file is the command line and the order of the phases; each phase
//! and its rows of the report live in its own module ([`closed`], [`open`],
//! [`limits`], [`cpu`], [`parsers`]).
//!
//! `--profile-only` instead draws flamegraphs of the closed loop
//! ([`profiles`], `scripts/profile`).
//!
//! `--cluster` runs instead the Redis topology comparison ([`cluster`]):
//! one node against a 6-node Redis Cluster, unpartitioned and partitioned,
//! and the submit latency of `--durability replicated`.

use std::time::{Duration, Instant};

mod baseline;
mod bulk;
mod closed;
mod cluster;
mod cpu;
mod http;
mod instructions;
mod limits;
mod memory;
mod open;
mod parsers;
mod procstat;
mod profiles;
mod report;
mod webhooks;
mod workers;
mod ws;

use anyhow::{Result, bail};
use clap::Parser;
use closed::{closed_loop, report_closed, warm_up};
use cpu::CpuSample;
use e2e::{Api, RedisServer, unique_namespace};
use http::Http;
use open::open_loop;
use procstat::{mib, rss_kib};
use report::{Report, machine, ms};
use workers::{batch_flag, spawn_workers, without_batch_flag};

/// Benchmark of the whole system on this machine (everything on 127.0.0.1).
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// Jobs per closed-loop run.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,

    /// Concurrent clients of the closed loop.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Open-loop target rates (jobs/s), tried in order until one saturates.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,5000")]
    rates: Vec<u32>,

    /// Seconds each open-loop rate runs.
    #[arg(long, default_value_t = 5.0)]
    open_secs: f64,

    /// Extra worker argument (repeat: `--worker-arg=--read-count --worker-arg=8`).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,

    /// Smoke run of about 20 s: fewer jobs, one open-loop rate, shorter limits.
    #[arg(long)]
    quick: bool,

    /// Only the in-process parser limits (no Redis, API or workers).
    #[arg(long)]
    parsers_only: bool,

    /// Jobs per loop of the instruction count (every process under
    /// callgrind, a system of its own); 0 skips it.
    #[arg(long, default_value_t = 2000)]
    instructions_jobs: usize,

    /// Only the instruction count.
    #[arg(long)]
    instructions_only: bool,

    /// Store this run's instruction counts as the baseline, described by
    /// the given text (the commit measured).
    #[arg(long, value_name = "ABOUT")]
    instructions_save: Option<String>,

    /// The open-loop rate of the memory phase's overload (jobs/s).
    #[arg(long, default_value_t = 5000)]
    overload_rate: u32,

    /// Extra argument of the memory phase's API (repeat), to measure a
    /// configuration: `--memory-api-arg=--max-connections-per-ip --memory-api-arg=0`.
    #[arg(long = "memory-api-arg", allow_hyphen_values = true)]
    memory_api_args: Vec<String>,

    /// Only the API memory phase (its own Redis, API and workers).
    #[arg(long)]
    memory_only: bool,

    /// Only the flamegraphs of the closed loop (`scripts/profile`), written
    /// to `--profile-dir`.
    #[arg(long)]
    profile_only: bool,

    /// Where `--profile-only` writes its SVGs and Redis's commandstats.
    #[arg(long, default_value = "bench/profiles")]
    profile_dir: std::path::PathBuf,

    /// Skip the Python baseline (FastAPI + Celery, bench/baseline/).
    #[arg(long)]
    no_baseline: bool,

    /// Jobs per closed-loop run of the Python baseline (0 skips it): it is
    /// far slower than ours, and the ratios compare jobs/s, not totals.
    #[arg(long, default_value_t = 2000)]
    baseline_jobs: usize,

    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

const MODEL: &str = "mlp128";
/// Per-job limit in the load phases; past it the job counts as an error.
const JOB_DEADLINE: Duration = Duration::from_secs(30);

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.cluster.cluster {
        return cluster::run(cluster::Run {
            concurrency: args.concurrency,
            workers: args.workers,
            worker_args: &args.worker_args,
            quick: args.quick,
            args: args.cluster.clone(),
        })
        .await;
    }
    if args.quick {
        args.jobs = args.jobs.min(500);
        args.rates.truncate(1);
        args.open_secs = args.open_secs.min(2.0);
        args.instructions_jobs = args.instructions_jobs.min(300);
        args.baseline_jobs = args.baseline_jobs.min(300);
    }
    if args.rates.is_empty() || args.workers == 0 || args.concurrency == 0 {
        bail!("--rates, --workers and --concurrency must not be empty or 0");
    }
    let limit_secs = if args.quick { 0.3 } else { 1.0 };
    let (nproc, cpu) = machine();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let cmdline: Vec<String> = std::env::args().collect();
    let header = vec![
        format!("bench: {}", cmdline.join(" ")),
        format!("date: {date}"),
        format!(
            "machine: nproc {nproc}, CPU {cpu}; redis, api, {} worker(s) and this load generator share it, all on 127.0.0.1",
            args.workers
        ),
        format!(
            "model {MODEL}; closed loop {} jobs at concurrency {}; open loop {} s per rate; worker args: {:?}",
            args.jobs, args.concurrency, args.open_secs, args.worker_args
        ),
    ];
    let mut rep = Report { rows: Vec::new() };

    if args.memory_only {
        progress("starting redis-server");
        let redis = RedisServer::start();
        let ns = unique_namespace("bench");
        // The models must be published once; then no worker may run.
        let publisher = spawn_workers(&redis.url(), &ns, 1, &args.worker_args);
        Api::spawn(&redis.url(), &ns, &[])
            .client()
            .wait_for_models(&[MODEL], Duration::from_secs(60))
            .await;
        drop(publisher);
        let held = memory_phase(&args, &redis.url(), &ns, &mut rep).await?;
        rep.print(&header);
        if !held {
            bail!("an API memory target was not met");
        }
        return Ok(());
    }

    if args.profile_only {
        return profiles::record(profiles::Run {
            dir: &args.profile_dir,
            jobs: args.jobs,
            concurrency: args.concurrency,
            workers: args.workers,
            worker_args: &args.worker_args,
        })
        .await;
    }

    progress("limits: dataset parsing at the size limit");
    let quick = args.quick;
    let (rows, parsers_held) = tokio::task::spawn_blocking(move || parsers::measure(quick)).await?;
    for (metric, value, note) in rows {
        rep.row("limit: parsers", &metric, value, note);
    }
    // A bench, not a timed test: the verdict is a ratio within one run.
    let parsers_verdict = || {
        if parsers_held {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "the dataset parser is not linear at its size limit, or an attack shape was accepted"
            ))
        }
    };
    if args.parsers_only {
        rep.print(&header);
        return parsers_verdict();
    }
    if args.instructions_only {
        count_instructions(&args, &mut rep).await?;
        rep.print(&header);
        return Ok(());
    }

    progress("starting redis-server, workers and api");
    let redis = RedisServer::start();
    let ns = unique_namespace("bench");
    let mut workers = spawn_workers(&redis.url(), &ns, args.workers, &args.worker_args);
    // Loopback webhooks: the receiver of the webhook phase is this process.
    let api = Api::spawn(&redis.url(), &ns, &["--webhook-allow-private", "true"]);
    api.client()
        .wait_for_models(&[MODEL], Duration::from_secs(60))
        .await;
    let http = Http::new(&api.base_url)?;
    warm_up(&http).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api_idle = rss_kib(api.proc.pid());
    let workers_idle: Vec<_> = workers.iter().map(|w| rss_kib(w.proc.pid())).collect();

    // Limits first, while the system is idle.
    let limits = limits::measure(&mut rep, &redis.url(), limit_secs).await?;

    let on_label = format!("closed, read-count {}", batch_flag(&args.worker_args));
    progress(&format!("{on_label}: {} jobs", args.jobs));
    let mut procs = vec![("api".to_owned(), api.proc.pid())];
    procs.extend(
        workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("worker {}", i + 1), w.proc.pid())),
    );
    procs.extend(redis.pid().map(|p| ("redis-server".to_owned(), p)));
    let cpu_before = CpuSample::take(&procs);
    let on = closed_loop(&http, args.jobs, args.concurrency).await?;
    let cpu_after = CpuSample::take(&procs);
    report_closed(&mut rep, &on_label, &on, limits.ort_batch1);
    // closed_loop runs the jobs twice: a burst, then submit-and-wait.
    cpu_before.report(&cpu_after, 2 * args.jobs, nproc, on.e2e_jps, &mut rep);
    rep.row(
        &on_label,
        "end-to-end ÷ Redis jobs/s bound",
        format!("{:.3}", on.e2e_jps / limits.redis_jobs),
        String::new(),
    );
    progress(&format!("bulk submit: {} jobs", args.jobs));
    let bulk = bulk::bulk_then_poll(&http, args.jobs, args.concurrency).await;
    bulk.report(&mut rep, &on_label, &on);
    progress(&format!("websocket sessions: {} jobs", args.jobs));
    ws::burst(&api.base_url, args.jobs)
        .await
        .report(&mut rep, &on_label, &on, &bulk);
    progress("webhooks: 2000 jobs");
    webhooks::measure(&http, 2000).await?.report(&mut rep);

    let api_closed = rss_kib(api.proc.pid());
    for &rate in &args.rates {
        progress(&format!("open loop at {rate}/s for {} s", args.open_secs));
        let o = open_loop(&http, rate, args.open_secs).await;
        o.report(&mut rep);
        if o.saturated() {
            break;
        }
    }

    let api_after = rss_kib(api.proc.pid());
    let workers_after: Vec<_> = workers.iter().map(|w| rss_kib(w.proc.pid())).collect();

    progress("restarting workers with --read-count 1");
    drop(std::mem::take(&mut workers));
    let mut off_args = without_batch_flag(&args.worker_args);
    off_args.extend(["--read-count".to_owned(), "1".to_owned()]);
    workers = spawn_workers(&redis.url(), &ns, args.workers, &off_args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    warm_up(&http).await?;
    let off_label = "closed, read-count 1".to_owned();
    progress(&format!("{off_label}: {} jobs", args.jobs));
    let off = closed_loop(&http, args.jobs, args.concurrency).await?;
    report_closed(&mut rep, &off_label, &off, limits.ort_batch1);
    let cmp = format!(
        "batching on ÷ off: read-count {} vs 1",
        batch_flag(&args.worker_args)
    );
    rep.row(
        &cmp,
        "end-to-end jobs/s",
        format!("{:.2}", on.e2e_jps / off.e2e_jps),
        format!("{:.0} vs {:.0} jobs/s", on.e2e_jps, off.e2e_jps),
    );
    rep.row(
        &cmp,
        "burst jobs/s",
        format!("{:.2}", on.burst_jps / off.burst_jps),
        format!("{:.0} vs {:.0} jobs/s", on.burst_jps, off.burst_jps),
    );
    rep.row(
        &cmp,
        "what read-count (= --max-batch) covers",
        "".into(),
        "jobs per XREADGROUP and rows per stacked ORT run, as this worker build does".into(),
    );
    drop(workers);

    // No worker runs now, as the memory phase needs.
    // Its rows say which targets are met; the run does not fail on them.
    memory_phase(&args, &redis.url(), &ns, &mut rep).await?;

    progress("process start to first 202");
    let t0 = Instant::now();
    let (redis_url, ns2) = (redis.url(), ns.clone());
    let (api2, listening) = tokio::task::spawn_blocking(move || {
        let api = Api::spawn(&redis_url, &ns2, &[]);
        (api, t0.elapsed())
    })
    .await?;
    let http2 = Http::new(&api2.base_url)?;
    let first_202 = loop {
        // No worker runs now: the job just queues, the 202 is what counts.
        if http2.submit().await.is_ok() {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("fresh api gave no 202 within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    drop(api2);

    let sec = "memory (VmRSS)";
    rep.row(
        sec,
        "api idle → after closed → after open",
        format!(
            "{} → {} → {}",
            mib(api_idle),
            mib(api_closed),
            mib(api_after)
        ),
        "open loop holds a connection per in-flight job".into(),
    );
    for (i, (a, b)) in workers_idle.iter().zip(&workers_after).enumerate() {
        rep.row(
            sec,
            &format!("worker {} idle → after runs", i + 1),
            format!("{} → {}", mib(*a), mib(*b)),
            format!("read-count {}", batch_flag(&args.worker_args)),
        );
    }
    let sec = "fresh api start";
    rep.row(sec, "spawn to LISTENING", ms(listening), String::new());
    rep.row(
        sec,
        "spawn to first 202",
        ms(first_202),
        "models already published".into(),
    );

    drop(api);
    drop(redis);
    // Our system is gone: the Python one gets the cores to itself.
    if !args.no_baseline && args.baseline_jobs > 0 {
        baseline::measure(&mut rep, args.baseline_jobs, args.concurrency, &on).await?;
    }
    // Last, with the native system gone: valgrind is slow enough to take
    // both cores.
    count_instructions(&args, &mut rep).await?;
    println!();
    rep.print(&header);
    parsers_verdict()
}

async fn count_instructions(args: &Args, rep: &mut Report) -> Result<()> {
    if args.instructions_jobs == 0 {
        return Ok(());
    }
    let measured = instructions::measure(instructions::Run {
        jobs: args.instructions_jobs,
        concurrency: args.concurrency,
        workers: args.workers,
        worker_args: &args.worker_args,
    })
    .await;
    // A busy machine can slow the profiled Redis past the clients' timeout:
    // then the counts are refused, but the rest of the table still prints.
    let measured = match measured {
        Ok(c) => c,
        Err(e) if args.instructions_save.is_none() => {
            rep.row(
                "instructions per job",
                "not measured",
                String::new(),
                format!("{e:#}"),
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let baseline = match &args.instructions_save {
        Some(about) => {
            instructions::save_baseline(about, &measured.0)?;
            (String::new(), instructions::Counts::new())
        }
        None => instructions::load_baseline()?,
    };
    instructions::report(rep, args.instructions_jobs, &measured, &baseline);
    Ok(())
}

async fn memory_phase(args: &Args, redis_url: &str, ns: &str, rep: &mut Report) -> Result<bool> {
    memory::measure(
        memory::Run {
            redis_url,
            ns,
            workers: args.workers,
            worker_args: &args.worker_args,
            api_args: &args.memory_api_args,
            rate: args.overload_rate,
            secs: args.open_secs,
        },
        rep,
    )
    .await
}
