//! The one error type of the HTTP layer and its wire form.
//!
//! Every failure a client can see, axum's own rejections included, becomes an
//! [`ApiError`] and leaves through the single [`IntoResponse`] impl below, so
//! every error body has the same shape:
//! `{"error":{"code":"<snake_case>","message":"<sentence>"}}`. The codes are
//! the variants of [`ErrorCode`], the one list of them: the document's
//! schema derives from it, and one table maps each error to its status and
//! code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shared::QueueError;
use shared::telemetry::ErrorChain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    NonFiniteInput(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidWebhook(String),
    #[error(
        "webhook destination is in a loopback, private, link-local or otherwise internal address range"
    )]
    WebhookNotAllowed,
    #[error("a bulk submit takes 1 to {max} items, got {got}")]
    TooManyItems { got: usize, max: usize },
    /// An item of an atomic bulk submit was refused: the whole request is
    /// answered as the item would have been, naming it.
    #[error("items[{index}]: {error}")]
    InBatch { index: usize, error: Box<ApiError> },
    #[error("request content-type must be application/json")]
    UnsupportedMediaType,
    #[error("request content-type must be text/csv")]
    NotCsv,
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    #[error("job {0} not found")]
    JobNotFound(uuid::Uuid),
    #[error("{0:?} is not a valid job id (expected a UUID)")]
    InvalidJobId(String),
    #[error("job {id} is {status} already; only queued and running jobs can be canceled")]
    JobNotCancelable {
        id: uuid::Uuid,
        status: &'static str,
    },
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("the queue of model {0:?} is full, retry later")]
    QueueFull(String),
    #[error("the server is handling too many requests, retry later")]
    Overloaded,
    /// A WebSocket session has `--ws-max-in-flight` jobs not yet pushed back.
    #[error("this session has {0} jobs in flight, its limit; send more once results come back")]
    InFlightLimit(usize),
    #[error("this route takes a WebSocket upgrade (GET with `Upgrade: websocket`)")]
    UpgradeRequired,
    #[error("this tenant has as many requests in progress as its share allows, retry later")]
    TenantConcurrency,
    #[error("rate limit of the {} policy reached, retry in {} s", .0.policy, .0.reset_secs)]
    RateLimited(RateLimitInfo),
    #[error(
        "this tenant holds {used} {what}, its quota; retry once some of its jobs have finished"
    )]
    TenantQueueFull {
        what: &'static str,
        used: u64,
        limit: u64,
    },
    #[error("this tenant already has {used} {what}, its quota of {limit}; delete some first")]
    QuotaExceeded {
        what: &'static str,
        used: u64,
        limit: u64,
    },
    #[error("send one API key, in one Authorization or one X-API-Key header")]
    AmbiguousCredentials,
    /// The request body broke a [`crate::body_deadline`] rule.
    #[error("{0}")]
    RequestTimeout(String),
    /// The connection table is full: only health, readiness and metrics are
    /// answered, on the connections of the probe reserve.
    #[error("the server has too many open connections, retry later")]
    TooManyConnections,
    #[error("missing or unknown API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("model {model:?} has no version {version}")]
    VersionNotFound { model: String, version: u32 },
    #[error("version {version} is {status}; only a ready version can serve or become current")]
    VersionNotReady { version: u32, status: &'static str },
    #[error("model {0:?} has no earlier current version to roll back to")]
    NoPreviousVersion(String),
    #[error("version {0} is the current version; promote another one before deleting it")]
    VersionIsCurrent(u32),
    #[error("dataset {0:?} not found")]
    DatasetNotFound(String),
    #[error("{0}")]
    InvalidDataset(String),
    #[error("{0}")]
    TrainingBudget(String),
    #[error("the job store is unavailable, retry later")]
    RedisUnavailable(#[source] QueueError),
    /// `--durability replicated`: the write happened on the master, but no
    /// replica confirmed it in time, so the 202 cannot be promised.
    #[error(
        "the job was written but not confirmed by a replica in time; retry with the same Idempotency-Key"
    )]
    NotReplicated(#[source] QueueError),
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

/// Every `error.code` the API answers with (see the README's error tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    NonFiniteInput,
    InvalidInput,
    InvalidQuery,
    InvalidWebhook,
    WebhookNotAllowed,
    TooManyItems,
    UnsupportedMediaType,
    PayloadTooLarge,
    ModelNotFound,
    JobNotFound,
    InvalidJobId,
    JobNotCancelable,
    InvalidIdempotencyKey,
    IdempotencyKeyReused,
    QueueFull,
    Overloaded,
    InFlightLimit,
    UpgradeRequired,
    TenantConcurrencyLimit,
    RateLimited,
    TenantQueueFull,
    QuotaExceeded,
    AmbiguousCredentials,
    RequestTimeout,
    TooManyConnections,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    VersionNotFound,
    VersionNotReady,
    NoPreviousVersion,
    VersionIsCurrent,
    DatasetNotFound,
    InvalidDataset,
    TrainingBudgetExceeded,
    RedisUnavailable,
    NotReplicated,
    Internal,
}

