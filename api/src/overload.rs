//! Load shedding: a fixed number of request slots (`--max-concurrent-requests`).
//! A request that finds none free is answered 503 `overloaded` at once, with
//! `Retry-After`, instead of queueing inside the process where it would only
//! add latency to everything else and memory to the process.
//!
//! Health, readiness and metrics never take a slot: an orchestrator must be
//! able to tell "busy" from "dead" exactly when the API is busiest.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use shared::model::valid_model_name;

use crate::error::ApiError;
use crate::metrics::{UNKNOWN_MODEL, count_rejection};
use crate::routes;
use crate::state::AppState;

pub async fn shed(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if matches!(
        route,
        Some(routes::HEALTHZ | routes::READYZ | routes::METRICS)
    ) {
        return next.run(req).await;
    }
    // Owned, so the permit lives exactly as long as the handler runs.
    let Ok(_permit) = state.request_slots().clone().try_acquire_owned() else {
        let err = ApiError::Overloaded;
        if route == Some(routes::PREDICT) {
            count_rejection(model_label(&state, req.uri().path()), &err);
        }
        return err.into_response();
    };
    next.run(req).await
}

/// The model of a predict path, if it is one the API knows; otherwise
/// [`UNKNOWN_MODEL`] (a shed request is not worth a Redis lookup).
fn model_label(state: &AppState, path: &str) -> SharedString {
    let name = path
        .strip_prefix("/v1/models/")
        .and_then(|rest| rest.strip_suffix("/predict"))
        .filter(|name| valid_model_name(name) && state.models().is_cached(name));
    match name {
        Some(name) => SharedString::from(name.to_owned()),
        None => SharedString::const_str(UNKNOWN_MODEL),
    }
}
