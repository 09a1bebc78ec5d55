//! The HTTP server: our own accept loop on hyper, in place of `axum::serve`,
//! which sets no timeouts and no connection limits.
//!
//! ```text
//!  accept ──▶ ConnTable::admit(peer ip) ──┬─ refused ──▶ close at once (counted)
//!   (errors: per-connection ones skipped, │
//!    EMFILE & co. back off, no spinning)  ├─ regular ──▶ task: hyper http1 + keep-alive
//!                                         │                + watchdog (header / idle timeouts)
//!                                         └─ overflow ─▶ task: one request, probe router,
//!                                                         short header timeout
//! ```
//!
//! Each connection task runs hyper's HTTP/1 connection, whose socket
//! ([`Watched`]) and service report to the connection's [`Activity`],
//! against [`conn_watch::watch`]: whichever ends first ends the connection.
//! Dropping hyper's connection closes the socket.
//!
//! Shutdown, when `stop` turns true: the accept loop ends and the listener is
//! dropped (new connections are refused); quiet connections close at once
//! (the watchdog); every other connection is told to finish its request and
//! close (hyper's graceful shutdown), and [`serve`] returns once all of them
//! have ([`GracefulShutdown`] counts them). A connection upgraded to a
//! WebSocket leaves hyper: it keeps its table slot (held by its socket) and
//! ends itself when the application state begins the shutdown.
//!
//! A response marked [`Streaming`] (an event stream) keeps its connection
//! busy until its body ends, so the idle timeout does not cut it. The caller bounds that wait
//! (`--shutdown-grace-secs`). Long-polls are woken by the application state,
//! not here.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use shared::metric_names::HTTP_TIMEOUTS;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::conn_limits::{Admission, ConnTable, Slot, TableLimits};
use crate::conn_watch::{self, Activity, Closed, Streaming, Timeouts, Watched};

/// After an accept error that is not about one connection (out of
/// descriptors or memory), the loop waits this long before the next accept:
/// retrying at once would spin on the same error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The header timeout of a probe-reserve connection: probes send their
/// request as soon as they connect, and the reserve must turn over quickly.
pub const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request head (request line and headers); a larger one gets 431.
/// Bounds what a slow head can make the server buffer per connection.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// One listener's server: where it listens, what it serves, its limits.
pub struct Server {
    pub listener: TcpListener,
    /// The `listener` label of its metrics (`public`, `ops`).
    pub name: &'static str,
    pub app: Router,
    /// Served on probe-reserve connections; `None` when the table has no
    /// reserve.
    pub overflow_app: Option<Router>,
    pub limits: TableLimits,
    pub timeouts: Timeouts,
}

/// Serves until `stop` turns true and every connection has finished.
pub async fn serve(server: Server, stop: watch::Receiver<bool>) {
    let Server {
        listener,
        name,
        app,
        overflow_app,
        limits,
        timeouts,
    } = server;
    let table = ConnTable::new(limits, name);
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // Our watchdog times heads (see `conn_watch`); hyper's timer would also
    // run while a kept-alive connection idles.
    http.header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES);
    let mut probe_http = http.clone();
    probe_http.keep_alive(false);
    let probe_timeouts = Timeouts {
        header: timeouts.header.min(PROBE_HEADER_TIMEOUT),
        ..timeouts
    };
    let mut stopped = stop.clone();
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break,
            accepted = next_connection(|| listener.accept(), &mut errors) => accepted,
        };
        let (stream, peer) = accepted;
        let (slot, app, http, timeouts) = match table.admit(peer.ip()) {
            Admission::Regular(slot) => (slot, app.clone(), &http, timeouts),
            Admission::Overflow(slot) => match &overflow_app {
                Some(o) => (slot, o.clone(), &probe_http, probe_timeouts),
                None => continue,
            },
            Admission::Refused(reason) => {
                tracing::debug!(%peer, %reason, listener = name, "connection refused");
                continue;
            }
        };
        let conn = Connection {
            stream,
            slot,
            app,
            http: http.clone(),
            timeouts,
            stop: stop.clone(),
            name,
        };
        tokio::spawn(conn.run(graceful.watcher()));
    }
    // New connections are refused from here on.
    drop(listener);
    graceful.shutdown().await;
}

