//! Load shedding: a fixed number of request slots (`--max-concurrent-requests`).
//! A request that finds none free is answered 503 `overloaded` at once, with
//! `Retry-After`, instead of queueing inside the process where it would only
//! add latency to everything else and memory to the process.
//!
//! Only tenant routes pass through here, after authentication (the router
//! mounts this layer inside [`crate::auth::authenticate`]), so the caller's
//! [`Tenant`] is known. Health, readiness and metrics are in a router of
//! their own and never take a slot: an orchestrator must be able to tell
//! "busy" from "dead" exactly when the API is busiest.

use axum::Extension;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use shared::model::valid_model_name;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::metrics::{UNKNOWN_MODEL, count_rejection};
use crate::routes;
use crate::state::AppState;

pub async fn shed(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    req: Request,
    next: Next,
) -> Response {
    // Owned, so the permit lives exactly as long as the handler runs.
    let Ok(_permit) = state.request_slots().clone().try_acquire_owned() else {
        let err = ApiError::Overloaded;
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        if route == Some(routes::PREDICT) {
            count_rejection(model_label(&state, &tenant, req.uri().path()), &err);
        }
        return err.into_response();
    };
    next.run(req).await
}

/// The caller's model of a predict path, by the name Redis knows it by, if
/// the API knows it; otherwise [`UNKNOWN_MODEL`] (a shed request is not
/// worth a Redis lookup).
fn model_label(state: &AppState, tenant: &Tenant, path: &str) -> SharedString {
    let model = path
        .strip_prefix("/v1/models/")
        .and_then(|rest| rest.strip_suffix("/predict"))
        .filter(|name| valid_model_name(name))
        .map(|name| tenant.model_key(name))
        .filter(|model| state.models().is_cached(model));
    match model {
        Some(model) => SharedString::from(model),
        None => SharedString::const_str(UNKNOWN_MODEL),
    }
}
