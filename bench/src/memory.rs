//! The API's resident memory (VmRSS) against its targets, on a fresh API
//! process of its own (so the figures do not carry what earlier phases
//! left):
//!
//! ```text
//!  no worker runs ── idle ── submit 1,024 jobs (they stay queued)
//!      ── 1,024 × GET /v1/jobs/{id}?wait=30, each on its own connection
//!      ── "long-polls open" once the API holds all 1,024 connections
//!      ── start the workers: the jobs finish, every long-poll answers 200
//!         and its connection closes ── "after they close", 2 s later
//!      ── the open loop at the overload rate (5,000/s) from one address,
//!         RSS sampled every 50 ms ── its peak; its clients close their
//!         connections ── what it left, 2 s later
//!      ── the same from 8 loopback addresses (a reference row)
//! ```
//!
//! The long-polls wait on jobs no worker consumes yet, which is exactly what
//! a client waiting behind a backlog looks like; they end the way long-polls
//! end in service, by their jobs finishing. The open loop's load generator
//! opens one connection per job in flight (a reqwest pool with no cap), so
//! at an overload rate it opens far more connections than the API can serve
//! at once: the scenario of clients that do not back off. From one address
//! the API's per-address cap (`--max-connections-per-ip`, 1024) bounds what
//! it holds; from 8 addresses only the connection table does
//! (`--max-connections`, 4096), which is what many clients would meet.
//!
//! Each figure notes its anonymous part (heap and stacks, what an allocator
//! can give back): the rest is the binary's and libraries' pages.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{Api, StatusCode};

use crate::closed::warm_up;
use crate::http::{Errors, Http};
use crate::open::{Open, open_loop_from};
use crate::procstat::{mib, rss_anon_kib, rss_kib};
use crate::report::Report;
use crate::workers::spawn_workers;
use crate::{MODEL, progress};

/// Long-polls held open at once.
const LONG_POLLS: usize = 1024;
/// The overload again from this many loopback addresses (127.0.0.1 up):
/// many clients, so that the per-address cap no longer bounds the
/// connections, only the table does.
const SPREAD_ADDRESSES: u8 = 8;
/// How often the overload's peak is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The targets (issue 14), in KiB.
const TARGET_OPEN_KIB: u64 = 48 * 1024;
const TARGET_CLOSED_KIB: u64 = 16 * 1024;
const TARGET_OVERLOAD_KIB: u64 = 64 * 1024;

/// What the phase runs against, and with which load.
pub(crate) struct Run<'a> {
    pub(crate) redis_url: &'a str,
    pub(crate) ns: &'a str,
    pub(crate) workers: usize,
    pub(crate) worker_args: &'a [String],
    /// Extra arguments of the phase's API (`--memory-api-arg`).
    pub(crate) api_args: &'a [String],
    /// The open loop's rate and duration for the overload.
    pub(crate) rate: u32,
    pub(crate) secs: f64,
}

