//! Load markers around in-process loads of registry versions, and the
//! quarantine of versions whose loads killed a worker
//! ([`shared::queue::loading`] holds the Redis side). What this module owns
//! is the worker's half: keeping its own marker fresh while a load runs,
//! and quarantining other workers' stale ones.
//!
//! The marker is written before the bytes are read and refreshed every
//! [`REFRESH_EVERY`] from the async side while the blocking load runs, so a
//! live worker's marker never goes stale however long its load takes; a
//! dead one's stops being refreshed, and any other worker that finds it
//! older than `--load-stale-ms` quarantines the version.

use std::time::Duration;

use shared::queue::QueueError;
use shared::queue::loading::{self, Quarantine};
use shared::redis_conn::Pool;

use super::{LoadError, ModelStore};

/// How often a running load refreshes its marker.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The error code of a quarantined version.
pub const CODE: &str = "model_load_crashed";

/// Runs `load` under this worker's marker for `model` `number`. Without
/// Redis there is no marker, and no load either (the bytes come from it).
pub(super) async fn guarded<T>(
    store: &ModelStore,
    pool: &Pool,
    model: &str,
    number: u32,
    load: impl Future<Output = Result<T, LoadError>>,
) -> Result<T, LoadError> {
    let consumer = &store.settings.consumer;
    let mark = || async {
        let mut conn = pool.get();
        loading::mark(&mut conn, &store.keys, consumer, model, number).await
    };
    mark().await?;
    let refresh = async {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            if let Err(error) = mark().await {
                tracing::warn!(model, version = number, %error, "cannot refresh the load marker");
            }
        }
    };
    let out = tokio::select! {
        out = load => out,
        _ = refresh => unreachable_refresh(),
    };
    let unmarked = async {
        let mut conn = pool.get();
        loading::unmark(&mut conn, &store.keys, consumer).await
    }
    .await;
    if let Err(error) = unmarked {
        // Left behind, it would get a good version quarantined.
        tracing::error!(model, version = number, %error, "cannot remove the load marker");
    }
    out
}

fn unreachable_refresh<T>() -> Result<T, LoadError> {
    Err(LoadError::Queue(QueueError::Corrupt(
        "the marker refresh loop ended".to_owned(),
    )))
}

/// Quarantines the versions of other workers' stale markers; returns how
/// many it quarantined.
pub async fn sweep(store: &ModelStore, pool: &Pool) -> Result<usize, QueueError> {
    let mut conn = pool.get();
    let keys = &store.keys;
    let stale_ms = u64::try_from(store.settings.load_stale.as_millis()).unwrap_or(u64::MAX);
    let mut quarantined = 0;
    for m in loading::others(&mut conn, keys, &store.settings.consumer).await? {
        let error = format!(
            "a worker died while loading this version (no sign of life for over {} s); it is not loaded again",
            store.settings.load_stale.as_secs_f64()
        );
        match loading::quarantine(&mut conn, keys, &m, stale_ms, &error, CODE).await? {
            Quarantine::Quarantined => {
                quarantined += 1;
                tracing::error!(model = %m.model, version = m.version, dead_worker = %m.consumer, "model version quarantined: its worker died while loading it");
            }
            Quarantine::Dropped => {
                tracing::info!(model = %m.model, version = m.version, dead_worker = %m.consumer, "stale load marker removed");
            }
            Quarantine::Fresh | Quarantine::Changed => {}
        }
    }
    Ok(quarantined)
}