/// One accepted connection and what it needs to be served.
struct Connection {
    stream: TcpStream,
    // Held for the connection's life: its place in the table.
    slot: Slot,
    app: Router,
    http: http1::Builder,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    name: &'static str,
}

impl Connection {
    async fn run(self, graceful: hyper_util::server::graceful::Watcher) {
        let Connection {
            stream,
            slot,
            app,
            http,
            timeouts,
            stop,
            name,
        } = self;
        // Held for the task's life: `serve` waits for every connection's.
        let _counted = graceful;
        // Small JSON answers: waiting for more to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        // The socket holds the slot: an upgraded one (a WebSocket) outlives
        // this task and stays counted in the table until it closes.
        let io = TokioIo::new(Watched::new(stream, activity.clone()).holding(slot));
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let guard = activity.begin_request();
                let app = app.clone();
                async move {
                    let res = app.oneshot(req.map(Body::new)).await;
                    match res {
                        // An event stream: busy until its body ends.
                        Ok(res) if res.extensions().get::<Streaming>().is_some() => {
                            Ok(res.map(|body| {
                                Body::new(body.map_frame(move |frame| {
                                    let _busy = &guard;
                                    frame
                                }))
                            }))
                        }
                        // The response is hyper's to write now; from here
                        // the connection counts as idle.
                        res => {
                            drop(guard);
                            res
                        }
                    }
                }
            })
        };
        // hyper-util's graceful watcher takes no upgradeable connection, so
        // the graceful close is asked for here when `stop` turns true.
        let conn = http.serve_connection(io, service).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let mut stopping = stop.clone();
        let mut asked = false;
        let served = async {
            loop {
                tokio::select! {
                    res = conn.as_mut() => return res,
                    _ = stopping.wait_for(|s| *s), if !asked => {
                        asked = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        tokio::select! {
            res = served => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, listener = name, "connection ended with an error");
                }
            }
            closed = conn_watch::watch(&activity, timeouts, stop) => {
                if let Closed::Timeout(phase) = closed {
                    metrics::counter!(HTTP_TIMEOUTS, "listener" => name, "phase" => phase)
                        .increment(1);
                }
            }
        }
    }
}

/// Accept errors since the last warning, so a burst is one log line.
#[derive(Default)]
struct AcceptErrors {
    last_warned: Option<Instant>,
    suppressed: u64,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

/// The next connection `accept` yields. Errors about a single connection
/// (reset or aborted before we took it) are skipped; any other (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM) makes the loop wait [`ACCEPT_BACKOFF`], so a
/// process out of descriptors neither spins nor drops the listener, and
/// picks up the queued connections once descriptors are free again.
async fn next_connection<S, F, Fut>(mut accept: F, errors: &mut AcceptErrors) -> (S, SocketAddr)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<(S, SocketAddr)>>,
{
    loop {
        match accept().await {
            Ok(conn) => return conn,
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                let now = Instant::now();
                if errors
                    .last_warned
                    .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
                {
                    tracing::warn!(
                        error = %e,
                        suppressed = errors.suppressed,
                        backoff = ?ACCEPT_BACKOFF,
                        "cannot accept connections; backing off"
                    );
                    errors.last_warned = Some(now);
                    errors.suppressed = 0;
                } else {
                    errors.suppressed += 1;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_the_loop_backs_off_instead_of_spinning() {
        let calls = Cell::new(0u32);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let started = tokio::time::Instant::now();
        let mut errors = AcceptErrors::default();
        let ((), peer) = next_connection(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n <= 20 {
                        Err(io::Error::from_raw_os_error(libc::EMFILE))
                    } else {
                        Ok(((), addr))
                    }
                }
            },
            &mut errors,
        )
        .await;
        assert_eq!(peer, addr);
        assert_eq!(calls.get(), 21);
        // Twenty failures cost twenty back-offs: 2 s, not a busy loop.
        assert_eq!(started.elapsed(), ACCEPT_BACKOFF * 20);
        assert_eq!(errors.suppressed, 19, "one warning for the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_lost_before_accept_is_skipped_at_once() {
        let calls = Cell::new(0u32);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let started = tokio::time::Instant::now();
        let mut errors = AcceptErrors::default();
        next_connection(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n == 1 {
                        Err(io::Error::from(io::ErrorKind::ConnectionAborted))
                    } else {
                        Ok(((), addr))
                    }
                }
            },
            &mut errors,
        )
        .await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(errors.last_warned.is_none());
    }
}
