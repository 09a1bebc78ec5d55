//! The API's local copy of published model signatures, so validating a
//! predict request costs no Redis round trip.
//!
//! A miss falls through to Redis (a model published a moment ago works at
//! once). [`crate::events`] keeps entries fresh: it refreshes one entry per
//! message on the models channel and reloads everything whenever it
//! (re)subscribes, since updates published while it was away are unknown.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use shared::model::ModelInfo;
use shared::queue::ops;
use shared::redis_conn::Conn;
use shared::{Keys, QueueError};

pub struct ModelCache {
    redis: Conn,
    keys: Keys,
    models: RwLock<HashMap<String, Arc<ModelInfo>>>,
}

impl ModelCache {
    pub fn new(redis: Conn, keys: Keys) -> ModelCache {
        ModelCache {
            redis,
            keys,
            models: RwLock::new(HashMap::new()),
        }
    }

    fn cached(&self, name: &str) -> Option<Arc<ModelInfo>> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Whether the model is in the cache, without asking Redis.
    pub fn is_cached(&self, name: &str) -> bool {
        self.cached(name).is_some()
    }

    /// The model's signature, from the cache or else from Redis; `None` when
    /// no worker has published it.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<ModelInfo>>, QueueError> {
        if let Some(info) = self.cached(name) {
            return Ok(Some(info));
        }
        let Some(info) = self.fetch(name).await? else {
            return Ok(None);
        };
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        // A refresh that ran while we were reading is at least as new as what
        // we read: keep it.
        let entry = models
            .entry(info.name.clone())
            .or_insert_with(|| Arc::new(info));
        Ok(Some(Arc::clone(entry)))
    }

    /// Re-reads one model after a worker announced a change.
    pub async fn refresh(&self, name: &str) -> Result<(), QueueError> {
        let info = self.fetch(name).await?;
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        match info {
            Some(info) => {
                models.insert(info.name.clone(), Arc::new(info));
            }
            None => {
                models.remove(name);
            }
        }
        Ok(())
    }

    /// Replaces the whole cache with what Redis holds now.
    pub async fn reload_all(&self) -> Result<usize, QueueError> {
        let mut conn = self.redis.clone();
        let all = ops::list_models(&mut conn, &self.keys).await?;
        drop(conn);
        let fresh: HashMap<String, Arc<ModelInfo>> = all
            .into_iter()
            .map(|m| (m.name.clone(), Arc::new(m)))
            .collect();
        let n = fresh.len();
        *self.models.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(n)
    }

    /// Forgets everything, so lookups go to Redis until the next reload.
    pub fn clear(&self) {
        self.models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    async fn fetch(&self, name: &str) -> Result<Option<ModelInfo>, QueueError> {
        let mut conn = self.redis.clone();
        ops::get_model(&mut conn, &self.keys, name).await
    }
}
