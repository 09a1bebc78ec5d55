//! Who is long-polling which job, so the job-finished listener
//! ([`crate::events`]) can wake exactly those requests instead of every
//! request polling Redis.
//!
//! Protocol for a waiting request (race-free against a finish that happens
//! between the read and the wait):
//!
//! 1. [`Waiters::register`] the job id, keep the [`Registration`];
//! 2. create and `enable` a [`Registration::notified`] future;
//! 3. read the job; return if terminal;
//! 4. await the future (with a deadline), then go to 2.
//!
//! A notification sent after step 2 is never lost: `Notify::notify_waiters`
//! wakes every enabled `Notified`. Dropping the registration removes the
//! entry when it is the job's last waiter, so the map holds only live waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, futures::Notified};
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Waiters {
    jobs: Mutex<HashMap<Uuid, Entry>>,
    closing: AtomicBool,
}

#[derive(Debug)]
struct Entry {
    notify: Arc<Notify>,
    count: usize,
}

impl Waiters {
    pub fn new() -> Waiters {
        Waiters::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single insert, update or remove.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Owned (the registration holds the registry), so an event stream or
    /// a WebSocket session can keep it across awaits in a `'static` task.
    pub fn register(self: &Arc<Self>, id: Uuid) -> Registration {
        let notify = {
            let mut jobs = self.lock();
            let entry = jobs.entry(id).or_insert_with(|| Entry {
                notify: Arc::new(Notify::new()),
                count: 0,
            });
            entry.count += 1;
            Arc::clone(&entry.notify)
        };
        Registration {
            waiters: Arc::clone(self),
            id,
            notify,
        }
    }

    /// Wakes the requests waiting for `id`, if any.
    pub fn wake(&self, id: &Uuid) {
        let notify = self.lock().get(id).map(|e| Arc::clone(&e.notify));
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// Wakes every waiting request so it re-reads its job: after the listener
    /// (re)subscribes, finishes published while it was away are unknown.
    pub fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .lock()
            .values()
            .map(|e| Arc::clone(&e.notify))
            .collect();
        for n in all {
            n.notify_waiters();
        }
    }

    /// Ends all long-polls (graceful shutdown): they answer with the job's
    /// current state instead of holding the server open.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Number of jobs with at least one waiting request.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request's interest in one job; deregisters on drop.
#[derive(Debug)]
pub struct Registration {
    waiters: Arc<Waiters>,
    id: Uuid,
    notify: Arc<Notify>,
}

impl Registration {
    /// A wake-up future; `enable` it (or poll it) before reading the job.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut jobs = self.waiters.lock();
        if let Some(entry) = jobs.get_mut(&self.id) {
            entry.count -= 1;
            if entry.count == 0 {
                jobs.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::time::Duration;

    #[tokio::test]
    async fn enabled_waiter_sees_a_wake_sent_before_it_awaits() {
        let w = Arc::new(Waiters::new());
        let id = Uuid::now_v7();
        let reg = w.register(id);
        let mut n = pin!(reg.notified());
        n.as_mut().enable();
        w.wake(&id);
        tokio::time::timeout(Duration::from_millis(100), n)
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn wake_targets_one_job_and_wake_all_reaches_everyone() {
        let w = Arc::new(Waiters::new());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (ra, rb) = (w.register(a), w.register(b));
        let mut na = pin!(ra.notified());
        let mut nb = pin!(rb.notified());
        na.as_mut().enable();
        nb.as_mut().enable();
        w.wake(&a);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), nb.as_mut())
                .await
                .is_err()
        );
        na.await;
        w.wake_all();
        nb.await;
    }

    #[test]
    fn entries_are_removed_with_their_last_registration() {
        let w = Arc::new(Waiters::new());
        let id = Uuid::now_v7();
        let r1 = w.register(id);
        let r2 = w.register(id);
        assert_eq!(w.len(), 1);
        drop(r1);
        assert_eq!(w.len(), 1);
        drop(r2);
        assert!(w.is_empty());
    }
}
