//! What one connection is doing, and when it has waited too long.
//!
//! A connection is always in one of three states:
//!
//! ```text
//!            accept
//!              │
//!              ▼          first byte of a head           head complete
//!   ┌─▶ Waiting{Idle} ───────────────────────▶ Waiting{Head} ──────────▶ Busy
//!   │   (kept alive, no      Waiting{Head}      (head arriving)           (a request
//!   │    request)            at accept                                     is served)
//!   │                                                                        │
//!   └──────────────────────────── response handed to hyper ─────────────────┘
//! ```
//!
//! and [`watch`] closes it when a waiting state lasts too long:
//!
//! * **header read timeout**: in `Waiting{Head}`, counted from accept for
//!   the first request (a client connects to send one), and from the first
//!   byte for every later one. A slowloris client sending its head a byte at
//!   a time is cut off here, whatever its pace.
//! * **idle timeout**: in `Waiting{Idle}`, after a response, until the first
//!   byte of the next request. Longer than the header timeout, so proxies
//!   and clients can pool connections.
//! * `Busy` has no timer here: a request in progress is bounded by the
//!   body rules ([`crate::body_deadline`]), the Redis timeouts and
//!   `--max-wait-secs`.
//!
//! Why not hyper's `header_read_timeout`: its timer starts whenever the
//! connection waits for a head, i.e. also while a kept-alive connection
//! idles, so it can only be one figure for both. Here the two are distinct,
//! and hyper's own timer stays off.
//!
//! The states are fed by [`Watched`] (the socket: bytes read) and
//! [`Activity::begin_request`] (the service: a head was parsed, and the
//! response is ready). On shutdown, a connection in `Waiting` that has not
//! received a byte of a next head closes at once ([`Closed::Shutdown`]);
//! any other is left to finish its request.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The two limits of [`watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// Why [`watch`] gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The `phase` label: `header` or `idle`.
    Timeout(&'static str),
    /// The server is stopping and the connection had no request.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting {
        since: Instant,
        /// Bytes of the next head have arrived.
        head: bool,
        /// After a response (idle timeout until the first byte), rather
        /// than at accept (header timeout from the start).
        kept_alive: bool,
    },
    Busy(u32),
}

/// The shared state of one connection.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State::Waiting {
                since: Instant::now(),
                head: false,
                kept_alive: false,
            }),
            changed: Notify::new(),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The socket delivered bytes.
    fn bytes_read(&self) {
        let started = self.with(|s| match *s {
            State::Waiting {
                head: false,
                kept_alive,
                since,
            } => {
                // A later request's header timeout counts from its first
                // byte; the first request's has counted since accept.
                let since = if kept_alive { Instant::now() } else { since };
                *s = State::Waiting {
                    since,
                    head: true,
                    kept_alive,
                };
                true
            }
            _ => false,
        });
        if started {
            self.changed.notify_one();
        }
    }

    /// A head was parsed and its request is being served; the guard marks
    /// the end (the response handed to hyper, or the request dropped).
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.with(|s| {
            *s = match *s {
                State::Busy(n) => State::Busy(n + 1),
                State::Waiting { .. } => State::Busy(1),
            }
        });
        RequestGuard(Arc::clone(self))
    }

    fn end_request(&self) {
        self.with(|s| {
            *s = match *s {
                State::Busy(n) if n > 1 => State::Busy(n - 1),
                _ => State::Waiting {
                    since: Instant::now(),
                    head: false,
                    kept_alive: true,
                },
            }
        });
        self.changed.notify_one();
    }

    /// When the current state times out, and as which phase; `None` while
    /// a request is served.
    fn deadline(&self, t: &Timeouts) -> Option<(Instant, &'static str)> {
        self.with(|s| match *s {
            State::Busy(_) => None,
            State::Waiting {
                since,
                head,
                kept_alive,
            } => Some(if head || !kept_alive {
                (since + t.header, "header")
            } else {
                (since + t.idle, "idle")
            }),
        })
    }

    /// No request is served and none has started arriving.
    fn is_quiet(&self) -> bool {
        self.with(|s| matches!(*s, State::Waiting { head: false, .. }))
    }
}

