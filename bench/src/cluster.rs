//! `--cluster`: the same closed-loop client against three Redis topologies
//! on this box, one after another in one run:
//!
//! * (a) one `redis-server`, `--partitions 1`,
//! * (b) a Redis Cluster of 3 masters and 3 replicas ([`e2e::RedisCluster`]),
//!   `--partitions 1`,
//! * (c) the same cluster, `--partitions 6` (`--cluster-partitions`),
//!
//! each with fresh workers and API on a namespace of their own, and for each
//! the end-to-end jobs/s and CPU microseconds per job of every
//! `redis-server` (with its role and the partitions its slots hold), of the
//! API, the workers and this load generator, from `/proc/<pid>/stat` around
//! the measured phase only. Then the submit latency `--durability
//! replicated` adds on the cluster ([`durability`]).
//!
//! Every process shares this machine's cores, so a cluster cannot be faster
//! here than one node: what the figures show is what the cluster costs per
//! job, and how partitions spread the Redis work over masters (the work each
//! master would do on a core, or a host, of its own).

mod durability;
mod table;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{Api, RedisCluster, RedisServer, unique_namespace};

use crate::closed::{submit_and_wait, warm_up};
use crate::http::{Errors, Http};
use crate::procstat::cpu_time;
use crate::report::Report;
use crate::{MODEL, progress, spawn_workers};

/// The settings only `--cluster` reads; it also takes `--concurrency`,
/// `--workers`, `--worker-arg` and `--quick`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Run only the Redis topology comparison: single node P=1, cluster P=1,
    /// cluster P=`--cluster-partitions`, then the `--durability replicated`
    /// submit latency on the cluster.
    #[arg(long)]
    pub(crate) cluster: bool,

    /// Jobs per topology in the `--cluster` closed loop (`--quick`: at most
    /// 1000). CPU time comes in 10 ms ticks, so a node's figure is only as
    /// fine as its total over the phase: enough jobs give every node tens
    /// of ticks.
    #[arg(long, default_value_t = 10_000)]
    cluster_jobs: usize,

    /// Partitions of the partitioned cluster topology.
    #[arg(long, default_value_t = 6)]
    cluster_partitions: u16,

    /// Submits per second of the durability comparison (open loop), dealt
    /// alternately to the `async` and the `replicated` API.
    #[arg(long, default_value_t = 200)]
    durability_rate: u32,

    /// Seconds the durability comparison runs.
    #[arg(long, default_value_t = 8.0)]
    durability_secs: f64,
}

/// What a `--cluster` run shares with the rest of the bench.
pub(crate) struct Run<'a> {
    pub(crate) concurrency: usize,
    pub(crate) workers: usize,
    pub(crate) worker_args: &'a [String],
    pub(crate) quick: bool,
    pub(crate) args: ClusterArgs,
}

/// The Redis a topology runs on.
enum Redis<'a> {
    Single(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

/// One `redis-server` process and what it serves.
struct Node {
    pid: u32,
    /// `127.0.0.1:port master (p0 p3, registry)` and the like.
    label: String,
    master: bool,
}

impl Redis<'_> {
    fn url(&self) -> String {
        match self {
            Redis::Single(r) => r.url(),
            Redis::Cluster(c) => c.url(),
        }
    }

    /// Every redis-server, masters first, each labelled with the partitions
    /// of `partitions` (and the registry) whose slots it serves.
    fn nodes(&self, partitions: u16) -> Result<Vec<Node>> {
        let single = |r: &RedisServer| -> Result<Vec<Node>> {
            Ok(vec![Node {
                pid: r.pid().context("redis-server is not running")?,
                label: format!("127.0.0.1:{} standalone (everything)", r.port()),
                master: true,
            }])
        };
        let c = match self {
            Redis::Single(r) => return single(r),
            Redis::Cluster(c) => c,
        };
        // The slot of a partition's tag depends on neither the namespace
        // nor P (see shared's keys module).
        let keys = e2e::keys("bench");
        let view = c.nodes();
        let mut out = Vec::new();
        for n in &view {
            let pid = c
                .pid(n.port)
                .with_context(|| format!("cluster node {} is not running", n.port))?;
            let holds = if n.is_master() {
                let mut h: Vec<String> = (0..partitions)
                    .filter(|&p| n.owns_slot(keys.partition_slot(p)))
                    .map(|p| format!("p{p}"))
                    .collect();
                if n.owns_slot(keys.registry_slot()) {
                    h.push("registry".into());
                }
                if h.is_empty() {
                    "no partition".into()
                } else {
                    h.join(" ")
                }
            } else {
                let of = view
                    .iter()
                    .find(|m| Some(&m.id) == n.master_id.as_ref())
                    .map_or_else(|| "?".into(), |m| m.port.to_string());
                format!("of :{of}")
            };
            let role = if n.is_master() { "master" } else { "replica" };
            out.push(Node {
                pid,
                label: format!("127.0.0.1:{} {role} ({holds})", n.port),
                master: n.is_master(),
            });
        }
        out.sort_by_key(|n| !n.master);
        Ok(out)
    }
}

/// One topology's closed loop and CPU per job.
struct Measured {
    label: String,
    jps: f64,
    p50: Duration,
    p99: Duration,
    errors: Errors,
    /// Each redis-server's CPU µs per job, with its node.
    nodes: Vec<(Node, f64)>,
    api_us: f64,
    workers_us: f64,
    loadgen_us: f64,
}

