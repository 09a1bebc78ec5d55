//! Every registry write, each one Lua script: register, settle, promote,
//! rollback, delete. The reads and the types are in [`super`].
//!
//! Blob reference counting lives here, in the same scripts that add and
//! remove the versions holding the references, so a count can never be
//! out of step with the versions (see the module docs of [`super`]).

use redis::aio::ConnectionLike;

use super::{
    Deletion, HISTORY_LEN, Promotion, Quota, QuotaExceeded, RegisterMode, Registered, Registration,
    Rejection, Version, VersionStatus, corrupt,
};
use crate::queue::QueueError;
use crate::queue::keys::Keys;
use crate::queue::scripts::{DELETE_VERSION, PROMOTE_VERSION, REGISTER, ROLLBACK, SETTLE};
use crate::tensor::TensorSpec;

fn invocation<'a>(s: &'a redis::Script, keys: &Keys, model: &str) -> redis::ScriptInvocation<'a> {
    let mut inv = s.key(keys.registry(model));
    inv.key(keys.current())
        .key(keys.models())
        .key(keys.history(model))
        .key(keys.registry_epoch())
        .arg(keys.models_channel())
        .arg(keys.registry_channel())
        .arg(model)
        .arg(HISTORY_LEN);
    inv
}

/// The signature JSON with a placeholder the scripts replace by the version
/// number they allocate.
fn signature_template(model: &str, v: &Version) -> Result<String, QueueError> {
    let mut info = v.info(model);
    info.version = "@V@".to_owned();
    serde_json::to_string(&info).map_err(corrupt("model signature"))
}

