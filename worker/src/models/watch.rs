//! Keeping the served set in line with the registry: what this module owns
//! is noticing changes (a pub/sub message on the registry channel, or the
//! periodic check as a safety net for missed messages) and asking the store
//! to reconcile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shared::redis_conn::Pool;
use tokio::sync::watch as tokio_watch;

use super::{CHECK_EVERY, ModelStore};

/// Keeps the served set in line with the registry until `stop`: reconciles
/// on every message of the registry channel and every [`CHECK_EVERY`].
/// `on_names_changed` runs after a reconcile that added a model (new
/// streams to read).
pub async fn watch<F>(
    store: Arc<ModelStore>,
    pool: Pool,
    topology: shared::redis_conn::Topology,
    channel: String,
    on_names_changed: F,
    mut stop: tokio_watch::Receiver<bool>,
) where
    F: Fn() + Send + Sync,
{
    // The sink is kept with the stream: the subscription lives as long as
    // both halves.
    let mut subscription: Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> = None;
    // On a cluster any node hears every PUBLISH: try the seed nodes in turn.
    let mut attempt = 0usize;
    let mut next_check = tokio::time::Instant::now();
    loop {
        if subscription.is_none() {
            subscription = subscribe(&topology, attempt, &channel).await;
            attempt = attempt.wrapping_add(1);
        }
        let event = async {
            match subscription.as_mut() {
                Some((_, s)) => s.next().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        let woke_by_event = tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(next_check) => false,
            got = event => {
                if got.is_none() {
                    // The connection dropped: subscribe again next round.
                    subscription = None;
                }
                got.is_some()
            }
        };
        if woke_by_event || tokio::time::Instant::now() >= next_check {
            next_check = tokio::time::Instant::now() + CHECK_EVERY;
            match store.reconcile(&pool).await {
                Ok(true) => on_names_changed(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot check the model registry"),
            }
        }
    }
}

async fn subscribe(
    topology: &shared::redis_conn::Topology,
    attempt: usize,
    channel: &str,
) -> Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let res = async {
        let clients = topology.pubsub_clients()?;
        let Some(client) = clients.get(attempt % clients.len().max(1)) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no node to subscribe on",
            )));
        };
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    match tokio::time::timeout(Duration::from_secs(2), res).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(error)) => {
            tracing::debug!(%error, "cannot subscribe to registry events; relying on the periodic check");
            None
        }
        Err(_) => None,
    }
}
