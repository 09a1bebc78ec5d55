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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

pub(crate) async fn close_if_body_unread(req: Request, next: Next) -> Response {
    if !declares_body(req.headers()) {
        return next.run(req).await;
    }
    let read_to_end = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&read_to_end);
    let req = req.map(|inner| Body::new(Tracked { inner, flag }));
    let mut res = next.run(req).await;
    if !read_to_end.load(Ordering::Acquire) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A body follows the head: a non-zero Content-Length, or chunked encoding.
pub(crate) fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The request body, flagging when it has been read to its end.
struct Tracked {
    inner: Body,
    flag: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.flag.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

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
            .layer(axum::middleware::from_fn(close_if_body_unread));
        let ignores = Router::new()
            .route("/", post(|| async { StatusCode::NOT_FOUND }))
            .layer(axum::middleware::from_fn(close_if_body_unread));

        let res = call(&reads, "hello").await;
        assert!(res.headers().get(header::CONNECTION).is_none());
        let res = call(&ignores, "hello").await;
        assert_eq!(res.headers()[header::CONNECTION], "close");
        // Nothing to leave unread.
        let res = call(&ignores, "").await;
        assert!(res.headers().get(header::CONNECTION).is_none());
    }
}
