//! The one way a job gets into the queue. Predict, retrain and model upload
//! each check what is theirs to check; what every submission does is here:
//!
//! 1. [`Submission::begin`]: the job id, the exported submit span (its id
//!    goes into the stored `traceparent`, so the worker's span continues
//!    it, and the client's `traceparent` is its parent), and the
//!    `Idempotency-Key`, checked before any other work.
//! 2. The handler validates its request inside [`Submission::span`].
//! 3. [`Submission::enqueue`]: one Redis script ([`ops::submit`]) that
//!    deduplicates on the key (scoped by model and job kind), applies the
//!    model's queue bound and the tenant's quota on unfinished jobs and
//!    bytes, and writes the record, the stream entry and the tenant's job
//!    index entry together; then the counters, and an [`Accepted`] the
//!    handler turns into its 202. A bulk submit does the same for each of
//!    its jobs, pipelined ([`enqueue_many`]).
//!
//! Limits that do not depend on the job (the tenant's share of request
//! slots, its rates) were applied before the handler ran
//! ([`crate::admission`]).

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use serde::Serialize;
use shared::Keys;
use shared::digest::sha256_hex;
use shared::job::{JobKind, JobStatus};
use shared::queue::keys::Partition;
use shared::queue::ops::{self, Idempotency, SubmitOptions, Submitted};
use shared::queue::webhooks::Subscription;
use shared::queue::wire::{JobEnvelope, JobSpec, RetrainSpec};
use shared::telemetry::{self, spans};
use shared::tensor::Tensor;
use shared::trace::{TRACEPARENT, TraceContext};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::metrics::{JOBS_DEDUPLICATED, JOBS_SUBMITTED, redis_failed, redis_op};
use crate::queue::Queue;
use crate::tenants::Policies;

pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer that returns an earlier job for a repeated key.
pub(crate) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted `Idempotency-Key`, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// What the job does, as the handlers hand it over: its envelope's
/// [`JobSpec`], and for a prediction its deadline.
pub(crate) enum Work {
    Predict {
        inputs: Vec<Tensor>,
        /// A registry version to run on instead of the current one.
        pinned: Option<u32>,
        /// Latest start (Unix ms).
        deadline_ms: Option<i64>,
    },
    /// Check an uploaded version (a control job).
    Validate {
        version: u32,
    },
    Retrain(RetrainSpec),
}

impl Work {
    /// The envelope's spec and deadline.
    fn into_spec(self) -> (JobSpec, Option<i64>) {
        match self {
            Work::Predict {
                inputs,
                pinned,
                deadline_ms,
            } => (
                JobSpec::Predict {
                    inputs,
                    pinned_version: pinned,
                },
                deadline_ms,
            ),
            Work::Validate { version } => (JobSpec::Validate { version }, None),
            Work::Retrain(spec) => (JobSpec::Retrain(spec), None),
        }
    }
}

/// The headers a client's job submission reads ([`Submission::begin`]),
/// documented once for predict and retrain: `params(..., SubmitHeaders)`.
/// (An upload takes no `Idempotency-Key`: its version is registered before
/// the job is queued.)
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "a document only: the handlers read the headers")]
pub(crate) struct SubmitHeaders {
    /// 1 to 256 bytes. A repeat with the same key and the same body bytes,
    /// for the same model and job kind, within the API's
    /// `--result-ttl-secs`, answers 202 with the original job
    /// (`Idempotent-Replayed: true`) and creates nothing; the same key with
    /// a different body is 422 `idempotency_key_reused`.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
    /// W3C Trace Context (`00-<32 hex trace id>-<16 hex span id>-<2 hex
    /// flags>`). A valid one makes the job part of the caller's trace; an
    /// invalid or repeated one is ignored and a new trace is started. The
    /// job's `trace_id` is returned by `GET /v1/jobs/{id}`.
    traceparent: Option<String>,
}

/// A job on its way into the queue (see the module docs).
pub(crate) struct Submission {
    id: Uuid,
    /// As Redis and the workers know it.
    model: String,
    /// As the tenant knows it, for messages.
    public: String,
    span: Span,
    trace: TraceContext,
    key_hash: Option<String>,
    /// The request's own webhook ([`Submission::set_webhook`]).
    webhook: Option<Subscription>,
}

