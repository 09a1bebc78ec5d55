//! Standard Webhooks signatures: `webhook-signature` is
//! `v1,<base64 of HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`,
//! one per valid secret, separated by spaces, so a receiver holding either
//! side of a rotation verifies the call.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::queue::webhooks::secrets::{self, Secrets};

/// The `webhook-signature` value for one call.
pub(crate) fn signature(
    secrets: &Secrets,
    now_ms: i64,
    webhook_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> String {
    let mut out = String::new();
    for secret in secrets.signing(now_ms) {
        let Some(key) = secrets::key_bytes(secret) else {
            continue;
        };
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            continue;
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(
            &base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let secrets = Secrets {
            current: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            previous: None,
        };
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(
                &secrets,
                0,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signs_with_both_sides_of_a_rotation_until_the_old_one_expires() {
        let secrets = Secrets {
            current: secrets::generate(),
            previous: Some((secrets::generate(), 1000)),
        };
        assert_eq!(
            signature(&secrets, 999, "id", 1, b"{}").split(' ').count(),
            2
        );
        assert_eq!(
            signature(&secrets, 1000, "id", 1, b"{}").split(' ').count(),
            1
        );
    }
}