fn limit_arg(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// Registers `bytes` as a new version of `model` described by `v` (its
/// `version` is ignored; `ready` versions must carry their signature), see
/// [`RegisterMode`]. The blob is written unless the same bytes are stored,
/// and its reference count goes up. With a `quota`, a registration that
/// would cross one of its limits writes nothing.
pub async fn register(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    bytes: &[u8],
    v: &Version,
    mode: RegisterMode,
    quota: Option<&Quota>,
) -> Result<Registration, QueueError> {
    let json = serde_json::to_string(v).map_err(corrupt("version"))?;
    let sig = if v.status == VersionStatus::Ready {
        signature_template(model, v)?
    } else {
        String::new()
    };
    let mut inv = invocation(&REGISTER, keys, model);
    inv.key(keys.blob(&v.sha256)).key(keys.blob_refs());
    if let Some(q) = quota {
        inv.key(&q.tenant_models);
    }
    inv.arg(&v.sha256)
        .arg(json)
        .arg(sig)
        .arg(match mode {
            RegisterMode::Seed => "seed",
            RegisterMode::Add => "add",
        })
        .arg(bytes)
        .arg(limit_arg(quota.and_then(|q| q.max_versions)))
        .arg(limit_arg(quota.and_then(|q| q.max_models)));
    let (version, created, promoted, refused): (u32, u8, u8, String) =
        inv.invoke_async(conn).await?;
    let limit = |n: Option<u32>| n.unwrap_or_default();
    Ok(match refused.as_str() {
        "versions" => Registration::QuotaExceeded(QuotaExceeded::Versions {
            limit: limit(quota.and_then(|q| q.max_versions)),
        }),
        "models" => Registration::QuotaExceeded(QuotaExceeded::Models {
            limit: limit(quota.and_then(|q| q.max_models)),
        }),
        _ => Registration::Registered(Registered {
            version,
            created: created == 1,
            promoted: promoted == 1,
        }),
    })
}

/// Records the validation of a `validating` version: `Ok` carries its
/// signature (status `ready`), `Err` the reason (status `invalid`, whose
/// bytes are dropped unless another version holds them). A version already
/// settled is left alone (a redelivered validation job); returns whether
/// this call settled it.
pub async fn settle(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    mut v: Version,
    outcome: Result<(Vec<TensorSpec>, Vec<TensorSpec>), Rejection>,
) -> Result<bool, QueueError> {
    let number = v.version;
    let sig = match outcome {
        Ok((inputs, outputs)) => {
            v.status = VersionStatus::Ready;
            v.inputs = inputs;
            v.outputs = outputs;
            v.error = None;
            v.error_code = None;
            signature_template(model, &v)?
        }
        Err(rejection) => {
            v.status = VersionStatus::Invalid;
            v.error = Some(rejection.message);
            v.error_code = Some(rejection.code);
            String::new()
        }
    };
    let json = serde_json::to_string(&v).map_err(corrupt("version"))?;
    let mut inv = invocation(&SETTLE, keys, model);
    inv.key(keys.blob(&v.sha256))
        .key(keys.blob_refs())
        .arg(number)
        .arg(json)
        .arg(sig)
        .arg(&v.sha256);
    let reply: String = inv.invoke_async(conn).await?;
    Ok(reply == "settled")
}

/// Deletes a version that is not current: its metadata, signature, its
/// entries in the rollback history, and its bytes if no other version
/// holds them. `tenant_models` (the tenant's model set of a [`Quota`]) loses
/// the model when its last version goes.
pub async fn delete_version(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    number: u32,
    tenant_models: Option<&str>,
) -> Result<Deletion, QueueError> {
    // The blob key is named by the version's hash: read it, then delete
    // only if the version still has that hash (it cannot change, but a
    // corrupt or concurrent rewrite must not free the wrong bytes).
    for _ in 0..3 {
        let Some(v) = super::version(conn, keys, model, number).await? else {
            return Ok(Deletion::UnknownVersion);
        };
        let mut inv = invocation(&DELETE_VERSION, keys, model);
        inv.key(keys.blob(&v.sha256)).key(keys.blob_refs());
        if let Some(t) = tenant_models {
            inv.key(t);
        }
        inv.arg(number).arg(&v.sha256);
        let reply: String = inv.invoke_async(conn).await?;
        match reply.as_str() {
            "deleted" => {
                return Ok(Deletion::Deleted {
                    blob_deleted: false,
                });
            }
            "deleted_blob" => return Ok(Deletion::Deleted { blob_deleted: true }),
            "unknown" => return Ok(Deletion::UnknownVersion),
            "current" => return Ok(Deletion::IsCurrent),
            _ => continue,
        }
    }
    Err(QueueError::Corrupt(format!(
        "version {number} of {model} kept changing while being deleted"
    )))
}

fn promotion(reply: Vec<String>) -> Result<Promotion, QueueError> {
    let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
    let num = |s: &str| s.parse::<u32>().ok();
    match field(0) {
        "ok" if reply.len() == 2 => Ok(Promotion::Done {
            from: num(field(1)),
            to: 0,
        }),
        "ok" => Ok(Promotion::Done {
            from: num(field(1)),
            to: num(field(2)).ok_or_else(|| QueueError::Corrupt("rollback target".into()))?,
        }),
        "unknown" => Ok(Promotion::UnknownVersion),
        "not_ready" => Ok(Promotion::NotReady(match field(1) {
            "invalid" => VersionStatus::Invalid,
            "quarantined" => VersionStatus::Quarantined,
            _ => VersionStatus::Validating,
        })),
        "none" => Ok(Promotion::NothingToRollBack),
        other => Err(QueueError::Corrupt(format!(
            "registry script answered {other:?}"
        ))),
    }
}

/// Makes `version` current if it is `ready`; the replaced version is
/// remembered for [`rollback`].
pub async fn promote(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    version: u32,
) -> Result<Promotion, QueueError> {
    let mut inv = invocation(&PROMOTE_VERSION, keys, model);
    inv.arg(version);
    let reply: Vec<String> = inv.invoke_async(conn).await?;
    Ok(match promotion(reply)? {
        Promotion::Done { from, .. } => Promotion::Done { from, to: version },
        other => other,
    })
}

/// Makes the previous current version current again (the most recent one
/// still `ready`).
pub async fn rollback(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
) -> Result<Promotion, QueueError> {
    let reply: Vec<String> = invocation(&ROLLBACK, keys, model)
        .invoke_async(conn)
        .await?;
    promotion(reply)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_counted_marker_is_the_one_the_scripts_test() {
        assert!(
            include_str!("../lua/registry_common.lua")
                .contains(&format!("'{}'", crate::queue::registry::COUNTED))
        );
        assert!(super::REGISTER.get_hash().len() == 40);
    }
}
