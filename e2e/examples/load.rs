//! Rough closed-loop load against a running API: submits N mlp128 jobs from C
//! concurrent clients, then long-polls every result, and prints submit
//! throughput and end-to-end jobs/s (first submit to last result seen).
//!
//! `cargo run --release -p e2e --example load -- http://127.0.0.1:8080 1000 32`

use std::time::{Duration, Instant};

use e2e::Client;
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let jobs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let conc: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(32);
    let client = Client::new(&base);
    let body = json!({ "features": (0..128).map(|i| (i as f32) / 128.0).collect::<Vec<_>>() });

    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conc {
        let (client, body) = (client.clone(), body.clone());
        set.spawn(async move {
            let mut ids = Vec::new();
            for _ in (w..jobs).step_by(conc) {
                ids.push(client.submit("mlp128", &body).await);
            }
            ids
        });
    }
    let mut ids = Vec::with_capacity(jobs);
    while let Some(r) = set.join_next().await {
        ids.extend(r.expect("submitter"));
    }
    let submitted = start.elapsed();

    let mut set = tokio::task::JoinSet::new();
    for chunk in ids.chunks(jobs.div_ceil(conc)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        set.spawn(async move {
            let mut ok = 0usize;
            for id in chunk {
                let job = client.wait_terminal(&id, Duration::from_secs(120)).await;
                ok += usize::from(job["status"] == "succeeded");
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += r.expect("poller");
    }
    let total = start.elapsed();
    println!(
        "jobs {jobs}  concurrency {conc}  succeeded {ok}  submit {:.0} req/s  end-to-end {:.0} jobs/s ({:.2} s)",
        jobs as f64 / submitted.as_secs_f64(),
        jobs as f64 / total.as_secs_f64(),
        total.as_secs_f64()
    );
}
