//! Every ONNX Runtime run is bounded in time and can be stopped: one thread
//! per process watches the runs in flight and calls
//! [`RunOptions::terminate`] on a run that passed `--max-run-ms` or whose
//! job a client canceled. ONNX Runtime checks that flag between kernels (a
//! `Loop` checks it on every iteration), so the run returns an error soon
//! after and the slot is free again; which of the two stopped it is read
//! from the [`Watch`], never guessed from the error text.
//!
//! ```text
//!  run ── watch(options, limit, cancel flags) ─▶ Watch   (registered; the thread is woken)
//!      ── session.run_with_options(…, options)            (terminated if late or canceled)
//!      ── watch.stopped() → None | TimedOut | Canceled    (drop: unregistered)
//! ```
//!
//! The thread sleeps until the nearest deadline; while a run is in flight it
//! also wakes every [`CANCEL_POLL`] to look at the cancel flags, which the
//! lease renewal sets from Redis (see [`crate::consumer`]). A single kernel
//! cannot be interrupted: its time is bounded by its inputs' sizes, which the
//! API bounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ort::session::RunOptions;

/// How often cancel flags are looked at while runs are in flight.
pub(crate) const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Why a run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    TimedOut,
    Canceled,
}

const RUNNING: u8 = 0;
const TIMED_OUT: u8 = 1;
const CANCELED: u8 = 2;

/// A job's cancel flag: set when a client cancels it while it runs.
pub(crate) type CancelFlag = Arc<AtomicBool>;

struct Watched {
    deadline: Instant,
    options: Arc<RunOptions>,
    cancels: Vec<CancelFlag>,
    state: Arc<AtomicU8>,
}

#[derive(Default)]
struct State {
    runs: HashMap<u64, Watched>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The process's watchdog (see the module docs).
#[derive(Clone)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

/// One run under watch; unregistered when dropped.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    id: u64,
    state: Arc<AtomicU8>,
}

impl Watch {
    /// Whether, and why, the watchdog stopped the run.
    pub(crate) fn stopped(&self) -> Option<Stopped> {
        match self.state.load(Ordering::Acquire) {
            TIMED_OUT => Some(Stopped::TimedOut),
            CANCELED => Some(Stopped::Canceled),
            _ => None,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut st = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.runs.remove(&self.id);
    }
}

impl Watchdog {
    /// The process's watchdog, started on first use.
    pub(crate) fn global() -> &'static Watchdog {
        static DOG: OnceLock<Watchdog> = OnceLock::new();
        DOG.get_or_init(Watchdog::start)
    }

    fn start() -> Watchdog {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("run-watchdog".into())
            .spawn(move || watch_loop(&thread));
        if let Err(error) = spawned {
            // Runs still work, only unbounded: say so loudly.
            tracing::error!(%error, "cannot start the run watchdog; inference runs have no time limit");
        }
        Watchdog { shared }
    }

    /// Watches a run: `options` is terminated once `limit` has passed or any
    /// of `cancels` is set (at once if one already is).
    pub(crate) fn watch(
        &self,
        options: Arc<RunOptions>,
        limit: Duration,
        cancels: Vec<CancelFlag>,
    ) -> Watch {
        let state = Arc::new(AtomicU8::new(RUNNING));
        let mut st = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let id = st.next_id;
        st.next_id += 1;
        st.runs.insert(
            id,
            Watched {
                deadline: Instant::now() + limit,
                options,
                cancels,
                state: Arc::clone(&state),
            },
        );
        drop(st);
        self.shared.wake.notify_one();
        Watch {
            shared: Arc::clone(&self.shared),
            id,
            state,
        }
    }
}

fn watch_loop(shared: &Shared) {
    let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        let mut nearest: Option<Instant> = None;
        for w in st.runs.values() {
            if w.state.load(Ordering::Acquire) != RUNNING {
                continue;
            }
            let why = if w.cancels.iter().any(|c| c.load(Ordering::Acquire)) {
                Some(CANCELED)
            } else if now >= w.deadline {
                Some(TIMED_OUT)
            } else {
                None
            };
            match why {
                Some(code) => {
                    w.state.store(code, Ordering::Release);
                    if let Err(error) = w.options.terminate() {
                        tracing::error!(%error, "cannot terminate an inference run");
                    }
                }
                None => nearest = Some(nearest.map_or(w.deadline, |n| n.min(w.deadline))),
            }
        }
        let wait = match nearest {
            Some(deadline) => deadline.saturating_duration_since(now).min(CANCEL_POLL),
            None => Duration::from_secs(3600),
        };
        st = shared
            .wake
            .wait_timeout(st, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// What bounds one job's run, from the worker's flags (`--max-run-ms`,
/// `--max-output-elements`, `--max-result-bytes`). Process-wide, like the
/// watchdog: every model of the process runs under the same limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunLimits {
    pub max_run: Duration,
    /// Elements of all outputs of one job's run, checked before they are
    /// copied out of ONNX Runtime.
    pub max_output_elements: usize,
    /// The job's result JSON, checked while it is encoded.
    pub max_result_bytes: usize,
}

impl Default for RunLimits {
    fn default() -> RunLimits {
        RunLimits {
            max_run: Duration::from_millis(30_000),
            max_output_elements: 4 << 20,
            max_result_bytes: 16 << 20,
        }
    }
}

static LIMITS: OnceLock<RunLimits> = OnceLock::new();

/// Sets the process's run limits; the first call wins (at start-up).
pub(crate) fn set_limits(limits: RunLimits) {
    if LIMITS.set(limits).is_err() && LIMITS.get() != Some(&limits) {
        tracing::warn!("run limits were set already; keeping the first ones");
    }
}

/// The process's run limits ([`RunLimits::default`] until set).
pub(crate) fn limits() -> RunLimits {
    *LIMITS.get_or_init(RunLimits::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Arc<RunOptions> {
        crate::runtime::test_env();
        Arc::new(RunOptions::new().expect("run options"))
    }

    #[test]
    fn a_late_run_is_stopped_as_timed_out_and_a_canceled_one_as_canceled() {
        let dog = Watchdog::global();
        let late = dog.watch(options(), Duration::from_millis(50), Vec::new());
        let flag: CancelFlag = Arc::new(AtomicBool::new(false));
        let canceled = dog.watch(options(), Duration::from_secs(60), vec![Arc::clone(&flag)]);
        let on_time = dog.watch(options(), Duration::from_secs(60), Vec::new());
        flag.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (late.stopped().is_none() || canceled.stopped().is_none())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(late.stopped(), Some(Stopped::TimedOut));
        assert_eq!(canceled.stopped(), Some(Stopped::Canceled));
        assert_eq!(on_time.stopped(), None);
    }
}