/// Runs the phase (no worker of `ns` may be running) and adds its rows;
/// returns whether every target held.
pub(crate) async fn measure(run: Run<'_>, rep: &mut Report) -> Result<bool> {
    let api_args: Vec<&str> = run.api_args.iter().map(String::as_str).collect();
    let api = Api::spawn(run.redis_url, run.ns, &api_args);
    let pid = api.proc.pid();
    api.client()
        .wait_for_models(&[MODEL], Duration::from_secs(60))
        .await;
    let watch = Watch::new(&api.base_url)?;
    settle().await;
    let idle = Sample::of(pid);

    progress(&format!("memory: {LONG_POLLS} long-polls on queued jobs"));
    let ids = submit_queued(&api.base_url, LONG_POLLS).await?;
    watch.until_connections(0).await?;
    let polls = LongPolls::open(&api.base_url, &ids)?;
    watch.until_connections(LONG_POLLS).await?;
    settle().await;
    let open = Sample::of(pid);
    if polls.answered() > 0 {
        bail!(
            "{} long-polls answered before their jobs could run",
            polls.answered()
        );
    }

    progress("memory: workers start, the long-polls' jobs finish");
    let workers = spawn_workers(run.redis_url, run.ns, run.workers, run.worker_args);
    polls.finish().await?;
    watch.until_connections(0).await?;
    tokio::time::sleep(AFTER_CLOSE).await;
    let closed = Sample::of(pid);

    let one = Http::new(&api.base_url)?;
    warm_up(&one).await?;
    let single = overload(pid, &watch, vec![one], &run, "one address").await?;
    let spread = (1..=SPREAD_ADDRESSES)
        .map(|i| Http::from_address(&api.base_url, IpAddr::from([127, 0, 0, i])))
        .collect::<Result<Vec<_>>>()?;
    let many_from = format!("{SPREAD_ADDRESSES} addresses");
    let many = overload(pid, &watch, spread, &run, &many_from).await?;
    drop(workers);

    let sec = "memory: api VmRSS (own process)";
    let mut held = true;
    let mut row = |metric: &str, kib: Option<u64>, target: Option<u64>, note: String| {
        let verdict = match target {
            Some(limit) => {
                let ok = kib.is_some_and(|k| k <= limit);
                held &= ok;
                format!(
                    "target ≤ {} MiB: {}; ",
                    limit / 1024,
                    if ok { "met" } else { "NOT met" }
                )
            }
            None => String::new(),
        };
        rep.row(sec, metric, mib(kib), format!("{verdict}{note}"));
    };
    row(
        "idle",
        idle.rss,
        None,
        format!("{}; models cached, no request", idle.anon()),
    );
    row(
        &format!("{LONG_POLLS} long-polls open"),
        open.rss,
        Some(TARGET_OPEN_KIB),
        format!("{}; ?wait=30, a connection each, jobs queued", open.anon()),
    );
    row(
        "after they close",
        closed.rss,
        Some(TARGET_CLOSED_KIB),
        format!(
            "{}; their jobs finished, connections closed, {} s later",
            closed.anon(),
            AFTER_CLOSE.as_secs()
        ),
    );
    for (from, o, target) in [
        ("one address", &single, Some(TARGET_OVERLOAD_KIB)),
        // Not the target's scenario (the bench's own open loop, from one
        // address), so shown against it without deciding the verdict.
        (many_from.as_str(), &many, None),
    ] {
        let reference = if target.is_none() {
            format!(
                "reference (≤ {} MiB is for one address): {}; ",
                TARGET_OVERLOAD_KIB / 1024,
                if o.peak <= TARGET_OVERLOAD_KIB {
                    "within"
                } else {
                    "over"
                }
            )
        } else {
            String::new()
        };
        row(
            &format!("peak through the open loop at {}/s, {from}", run.rate),
            Some(o.peak),
            target,
            format!(
                "{reference}sampled every {} ms; {:.0} jobs/s achieved, {} failed: {}",
                SAMPLE_EVERY.as_millis(),
                o.open.achieved(),
                o.open.errors().total(),
                o.open.errors().summary()
            ),
        );
        row(
            "  after its connections close",
            o.kept.rss,
            None,
            format!("{}; {} s later", o.kept.anon(), AFTER_CLOSE.as_secs()),
        );
    }
    Ok(held)
}

/// The API's resident set at one moment, KiB.
struct Sample {
    rss: Option<u64>,
    anon: Option<u64>,
}

impl Sample {
    fn of(pid: u32) -> Sample {
        Sample {
            rss: rss_kib(pid),
            anon: rss_anon_kib(pid),
        }
    }

    /// The anonymous part, as a note.
    fn anon(&self) -> String {
        format!("anon {}", mib(self.anon))
    }
}

/// What one overload run measured.
struct Overload {
    open: Open,
    /// KiB.
    peak: u64,
    kept: Sample,
}

/// The open loop at the overload rate from `clients`, RSS sampled; then
/// the clients are dropped (their pooled connections closed) and what the
/// overload left is measured.
async fn overload(
    pid: u32,
    watch: &Watch,
    clients: Vec<Http>,
    run: &Run<'_>,
    from: &str,
) -> Result<Overload> {
    progress(&format!(
        "memory: open loop at {}/s for {} s from {from}, RSS every {} ms",
        run.rate,
        run.secs,
        SAMPLE_EVERY.as_millis()
    ));
    let before = rss_kib(pid).unwrap_or(0);
    let (open, peak) = sampled(pid, open_loop_from(&clients, run.rate, run.secs)).await;
    drop(clients);
    watch.until_connections(0).await?;
    tokio::time::sleep(AFTER_CLOSE).await;
    Ok(Overload {
        open,
        peak: peak.max(before),
        kept: Sample::of(pid),
    })
}

