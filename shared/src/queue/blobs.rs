//! The operator's sweep of model bytes no version references
//! (`jobctl sweep-blobs`): what this module owns is bringing blobs stored
//! before reference counts existed under the counts of
//! [`super::registry`], and deleting those nothing holds.
//!
//! 1. Every version that is not `invalid` and holds no counted reference
//!    yet (no `ref:{n}` field) is given one ("adopted"), one script per
//!    version that re-checks the version first.
//! 2. Every `{ns}:blob:{sha}` whose count is then 0 or absent is deleted,
//!    by a script that re-checks the count, so bytes registered while the
//!    sweep runs (which count themselves in the same step) are never lost.
//! 3. The namespace is marked counted ([`super::registry::COUNTED`]): from
//!    then on the registry scripts delete bytes whose count reaches 0.
//!
//! With `dry_run` nothing is written: the report lists what would go.

use std::collections::HashMap;

use super::QueueError;
use super::keys::Keys;
use super::paging::scan_keys;
use super::registry::{COUNTED, VersionStatus, parse_version};
use super::scripts::{ADOPT, DROP_UNREFERENCED};

/// What a sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Versions that held bytes without a counted reference.
    pub adopted: usize,
    pub blobs_seen: usize,
    /// Unreferenced blobs: sha256 and size in bytes.
    pub unreferenced: Vec<(String, u64)>,
    /// Deleted (0 on a dry run).
    pub deleted: usize,
}

/// Runs the sweep (see the module docs).
pub async fn sweep(
    conn: &mut impl crate::redis_conn::Routed,
    keys: &Keys,
    dry_run: bool,
) -> Result<SweepReport, QueueError> {
    let mut report = SweepReport::default();
    // Counts as they will be once adopted, for the dry run's answer.
    let mut counts: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.blob_refs())
        .query_async(conn)
        .await?;
    for key in scan_keys(conn, keys.registry_slot(), &keys.registry_pattern(), "hash").await? {
        let Some(model) = keys.model_of_registry(&key) else {
            continue;
        };
        let fields: HashMap<String, String> =
            redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
        for (field, json) in &fields {
            let Ok(n) = field.parse::<u32>() else {
                continue;
            };
            let Ok(v) = parse_version(n, json) else {
                continue;
            };
            if v.status == VersionStatus::Invalid || fields.contains_key(&format!("ref:{n}")) {
                continue;
            }
            let adopted = if dry_run {
                true
            } else {
                let done: i64 = ADOPT
                    .key(keys.registry(model))
                    .key(keys.blob_refs())
                    .arg(n)
                    .arg(&v.sha256)
                    .arg(json)
                    .invoke_async(conn)
                    .await?;
                done == 1
            };
            if adopted {
                report.adopted += 1;
                *counts.entry(v.sha256.clone()).or_default() += 1;
            }
        }
    }
    for key in scan_keys(conn, keys.registry_slot(), &keys.blob_pattern(), "string").await? {
        let Some(sha) = keys.sha_of_blob(&key) else {
            continue;
        };
        report.blobs_seen += 1;
        if counts.get(sha).copied().unwrap_or(0) > 0 {
            continue;
        }
        let size: u64 = redis::cmd("STRLEN").arg(&key).query_async(conn).await?;
        report.unreferenced.push((sha.to_owned(), size));
        if !dry_run {
            let deleted: i64 = DROP_UNREFERENCED
                .key(&key)
                .key(keys.blob_refs())
                .arg(sha)
                .invoke_async(conn)
                .await?;
            report.deleted += usize::try_from(deleted).unwrap_or(0);
        }
    }
    if !dry_run {
        let _: i64 = redis::cmd("HSET")
            .arg(keys.blob_refs())
            .arg(COUNTED)
            .arg(1)
            .query_async(conn)
            .await?;
    }
    report.unreferenced.sort();
    Ok(report)
}