/// The job a submission produced, or the earlier one its key named.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    pub id: Uuid,
    /// `queued`, or for a replayed key the earlier job's status now.
    pub status: JobStatus,
    pub replayed: bool,
}

/// The 202 body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Accepted)]
pub(crate) struct AcceptedBody<'a> {
    job_id: Uuid,
    /// `queued`, or for a replayed `Idempotency-Key` the job's current status.
    #[schema(value_type = shared::job::JobStatus)]
    status: &'static str,
    /// Where to poll the job: `/v1/jobs/{job_id}`.
    status_url: &'a str,
}

impl Accepted {
    /// Where to poll the job.
    pub(crate) fn status_url(&self) -> String {
        format!("/v1/jobs/{}", self.id)
    }

    /// 202 with `Location` and `body`, plus `Idempotent-Replayed` when the
    /// key named an earlier job.
    pub(crate) fn respond(&self, body: impl IntoResponse) -> Response {
        let mut res = (
            StatusCode::ACCEPTED,
            [(header::LOCATION, self.status_url())],
            body,
        )
            .into_response();
        if self.replayed {
            res.headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        res
    }

    /// The standard 202: the job, its status and where to poll it.
    pub(crate) fn into_response(self) -> Response {
        let url = self.status_url();
        self.respond(axum::Json(AcceptedBody {
            job_id: self.id,
            status: self.status.as_str(),
            status_url: &url,
        }))
    }
}

impl Submission {
    /// Starts a submission of `public` (a name the tenant uses, already
    /// checked to be a valid model name): a new job id, its submit span and
    /// trace, and the idempotency key, refused at once if malformed.
    pub(crate) fn begin(
        keys: &Keys,
        tenant: &Tenant,
        public: &str,
        headers: &HeaderMap,
    ) -> Result<Submission, ApiError> {
        let key_hash = idempotency_key(headers)?;
        // The id names the job's partition (see `shared::queue::keys`): the
        // idempotency key's, or the next in turn.
        let p = keys.pick_partition(key_hash.as_deref());
        Ok(Submission::start(
            keys, tenant, public, headers, key_hash, p,
        ))
    }

    /// One job of a bulk submit: as [`Submission::begin`], without an
    /// `Idempotency-Key` (the bulk route refuses one), in `partition` if
    /// given (an atomic batch keeps to one), else the next in turn.
    pub(crate) fn begin_item(
        keys: &Keys,
        tenant: &Tenant,
        public: &str,
        headers: &HeaderMap,
        partition: Option<Partition>,
    ) -> Submission {
        let p = partition.unwrap_or_else(|| keys.pick_partition(None));
        Submission::start(keys, tenant, public, headers, None, p)
    }

    fn start(
        keys: &Keys,
        tenant: &Tenant,
        public: &str,
        headers: &HeaderMap,
        key_hash: Option<String>,
        partition: Partition,
    ) -> Submission {
        let model = tenant.model_key(public);
        let id = keys.new_job_id(partition);
        let client = client_trace(headers);
        // Without export the ids are made here, so the span gets its trace
        // id at creation: recording it afterwards re-encodes the span's JSON
        // fields.
        let local = (!telemetry::otlp_enabled()).then(|| TraceContext::child_of(client.as_ref()));
        let span = tracing::info_span!(
            spans::SUBMIT,
            job_id = %id,
            model = %model,
            attempt = 0u32,
            trace_id = local.as_ref().map(|t| tracing::field::display(t.trace_id)),
        );
        let trace = local.unwrap_or_else(|| {
            let t = telemetry::submit_trace(&span, client.as_ref());
            span.record("trace_id", tracing::field::display(t.trace_id));
            t
        });
        Submission {
            id,
            model,
            public: public.to_owned(),
            span,
            trace,
            key_hash,
            webhook: None,
        }
    }

    /// The webhook the request asked for; without one the job gets its
    /// tenant's default, if any.
    pub(crate) fn set_webhook(&mut self, webhook: Option<Subscription>) {
        self.webhook = webhook;
    }

    pub(crate) fn id(&self) -> Uuid {
        self.id
    }

    /// The job's submit span: validation logged inside it belongs to the job.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The job's trace id.
    pub(crate) fn trace_id(&self) -> String {
        self.trace.trace_id.to_string()
    }

    /// Whether the request body must be hashed (an `Idempotency-Key` came).
    pub(crate) fn wants_body_hash(&self) -> bool {
        self.key_hash.is_some()
    }

