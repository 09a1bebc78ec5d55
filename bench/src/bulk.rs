//! Bulk submit next to the closed loop's burst: the same jobs, sent
//! [`BATCH`] to a request (`POST /v1/models/{model}/predict/batch`) by a few
//! clients, then long-polled to the end, as the burst polls its single
//! submits.

use std::time::Instant;

use crate::closed::{Closed, clients, poll_all};
use crate::http::{Errors, Http};
use crate::report::Report;

/// Items per bulk request (the API's default `--max-bulk`).
pub(crate) const BATCH: usize = 1000;
/// Clients sending bulk requests at once.
const CLIENTS: usize = 4;

/// What [`bulk_then_poll`] measured.
pub(crate) struct Bulk {
    /// Jobs accepted per second of the submitting.
    pub(crate) submit_jps: f64,
    /// Jobs that succeeded, per second from the first submit to the last
    /// result.
    pub(crate) jps: f64,
    pub(crate) errors: Errors,
}

/// Submits `jobs` jobs in requests of [`BATCH`], then polls each to the end
/// with `conc` clients.
pub(crate) async fn bulk_then_poll(http: &Http, jobs: usize, conc: usize) -> Bulk {
    let requests = jobs.div_ceil(BATCH).max(1);
    // Full requests, and the last one with what is left.
    let full = http.bulk_body(BATCH);
    let last = http.bulk_body(jobs.saturating_sub((requests - 1) * BATCH).max(1));
    let mut errors = Errors::default();
    let start = Instant::now();
    let submits = clients(CLIENTS, requests, http, move |http, i| {
        let body = if i + 1 == requests {
            last.clone()
        } else {
            full.clone()
        };
        async move { http.submit_bulk(body).await }
    })
    .await;
    let mut ids = Vec::with_capacity(requests * BATCH);
    for r in submits {
        match r {
            Ok(batch) => ids.extend(batch),
            Err(e) => errors.add(e),
        }
    }
    let submitted = start.elapsed();
    let accepted = ids.len();
    let failed = poll_all(http, ids, conc, &mut errors).await;
    Bulk {
        submit_jps: accepted as f64 / submitted.as_secs_f64(),
        jps: (accepted - failed) as f64 / start.elapsed().as_secs_f64(),
        errors,
    }
}

impl Bulk {
    /// Its rows, with ratios to the closed loop's burst of single submits.
    pub(crate) fn report(&self, rep: &mut Report, section: &str, single: &Closed) {
        rep.row(
            section,
            &format!("bulk submit ({BATCH}/request, {CLIENTS} clients)"),
            format!("{:.0} jobs/s", self.submit_jps),
            format!(
                "{:.1} x single submits",
                self.submit_jps / single.submit_rps
            ),
        );
        rep.row(
            section,
            "bulk burst: 1st submit to last result",
            format!("{:.0} jobs/s", self.jps),
            format!("{:.2} x single-submit burst", self.jps / single.burst_jps),
        );
        rep.row(
            section,
            "bulk errors",
            self.errors.total().to_string(),
            self.errors.summary(),
        );
    }
}