impl ErrorCode {
    /// The wire code (the serde name) as a `&'static str`, for metric
    /// labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::NonFiniteInput => "non_finite_input",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidWebhook => "invalid_webhook",
            ErrorCode::WebhookNotAllowed => "webhook_not_allowed",
            ErrorCode::TooManyItems => "too_many_items",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::JobNotFound => "job_not_found",
            ErrorCode::InvalidJobId => "invalid_job_id",
            ErrorCode::JobNotCancelable => "job_not_cancelable",
            ErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::InFlightLimit => "in_flight_limit",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::TenantConcurrencyLimit => "tenant_concurrency_limit",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TenantQueueFull => "tenant_queue_full",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::AmbiguousCredentials => "ambiguous_credentials",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::VersionNotFound => "version_not_found",
            ErrorCode::VersionNotReady => "version_not_ready",
            ErrorCode::NoPreviousVersion => "no_previous_version",
            ErrorCode::VersionIsCurrent => "version_is_current",
            ErrorCode::DatasetNotFound => "dataset_not_found",
            ErrorCode::InvalidDataset => "invalid_dataset",
            ErrorCode::TrainingBudgetExceeded => "training_budget_exceeded",
            ErrorCode::RedisUnavailable => "redis_unavailable",
            ErrorCode::NotReplicated => "not_replicated",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ApiError {
    /// The one table from error to wire form: its status and its code.
    fn wire(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson),
            ApiError::NonFiniteInput(_) => (StatusCode::BAD_REQUEST, ErrorCode::NonFiniteInput),
            ApiError::InvalidInput(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput)
            }
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery),
            ApiError::InvalidWebhook(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidWebhook)
            }
            ApiError::WebhookNotAllowed => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::WebhookNotAllowed,
            ),
            ApiError::TooManyItems { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooManyItems)
            }
            ApiError::InBatch { error, .. } => error.wire(),
            ApiError::UnsupportedMediaType | ApiError::NotCsv => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::ModelNotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::ModelNotFound),
            ApiError::JobNotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::JobNotFound),
            ApiError::InvalidJobId(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidJobId),
            ApiError::JobNotCancelable { .. } => {
                (StatusCode::CONFLICT, ErrorCode::JobNotCancelable)
            }
            ApiError::InvalidIdempotencyKey(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidIdempotencyKey)
            }
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
            ),
            ApiError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Overloaded),
            ApiError::InFlightLimit(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::InFlightLimit),
            ApiError::UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, ErrorCode::UpgradeRequired),
            ApiError::TenantConcurrency => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TenantConcurrencyLimit,
            ),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::TenantQueueFull { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TenantQueueFull)
            }
            ApiError::QuotaExceeded { .. } => (StatusCode::FORBIDDEN, ErrorCode::QuotaExceeded),
            ApiError::AmbiguousCredentials => {
                (StatusCode::BAD_REQUEST, ErrorCode::AmbiguousCredentials)
            }
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            ApiError::TooManyConnections => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TooManyConnections,
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            ApiError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::VersionNotFound),
            ApiError::VersionNotReady { .. } => (StatusCode::CONFLICT, ErrorCode::VersionNotReady),
            ApiError::NoPreviousVersion(_) => (StatusCode::CONFLICT, ErrorCode::NoPreviousVersion),
            ApiError::VersionIsCurrent(_) => (StatusCode::CONFLICT, ErrorCode::VersionIsCurrent),
            ApiError::DatasetNotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::DatasetNotFound),
            ApiError::InvalidDataset(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidDataset)
            }
            ApiError::TrainingBudget(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::TrainingBudgetExceeded,
            ),
            ApiError::RedisUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::RedisUnavailable)
            }
            ApiError::NotReplicated(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReplicated)
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.wire().0
    }

    pub fn code(&self) -> ErrorCode {
        self.wire().1
    }
}

/// A token bucket as the rate-limit headers describe it (see
/// [`crate::admission`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitInfo {
    /// `tenant` or `model`: which bucket.
    pub policy: &'static str,
    pub rate: shared::queue::ratelimit::Rate,
    /// Whole requests left.
    pub remaining: u64,
    /// Seconds until the next request is allowed (refused) or the bucket
    /// is full again (allowed).
    pub reset_secs: u64,
}

impl ApiError {
    /// A quota refusal from the queue's scripts: queued work is transient
    /// (429, it drains by itself), stored things are not (403, the tenant
    /// must delete some).
    pub fn over_quota(q: shared::queue::usage::OverQuota) -> ApiError {
        use shared::queue::usage::QuotaKind;
        let what = q.kind.as_str();
        match q.kind {
            QuotaKind::Jobs | QuotaKind::Bytes => ApiError::TenantQueueFull {
                what,
                used: q.used,
                limit: q.limit,
            },
            QuotaKind::Datasets | QuotaKind::DatasetBytes => ApiError::QuotaExceeded {
                what,
                used: q.used,
                limit: q.limit,
            },
        }
    }
}

