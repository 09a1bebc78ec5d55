//! `GET /healthz` (the process is up) and `GET /readyz` (it can reach Redis,
//! so it can accept and serve jobs).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use shared::QueueError;

use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Response {
    json(r#"{"status":"ok"}"#)
}

/// Bounded by the connection budget plus one response timeout.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let ping = async {
        let mut conn = state.conn();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(QueueError::from)
    };
    match ping.await {
        Ok(()) => Ok(json(r#"{"status":"ready"}"#)),
        // Whatever the cause, the answer to "can you serve?" is no.
        Err(e) => Err(ApiError::RedisUnavailable(e)),
    }
}

fn json(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
