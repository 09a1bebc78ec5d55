//! The closed loop's burst once more, through WebSocket sessions
//! (`/v1/ws`): the same jobs and body, submitted over [`SESSIONS`] sessions
//! with [`WINDOW`] jobs in flight each, every result pushed back as its job
//! ends (no polling); reported next to the burst of single submits and the
//! bulk burst of the same run.

use std::time::Instant;

use serde_json::json;

use crate::MODEL;
use crate::bulk::Bulk;
use crate::closed::Closed;
use crate::report::Report;

/// Sessions at once (as many as the bulk row's clients).
const SESSIONS: usize = 4;
/// Jobs in flight per session (below the API's `--ws-max-in-flight`).
const WINDOW: usize = 500;

/// What [`burst`] measured.
pub(crate) struct Ws {
    /// Jobs that succeeded, per second from the first submit to the last
    /// result.
    jps: f64,
    /// Results that were not `succeeded`.
    failed: usize,
}

/// Runs `jobs` jobs through [`SESSIONS`] sessions of the API at `base`.
pub(crate) async fn burst(base: &str, jobs: usize) -> Ws {
    let features: Vec<f32> = (0..128).map(|i| i as f32 / 128.0).collect();
    let body = json!({ "features": features });
    let start = Instant::now();
    let sessions = (0..SESSIONS).map(|i| {
        let n = jobs / SESSIONS + usize::from(i < jobs % SESSIONS);
        let body = body.clone();
        async move {
            let ws = e2e::push::connect(base, None).await;
            e2e::push::run_jobs(ws, MODEL, &body, n, WINDOW).await
        }
    });
    let pushed = futures::future::join_all(sessions).await;
    let elapsed = start.elapsed();
    let failed = pushed
        .iter()
        .flat_map(|p| p.results.values())
        .filter(|r| r["status"] != "succeeded")
        .count();
    Ws {
        jps: (jobs - failed) as f64 / elapsed.as_secs_f64(),
        failed,
    }
}

impl Ws {
    pub(crate) fn report(&self, rep: &mut Report, section: &str, single: &Closed, bulk: &Bulk) {
        rep.row(
            section,
            &format!("websocket burst ({SESSIONS} sessions, {WINDOW} in flight each): 1st submit to last result"),
            format!("{:.0} jobs/s", self.jps),
            format!(
                "{:.2} x single-submit burst, {:.2} x bulk burst",
                self.jps / single.burst_jps,
                self.jps / bulk.jps
            ),
        );
        rep.row(
            section,
            "websocket results not succeeded",
            self.failed.to_string(),
            String::new(),
        );
    }
}
