//! Load the way a careful client sends it, for the fault tests: each job
//! has its own `Idempotency-Key`, a 503 is retried with the same key after a
//! short pause, and every request is bounded by a client timeout, so an API
//! that hangs shows up as a timeout instead of a stuck test. Every answer is
//! recorded with its time, so a test can measure the window in which the
//! API refused work and check that nothing but a 202 or a well-formed 503
//! came back.
//!
//! [`final_states`] then follows every accepted job to its end, reporting a
//! job that vanished or never ended as lost instead of panicking on the
//! first one, so a test prints its figures before it fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::Client;

/// Builds job `i`'s request body.
pub type BodyFn = Arc<dyn Fn(usize) -> Value + Send + Sync>;

/// What a keyed load sends.
#[derive(Clone)]
pub struct LoadSpec {
    pub model: String,
    /// Jobs `0..total`, each sent until it gets a 202.
    pub total: usize,
    /// Concurrent client tasks.
    pub submitters: usize,
    /// Bound of one request; past it the request counts as a timeout.
    pub request_timeout: Duration,
    /// Pause before resending after a 503 (or a timeout).
    pub retry_pause: Duration,
    /// Pause of a client task after each accepted job, to hold the load to
    /// a rate the workers keep up with (zero: as fast as the API answers).
    pub pace: Duration,
    /// How long one job may be retried before the client gives up on it
    /// (a failure the test reports). Giving up on one job stops the whole
    /// load (no job is sent or resent after it), so an API that never
    /// recovers fails the test this long after it broke, however fast or
    /// slow the machine runs the load until then.
    pub give_up_after: Duration,
    /// Prefix of every `Idempotency-Key` (the job index follows it).
    pub key_prefix: String,
    pub body: BodyFn,
}

/// One answer (or its absence).
#[derive(Debug, Clone)]
pub enum Outcome {
    Accepted {
        id: String,
        replayed: bool,
    },
    /// A 503 with the documented error body and this code.
    Unavailable(String),
    /// Anything else: another status, a malformed error body, a transport
    /// error (the reason says which).
    Bad(String),
    /// No answer within the request timeout.
    Timeout,
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    pub job: usize,
    pub took: Duration,
    pub outcome: Outcome,
}

/// A load in progress.
pub struct LoadRun {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Vec<Answer>>,
    started: Instant,
}

/// Everything a finished load saw.
pub struct LoadReport {
    pub started: Instant,
    pub answers: Vec<Answer>,
    /// Job index → the id its (last) 202 named.
    pub accepted: HashMap<usize, String>,
    /// Job indexes given up on.
    pub abandoned: Vec<usize>,
}