impl Measured {
    fn redis_us(&self) -> f64 {
        self.nodes.iter().map(|(_, us)| us).sum()
    }

    /// The master doing the most Redis work per job: the one a topology's
    /// throughput runs out on first once each node has a core of its own.
    fn busiest_master_us(&self) -> f64 {
        self.nodes
            .iter()
            .filter(|(n, _)| n.master)
            .map(|(_, us)| *us)
            .fold(0.0, f64::max)
    }

    fn total_us(&self) -> f64 {
        self.redis_us() + self.api_us + self.workers_us + self.loadgen_us
    }
}

/// CPU time of each pid so far (zero for one that is gone: it then adds
/// nothing rather than failing the run).
fn cpu(pids: &[u32]) -> Vec<Duration> {
    pids.iter()
        .map(|&p| cpu_time(p).unwrap_or_default())
        .collect()
}

/// Starts workers and an API with `partitions` on `redis`, waits until they
/// serve jobs, and runs the closed loop with the CPU of every process
/// sampled around it.
async fn measure(
    run: &Run<'_>,
    redis: &Redis<'_>,
    label: &str,
    partitions: u16,
) -> Result<Measured> {
    progress(&format!("{label}: starting workers and api"));
    let url = redis.url();
    let ns = unique_namespace("bench-cluster");
    let p = partitions.to_string();
    let mut wargs = vec!["--partitions".to_owned(), p.clone()];
    wargs.extend_from_slice(run.worker_args);
    let workers = spawn_workers(&url, &ns, run.workers, &wargs);
    let api = Api::spawn(&url, &ns, &["--partitions", &p]);
    api.client()
        .wait_for_models(&[MODEL], Duration::from_secs(60))
        .await;
    let http = Http::new(&api.base_url)?;
    warm_up(&http)
        .await
        .with_context(|| format!("{label}: warm-up"))?;
    // Let the warm-up's tail (acks, result expiry bookkeeping) settle so it
    // is not billed to the measured jobs.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let nodes = redis.nodes(partitions)?;
    let mut pids = vec![std::process::id(), api.proc.pid()];
    pids.extend(workers.iter().map(|w| w.proc.pid()));
    pids.extend(nodes.iter().map(|n| n.pid));
    progress(&format!(
        "{label}: {} jobs at concurrency {}",
        jobs(run),
        run.concurrency
    ));
    let before = cpu(&pids);
    let sw = submit_and_wait(&http, jobs(run), run.concurrency).await;
    let after = cpu(&pids);
    let per_job: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| b.saturating_sub(*a).as_secs_f64() * 1e6 / jobs(run) as f64)
        .collect();
    let nw = workers.len();
    let m = Measured {
        label: label.to_owned(),
        jps: sw.jps,
        p50: sw.p50,
        p99: sw.p99,
        errors: sw.errors,
        loadgen_us: per_job[0],
        api_us: per_job[1],
        workers_us: per_job[2..2 + nw].iter().sum(),
        nodes: nodes
            .into_iter()
            .zip(per_job[2 + nw..].iter().copied())
            .collect(),
    };
    drop(api);
    drop(workers);
    Ok(m)
}

/// The `--cluster` run: measures, then prints the table.
pub(crate) async fn run(run: Run<'_>) -> Result<()> {
    let a = &run.args;
    if a.cluster_jobs == 0 || run.concurrency == 0 || run.workers == 0 {
        bail!("--cluster-jobs, --concurrency and --workers must not be 0");
    }
    if a.cluster_partitions == 0 || a.durability_rate == 0 {
        bail!("--cluster-partitions and --durability-rate must not be 0");
    }
    let durability_secs = if run.quick {
        a.durability_secs.min(2.0)
    } else {
        a.durability_secs
    };
    let t0 = Instant::now();

    progress("single node: starting redis-server");
    let single = tokio::task::spawn_blocking(RedisServer::start).await?;
    let m_single = measure(&run, &Redis::Single(&single), "(a) single node, P=1", 1).await?;
    drop(single);

    progress("cluster: starting 3 masters + 3 replicas and waiting until healthy");
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await?;
    let on = Redis::Cluster(&cluster);
    let m_p1 = measure(&run, &on, "(b) cluster 3+3, P=1", 1).await?;
    let label = format!("(c) cluster 3+3, P={}", a.cluster_partitions);
    let m_pn = measure(&run, &on, &label, a.cluster_partitions).await?;
    let dur = durability::compare(
        &cluster,
        &durability::Load {
            partitions: a.cluster_partitions,
            workers: run.workers,
            worker_args: run.worker_args,
            rate: a.durability_rate,
            secs: durability_secs,
        },
    )
    .await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;

    let mut rep = Report { rows: Vec::new() };
    let all = [&m_single, &m_p1, &m_pn];
    for m in all {
        table::report_topology(&mut rep, m, &m_single);
    }
    table::report_ratios(&mut rep, &m_single, &m_p1, &m_pn);
    dur.report(&mut rep);
    println!();
    rep.print(&table::header(&run, t0.elapsed()));
    Ok(())
}

/// Jobs per topology, `--quick` applied.
fn jobs(run: &Run<'_>) -> usize {
    if run.quick {
        run.args.cluster_jobs.min(1000)
    } else {
        run.args.cluster_jobs
    }
}