impl ApiError {
    /// A registration the registry refused for the tenant's quota.
    pub fn registry_quota(q: shared::queue::registry::QuotaExceeded) -> ApiError {
        use shared::queue::registry::QuotaExceeded;
        let (what, limit) = match q {
            QuotaExceeded::Versions { limit } => ("versions of this model", limit),
            QuotaExceeded::Models { limit } => ("models", limit),
        };
        ApiError::QuotaExceeded {
            what,
            used: u64::from(limit),
            limit: u64::from(limit),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        if e.is_unavailable() {
            ApiError::RedisUnavailable(e)
        } else if matches!(e, QueueError::NotReplicated { .. }) {
            ApiError::NotReplicated(e)
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
pub(crate) struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub(crate) struct Detail<'a> {
    /// Stable, for programs.
    code: ErrorCode,
    /// One sentence, for people.
    #[schema(value_type = String)]
    message: std::borrow::Cow<'a, str>,
}

impl ApiError {
    /// The error's `{"code", "message"}`, as its answer's body holds it
    /// (what a bulk submit reports for each item it refused). Every message
    /// is bounded, whatever a variant carries: a client's text echoed back
    /// must never make the answer large.
    pub(crate) fn detail(&self) -> Detail<'static> {
        Detail {
            code: self.code(),
            message: crate::text::clip_message(&self.to_string()).into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The causes of 5xx stay in the log: they may name hosts or internals.
        match &self {
            ApiError::RedisUnavailable(cause) => {
                tracing::warn!(error = %ErrorChain(cause), "redis unavailable");
            }
            ApiError::NotReplicated(cause) => {
                tracing::warn!(error = %ErrorChain(cause), "write not replicated");
            }
            // `{:#}`: the whole cause chain on one line.
            ApiError::Internal(cause) => {
                tracing::error!(error = %format_args!("{cause:#}"), "internal error");
            }
            _ => {}
        }
        let body = serde_json::to_vec(&Body {
            error: self.detail(),
        })
        // Two plain strings always serialise; keep a literal fallback anyway
        // rather than a panic on the error path.
        .unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"internal server error"}}"#.to_vec()
        });
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // 413 and 408 leave the rest of the body unread, so the server drops
        // the connection; say so, or a client reuses it and its next request
        // fails. A connection of the probe reserve serves one request only.
        if matches!(
            self,
            ApiError::PayloadTooLarge(_)
                | ApiError::RequestTimeout(_)
                | ApiError::TooManyConnections
        ) {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Both are "come back shortly": say when, so clients back off instead
        // of hammering.
        if let ApiError::RateLimited(info) = &self {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(info.reset_secs.max(1)),
            );
            info.write_headers(res.headers_mut());
        } else if status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_has_the_documented_shape() {
        let res = ApiError::InvalidInput("input \"x\" is missing".into()).into_response();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "invalid_input", "message": "input \"x\" is missing"}})
        );
    }

    #[test]
    fn back_pressure_errors_say_when_to_retry() {
        for (e, status) in [
            (
                ApiError::QueueFull("m".into()),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (ApiError::Overloaded, StatusCode::SERVICE_UNAVAILABLE),
            (
                ApiError::TooManyConnections,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ] {
            let res = e.into_response();
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        }
        let res = ApiError::IdempotencyKeyReused.into_response();
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn answers_that_end_the_connection_say_so() {
        for e in [
            ApiError::PayloadTooLarge(1),
            ApiError::RequestTimeout("slow".into()),
            ApiError::TooManyConnections,
        ] {
            let res = e.into_response();
            assert_eq!(res.headers()[header::CONNECTION], "close");
        }
        let res = ApiError::RequestTimeout("slow".into()).into_response();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        let res = ApiError::Overloaded.into_response();
        assert!(res.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn queue_errors_split_into_unavailable_and_internal() {
        let io =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            ApiError::from(QueueError::Redis(io)).code(),
            ErrorCode::RedisUnavailable
        );
        assert_eq!(
            ApiError::from(QueueError::Corrupt("x".into())).code(),
            ErrorCode::Internal
        );
    }

    #[test]
    fn metric_labels_spell_the_wire_codes() {
        // The schema lists every variant by its serde name (it is derived,
        // so no list is kept by hand); `as_str`, which metric labels and
        // messages use, must spell each the same.
        let schema = serde_json::to_value(<ErrorCode as utoipa::PartialSchema>::schema()).unwrap();
        let names = schema["enum"].as_array().unwrap();
        assert!(names.len() > 30, "{schema}");
        for name in names {
            let code: ErrorCode = serde_json::from_value(name.clone()).unwrap();
            assert_eq!(code.as_str(), name.as_str().unwrap());
        }
    }
}