/// Ends a request of an [`Activity`] on drop.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// Resolves when the connection must be closed: a timeout (see the module
/// docs), or `stop` turning true while the connection is quiet. Never
/// resolves while a request is being served.
pub async fn watch(activity: &Activity, t: Timeouts, mut stop: watch::Receiver<bool>) -> Closed {
    let mut stopping = false;
    loop {
        // Registered before the state is read: a change in between is kept
        // as a permit and wakes the select below at once.
        let changed = activity.changed.notified();
        if stopping && activity.is_quiet() {
            return Closed::Shutdown;
        }
        let deadline = activity.deadline(&t);
        if let Some((at, phase)) = deadline
            && at <= Instant::now()
        {
            return Closed::Timeout(phase);
        }
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = changed => {}
            // A dropped sender means nobody can tell us to stop any more:
            // the process is on its way out, so treat it as the signal.
            r = stop.wait_for(|s| *s), if !stopping => {
                let _ = r;
                stopping = true;
            }
        }
    }
}

/// A socket that reports reads to its connection's [`Activity`], and holds
/// `H` as long as it lives.
pub struct Watched<T, H = ()> {
    inner: T,
    activity: Arc<Activity>,
    /// What must live as long as the socket, also once a WebSocket upgrade
    /// took it out of its HTTP connection (the connection's table slot).
    _hold: H,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Watched<T> {
        Watched {
            inner,
            activity,
            _hold: (),
        }
    }

    /// The same socket, holding `hold` until it is dropped.
    pub fn holding<H>(self, hold: H) -> Watched<T, H> {
        Watched {
            inner: self.inner,
            activity: self.activity,
            _hold: hold,
        }
    }
}

/// Marks a response whose body streams for long (an event stream): its
/// connection counts as busy until the body ends, so neither the idle
/// timeout nor a shutdown's close of quiet connections cuts it.
#[derive(Debug, Clone, Copy)]
pub struct Streaming;

impl<T: AsyncRead + Unpin, H: Unpin> AsyncRead for Watched<T, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin, H: Unpin> AsyncWrite for Watched<T, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(2),
        idle: Duration::from_secs(10),
    };

    fn never_stop() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(false)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_gets_the_header_timeout_from_accept() {
        let a = Activity::new();
        let (_tx, rx) = never_stop();
        let started = Instant::now();
        assert_eq!(watch(&a, T, rx).await, Closed::Timeout("header"));
        assert_eq!(started.elapsed(), T.header);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_head_trickling_in_does_not_extend_its_deadline() {
        let a = Activity::new();
        let (_tx, rx) = never_stop();
        let (client, server) = tokio::io::duplex(64);
        let mut io = Watched::new(server, Arc::clone(&a));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            while tokio::io::AsyncReadExt::read(&mut io, &mut buf)
                .await
                .is_ok_and(|n| n > 0)
            {}
        });
        let writer = tokio::spawn(async move {
            let mut client = client;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if client.write_all(b"G").await.is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        assert_eq!(watch(&a, T, rx).await, Closed::Timeout("header"));
        assert_eq!(started.elapsed(), T.header);
        reader.abort();
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_response_the_idle_timeout_applies_then_the_header_one() {
        let a = Activity::new();
        let (_tx, rx) = never_stop();
        drop(a.begin_request());
        let started = Instant::now();
        assert_eq!(watch(&a, T, rx.clone()).await, Closed::Timeout("idle"));
        assert_eq!(started.elapsed(), T.idle);

        // A next head starting after 3 s has the header timeout from then.
        let a = Activity::new();
        drop(a.begin_request());
        let feeder = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                a.bytes_read();
            })
        };
        let started = Instant::now();
        assert_eq!(watch(&a, T, rx).await, Closed::Timeout("header"));
        assert_eq!(started.elapsed(), Duration::from_secs(3) + T.header);
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_timed_out_and_stops_after_its_request() {
        let a = Activity::new();
        let (tx, rx) = never_stop();
        let guard = a.begin_request();
        let watched = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { watch(&a, T, rx).await })
        };
        tokio::time::sleep(T.idle * 3).await;
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!watched.is_finished(), "a request in flight is never cut");
        drop(guard);
        assert_eq!(watched.await.unwrap(), Closed::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_quiet_connections_at_once_but_not_a_head_in_progress() {
        let (tx, rx) = never_stop();
        tx.send_replace(true);
        let quiet = Activity::new();
        assert_eq!(watch(&quiet, T, rx.clone()).await, Closed::Shutdown);
        let started = Instant::now();
        let arriving = Activity::new();
        arriving.bytes_read();
        // Left to hyper, which serves it and then closes; the header
        // timeout still bounds it.
        assert_eq!(watch(&arriving, T, rx).await, Closed::Timeout("header"));
        assert_eq!(started.elapsed(), T.header);
    }
}