    /// Queues the job (see the module docs). `body_hash` is the request
    /// body's [`sha256_hex`] when [`Submission::wants_body_hash`].
    pub(crate) async fn enqueue(
        self,
        queue: &Queue,
        policies: &Policies,
        tenant: &Tenant,
        work: Work,
        body_hash: Option<String>,
    ) -> Result<Accepted, ApiError> {
        let (job, kind) = self.envelope(work);
        let webhook = webhook_of(self.webhook.as_ref(), policies, tenant, kind);
        let mut opts = options(
            queue,
            policies,
            tenant,
            kind,
            self.key_hash.as_deref(),
            body_hash.as_deref(),
        );
        opts.webhook = webhook;
        let outcome = async {
            let mut conn = queue.conn();
            ops::submit(&mut conn, queue.keys(), &job, &opts)
                .await
                .map_err(redis_failed(redis_op::SUBMIT))
        }
        .instrument(self.span.clone())
        .await?;
        self.settle(outcome, kind)
    }

    /// The job's envelope, and its kind.
    fn envelope(&self, work: Work) -> (JobEnvelope, JobKind) {
        let (spec, deadline_ms) = work.into_spec();
        let kind = spec.kind();
        let job = JobEnvelope {
            id: self.id,
            model: self.model.clone(),
            submitted_at_ms: shared::time::now_ms(),
            deadline_ms,
            traceparent: Some(self.trace.to_string()),
            spec,
        };
        (job, kind)
    }

    /// What the script did, logged in the job's span and counted, as the
    /// handler's answer.
    fn settle(self, outcome: Submitted, kind: JobKind) -> Result<Accepted, ApiError> {
        self.span.in_scope(|| match outcome {
            // Debug: the worker's "job finished" is the one info line per job.
            Submitted::Created => tracing::debug!(kind = kind.as_str(), "job queued"),
            // The line is about the earlier job, not the one never created.
            Submitted::Duplicate { id, .. } => {
                tracing::Span::current().record("job_id", tracing::field::display(id));
                tracing::info!("idempotent retry, answered with the earlier job");
            }
            Submitted::KeyReused(id) => {
                tracing::Span::current().record("job_id", tracing::field::display(id));
                tracing::info!("idempotency key reused for another body");
            }
            // Debug: under overload these fire per request; metrics count them.
            Submitted::QueueFull { depth } => tracing::debug!(depth, "queue full, job refused"),
            Submitted::OverQuota(q) => {
                tracing::debug!(
                    quota = q.kind.as_str(),
                    used = q.used,
                    "tenant over quota, job refused"
                )
            }
        });
        let label = || SharedString::from(self.model.clone());
        match outcome {
            Submitted::Created => {
                metrics::counter!(JOBS_SUBMITTED, "model" => label(), "kind" => kind.as_str())
                    .increment(1);
                Ok(Accepted {
                    id: self.id,
                    status: JobStatus::Queued,
                    replayed: false,
                })
            }
            Submitted::Duplicate { id, status } => {
                metrics::counter!(JOBS_DEDUPLICATED, "model" => label()).increment(1);
                Ok(Accepted {
                    id,
                    status,
                    replayed: true,
                })
            }
            Submitted::KeyReused(_) => Err(ApiError::IdempotencyKeyReused),
            Submitted::QueueFull { .. } => Err(ApiError::QueueFull(self.public)),
            Submitted::OverQuota(q) => Err(ApiError::over_quota(q)),
        }
    }
}

/// Queues many predictions of one request (a bulk submit) the way
/// [`Submission::enqueue`] queues one: the same script per job, with the
/// same bounds, pipelined ([`ops::submit_many`]: one Redis round trip per
/// partition). Each job is accepted or refused on its own, in order, or
/// with `atomic` (all in one partition, see [`Submission::begin_item`]) all
/// of them or none. The answers are in `jobs` order. An error for the whole
/// (Redis unreachable) leaves unknown which jobs were written: the client
/// may list its jobs (`GET /v1/jobs`).
pub(crate) async fn enqueue_many(
    queue: &Queue,
    policies: &Policies,
    tenant: &Tenant,
    jobs: Vec<(Submission, Work)>,
    atomic: bool,
    webhook: Option<&Subscription>,
) -> Result<Vec<Result<Accepted, ApiError>>, ApiError> {
    let (submissions, envelopes): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|(sub, work)| {
            let (job, kind) = sub.envelope(work);
            ((sub, kind), job)
        })
        .unzip();
    // Bulk submits take no Idempotency-Key; every job is a prediction.
    let mut opts = options(queue, policies, tenant, JobKind::Predict, None, None);
    opts.webhook = webhook_of(webhook, policies, tenant, JobKind::Predict);
    let mut conn = queue.conn();
    let outcomes = ops::submit_many(&mut conn, queue.keys(), &envelopes, &opts, atomic)
        .await
        .map_err(redis_failed(redis_op::SUBMIT))?;
    Ok(submissions
        .into_iter()
        .zip(outcomes)
        .map(|((sub, kind), outcome)| sub.settle(outcome, kind))
        .collect())
}

