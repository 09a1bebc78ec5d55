//! Webhook delivery latency: jobs submitted with a webhook to a receiver
//! in this process on loopback, and for each call the time from the job's
//! `finished_at` (the worker's clock, this machine's) to the call's
//! arrival: the outbox, the dispatcher's read, the job read, signing and
//! the HTTP call.

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

/// What [`measure`] saw.
pub(crate) struct Latency {
    calls: Vec<Duration>,
    jobs: usize,
    errors: Errors,
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().map(|a| a.len()).unwrap_or(0) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
    let mut calls = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    calls.sort();
    Ok(Latency {
        calls,
        jobs: sent,
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
        rep.row(sec, "p50", ms(pct(&self.calls, 50.0)), String::new());
        rep.row(sec, "p99", ms(pct(&self.calls, 99.0)), String::new());
    }
}
