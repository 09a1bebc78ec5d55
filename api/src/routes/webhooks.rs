//! `GET /v1/webhooks/secret` and `POST /v1/webhooks/secret/rotate`: the
//! caller's webhook signing secret, which its receivers verify calls with
//! (see [`shared::queue::webhooks::secrets`]). The first read creates it; a
//! rotation replaces it and keeps the old one signing (beside the new one)
//! for `--webhook-secret-overlap-secs`, so receivers can switch without
//! missing a call. The secret is the tenant's: no other tenant, and no log
//! line, ever sees it.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::queue::webhooks::secrets::{self, Secrets};
use shared::time::{now_ms, rfc3339_ms};

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::metrics::{redis_failed, redis_op};
use crate::paths;
use crate::queue::Queue;

/// The caller's signing secret.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = WebhookSecret)]
pub(crate) struct SecretBody {
    /// `whsec_` and the base64 of 32 random bytes (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwaSUZm0dvCOE=")]
    secret: String,
    /// Until when the secret it replaced still signs calls too (each call
    /// then carries two `v1,` signatures); `null` when none does.
    #[schema(required = true, format = DateTime)]
    previous_valid_until: Option<String>,
}

impl SecretBody {
    fn of(s: Secrets) -> SecretBody {
        let now = now_ms();
        SecretBody {
            secret: s.current,
            previous_valid_until: s
                .previous
                .filter(|(_, until)| *until > now)
                .map(|(_, until)| rfc3339_ms(until)),
        }
    }
}

#[utoipa::path(
    get,
    path = paths::WEBHOOK_SECRET,
    tag = "webhooks",
    summary = "Read the webhook signing secret",
    description = "The secret the caller's webhook calls are signed with (created on first read).",
    responses((status = 200, description = "The secret", body = SecretBody))
)]
pub(crate) async fn get_secret(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Response, ApiError> {
    let mut conn = queue.conn();
    let s = secrets::get_or_create(&mut conn, queue.keys(), tenant.name())
        .await
        .map_err(redis_failed(redis_op::WEBHOOKS))?;
    Ok(axum::Json(SecretBody::of(s)).into_response())
}

#[utoipa::path(
    post,
    path = paths::WEBHOOK_SECRET_ROTATE,
    tag = "webhooks",
    summary = "Rotate the webhook signing secret",
    description = "Replaces the secret; the old one keeps signing, beside the new one, for `--webhook-secret-overlap-secs` (a day by default).",
    responses((status = 200, description = "The new secret", body = SecretBody))
)]
pub(crate) async fn rotate_secret(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Response, ApiError> {
    let mut conn = queue.conn();
    let overlap_ms = i64::try_from(
        queue
            .policy()
            .webhook_secret_overlap_secs
            .saturating_mul(1000),
    )
    .unwrap_or(i64::MAX / 4);
    let s = secrets::rotate(&mut conn, queue.keys(), tenant.name(), now_ms(), overlap_ms)
        .await
        .map_err(redis_failed(redis_op::WEBHOOKS))?;
    tracing::info!(tenant = tenant.name(), "webhook signing secret rotated");
    Ok(axum::Json(SecretBody::of(s)).into_response())
}
