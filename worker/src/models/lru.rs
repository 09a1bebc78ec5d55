//! The loaded set: registry versions with an ONNX Runtime session, bounded
//! by count and by estimated memory, least recently used out first. What
//! this module owns is the bound; which versions are served is
//! [`super`]'s.
//!
//! Dropping a session here only drops the cache's `Arc`: a batch that took
//! it keeps it alive until it finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::Backend;

/// Memory of one loaded version, estimated from its ONNX size: ONNX
/// Runtime keeps the initializers (about the file's size) plus a fixed
/// overhead per session (allocator arenas, kernels, the graph).
/// Measured on this project's models (README, "Untrusted models").
pub fn estimate(onnx_bytes: u64) -> u64 {
    const PER_SESSION: u64 = 2 << 20;
    onnx_bytes.saturating_mul(2).saturating_add(PER_SESSION)
}

type Key = (String, u32);

struct Entry {
    model: Arc<dyn Backend>,
    bytes: u64,
    used: u64,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    entries: HashMap<Key, Entry>,
    bytes: u64,
}

/// See the module docs.
pub struct Loaded {
    inner: Mutex<Inner>,
    /// One async lock per version being loaded, so two batches wanting it
    /// load it once.
    gates: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    max_models: usize,
    max_bytes: u64,
}

impl Loaded {
    pub fn new(max_models: usize, max_bytes: u64) -> Loaded {
        Loaded {
            inner: Mutex::new(Inner::default()),
            gates: Mutex::new(HashMap::new()),
            max_models,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session, marked as just used.
    pub fn get(&self, model: &str, number: u32) -> Option<Arc<dyn Backend>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.entries.get_mut(&(model.to_owned(), number))?;
        e.used = tick;
        Some(Arc::clone(&e.model))
    }

    /// Whether a version of `bytes` fits without unloading anything.
    pub fn has_room(&self, bytes: u64) -> bool {
        let inner = self.lock();
        inner.entries.len() < self.max_models && inner.bytes.saturating_add(bytes) <= self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gate of one version's load (see [`Loaded::gates`]).
    pub fn gate(&self, model: &str, number: u32) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        // Gates nobody holds or waits for are dropped as new ones come.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        Arc::clone(gates.entry((model.to_owned(), number)).or_default())
    }

    /// Adds a session of `onnx_bytes` and unloads the least recently used
    /// others until the bounds hold again (the new one always stays).
    /// Returns what was unloaded.
    pub fn insert(
        &self,
        model: &str,
        number: u32,
        session: Arc<dyn Backend>,
        onnx_bytes: u64,
    ) -> Vec<Key> {
        let mut inner = self.lock();
        inner.tick += 1;
        let key = (model.to_owned(), number);
        let bytes = estimate(onnx_bytes);
        let entry = Entry {
            model: session,
            bytes,
            used: inner.tick,
        };
        if let Some(old) = inner.entries.insert(key.clone(), entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        let mut evicted = Vec::new();
        while inner.entries.len() > self.max_models
            || (inner.bytes > self.max_bytes && inner.entries.len() > 1)
        {
            let Some(oldest) = inner
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
            evicted.push(oldest);
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::JobFailure;
    use shared::model::ModelInfo;
    use shared::tensor::Tensor;

    struct Fake(ModelInfo);

    impl Backend for Fake {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn run(
            &self,
            _: &[Tensor],
            _: &crate::backend::RunControl<'_>,
        ) -> Result<Vec<Tensor>, JobFailure> {
            Ok(Vec::new())
        }
    }

    fn fake() -> Arc<dyn Backend> {
        Arc::new(Fake(ModelInfo {
            name: "m".into(),
            version: "1".into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            updated_at_ms: 0,
        }))
    }

    #[test]
    fn the_least_recently_used_go_first_and_running_holders_keep_theirs() {
        let l = Loaded::new(2, u64::MAX);
        assert!(l.insert("a", 1, fake(), 10).is_empty());
        assert!(l.insert("b", 1, fake(), 10).is_empty());
        let held = l.get("a", 1).unwrap();
        assert_eq!(l.insert("c", 1, fake(), 10), vec![("b".to_owned(), 1)]);
        assert!(l.get("b", 1).is_none());
        assert_eq!(l.insert("d", 1, fake(), 10), vec![("a".to_owned(), 1)]);
        // The evicted session lives on in whoever holds it.
        assert_eq!(held.info().name, "m");
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn the_memory_bound_evicts_but_keeps_the_newest() {
        let one = estimate(1000);
        let l = Loaded::new(100, one * 2);
        l.insert("a", 1, fake(), 1000);
        l.insert("a", 2, fake(), 1000);
        assert!(l.has_room(0));
        assert!(!l.has_room(one));
        assert_eq!(l.insert("a", 3, fake(), 1000), vec![("a".to_owned(), 1)]);
        // Alone over the bound: kept anyway (a job needs it).
        assert_eq!(l.insert("big", 1, fake(), one * 10).len(), 2);
        assert_eq!(l.len(), 1);
    }
}
