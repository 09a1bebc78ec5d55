//! Content hashes as the system names things by them: the lowercase hex
//! SHA-256 of model bytes (blob keys, versions), datasets, request bodies
//! and idempotency keys, and API keys in the keys file.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes` (64 digits).
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(bytes.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
