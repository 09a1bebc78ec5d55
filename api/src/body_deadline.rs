//! Request-body deadlines: a body that stalls, or trickles in slower than a
//! minimum rate, is cut off instead of holding a request slot for as long as
//! its sender likes.
//!
//! Two rules, checked whenever the handler waits for the next piece of the
//! body (the clock starts at the handler's first read, so time the handler
//! spends before reading, say on Redis, is not charged to the client):
//!
//! ```text
//! bytes ▲                                  ╱ min_bytes_per_sec
//!       │              received  ___......╱
//!       │         ___......-----'       ╱   cut off once `received` falls
//!       │   __--''                    ╱     under the line, or after
//!       │ _'                        ╱       `stall` without a byte
//!       └──────────┬──────────────────────▶ time since the first read
//!                grace
//! ```
//!
//! * **stall**: no byte for [`BodyRules::stall`];
//! * **rate**: after [`BodyRules::grace`], the bytes received must stay
//!   ahead of `min_bytes_per_sec × (elapsed − grace)`. A rate rule rather
//!   than a total timeout, because honest bodies range from a few hundred
//!   bytes to 64 MiB model uploads: the time a body may take grows with its
//!   size, and holding a slot for long costs the sender real bandwidth.
//!
//! A broken rule ends the body with a [`BodyTimeout`] error. The handler sees
//! a failed read; the router's body-deadline layer ([`crate::app`]) then
//! answers 408 `request_timeout` with `Connection: close` whatever the
//! handler made of the failure ([`Outcome`] tells it), and the unread rest of
//! the body makes hyper close the connection after that answer.
//!
//! The same wrapper notes whether the handler read the body to its end
//! ([`Outcome::left_unread`]), which [`crate::conn_reuse`] needs: one
//! wrapper, so a body is boxed and polled through one layer, not two.
//!
//! This module depends on nothing else in the crate, so the extractors can
//! recognise a [`BodyTimeout`] in an error chain ([`find_timeout`]) without
//! an import circle.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The limits a request body must keep (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRules {
    pub stall: Duration,
    /// 0 disables the rate rule.
    pub min_bytes_per_sec: u64,
    pub grace: Duration,
}

/// Which rule a body broke, with the figures for the client's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyTimeout {
    Stalled {
        stall: Duration,
    },
    TooSlow {
        received: u64,
        elapsed: Duration,
        min_bytes_per_sec: u64,
        grace: Duration,
    },
}

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyTimeout::Stalled { stall } => write!(
                f,
                "the request body stalled: no data for {} ms",
                stall.as_millis()
            ),
            BodyTimeout::TooSlow {
                received,
                elapsed,
                min_bytes_per_sec,
                grace,
            } => write!(
                f,
                "the request body arrived too slowly: {received} bytes in {:.1} s; \
                 at least {min_bytes_per_sec} bytes/s are required after the first {} s",
                elapsed.as_secs_f64(),
                grace.as_secs()
            ),
        }
    }
}

impl StdError for BodyTimeout {}

/// What became of a wrapped body, readable after the handler has answered.
/// Holds nothing for a request that declared no body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome(Option<Arc<Seen>>);

#[derive(Debug, Default)]
struct Seen {
    broken: OnceLock<BodyTimeout>,
    read_to_end: AtomicBool,
}

impl Outcome {
    /// The rule the body broke, if it broke one.
    pub(crate) fn timed_out(&self) -> Option<&BodyTimeout> {
        self.0.as_ref()?.broken.get()
    }

    /// The request declared a body and the handler did not read all of it.
    pub(crate) fn left_unread(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| !s.read_to_end.load(Ordering::Acquire))
    }
}

/// A body follows the head: a non-zero Content-Length, or chunked encoding.
pub(crate) fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Wraps the body of `req` in the deadline rules, if the request declares a
/// body at all (GETs and empty bodies pass untouched).
pub(crate) fn wrap(req: Request, rules: BodyRules) -> (Request, Outcome) {
    if !declares_body(req.headers()) {
        return (req, Outcome::default());
    }
    let seen = Arc::new(Seen::default());
    let outcome = Outcome(Some(Arc::clone(&seen)));
    let req = req.map(|inner| {
        Body::new(Deadline {
            inner,
            rules,
            clock: None,
            timer: None,
            seen,
        })
    });
    (req, outcome)
}

/// The [`BodyTimeout`] somewhere in `err`'s source chain, if any: how a
/// failed body read is told apart from a client that sent a broken body.
pub(crate) fn find_timeout<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a BodyTimeout> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Progress of one body, from the handler's first read.
#[derive(Debug, Clone, Copy)]
struct Clock {
    started: Instant,
    last_data: Instant,
    received: u64,
}

impl Clock {
    /// When the body breaks a rule if nothing more arrives, and which rule.
    fn deadline(&self, rules: &BodyRules) -> (Instant, bool) {
        let stall = self.last_data + rules.stall;
        if rules.min_bytes_per_sec == 0 {
            return (stall, false);
        }
        // received / rate: how far past the grace period the bytes so far
        // keep the body ahead of the line.
        let ahead = Duration::from_secs_f64(self.received as f64 / rules.min_bytes_per_sec as f64);
        let rate = self.started + rules.grace + ahead;
        if rate < stall {
            (rate, true)
        } else {
            (stall, false)
        }
    }

