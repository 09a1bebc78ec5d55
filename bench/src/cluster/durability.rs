//! The submit (202) latency `--durability replicated` adds on the cluster.
//!
//! Two APIs run on one namespace of the cluster, one `async` and one
//! `replicated` (its 202 waits for `WAIT 1`: a replica holds the job), with
//! one set of workers, and one open-loop client deals its submits to them
//! alternately at a fixed rate. Both APIs so see the same load and the same
//! noise of this shared machine at the same moments, which two runs one
//! after the other would not. The workers stay `async`: their finishes are
//! the same background work for both APIs, so the difference is the
//! submit path alone. Only the 202 is timed; the workers run the jobs
//! meanwhile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::{Api, RedisCluster, unique_namespace};

use crate::closed::warm_up;
use crate::http::{Errors, Http};
use crate::report::{Report, ms, pct};
use crate::{MODEL, progress, spawn_workers};

/// The load of the comparison.
pub(crate) struct Load<'a> {
    pub(crate) partitions: u16,
    pub(crate) workers: usize,
    pub(crate) worker_args: &'a [String],
    /// Submits per second, both APIs together.
    pub(crate) rate: u32,
    pub(crate) secs: f64,
}

/// Submit latencies of one API.
#[derive(Default)]
struct Latency {
    sorted: Vec<Duration>,
    errors: Errors,
}

/// What [`compare`] measured.
pub(crate) struct Comparison {
    partitions: u16,
    rate: u32,
    secs: f64,
    /// Submits issued per second: below `rate` when the load generator
    /// could not keep up.
    issued: f64,
    modes: [Latency; 2],
}

const MODES: [&str; 2] = ["async", "replicated"];

/// Starts the workers and both APIs on `cluster`, warms both up, and runs
/// the open loop.
pub(crate) async fn compare(cluster: &RedisCluster, load: &Load<'_>) -> Result<Comparison> {
    progress(&format!(
        "durability: async and replicated api, P={}, {} submits/s for {} s",
        load.partitions, load.rate, load.secs
    ));
    let url = cluster.url();
    let ns = unique_namespace("bench-durability");
    let p = load.partitions.to_string();
    let mut wargs = vec!["--partitions".to_owned(), p.clone()];
    wargs.extend_from_slice(load.worker_args);
    let _workers = spawn_workers(&url, &ns, load.workers, &wargs);
    let apis: Vec<Api> = MODES
        .iter()
        .map(|m| Api::spawn(&url, &ns, &["--partitions", &p, "--durability", m]))
        .collect();
    let mut https = Vec::new();
    for (api, mode) in apis.iter().zip(MODES) {
        api.client()
            .wait_for_models(&[MODEL], Duration::from_secs(60))
            .await;
        let http = Http::new(&api.base_url)?;
        // A replica that does not confirm shows here as a 503, not as a
        // latency figure later.
        warm_up(&http)
            .await
            .with_context(|| format!("durability: warm-up of the {mode} api"))?;
        https.push(http);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = (f64::from(load.rate) * load.secs).round().max(2.0) as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(load.rate));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let (mode, http) = (i % 2, https[i % 2].clone());
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            (mode, http.submit().await.map(|_| t.elapsed()))
        }));
    }
    let issued = n as f64 / start.elapsed().as_secs_f64().max(load.secs);
    let mut modes: [Latency; 2] = Default::default();
    for h in handles {
        let (mode, r) = h.await?;
        match r {
            Ok(d) => modes[mode].sorted.push(d),
            Err(e) => modes[mode].errors.add(e),
        }
    }
    for m in &mut modes {
        m.sorted.sort();
    }
    drop(apis);
    Ok(Comparison {
        partitions: load.partitions,
        rate: load.rate,
        secs: load.secs,
        issued,
        modes,
    })
}

impl Comparison {
    pub(crate) fn report(&self, rep: &mut Report) {
        let s = "202 latency: --durability";
        let [a, r] = &self.modes;
        rep.row(
            s,
            "issued rate (both apis)",
            format!("{:.0} req/s", self.issued),
            format!(
                "{:.3} x target; cluster P={}, open loop {}/s for {} s, dealt async/replicated alternately",
                self.issued / f64::from(self.rate),
                self.partitions,
                self.rate,
                self.secs
            ),
        );
        for p in [50.0, 90.0, 99.0] {
            let (pa, pr) = (pct(&a.sorted, p), pct(&r.sorted, p));
            rep.row(s, &format!("p{p:.0} async"), ms(pa), String::new());
            rep.row(
                s,
                &format!("p{p:.0} replicated"),
                ms(pr),
                format!(
                    "{:.2} x async; {:+.2} ms",
                    pr.as_secs_f64() / pa.as_secs_f64().max(1e-9),
                    (pr.as_secs_f64() - pa.as_secs_f64()) * 1e3
                ),
            );
        }
        for (m, mode) in self.modes.iter().zip(MODES) {
            rep.row(
                s,
                &format!("202s / errors, {mode}"),
                format!("{} / {}", m.sorted.len(), m.errors.total()),
                m.errors.summary(),
            );
        }
    }
}
