//! `bench`: an end-to-end benchmark that reports its own ceilings.
//!
//! Starts a private `redis-server` (no persistence), the release `api` and
//! `--workers` release `worker`s with the demo `models/` (through the `e2e`
//! harness), all on 127.0.0.1, then measures in one run:
//!
//! * closed loop (submit burst, then submit → long-poll per client),
//! * open loop at fixed rates until the first saturated one,
//! * the closed loop again with workers on `--read-count 1`,
//! * limits: in-process ONNX Runtime rows/s and raw Redis round trips/s,
//! * resident memory of every process, and process start to the first 202,
//! * the dataset parser at the upload size limit ([`parsers`]),
//!
//! and prints one aligned table, each figure with a ratio to a baseline from
//! the same run where one exists (the machine is shared and noisy).
//!
//! `--cluster` runs instead the Redis topology comparison ([`cluster`]):
//! one node against a 6-node Redis Cluster, unpartitioned and partitioned,
//! and the submit latency of `--durability replicated`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod closed;
mod cluster;
mod http;
mod parsers;
mod procstat;
mod report;

use anyhow::{Context, Result, bail};
use clap::Parser;
use closed::{closed_loop, report_closed, warm_up};
use e2e::{Api, RedisServer, Worker, repo_root, unique_namespace};
use http::{Errors, Http};
use ort::session::{Session, builder::GraphOptimizationLevel};
use ort::value::TensorRef;
use procstat::{cpu_time, mib, rss_kib};
use report::{Report, machine, ms, pct};

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

    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

const MODEL: &str = "mlp128";
/// Per-job limit in the load phases; past it the job counts as an error.
const JOB_DEADLINE: Duration = Duration::from_secs(30);
/// Round trips one job costs in Redis (submit, read, start, finish, poll).
const RT_PER_JOB: f64 = 5.0;

/// CPU time of each process of the system under test, and of this one.
struct CpuSample(Vec<(String, Option<Duration>)>);

impl CpuSample {
    fn take(procs: &[(String, u32)]) -> CpuSample {
        let mut v: Vec<_> = procs
            .iter()
            .map(|(name, pid)| (name.clone(), cpu_time(*pid)))
            .collect();
        v.push(("load generator".into(), cpu_time(std::process::id())));
        CpuSample(v)
    }

    /// Rows of CPU microseconds per job between `self` and `later`, their
    /// total, and the jobs/s that total allows on `cores`: the ceiling no
    /// tuning of one process can lift past.
    fn report(
        &self,
        later: &CpuSample,
        jobs: usize,
        cores: usize,
        measured: f64,
        rep: &mut Report,
    ) {
        let section = "CPU per job (closed loop)";
        let mut total = 0.0;
        for ((name, a), (_, b)) in self.0.iter().zip(&later.0) {
            let (Some(a), Some(b)) = (a, b) else { continue };
            let us = (*b - *a).as_secs_f64() * 1e6 / jobs as f64;
            total += us;
            rep.row(section, name, format!("{us:.0} us"), String::new());
        }
        let ceiling = cores as f64 * 1e6 / total;
        rep.row(
            section,
            "total",
            format!("{total:.0} us"),
            format!(
                "ceiling on {cores} cores: {ceiling:.0} jobs/s; measured {measured:.0} ({:.2} x ceiling)",
                measured / ceiling
            ),
        );
    }
}

// --------------------------------------------------------------- open loop

struct Open {
    target: u32,
    issued_rate: f64,
    achieved: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    errors: Errors,
}

impl Open {
    fn saturated(&self) -> bool {
        self.achieved < 0.9 * self.target as f64 || self.p99 > Duration::from_secs(1)
    }
}

async fn open_loop(http: &Http, rate: u32, secs: f64) -> Open {
    let n = (rate as f64 * secs).round().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let http = http.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = match http.submit().await {
                Ok(id) => http.wait(&id, t + JOB_DEADLINE).await,
                Err(e) => Err(e),
            };
            r.map(|()| (t.elapsed(), start.elapsed()))
        }));
    }
    let issued = start.elapsed();
    let mut lat = Vec::with_capacity(n);
    let mut last = Duration::ZERO;
    let mut errors = Errors::default();
    for h in handles {
        match h.await {
            Ok(Ok((d, done))) => {
                lat.push(d);
                last = last.max(done);
            }
            Ok(Err(e)) => errors.add(e),
            Err(e) => errors.add(e.to_string()),
        }
    }
    lat.sort();
    Open {
        target: rate,
        issued_rate: n as f64 / issued.as_secs_f64().max(secs),
        achieved: lat.len() as f64 / last.as_secs_f64().max(secs),
        p50: pct(&lat, 50.0),
        p90: pct(&lat, 90.0),
        p99: pct(&lat, 99.0),
        errors,
    }
}

// ------------------------------------------------------------------ limits

