//! `Connection: close` on every response whose request body was left unread.
//!
//! Many answers are decided before the body matters: an unknown model, a
//! wrong content type or method, a shed request, a GET that happens to carry
//! a body. hyper then cannot reuse the connection (the unread bytes would be
//! parsed as the next request), so it drops it after the response, but
//! without saying so. A keep-alive client then sends its next request on a
//! dead connection and gets a reset instead of an answer, and most clients do
//! not retry a POST. Saying `Connection: close` makes the client open a
//! fresh connection instead.

use axum::http::{HeaderValue, header};
use axum::response::Response;

use crate::body_deadline::Outcome;

/// Says `Connection: close` on `res` when its request's body (as wrapped by
/// [`crate::body_deadline::wrap`]) was left unread.
pub(crate) fn close_if_body_unread(res: &mut Response, body: &Outcome) {
    if body.left_unread() {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::body_deadline::{self, BodyRules};
    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::middleware::Next;
    use axum::routing::post;
    use tower::ServiceExt;

    async fn edge(req: Request, next: Next) -> Response {
        let rules = BodyRules {
            stall: Duration::from_secs(5),
            min_bytes_per_sec: 0,
            grace: Duration::from_secs(1),
        };
        let (req, body) = body_deadline::wrap(req, rules);
        let mut res = next.run(req).await;
        close_if_body_unread(&mut res, &body);
        res
    }

    async fn call(app: &Router, body: &'static str) -> Response {
        let req = Request::post("/")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body))
            .unwrap();
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn only_answers_that_left_the_body_unread_close_the_connection() {
        let reads = Router::new()
            .route("/", post(|b: Bytes| async move { b.len().to_string() }))
            .layer(axum::middleware::from_fn(edge));
        let ignores = Router::new()
            .route("/", post(|| async { StatusCode::NOT_FOUND }))
            .layer(axum::middleware::from_fn(edge));

        let res = call(&reads, "hello").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get(header::CONNECTION).is_none());
        let res = call(&ignores, "hello").await;
        assert_eq!(res.headers()[header::CONNECTION], "close");
        // Nothing to leave unread.
        let res = call(&ignores, "").await;
        assert!(res.headers().get(header::CONNECTION).is_none());
    }
}
