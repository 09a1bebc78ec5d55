//! The load generator's HTTP client: one predict body of the bench model,
//! a submit that returns the job id of a 202, a long-poll until the job is
//! terminal, and failures counted by kind ([`Errors`]) instead of aborting
//! a load phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::StatusCode;

use crate::MODEL;

#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    body: Arc<Vec<u8>>,
}

impl Http {
    pub(crate) fn new(base: &str) -> Result<Http> {
        Http::with_builder(base, reqwest::Client::builder())
    }

    /// A client whose connections come from `addr` (a loopback address
    /// other than 127.0.0.1 is another client to the API's per-address cap).
    pub(crate) fn from_address(base: &str, addr: std::net::IpAddr) -> Result<Http> {
        Http::with_builder(base, reqwest::Client::builder().local_address(addr))
    }

    fn with_builder(base: &str, builder: reqwest::ClientBuilder) -> Result<Http> {
        let features: Vec<f32> = (0..128).map(|i| i as f32 / 128.0).collect();
        Ok(Http {
            client: builder
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(16_384)
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            body: Arc::new(serde_json::to_vec(
                &serde_json::json!({ "features": features }),
            )?),
        })
    }

    /// One predict; the job id of a 202, else an error text.
    pub(crate) async fn submit(&self) -> Result<String, String> {
        let v = expect_json(
            "submit",
            StatusCode::ACCEPTED,
            self.client
                .post(format!("{}/v1/models/{MODEL}/predict", self.base))
                .header("content-type", "application/json")
                .body(self.body.as_ref().clone()),
        )
        .await?;
        v["job_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "submit: no job_id".into())
    }

    /// One bulk submit of `body` (`{"items": [...]}`, every item the
    /// bench's predict body); the job ids of a 202, else an error text
    /// (a refused item included).
    pub(crate) async fn submit_bulk(&self, body: Arc<Vec<u8>>) -> Result<Vec<String>, String> {
        let v = expect_json(
            "bulk submit",
            StatusCode::ACCEPTED,
            self.client
                .post(format!("{}/v1/models/{MODEL}/predict/batch", self.base))
                .header("content-type", "application/json")
                .body(body.as_ref().clone()),
        )
        .await?;
        let items = v["items"].as_array().ok_or("bulk submit: no items")?;
        items
            .iter()
            .map(|item| match item["job_id"].as_str() {
                Some(id) => Ok(id.to_owned()),
                None => Err(format!("bulk submit: item {}", item["error"]["code"])),
            })
            .collect()
    }

    /// A bulk body of `n` copies of the bench's predict body.
    pub(crate) fn bulk_body(&self, n: usize) -> Arc<Vec<u8>> {
        self.bulk_body_with(n, "")
    }

    /// [`Http::bulk_body`] with `fields` (JSON members, e.g. a webhook)
    /// before the items.
    pub(crate) fn bulk_body_with(&self, n: usize, fields: &str) -> Arc<Vec<u8>> {
        let mut body = b"{".to_vec();
        if !fields.is_empty() {
            body.extend_from_slice(fields.as_bytes());
            body.push(b',');
        }
        body.extend_from_slice(b"\"items\":[");
        for i in 0..n {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&self.body);
        }
        body.extend_from_slice(b"]}");
        Arc::new(body)
    }

    /// Long-polls (`?wait=5`) until the job is terminal; Ok when it succeeded.
    pub(crate) async fn wait(&self, id: &str, deadline: Instant) -> Result<(), String> {
        loop {
            let v = expect_json(
                "poll",
                StatusCode::OK,
                self.client
                    .get(format!("{}/v1/jobs/{id}?wait=5", self.base)),
            )
            .await?;
            match v["status"].as_str().unwrap_or("") {
                "succeeded" => return Ok(()),
                s @ ("failed" | "canceled") => return Err(format!("job {s}")),
                _ if Instant::now() > deadline => return Err("job not done in time".into()),
                _ => {}
            }
        }
    }
}

/// Sends a request and parses its JSON body, or says what went wrong
/// (`stage: status error_code`, or a transport or body error).
async fn expect_json(
    stage: &str,
    expected: StatusCode,
    req: reqwest::RequestBuilder,
) -> Result<serde_json::Value, String> {
    let resp = req.send().await.map_err(|e| transport(stage, &e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| transport(stage, &e))?;
    if status != expected {
        return Err(http_error(stage, status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{stage} body: {e}"))
}

/// A transport error by its innermost cause (refused, reset, timed out),
/// which is what tells overload outcomes apart; reqwest's own text only
/// says that sending failed. The URL is left out so errors group by kind.
fn transport(stage: &str, e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if e.is_timeout() {
        format!("{stage}: timed out")
    } else {
        format!("{stage}: {cause}")
    }
}

fn http_error(stage: &str, status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{stage}: {} {code}", status.as_u16())
}

/// Failed jobs, counted by kind.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) std::collections::BTreeMap<String, usize>);

impl Errors {
    pub(crate) fn add(&mut self, e: String) {
        *self.0.entry(e).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: Errors) {
        for (k, n) in other.0 {
            *self.0.entry(k).or_default() += n;
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.0.values().sum()
    }

    pub(crate) fn summary(&self) -> String {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter()
            .take(3)
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