// Builder errors are not Send/Sync; keep them inside an ort::Result.
fn ort_session(env: &ort::environment::Environment, model: &Path) -> ort::Result<Session> {
    Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(1)?
        .commit_from_file(model)
}

fn ort_rows_per_sec(
    lib: &Path,
    model: &Path,
    batches: &[usize],
    secs: f64,
) -> Result<Vec<(usize, f64)>, String> {
    let env = ort::init_from(lib)
        .map_err(|e| e.to_string())?
        .with_name("bench")
        .build()
        .map_err(|e| e.to_string())?;
    let mut session = ort_session(&env, model).map_err(|e| e.to_string())?;
    bench_batches(&mut session, batches, secs).map_err(|e| e.to_string())
}

fn bench_batches(
    session: &mut Session,
    batches: &[usize],
    secs: f64,
) -> ort::Result<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    for &b in batches {
        let x = ndarray::Array2::<f32>::from_shape_fn((b, 128), |(i, j)| {
            ((i + j) % 128) as f32 / 128.0
        });
        let run = |s: &mut Session| -> ort::Result<()> {
            let o = s.run(ort::inputs!["features" => TensorRef::from_array_view(&x)?])?;
            let y = o["prediction"].try_extract_array::<f32>()?;
            std::hint::black_box(y.sum());
            Ok(())
        };
        for _ in 0..20 {
            run(session)?;
        }
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            run(session)?;
            runs += 1;
        }
        out.push((b, (runs * b as u64) as f64 / start.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// Round trips/s of the Redis command mix of one job, `conc` tasks sharing
/// one multiplexed connection, each doing the job's round trips in sequence.
async fn redis_round_trips(url: &str, conc: usize, secs: f64) -> Result<f64> {
    use redis::AsyncCommands;
    use redis::streams::{StreamReadOptions, StreamReadReply};
    let client = redis::Client::open(url)?;
    let con = client.get_multiplexed_async_connection().await?;
    let ns = unique_namespace("bench-rt");
    let stream = format!("{ns}:stream");
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("workers")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut con.clone())
        .await?;
    let payload = vec![7u8; 600]; // about a MessagePack mlp128 envelope
    let result = "{\"outputs\":[{\"name\":\"prediction\",\"shape\":[1,1],\"datatype\":\"FP32\",\"data\":[0.5377]}],\"prediction\":0.5377}";
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..conc {
        let (mut con, stream, ns, payload, counter) = (
            con.clone(),
            stream.clone(),
            ns.clone(),
            payload.clone(),
            counter.clone(),
        );
        set.spawn(async move {
            let consumer = format!("c{t}");
            let opts = StreamReadOptions::default()
                .group("workers", &consumer)
                .count(1);
            let mut rts = 0u64;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let key = format!("{ns}:job:{n}");
                // submit: HSET + XADD
                let _: redis::Value = redis::pipe()
                    .hset_multiple(
                        &key,
                        &[
                            ("kind", "predict"),
                            ("model", MODEL),
                            ("status", "queued"),
                            ("attempts", "0"),
                            ("created_at", "2026-11-22T06:40:01.112Z"),
                        ],
                    )
                    .xadd(&stream, "*", &[("id", key.as_bytes()), ("job", &payload)])
                    .query_async(&mut con)
                    .await?;
                // read: XREADGROUP COUNT 1
                let reply: StreamReadReply = con.xread_options(&[&stream], &[">"], &opts).await?;
                let entry = reply
                    .keys
                    .first()
                    .and_then(|k| k.ids.first())
                    .map(|e| e.id.clone());
                // start: HSET
                let _: redis::Value = con
                    .hset_multiple(
                        &key,
                        &[
                            ("status", "running"),
                            ("attempts", "1"),
                            ("started_at", "2026-11-22T06:40:01.113Z"),
                        ],
                    )
                    .await?;
                // finish: HSET + EXPIRE + XACK + PUBLISH
                let mut p = redis::pipe();
                p.hset_multiple(
                    &key,
                    &[
                        ("status", "succeeded"),
                        ("finished_at", "2026-11-22T06:40:01.114Z"),
                        ("result", result),
                    ],
                )
                .expire(&key, 60);
                if let Some(id) = &entry {
                    p.xack(&stream, "workers", &[id]);
                }
                p.publish(format!("{ns}:events:job-finished"), &key);
                let _: redis::Value = p.query_async(&mut con).await?;
                // poll: HGETALL
                let _: redis::Value = con.hgetall(&key).await?;
                rts += RT_PER_JOB as u64;
            }
            Ok::<u64, redis::RedisError>(rts)
        });
    }
    let mut total = 0;
    for r in set.join_all().await {
        total += r?;
    }
    let elapsed = start.elapsed();
    let _: redis::Value = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut con.clone())
        .await?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

// -------------------------------------------------------------------- main