    fn broken(&self, rules: &BodyRules, now: Instant, rate: bool) -> BodyTimeout {
        if rate {
            BodyTimeout::TooSlow {
                received: self.received,
                elapsed: now - self.started,
                min_bytes_per_sec: rules.min_bytes_per_sec,
                grace: rules.grace,
            }
        } else {
            BodyTimeout::Stalled { stall: rules.stall }
        }
    }
}

struct Deadline {
    inner: Body,
    rules: BodyRules,
    clock: Option<Clock>,
    // Allocated only once the body first has to wait: a body that arrives
    // in one piece never needs a timer.
    timer: Option<Pin<Box<Sleep>>>,
    seen: Arc<Seen>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.seen.broken.get().is_some() {
            return Poll::Ready(None);
        }
        let clock = this.clock.get_or_insert_with(|| {
            let now = Instant::now();
            Clock {
                started: now,
                last_data: now,
                received: 0,
            }
        });
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.seen.read_to_end.store(true, Ordering::Release);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    clock.received += data.len() as u64;
                    clock.last_data = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let (at, rate) = clock.deadline(&this.rules);
                let now = Instant::now();
                if now < at {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                let broken = clock.broken(&this.rules, Instant::now(), rate);
                let _ = this.seen.broken.set(broken.clone());
                Poll::Ready(Some(Err(axum::Error::new(broken))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.seen.broken.get().is_some() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
    use http_body_util::BodyExt;

    const RULES: BodyRules = BodyRules {
        stall: Duration::from_secs(2),
        min_bytes_per_sec: 100,
        grace: Duration::from_secs(1),
    };

    /// A request whose body is fed through the returned sender.
    fn streaming(declared: usize) -> (Request, tokio::sync::mpsc::Sender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        });
        let body = Body::new(http_body_util::StreamBody::new(stream));
        let req = Request::post("/")
            .header(header::CONTENT_LENGTH, declared)
            .body(body)
            .unwrap();
        (req, tx)
    }

    async fn read_all(req: Request) -> Result<Bytes, axum::Error> {
        req.into_body().collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_up_is_untouched() {
        let (req, tx) = streaming(300);
        let (req, outcome) = wrap(req, RULES);
        let feed = tokio::spawn(async move {
            for _ in 0..3 {
                // 100 bytes a second: exactly the minimum rate.
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Bytes::from(vec![b'x'; 100])).await.unwrap();
            }
        });
        let body = read_all(req)
            .await
            .expect("a body at the minimum rate passes");
        feed.await.unwrap();
        assert_eq!(body.len(), 300);
        assert!(outcome.timed_out().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_off_once_it_falls_behind_the_rate_line() {
        let (req, tx) = streaming(10_000);
        let (req, outcome) = wrap(req, RULES);
        let started = Instant::now();
        let feed = tokio::spawn(async move {
            // 20 bytes a second, a fifth of the minimum.
            while tx.send(Bytes::from_static(b"xx")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let err = read_all(req).await.expect_err("too slow");
        let took = started.elapsed();
        // Line: 100 × (t − 1) bytes; the client has 20 × t: it falls behind
        // at t = 1.25 s.
        assert!(
            took >= Duration::from_millis(1200) && took <= Duration::from_millis(1400),
            "{took:?}"
        );
        assert!(matches!(
            find_timeout(&err),
            Some(BodyTimeout::TooSlow {
                min_bytes_per_sec: 100,
                ..
            })
        ));
        assert!(matches!(
            outcome.timed_out(),
            Some(BodyTimeout::TooSlow { .. })
        ));
        feed.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_off_after_the_stall_timeout() {
        let rules = BodyRules {
            min_bytes_per_sec: 0,
            ..RULES
        };
        let (req, tx) = streaming(10_000);
        let (req, outcome) = wrap(req, rules);
        tx.send(Bytes::from(vec![b'x'; 5_000])).await.unwrap();
        let started = Instant::now();
        let err = read_all(req).await.expect_err("stalled");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            find_timeout(&err),
            Some(&BodyTimeout::Stalled {
                stall: Duration::from_secs(2)
            })
        );
        assert!(outcome.timed_out().is_some());
        assert!(
            err.to_string().contains("stalled") || find_timeout(&err).is_some(),
            "{err}"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn requests_without_a_body_are_not_wrapped() {
        let req = Request::get("/").body(Body::empty()).unwrap();
        let (req, outcome) = wrap(req, RULES);
        assert!(read_all(req).await.unwrap().is_empty());
        assert!(outcome.timed_out().is_none());
    }

    #[test]
    fn messages_name_the_rule_and_its_figures() {
        let slow = BodyTimeout::TooSlow {
            received: 50,
            elapsed: Duration::from_millis(1500),
            min_bytes_per_sec: 4096,
            grace: Duration::from_secs(1),
        };
        let text = slow.to_string();
        assert!(
            text.contains("50 bytes in 1.5 s") && text.contains("4096 bytes/s"),
            "{text}"
        );
        let stalled = BodyTimeout::Stalled {
            stall: Duration::from_millis(800),
        };
        assert!(stalled.to_string().contains("800 ms"));
    }
}
