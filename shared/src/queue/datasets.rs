//! Training datasets: CSV files uploaded with `PUT /v1/datasets/{name}` and
//! read by `retrain` jobs when they start.
//!
//! # Keys (see [`super::keys`])
//!
//! * `{ns}:dataset:{name}` (hash): field `csv` holds the bytes exactly as
//!   uploaded, field `meta` a [`DatasetMeta`] JSON (what the API found when
//!   it parsed the file: rows, columns, hash), field `size` the byte count
//!   its tenant's usage holds for it ([`super::usage`]).
//! * `{ns}:datasets` (set): every stored name, so listing is one SMEMBERS
//!   instead of a keyspace scan.
//!
//! Names are tenant-qualified like model names (`{tenant}~{name}`; plain for
//! the default tenant). A dataset stays until it is deleted: it is an input
//! an ML engineer manages, not a job artefact. Replacing or deleting one
//! does not affect a retrain job that already read it; a job records the
//! SHA-256 of the bytes it trained on.

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use super::QueueError;
use super::keys::Keys;
use super::scripts::{DATASET_DELETE, DATASET_PUT};
use super::usage::OverQuota;
use crate::model::tenant_of;

const FIELD_CSV: &str = "csv";
const FIELD_META: &str = "meta";

/// What is known about a stored dataset without reading its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// SHA-256 of the CSV bytes, hex.
    pub sha256: String,
    pub size: u64,
    /// Data rows (the header not counted).
    pub rows: u64,
    /// Column names, in file order.
    pub columns: Vec<String>,
    pub created_at_ms: i64,
}

/// Bounds on a tenant's datasets; 0 means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatasetQuota {
    pub max_datasets: u64,
    pub max_bytes: u64,
}

/// What [`put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    Replaced,
    /// Nothing was written: the tenant would go past a quota.
    OverQuota(OverQuota),
}

/// Stores (or replaces) a dataset within its tenant's `quota`.
pub async fn put(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    name: &str,
    csv: &[u8],
    meta: &DatasetMeta,
    quota: DatasetQuota,
) -> Result<Stored, QueueError> {
    let meta_json = serde_json::to_string(meta)
        .map_err(|e| QueueError::Corrupt(format!("encoding dataset metadata: {e}")))?;
    let reply: Vec<String> = DATASET_PUT
        .key(keys.dataset(name))
        .key(keys.datasets())
        .key(keys.dataset_usage(tenant_of(name)))
        .arg(csv)
        .arg(meta_json)
        .arg(csv.len())
        .arg(name)
        .arg(quota.max_datasets)
        .arg(quota.max_bytes)
        .invoke_async(conn)
        .await?;
    match reply.as_slice() {
        [tag] if tag == "created" => Ok(Stored::Created),
        [tag] if tag == "replaced" => Ok(Stored::Replaced),
        [tag, field, used, limit] if tag == "quota" => Ok(Stored::OverQuota(
            OverQuota::from_reply(field, used, limit)?,
        )),
        other => Err(QueueError::Corrupt(format!(
            "dataset put script answered {other:?}"
        ))),
    }
}

fn parse_meta(name: &str, json: &str) -> Result<DatasetMeta, QueueError> {
    serde_json::from_str(json)
        .map_err(|e| QueueError::Corrupt(format!("dataset {name} has corrupt metadata: {e}")))
}

/// A dataset's metadata; `None` if there is no such dataset.
pub async fn meta(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    name: &str,
) -> Result<Option<DatasetMeta>, QueueError> {
    let json: Option<String> = redis::cmd("HGET")
        .arg(keys.dataset(name))
        .arg(FIELD_META)
        .query_async(conn)
        .await?;
    json.map(|j| parse_meta(name, &j)).transpose()
}

/// A dataset's bytes and metadata; `None` if there is no such dataset.
pub async fn get(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    name: &str,
) -> Result<Option<(Vec<u8>, DatasetMeta)>, QueueError> {
    let (csv, json): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
        .arg(keys.dataset(name))
        .arg(FIELD_CSV)
        .arg(FIELD_META)
        .query_async(conn)
        .await?;
    match (csv, json) {
        (Some(csv), Some(json)) => Ok(Some((csv, parse_meta(name, &json)?))),
        _ => Ok(None),
    }
}

/// Deletes a dataset; returns false if there was none.
pub async fn delete(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    name: &str,
) -> Result<bool, QueueError> {
    let deleted: i64 = DATASET_DELETE
        .key(keys.dataset(name))
        .key(keys.datasets())
        .key(keys.dataset_usage(tenant_of(name)))
        .arg(name)
        .invoke_async(conn)
        .await?;
    Ok(deleted > 0)
}

/// Every stored dataset name for which `keep` holds, sorted, with its
/// metadata (names whose hash vanished are skipped).
pub async fn list(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, DatasetMeta)>, QueueError> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.datasets())
        .query_async(conn)
        .await?;
    names.retain(|n| keep(n));
    names.sort();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for n in &names {
        pipe.hget(keys.dataset(n), FIELD_META);
    }
    let metas: Vec<Option<String>> = pipe.query_async(conn).await?;
    names
        .into_iter()
        .zip(metas)
        .filter_map(|(n, m)| m.map(|m| (n, m)))
        .map(|(n, m)| parse_meta(&n, &m).map(|meta| (n, meta)))
        .collect()
}