fn spawn_workers(redis: &str, ns: &str, n: usize, args: &[String]) -> Vec<Worker> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..n).map(|_| Worker::spawn(redis, ns, &args)).collect()
}

/// The worker arguments without any batch size (`--read-count`/`--max-batch`).
fn without_batch_flag(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--read-count" || a == "--max-batch" {
            skip = true;
            continue;
        }
        if a.starts_with("--read-count=") || a.starts_with("--max-batch=") {
            continue;
        }
        out.push(a.clone());
    }
    out
}

fn batch_flag(args: &[String]) -> String {
    let mut v = "16".to_owned();
    for (i, a) in args.iter().enumerate() {
        if a == "--read-count" || a == "--max-batch" {
            if let Some(n) = args.get(i + 1) {
                v.clone_from(n);
            }
        } else if let Some(n) = a
            .strip_prefix("--read-count=")
            .or_else(|| a.strip_prefix("--max-batch="))
        {
            v = n.to_owned();
        }
    }
    v
}

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
    let root = repo_root();

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

    progress("starting redis-server, workers and api");
    let redis = RedisServer::start();
    let ns = unique_namespace("bench");
    let mut workers = spawn_workers(&redis.url(), &ns, args.workers, &args.worker_args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    api.client()
        .wait_for_models(&[MODEL], Duration::from_secs(60))
        .await;
    let http = Http::new(&api.base_url)?;
    warm_up(&http).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api_idle = rss_kib(api.proc.pid());
    let workers_idle: Vec<_> = workers.iter().map(|w| rss_kib(w.proc.pid())).collect();

    // Limits first, while the system is idle.
    progress("limits: in-process ONNX Runtime");
    let lib = e2e::ort_lib();
    let model = root.join("models").join(format!("{MODEL}.onnx"));
    let ort = tokio::task::spawn_blocking(move || {
        ort_rows_per_sec(&lib, &model, &[1, 8, 32, 128], limit_secs)
    })
    .await?
    .map_err(anyhow::Error::msg)
    .context("in-process ONNX Runtime")?;
    let ort1 = ort.first().map_or(0.0, |o| o.1);
    for (b, r) in &ort {
        rep.row(
            "limit: ORT in-process",
            &format!("{MODEL}, 1 intra thread, batch {b}"),
            format!("{r:.0} rows/s"),
            format!("{:.2} x batch 1", r / ort1),
        );
    }
    progress("limits: Redis round trips");
    let mut rt = Vec::new();
    for conc in [1, 32] {
        let r = redis_round_trips(&redis.url(), conc, limit_secs).await?;
        rt.push(r);
        rep.row(
            "limit: Redis",
            &format!("round trips, 1 mux conn, concurrency {conc}"),
            format!("{r:.0} rt/s"),
            format!(
                "jobs/s upper bound {:.0} (÷ {RT_PER_JOB} rt/job)",
                r / RT_PER_JOB
            ),
        );
    }
    let redis_bound = rt.iter().copied().fold(0.0, f64::max) / RT_PER_JOB;

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
    report_closed(&mut rep, &on_label, &on, ort1);
    // closed_loop runs the jobs twice: a burst, then submit-and-wait.
    cpu_before.report(&cpu_after, 2 * args.jobs, nproc, on.e2e_jps, &mut rep);
    rep.row(
        &on_label,
        "end-to-end ÷ Redis jobs/s bound",
        format!("{:.3}", on.e2e_jps / redis_bound),
        String::new(),
    );

    let api_closed = rss_kib(api.proc.pid());
    for &rate in &args.rates {
        progress(&format!("open loop at {rate}/s for {} s", args.open_secs));
        let o = open_loop(&http, rate, args.open_secs).await;
        let section = format!("open loop {rate}/s");
        rep.row(
            &section,
            "issued rate (load generator)",
            format!("{:.0} req/s", o.issued_rate),
            format!("{:.3} x target", o.issued_rate / o.target as f64),
        );
        rep.row(
            &section,
            "achieved (results/s)",
            format!("{:.0} jobs/s", o.achieved),
            format!("{:.3} x target", o.achieved / o.target as f64),
        );
        rep.row(&section, "end-to-end latency p50", ms(o.p50), String::new());
        rep.row(&section, "end-to-end latency p90", ms(o.p90), String::new());
        rep.row(&section, "end-to-end latency p99", ms(o.p99), String::new());
        rep.row(
            &section,
            "errors",
            o.errors.total().to_string(),
            o.errors.summary(),
        );
        let sat = o.saturated();
        rep.row(
            &section,
            "saturated (<90% target or p99>1s)",
            if sat { "yes" } else { "no" }.into(),
            if sat { "stopping here" } else { "" }.into(),
        );
        if sat {
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
    report_closed(&mut rep, &off_label, &off, ort1);
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
    println!();
    rep.print(&header);
    parsers_verdict()
}
