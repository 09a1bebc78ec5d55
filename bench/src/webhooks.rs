//! Webhook delivery latency: jobs submitted with a webhook to a receiver
//! in this process on loopback, and for each call the time from the job's
//! `finished_at` (the worker's clock, this machine's) to the call's
//! arrival: the outbox, the dispatcher's read, the job read, signing and
//! the HTTP call. Measured for a burst (jobs submitted at once in bulk
//! requests, their calls queued behind each other) and for jobs sent one
//! at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

use crate::bulk::BATCH;
use crate::closed::clients;
use crate::http::{Errors, Http};
use crate::report::{Report, ms, pct};

type Arrivals = Arc<Mutex<Vec<Duration>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> StatusCode {
    let now = shared::time::now_ms();
    let finished = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["data"]["finished_at"].as_str().map(str::to_owned))
        .and_then(|s| {
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
    if let Some(f) = finished
        && let Ok(mut a) = arrivals.lock()
    {
        a.push(Duration::from_millis(u64::try_from(now - f).unwrap_or(0)));
    }
    StatusCode::NO_CONTENT
}

/// Jobs sent one at a time, each after the previous one's call arrived.
const SINGLES: usize = 50;

/// What [`measure`] saw.
pub(crate) struct Latency {
    calls: Vec<Duration>,
    jobs: usize,
    /// The calls of [`SINGLES`] jobs sent one at a time.
    singles: Vec<Duration>,
    errors: Errors,
}

fn received(arrivals: &Arrivals) -> usize {
    arrivals.lock().map(|a| a.len()).unwrap_or(0)
}

/// Waits until `n` calls arrived, or `deadline`.
async fn wait_for(arrivals: &Arrivals, n: usize, deadline: Instant) {
    while received(arrivals) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Submits `jobs` jobs (in bulk requests) with a webhook and waits for
/// every call, at most a minute.
pub(crate) async fn measure(http: &Http, jobs: usize) -> anyhow::Result<Latency> {
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&arrivals));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let requests = jobs.div_ceil(BATCH).max(1);
    let per = jobs.div_ceil(requests);
    let body = http.bulk_body_with(per, &format!("\"webhook\":{}", serde_json::json!(url)));
    let mut errors = Errors::default();
    let submits = clients(2, requests, http, move |http, _| {
        let body = Arc::clone(&body);
        async move { http.submit_bulk(body).await }
    })
    .await;
    let mut sent = 0;
    for r in submits {
        match r {
            Ok(ids) => sent += ids.len(),
            Err(e) => errors.add(e),
        }
    }
    wait_for(&arrivals, sent, Instant::now() + Duration::from_secs(60)).await;
    let mut calls = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    calls.sort();
    // The same, one job at a time: the latency of a call with nothing
    // queued before it.
    let one = http.bulk_body_with(1, &format!("\"webhook\":{}", serde_json::json!(url)));
    for _ in 0..SINGLES {
        let before = received(&arrivals);
        match http.submit_bulk(Arc::clone(&one)).await {
            Ok(_) => {
                wait_for(
                    &arrivals,
                    before + 1,
                    Instant::now() + Duration::from_secs(10),
                )
                .await
            }
            Err(e) => errors.add(e),
        }
    }
    server.abort();
    let mut singles = arrivals
        .lock()
        .map(|a| a[calls.len().min(a.len())..].to_vec())
        .unwrap_or_default();
    singles.sort();
    Ok(Latency {
        calls,
        jobs: sent,
        singles,
        errors,
    })
}

impl Latency {
    pub(crate) fn report(&self, rep: &mut Report) {
        let sec = "webhooks (finish to receipt)";
        rep.row(
            sec,
            "calls received / jobs",
            format!("{} / {}", self.calls.len(), self.jobs),
            self.errors.summary(),
        );
        if self.calls.is_empty() {
            return;
        }
        rep.row(sec, "burst p50", ms(pct(&self.calls, 50.0)), String::new());
        rep.row(sec, "burst p99", ms(pct(&self.calls, 99.0)), String::new());
        if !self.singles.is_empty() {
            let note = format!("{} jobs, one at a time", self.singles.len());
            rep.row(sec, "single p50", ms(pct(&self.singles, 50.0)), note);
            rep.row(
                sec,
                "single p99",
                ms(pct(&self.singles, 99.0)),
                String::new(),
            );
        }
    }
}