/// The bounds and deduplication of a job of `kind` (see the module docs).
fn options<'a>(
    queue: &Queue,
    policies: &Policies,
    tenant: &Tenant,
    kind: JobKind,
    key_hash: Option<&'a str>,
    body_hash: Option<&'a str>,
) -> SubmitOptions<'a> {
    let policy = queue.policy();
    SubmitOptions {
        // A control job is the registry's own work, never refused for
        // a full model queue.
        max_queue_depth: if kind == JobKind::Validate {
            0
        } else {
            policy.max_queue_depth
        },
        idempotency: key_hash
            .zip(body_hash)
            .map(|(key_hash, body_hash)| Idempotency {
                key_hash,
                body_hash,
                ttl_secs: policy.idempotency_ttl_secs,
            }),
        // Nor for the tenant's queue quota: the version is registered
        // already (within its own quota), and refusing its check would
        // leave it `validating` for good.
        quota: if kind == JobKind::Validate {
            Default::default()
        } else {
            policies.of(tenant.name()).job_quota()
        },
        durability: policy.durability,
        index_ttl_secs: policy.index_ttl_secs,
        webhook: None,
    }
}

/// A job's webhook: the request's, else its tenant's default; never for a
/// control job, which is the registry's own work.
fn webhook_of<'a>(
    requested: Option<&'a Subscription>,
    policies: &'a Policies,
    tenant: &Tenant,
    kind: JobKind,
) -> Option<&'a Subscription> {
    if kind == JobKind::Validate {
        return None;
    }
    requested.or(policies.of(tenant.name()).webhook.as_ref())
}

/// The hex SHA-256 of the `Idempotency-Key` header, if sent. Any bytes a
/// header may carry are accepted; only the digest is used from here on.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |m: &str| Err(ApiError::InvalidIdempotencyKey(m.to_owned()));
    if values.next().is_some() {
        return invalid("send at most one Idempotency-Key header");
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return invalid("Idempotency-Key must not be empty");
    }
    if bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return invalid("Idempotency-Key must be at most 256 bytes");
    }
    Ok(Some(sha256_hex(bytes)))
}

/// The client's W3C `traceparent`, if it sent exactly one valid header. An
/// invalid or repeated one is ignored (the spec says to start a new trace),
/// never an error.
pub(crate) fn client_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceContext::parse(value.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn only_one_valid_traceparent_is_taken() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
            }
            client_trace(&h)
        };
        let tc = with(&[TP]).unwrap();
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(with(&[]), None);
        assert_eq!(with(&[TP, TP]), None);
        assert_eq!(with(&["00-garbage"]), None);
    }

    #[test]
    fn idempotency_keys_are_hashed_and_bounded() {
        assert_eq!(idempotency_key(&headers(&[])).unwrap(), None);
        let a = idempotency_key(&headers(&[b"order-1"])).unwrap().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(Some(a), idempotency_key(&headers(&[b"order-2"])).unwrap());
        // Opaque bytes (obs-text) are fine: they only feed the digest.
        assert!(idempotency_key(&headers(&[b"\xff\x80 key"])).is_ok());
        assert!(idempotency_key(&headers(&[&[b'k'; 256]])).is_ok());
        for bad in [
            headers(&[&[b'k'; 257]]),
            headers(&[b""]),
            headers(&[b"a", b"b"]),
        ] {
            assert_eq!(
                idempotency_key(&bad).unwrap_err().code().as_str(),
                "invalid_idempotency_key"
            );
        }
    }
}