impl LoadRun {
    pub fn spawn(client: &Client, spec: LoadSpec) -> LoadRun {
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let gave_up = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..spec.submitters {
            let (client, spec) = (client.clone(), spec.clone());
            let (accepted, next) = (Arc::clone(&accepted), Arc::clone(&next));
            let (stop, gave_up) = (Arc::clone(&stop), Arc::clone(&gave_up));
            tasks.spawn(async move {
                let mut answers = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) || gave_up.load(Ordering::Relaxed) {
                        return answers;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.total {
                        return answers;
                    }
                    if submit_one(&client, &spec, i, &gave_up, &mut answers).await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        if !spec.pace.is_zero() {
                            tokio::time::sleep(spec.pace).await;
                        }
                    } else {
                        gave_up.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
        LoadRun {
            accepted,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Jobs that have had their 202 so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Sends no new job from now on; a job being sent is still sent until
    /// accepted (or given up on).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits until `n` jobs have been accepted (or the load ended),
    /// panicking after `timeout`.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.accepted() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} jobs accepted in {timeout:?}",
                self.accepted()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn finish(mut self) -> LoadReport {
        let mut answers = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            answers.extend(r.expect("submitter task"));
        }
        answers.sort_by_key(|a| a.at);
        let mut accepted = HashMap::new();
        let mut done = std::collections::HashSet::new();
        for a in &answers {
            if let Outcome::Accepted { id, .. } = &a.outcome {
                accepted.insert(a.job, id.clone());
                done.insert(a.job);
            }
        }
        let mut abandoned: Vec<usize> = answers
            .iter()
            .map(|a| a.job)
            .filter(|j| !done.contains(j))
            .collect();
        abandoned.sort_unstable();
        abandoned.dedup();
        LoadReport {
            started: self.started,
            answers,
            accepted,
            abandoned,
        }
    }
}

/// Sends job `i` until it is accepted (true), or given up on: after
/// [`LoadSpec::give_up_after`], or at once when another job was given up
/// on (`gave_up`) and the load ends anyway.
async fn submit_one(
    client: &Client,
    spec: &LoadSpec,
    i: usize,
    gave_up: &AtomicBool,
    answers: &mut Vec<Answer>,
) -> bool {
    let body = (spec.body)(i);
    let key = format!("{}-{i}", spec.key_prefix);
    let first = Instant::now();
    loop {
        let t = Instant::now();
        let sent = client
            .http
            .post(format!("{}/v1/models/{}/predict", client.base, spec.model))
            .header("idempotency-key", &key)
            .timeout(spec.request_timeout)
            .json(&body)
            .send()
            .await;
        let outcome = match sent {
            Ok(resp) => {
                let status = resp.status();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let replayed = resp.headers().contains_key("idempotent-replayed");
                match resp.text().await {
                    Ok(text) => classify(status, &ct, &text, replayed),
                    Err(e) if e.is_timeout() => Outcome::Timeout,
                    Err(e) => Outcome::Bad(format!("{status}: body unreadable: {e}")),
                }
            }
            Err(e) if e.is_timeout() => Outcome::Timeout,
            Err(e) => Outcome::Bad(format!("transport error: {e}")),
        };
        let accepted = matches!(outcome, Outcome::Accepted { .. });
        answers.push(Answer {
            at: t,
            job: i,
            took: t.elapsed(),
            outcome,
        });
        if accepted {
            return true;
        }
        if first.elapsed() > spec.give_up_after || gave_up.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::sleep(spec.retry_pause).await;
    }
}

fn classify(status: StatusCode, content_type: &str, text: &str, replayed: bool) -> Outcome {
    if status == StatusCode::ACCEPTED {
        let json: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        return match json["job_id"].as_str() {
            Some(id) => Outcome::Accepted {
                id: id.to_owned(),
                replayed,
            },
            None => Outcome::Bad(format!("202 without a job_id: {text}")),
        };
    }
    match error_code(content_type, text) {
        Ok(code) if status == StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable(code),
        Ok(code) => Outcome::Bad(format!("{status} {code}: {text}")),
        Err(why) => Outcome::Bad(format!("{status}: {why}")),
    }
}

/// The code of a documented error body, `{"error":{"code","message"}}`
/// and nothing else, sent as JSON; else what is wrong with it.
pub fn error_code(content_type: &str, text: &str) -> Result<String, String> {
    if !content_type.starts_with("application/json") {
        return Err(format!("content type {content_type:?}: {text}"));
    }
    let json: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let top: Vec<&String> = json
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    if top != ["error"] {
        return Err(format!("not an error body: {text}"));
    }
    let err = &json["error"];
    match (err["code"].as_str(), err["message"].as_str()) {
        (Some(code), Some(msg)) if !code.is_empty() && !msg.is_empty() => Ok(code.to_owned()),
        _ => Err(format!("error without code or message: {text}")),
    }
}

impl LoadReport {
    /// Answers other than a 202 or a well-formed 503.
    pub fn bad(&self) -> Vec<&Answer> {
        self.answers
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Bad(_)))
            .collect()
    }

    pub fn timeouts(&self) -> usize {
        self.answers
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Timeout))
            .count()
    }

    /// 503s by code.
    pub fn unavailable_codes(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for a in &self.answers {
            if let Outcome::Unavailable(code) = &a.outcome {
                *out.entry(code.clone()).or_default() += 1;
            }
        }
        out
    }

