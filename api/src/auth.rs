//! API keys and tenants: who is calling, and which slice of the system they
//! may see.
//!
//! Keys are configured in a file (`--api-keys-file`), one tenant per line,
//! and stored there only as SHA-256 digests, so the file is not a secret
//! worth stealing:
//!
//! ```text
//! # tenant   sha256 of the key (hex): printf %s "$KEY" | sha256sum
//! acme       3f0a…e1
//! globex     9c4d…07
//! ```
//!
//! A request names its key with `Authorization: Bearer <key>` (or
//! `X-API-Key: <key>`); [`ApiKeys::tenant_of`] hashes it and looks the digest up, and the
//! tenant layer ([`crate::admission::admit`]) attaches the caller's
//! [`Tenant`] to the request (probes, scrapers and the OpenAPI document are
//! outside that layer: they carry no keys). Without a keys file the
//! API is open and every request belongs to [`Tenant::DEFAULT`], so a
//! single-team set-up needs no configuration.
//!
//! Isolation is by name: a tenant's model `m` is the model `{tenant}~m` in
//! Redis (`~` is not allowed in public model names, so no public name can
//! reach another tenant's model), and a job belongs to the tenant of its
//! model. The default tenant's models keep their plain names, which is how
//! the demo models from the models directory are served. A request for
//! another tenant's job or model gets the same 404 as one for a job or model
//! that does not exist, so ids cannot be probed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use shared::model::{DEFAULT_TENANT, Qualified, valid_model_name, valid_tenant_name};

use crate::error::ApiError;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// The tenant of an open (keyless) deployment.
    pub const DEFAULT: &'static str = DEFAULT_TENANT;

    pub fn default_tenant() -> Tenant {
        Tenant(Arc::from(Tenant::DEFAULT))
    }

    /// The tenant called `name` (as a model's internal name carries it).
    pub fn named(name: &str) -> Tenant {
        Tenant(Arc::from(name))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name Redis and the workers know this tenant's model (or
    /// dataset) `model` by.
    pub fn model_key(&self, model: &str) -> String {
        Qualified::new(&self.0, model).to_string()
    }

    /// [`Tenant::model_key`] of a name a client sent, if it is a valid
    /// public name (`None` names a model or dataset that cannot exist).
    pub fn qualify(&self, public: &str) -> Option<String> {
        valid_model_name(public).then(|| self.model_key(public))
    }

    /// The public name of an internal model name, if the model is this
    /// tenant's; `None` for every other tenant's model.
    pub fn public_name<'a>(&self, internal: &'a str) -> Option<&'a str> {
        Qualified::parse_exact(internal)
            .filter(|q| q.tenant == self.name())
            .map(|q| q.name)
    }
}

/// Errors reading the keys file; they stop the process at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Digest of a key → its tenant. Empty: the API is open.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Tenant>,
    // Handed out on every request of an open API: a clone is a reference
    // count, not an allocation.
    default: Tenant,
}

