//! A tenant's webhook signing secrets, in Standard Webhooks' form
//! (`whsec_` and the base64 of 32 random bytes). The dispatcher signs with
//! every secret that is valid, so a rotation never leaves a window where a
//! receiver holding either the old or the new one rejects a call. A secret
//! is created on first use; it is read back only by its tenant
//! (`GET /v1/webhooks/secret`) and the dispatcher, and never logged.

use base64::Engine;
use redis::aio::ConnectionLike;

use crate::queue::QueueError;
use crate::queue::keys::Keys;
use crate::queue::scripts::WEBHOOK_ROTATE;

pub const PREFIX: &str = "whsec_";

/// A new random secret.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The key bytes of a secret (its base64 after the prefix).
pub fn key_bytes(secret: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(PREFIX)?)
        .ok()
}

/// A tenant's valid secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    pub current: String,
    /// The one before the last rotation, and until when (Unix ms) it is
    /// still signed with.
    pub previous: Option<(String, i64)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(redacted)")
    }
}

impl Secrets {
    /// Every secret to sign with at `now_ms`, newest first.
    pub fn signing(&self, now_ms: i64) -> impl Iterator<Item = &str> {
        std::iter::once(self.current.as_str()).chain(
            self.previous
                .iter()
                .filter(move |(_, until)| *until > now_ms)
                .map(|(s, _)| s.as_str()),
        )
    }
}

/// The tenant's secrets, creating the first one if it has none.
pub async fn get_or_create(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    tenant: &str,
) -> Result<Secrets, QueueError> {
    let key = keys.webhook_secrets(tenant);
    let (current, previous, until): (Option<String>, Option<String>, Option<i64>) = redis::pipe()
        .cmd("HSETNX")
        .arg(&key)
        .arg("current")
        .arg(generate())
        .ignore()
        .cmd("HMGET")
        .arg(&key)
        .arg("current")
        .arg("previous")
        .arg("previous_until")
        .query_async::<((Option<String>, Option<String>, Option<i64>),)>(conn)
        .await?
        .0;
    let current = current.ok_or_else(|| QueueError::Corrupt("webhook secret vanished".into()))?;
    Ok(Secrets {
        current,
        previous: previous.zip(until),
    })
}

/// Replaces the tenant's current secret with a new one; the old one stays
/// valid for `overlap_ms`. Returns the new secrets.
pub async fn rotate(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    tenant: &str,
    now_ms: i64,
    overlap_ms: i64,
) -> Result<Secrets, QueueError> {
    let fresh = generate();
    let () = WEBHOOK_ROTATE
        .key(keys.webhook_secrets(tenant))
        .arg(&fresh)
        .arg(now_ms)
        .arg(now_ms + overlap_ms)
        .invoke_async(conn)
        .await?;
    get_or_create(conn, keys, tenant).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_32_bytes_behind_the_prefix() {
        let s = generate();
        assert!(s.starts_with(PREFIX));
        assert_eq!(key_bytes(&s).map(|b| b.len()), Some(32));
        assert_ne!(generate(), s);
    }

    #[test]
    fn the_previous_secret_signs_only_until_it_expires() {
        let s = Secrets {
            current: "a".into(),
            previous: Some(("b".into(), 100)),
        };
        assert_eq!(s.signing(99).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.signing(100).collect::<Vec<_>>(), ["a"]);
        assert_eq!(format!("{s:?}"), "Secrets(redacted)");
    }
}