    /// When the first and the last 503 were sent.
    pub fn unavailable_window(&self) -> Option<(Instant, Instant)> {
        let mut times = self
            .answers
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Unavailable(_)))
            .map(|a| a.at);
        let first = times.next()?;
        Some((first, times.next_back().unwrap_or(first)))
    }

    /// 202s to requests sent after `t`.
    pub fn accepted_after(&self, t: Instant) -> usize {
        self.answers
            .iter()
            .filter(|a| a.at > t && matches!(a.outcome, Outcome::Accepted { .. }))
            .count()
    }

    /// Job indexes whose 202s named more than one job id (an idempotency
    /// key that made two jobs).
    pub fn split_keys(&self) -> Vec<usize> {
        let mut ids: HashMap<usize, std::collections::HashSet<&str>> = HashMap::new();
        for a in &self.answers {
            if let Outcome::Accepted { id, .. } = &a.outcome {
                ids.entry(a.job).or_default().insert(id);
            }
        }
        let mut out: Vec<usize> = ids
            .into_iter()
            .filter(|(_, s)| s.len() > 1)
            .map(|(j, _)| j)
            .collect();
        out.sort_unstable();
        out
    }

    /// The slowest answer.
    pub fn slowest(&self) -> Duration {
        self.answers
            .iter()
            .map(|a| a.took)
            .max()
            .unwrap_or_default()
    }
}

/// Follows each job in `ids` to a terminal state with `concurrency`
/// long-polls at a time. A job not found, or not terminal within `timeout`
/// of the call, is an `Err` saying which.
pub async fn final_states(
    client: &Client,
    ids: Vec<String>,
    concurrency: usize,
    timeout: Duration,
) -> HashMap<String, Result<Value, String>> {
    let deadline = Instant::now() + timeout;
    let queue = Arc::new(std::sync::Mutex::new(ids));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, queue) = (client.clone(), Arc::clone(&queue));
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(id) = queue.lock().expect("queue").pop() else {
                    return out;
                };
                let state = follow(&client, &id, deadline).await;
                out.push((id, state));
            }
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        out.extend(r.expect("poll task"));
    }
    out
}

async fn follow(client: &Client, id: &str, deadline: Instant) -> Result<Value, String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        let resp = client
            .http
            .get(format!("{}/v1/jobs/{id}?wait=5", client.base))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        let (status, text) = match resp {
            Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
            Err(e) => {
                last = format!("transport error: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if status == StatusCode::NOT_FOUND {
            return Err(format!("job {id} not found: {text}"));
        }
        if status != StatusCode::OK {
            // A 503 while Redis recovers: ask again.
            last = format!("{status}: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if matches!(
            json["status"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        ) {
            return Ok(json);
        }
        last = text;
    }
    Err(format!(
        "job {id} not terminal in time; last answer: {last}"
    ))
}

/// What became of the accepted jobs of a run, from [`final_states`]:
/// those that did not succeed (lost), and how many ran more than once.
#[derive(Debug, Default)]
pub struct Settled {
    pub lost: Vec<String>,
    pub more_than_once: usize,
}

/// Checks every succeeded job with `check` (its outputs against what its
/// input gives) and counts the rest as lost.
pub fn settle(
    states: &HashMap<String, Result<Value, String>>,
    mut check: impl FnMut(&str, &Value),
) -> Settled {
    let mut out = Settled::default();
    for (id, state) in states {
        match state {
            Ok(job) if job["status"] == "succeeded" => {
                check(id, job);
                let attempts = job["attempts"].as_u64().unwrap_or(0);
                assert!(attempts >= 1, "a succeeded job with no attempt: {job}");
                if attempts > 1 {
                    out.more_than_once += 1;
                }
            }
            Ok(job) => out
                .lost
                .push(format!("{id} ended {}: {job}", job["status"])),
            Err(e) => out.lost.push(e.clone()),
        }
    }
    out
}