impl ApiKeys {
    /// No keys: every request is the default tenant's.
    pub fn open() -> ApiKeys {
        ApiKeys {
            by_digest: HashMap::new(),
            default: Tenant::default_tenant(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        ApiKeys::parse(&text).map_err(|(line, message)| KeysError::Syntax {
            path: path.to_owned(),
            line,
            message,
        })
    }

    /// Parses the keys file format (see the module docs); errors carry the
    /// 1-based line number.
    pub fn parse(text: &str) -> Result<ApiKeys, (usize, String)> {
        let mut by_digest = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(tenant), Some(hex_digest), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err((i + 1, "expected `<tenant> <sha256 hex of the key>`".into()));
            };
            if !valid_tenant_name(tenant) {
                return Err((
                    i + 1,
                    format!(
                        "invalid tenant name {tenant:?}: 1-32 of a-z, 0-9, '_' and '-', \
                         starting with a letter or digit"
                    ),
                ));
            }
            let digest: [u8; 32] = hex::decode(hex_digest)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| (i + 1, "the digest must be 64 hex digits (SHA-256)".into()))?;
            if by_digest
                .insert(digest, Tenant(Arc::from(tenant)))
                .is_some()
            {
                return Err((i + 1, "this key digest is listed twice".into()));
            }
        }
        Ok(ApiKeys {
            by_digest,
            ..ApiKeys::open()
        })
    }

    /// The tenant a request's key belongs to.
    pub fn tenant_of(&self, headers: &HeaderMap) -> Result<Tenant, ApiError> {
        if self.is_open() {
            return Ok(self.default.clone());
        }
        let key = presented_key(headers)?.ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest
            .get(&digest)
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The one key a request presents: `Authorization: Bearer <key>` or
/// `X-API-Key: <key>`. Two credentials (two headers, or one of each) are
/// refused rather than guessed at: a proxy that adds one and a client that
/// sends another must not silently decide who the caller is.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let authorization = headers.get_all(header::AUTHORIZATION);
    let api_key = headers.get_all("x-api-key");
    let mut found = authorization
        .iter()
        .map(|v| (true, v))
        .chain(api_key.iter().map(|v| (false, v)));
    let (bearer, value) = match (found.next(), found.next()) {
        (None, _) => return Ok(None),
        (Some(one), None) => one,
        (Some(_), Some(_)) => return Err(ApiError::AmbiguousCredentials),
    };
    let Ok(text) = value.to_str() else {
        return Ok(None);
    };
    let key = if bearer {
        text.split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
    } else {
        Some(text)
    };
    Ok(key.filter(|k| !k.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn digest(key: &str) -> String {
        shared::digest::sha256_hex(key)
    }

    fn keys() -> ApiKeys {
        let text = format!(
            "# comment\n\nacme {}  # trailing comment\nglobex {}\n",
            digest("k-acme"),
            digest("k-globex")
        );
        ApiKeys::parse(&text).unwrap()
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn keys_map_to_their_tenants_by_either_header() {
        let k = keys();
        let t = k
            .tenant_of(&headers("authorization", "Bearer k-acme"))
            .unwrap();
        assert_eq!(t.name(), "acme");
        let t = k.tenant_of(&headers("x-api-key", "k-globex")).unwrap();
        assert_eq!(t.name(), "globex");
    }

    #[test]
    fn missing_or_unknown_keys_are_unauthorized() {
        let k = keys();
        for h in [
            HeaderMap::new(),
            headers("authorization", "Bearer nope"),
            headers("authorization", "Basic k-acme"),
            headers("authorization", "Bearer "),
            headers("x-api-key", ""),
        ] {
            assert_eq!(k.tenant_of(&h).unwrap_err().code().as_str(), "unauthorized");
        }
    }

    #[test]
    fn two_credentials_are_refused_not_guessed_at() {
        let k = keys();
        let mut two = HeaderMap::new();
        two.append("authorization", HeaderValue::from_static("Bearer k-acme"));
        two.append("authorization", HeaderValue::from_static("Bearer k-globex"));
        let mut both = headers("authorization", "Bearer k-acme");
        both.insert("x-api-key", HeaderValue::from_static("k-globex"));
        let mut same_twice = HeaderMap::new();
        same_twice.append("x-api-key", HeaderValue::from_static("k-acme"));
        same_twice.append("x-api-key", HeaderValue::from_static("k-acme"));
        for h in [two, both, same_twice] {
            assert_eq!(
                k.tenant_of(&h).unwrap_err().code().as_str(),
                "ambiguous_credentials"
            );
        }
    }

    #[test]
    fn without_keys_everyone_is_the_default_tenant() {
        let t = ApiKeys::open().tenant_of(&HeaderMap::new()).unwrap();
        assert_eq!(t.name(), Tenant::DEFAULT);
    }

    #[test]
    fn the_file_holds_digests_only_and_bad_lines_name_their_line() {
        assert_eq!(ApiKeys::parse("acme").unwrap_err().0, 1);
        assert_eq!(ApiKeys::parse("\nacme k-acme").unwrap_err().0, 2);
        assert_eq!(
            ApiKeys::parse(&format!("Acme {}", digest("x")))
                .unwrap_err()
                .0,
            1
        );
        let twice = format!("a {0}\nb {0}", digest("x"));
        assert_eq!(ApiKeys::parse(&twice).unwrap_err().0, 2);
    }

    #[test]
    fn model_names_never_cross_tenants() {
        let acme = Tenant(Arc::from("acme"));
        let default = Tenant::default_tenant();
        assert_eq!(acme.model_key("m"), "acme~m");
        assert_eq!(acme.qualify("m").as_deref(), Some("acme~m"));
        assert_eq!(default.qualify("m").as_deref(), Some("m"));
        for bad in ["", "globex~m", ".hidden", "a/b"] {
            assert_eq!(acme.qualify(bad), None, "{bad:?}");
        }
        assert_eq!(default.model_key("m"), "m");
        assert_eq!(acme.public_name("acme~m"), Some("m"));
        assert_eq!(acme.public_name("globex~m"), None);
        assert_eq!(acme.public_name("m"), None);
        assert_eq!(default.public_name("m"), Some("m"));
        assert_eq!(default.public_name("acme~m"), None);
    }
}