/// What "after they close" waits: long enough for an allocator that
/// returns memory in the background (on a decay of about a second).
const AFTER_CLOSE: Duration = Duration::from_secs(2);

async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Submits `n` jobs at a small concurrency on a client of its own, dropped
/// (its connections closed) before returning.
async fn submit_queued(base: &str, n: usize) -> Result<Vec<String>> {
    let http = Http::new(base)?;
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for _ in chunk {
            let http = http.clone();
            set.spawn(async move { http.submit().await });
        }
        for r in set.join_all().await {
            ids.push(r.map_err(anyhow::Error::msg).context("submit")?);
        }
    }
    Ok(ids)
}

/// Runs `fut` while sampling `pid`'s VmRSS; its output and the peak (KiB).
async fn sampled<T>(pid: u32, fut: impl Future<Output = T>) -> (T, u64) {
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(k) = rss_kib(pid) {
                    peak.fetch_max(k, Ordering::Relaxed);
                }
            }
        })
    };
    let out = fut.await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    (out, peak.load(Ordering::Relaxed))
}

/// Reads the API's open-connection gauge from another loopback address
/// (127.0.0.254), so the watcher never counts against the per-address cap
/// the long-polls fill.
struct Watch {
    client: reqwest::Client,
    url: String,
}

impl Watch {
    fn new(base: &str) -> Result<Watch> {
        Ok(Watch {
            client: reqwest::Client::builder()
                .local_address(IpAddr::from([127, 0, 0, 254]))
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()?,
            url: format!("{}/metrics", base.trim_end_matches('/')),
        })
    }

    async fn connections(&self) -> Result<usize> {
        let text = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let line = text
            .lines()
            .find(|l| l.starts_with("onnxq_http_connections{listener=\"public\"}"))
            .context("no onnxq_http_connections gauge")?;
        let v: f64 = line
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .context("gauge value")?;
        // The scrape's own connection is counted too.
        Ok((v as usize).saturating_sub(1))
    }

    /// Waits (10 s at most) until the API holds exactly `n` public
    /// connections besides this scrape.
    async fn until_connections(&self, n: usize) -> Result<()> {
        let t = Instant::now();
        loop {
            let now = self.connections().await?;
            if now == n {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the api holds {now} connections, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `GET /v1/jobs/{id}?wait=30` for each id, all at once, each on its own
/// connection (HTTP/1: one request per connection at a time), closed once
/// answered (no idle pool).
struct LongPolls {
    tasks: tokio::task::JoinSet<Result<(), String>>,
    answered: Arc<AtomicU64>,
}

impl LongPolls {
    fn open(base: &str, ids: &[String]) -> Result<LongPolls> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()?;
        let answered = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            let url = format!("{}/v1/jobs/{id}?wait=30", base.trim_end_matches('/'));
            let (client, answered) = (client.clone(), answered.clone());
            tasks.spawn(async move {
                let resp = client.get(url).send().await.map_err(|e| e.to_string());
                answered.fetch_add(1, Ordering::Relaxed);
                let resp = resp?;
                let status = resp.status();
                let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
                match (status, v["status"].as_str()) {
                    (StatusCode::OK, Some("succeeded")) => Ok(()),
                    (s, st) => Err(format!("long-poll: {} {}", s.as_u16(), st.unwrap_or("?"))),
                }
            });
        }
        Ok(LongPolls { tasks, answered })
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits for every long-poll to answer; each must have seen its job
    /// succeed.
    async fn finish(self) -> Result<()> {
        let mut errors = Errors::default();
        for r in self.tasks.join_all().await {
            if let Err(e) = r {
                errors.add(e);
            }
        }
        if errors.total() > 0 {
            bail!("long-polls failed: {}", errors.summary());
        }
        Ok(())
    }
}
