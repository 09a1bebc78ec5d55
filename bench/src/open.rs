//! The open loop: jobs issued at a fixed rate whatever the answers, each
//! submitted and long-polled on its own task, until the first rate the
//! system cannot keep up with ([`Open::saturated`]).

use std::time::{Duration, Instant};

use crate::JOB_DEADLINE;
use crate::http::{Errors, Http};
use crate::report::{Report, ms, pct};

/// What one rate of [`open_loop`] measured.
pub(crate) struct Open {
    target: u32,
    issued_rate: f64,
    achieved: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    errors: Errors,
}

impl Open {
    /// Achieved under 90 % of the target, or a p99 over a second.
    pub(crate) fn saturated(&self) -> bool {
        self.achieved < 0.9 * f64::from(self.target) || self.p99 > Duration::from_secs(1)
    }

    pub(crate) fn achieved(&self) -> f64 {
        self.achieved
    }

    pub(crate) fn errors(&self) -> &Errors {
        &self.errors
    }

    /// The rate's rows of the report.
    pub(crate) fn report(&self, rep: &mut Report) {
        let section = format!("open loop {}/s", self.target);
        rep.row(
            &section,
            "issued rate (load generator)",
            format!("{:.0} req/s", self.issued_rate),
            format!("{:.3} x target", self.issued_rate / f64::from(self.target)),
        );
        rep.row(
            &section,
            "achieved (results/s)",
            format!("{:.0} jobs/s", self.achieved),
            format!("{:.3} x target", self.achieved / f64::from(self.target)),
        );
        rep.row(
            &section,
            "end-to-end latency p50",
            ms(self.p50),
            String::new(),
        );
        rep.row(
            &section,
            "end-to-end latency p90",
            ms(self.p90),
            String::new(),
        );
        rep.row(
            &section,
            "end-to-end latency p99",
            ms(self.p99),
            String::new(),
        );
        rep.row(
            &section,
            "errors",
            self.errors.total().to_string(),
            self.errors.summary(),
        );
        let sat = self.saturated();
        rep.row(
            &section,
            "saturated (<90% target or p99>1s)",
            if sat { "yes" } else { "no" }.into(),
            if sat { "stopping here" } else { "" }.into(),
        );
    }
}

/// `rate` jobs/s for `secs` seconds, each submitted on schedule.
pub(crate) async fn open_loop(http: &Http, rate: u32, secs: f64) -> Open {
    open_loop_from(std::slice::from_ref(http), rate, secs).await
}

/// [`open_loop`] with the jobs dealt in turn to `clients` (each with its own
/// pool, e.g. from its own source address).
pub(crate) async fn open_loop_from(clients: &[Http], rate: u32, secs: f64) -> Open {
    let n = (f64::from(rate) * secs).round().max(1.0) as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let http = clients[i % clients.len()].clone();
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
