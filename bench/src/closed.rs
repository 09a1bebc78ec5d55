//! The closed loop: a submit burst drained afterwards, then clients that
//! each submit and long-poll their job before the next ([`submit_and_wait`],
//! which the cluster comparison runs alone), and the warm-up that waits
//! until workers return jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::JOB_DEADLINE;
use crate::http::{Errors, Http};
use crate::report::{Report, ms, pct};

/// What [`closed_loop`] measured: the burst, then [`submit_and_wait`].
pub(crate) struct Closed {
    pub(crate) submit_rps: f64,
    pub(crate) submit_p50: Duration,
    pub(crate) submit_p99: Duration,
    pub(crate) burst_jps: f64,
    pub(crate) e2e_jps: f64,
    pub(crate) e2e_p50: Duration,
    pub(crate) e2e_p99: Duration,
    pub(crate) errors: Errors,
}

/// Both phases, `jobs` jobs each, at concurrency `conc`.
pub(crate) async fn closed_loop(http: &Http, jobs: usize, conc: usize) -> Result<Closed> {
    let burst = submit_then_poll(http, jobs, conc).await;
    let mut errors = burst.errors;
    let e2e = submit_and_wait(http, jobs, conc).await;
    errors.merge(e2e.errors);
    Ok(Closed {
        submit_rps: burst.submit_rps,
        submit_p50: burst.submit_p50,
        submit_p99: burst.submit_p99,
        burst_jps: burst.jps,
        e2e_jps: e2e.jps,
        e2e_p50: e2e.p50,
        e2e_p99: e2e.p99,
        errors,
    })
}

/// What [`submit_then_poll`] measured.
pub(crate) struct Burst {
    pub(crate) submit_rps: f64,
    pub(crate) submit_p50: Duration,
    pub(crate) submit_p99: Duration,
    /// Jobs that succeeded, per second from the first submit to the last
    /// result.
    pub(crate) jps: f64,
    pub(crate) errors: Errors,
}

/// The loop most clients write: `conc` clients submit `jobs` jobs without
/// waiting, then read each job until it is terminal. Submits overlap the
/// work, so the queue is deep and workers run full batches.
pub(crate) async fn submit_then_poll(http: &Http, jobs: usize, conc: usize) -> Burst {
    let mut errors = Errors::default();
    let start = Instant::now();
    let submits = clients(conc, jobs, http, |http, _| async move {
        let t = Instant::now();
        http.submit().await.map(|id| (id, t.elapsed()))
    })
    .await;
    let mut ids = Vec::with_capacity(jobs);
    let mut lat = Vec::with_capacity(jobs);
    for r in submits {
        match r {
            Ok((id, d)) => {
                ids.push(id);
                lat.push(d);
            }
            Err(e) => errors.add(e),
        }
    }
    let submitted = start.elapsed();
    lat.sort();
    let accepted = ids.len();
    let failed = poll_all(http, ids, conc, &mut errors).await;
    let total = start.elapsed();
    Burst {
        submit_rps: lat.len() as f64 / submitted.as_secs_f64(),
        submit_p50: pct(&lat, 50.0),
        submit_p99: pct(&lat, 99.0),
        jps: (accepted - failed) as f64 / total.as_secs_f64(),
        errors,
    }
}

/// Long-polls every job of `ids` to its end with `conc` clients; the
/// number that did not succeed, each counted into `errors`.
pub(crate) async fn poll_all(
    http: &Http,
    ids: Vec<String>,
    conc: usize,
    errors: &mut Errors,
) -> usize {
    let ids = Arc::new(ids);
    let polls = clients(conc, ids.len(), http, move |http, i| {
        let ids = ids.clone();
        async move { http.wait(&ids[i], Instant::now() + JOB_DEADLINE).await }
    })
    .await;
    let mut failed = 0;
    for e in polls.into_iter().filter_map(Result::err) {
        failed += 1;
        errors.add(e);
    }
    failed
}

/// `conc` concurrent clients sharing `n` items: each takes the next index
/// and runs `one` on it until none is left; the outcomes, in no order.
pub(crate) async fn clients<T, F, Fut>(conc: usize, n: usize, http: &Http, one: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Http, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (http, next, one) = (http.clone(), next.clone(), one.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break out;
                }
                out.push(one(http.clone(), i).await);
            }
        });
    }
    set.join_all().await.into_iter().flatten().collect()
}

/// What [`submit_and_wait`] measured.
pub(crate) struct SubmitWait {
    /// Jobs that succeeded, per second of the whole phase.
    pub(crate) jps: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) errors: Errors,
}

/// The closed loop proper: `conc` clients each submit a job, long-poll it
/// to the end, and repeat until `jobs` jobs were started; latency is from
/// submit to the terminal poll.
pub(crate) async fn submit_and_wait(http: &Http, jobs: usize, conc: usize) -> SubmitWait {
    let start = Instant::now();
    let outcomes = clients(conc, jobs, http, |http, _| async move {
        let t = Instant::now();
        let r = match http.submit().await {
            Ok(id) => http.wait(&id, t + JOB_DEADLINE).await,
            Err(e) => Err(e),
        };
        r.map(|()| t.elapsed())
    })
    .await;
    let mut e2e = Vec::with_capacity(jobs);
    let mut errors = Errors::default();
    for r in outcomes {
        match r {
            Ok(d) => e2e.push(d),
            Err(e) => errors.add(e),
        }
    }
    let total = start.elapsed();
    e2e.sort();
    SubmitWait {
        jps: e2e.len() as f64 / total.as_secs_f64(),
        p50: pct(&e2e, 50.0),
        p99: pct(&e2e, 99.0),
        errors,
    }
}

pub(crate) fn report_closed(rep: &mut Report, section: &str, c: &Closed, ort1: f64) {
    rep.row(
        section,
        "submit burst (no waiting)",
        format!("{:.0} req/s", c.submit_rps),
        String::new(),
    );
    rep.row(
        section,
        "submit latency p50",
        ms(c.submit_p50),
        String::new(),
    );
    rep.row(
        section,
        "submit latency p99",
        ms(c.submit_p99),
        String::new(),
    );
    rep.row(
        section,
        "burst: 1st submit to last result",
        format!("{:.0} jobs/s", c.burst_jps),
        String::new(),
    );
    rep.row(
        section,
        "end-to-end (submit, then ?wait=)",
        format!("{:.0} jobs/s", c.e2e_jps),
        if ort1 > 0.0 {
            format!("{:.3} x in-process ORT batch 1", c.e2e_jps / ort1)
        } else {
            String::new()
        },
    );
    rep.row(
        section,
        "end-to-end latency p50",
        ms(c.e2e_p50),
        String::new(),
    );
    rep.row(
        section,
        "end-to-end latency p99",
        ms(c.e2e_p99),
        String::new(),
    );
    rep.row(
        section,
        "errors",
        c.errors.total().to_string(),
        c.errors.summary(),
    );
}

/// Waits until the workers take jobs: a few jobs must come back.
pub(crate) async fn warm_up(http: &Http) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let http = http.clone();
        set.spawn(async move {
            let id = http.submit().await?;
            http.wait(&id, Instant::now() + JOB_DEADLINE).await
        });
    }
    for r in set.join_all().await {
        r.map_err(anyhow::Error::msg).context("warm-up job")?;
    }
    Ok(())
}
