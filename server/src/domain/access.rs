//! Who is calling: tenants, roles and API keys.
//!
//! A key is `tuna_<id>_<secret>`: the id finds the row in one primary-key lookup, the secret
//! (256 random bits, hex) is compared by its SHA-256, the only form stored. A slow password
//! hash would add nothing for a secret that cannot be guessed, and would cost every call.

use std::fmt;
use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};

text_enum!(
    /// What a key may do. `client` works on its tenant's jobs, files, models, artifacts and
    /// sweeps; `admin` also manages keys (of every tenant); `worker` may only call
    /// `tuna.v1.WorkerService`, as the workers it registered.
    Role {
        Client => "client",
        Admin => "admin",
        Worker => "worker",
    }
);

/// The tenant of the configured API key and of an open (no key configured) loopback server.
pub const DEFAULT_TENANT: &str = "default";

/// Tenant names: what a path segment, a label value and a log field can all carry.
pub fn tenant_is_valid(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && t.as_bytes()[0].is_ascii_alphanumeric()
}

/// The authenticated identity of a call, put into the request's extensions by the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id (`config-api-key` / `config-worker-token` for the configured secrets,
    /// `anonymous` on an open server).
    pub key_id: Arc<str>,
    pub tenant: Arc<str>,
    pub role: Role,
}

impl Caller {
    /// The caller of an open server: the default tenant's administrator.
    pub fn anonymous(role: Role) -> Self {
        Self {
            key_id: Arc::from(ANONYMOUS),
            tenant: Arc::from(DEFAULT_TENANT),
            role,
        }
    }
}

impl Caller {
    /// Whether no credential was presented (an open server).
    pub fn is_anonymous(&self) -> bool {
        &*self.key_id == ANONYMOUS
    }
}

/// The key id of an open server's callers (no real key id has this shape).
const ANONYMOUS: &str = "anonymous";

const KEY_PREFIX: &str = "tuna_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A freshly generated key: the text is shown once, only `secret_sha256` is kept.
pub struct NewKey {
    pub id: String,
    pub text: String,
    pub secret_sha256: String,
}

/// Generates a key from the operating system's random source.
pub fn generate_key() -> NewKey {
    let mut id = [0u8; ID_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = format!("key{}", hex::encode(id));
    let secret = hex::encode(secret);
    NewKey {
        text: format!("{KEY_PREFIX}{id}_{secret}"),
        secret_sha256: secret_digest(&secret),
        id,
    }
}

/// Splits a presented key into (id, secret); None for anything else (a configured secret).
pub fn parse_key(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (id.strip_prefix("key").is_some_and(|h| hex_ok(h, ID_HEX)) && hex_ok(secret, SECRET_HEX))
        .then_some((id, secret))
}

/// Whether `id` has the shape of a key id (for INVALID_ARGUMENT before a lookup).
pub fn key_id_is_valid(id: &str) -> bool {
    id.strip_prefix("key")
        .is_some_and(|h| h.len() == ID_HEX && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The stored form of a secret: lowercase hex SHA-256.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two digests in time independent of where they differ.
pub fn digests_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_only_their_digest_matches() {
        let k = generate_key();
        let (id, secret) = parse_key(&k.text).expect("parses");
        assert_eq!(id, k.id);
        assert!(key_id_is_valid(id));
        assert!(digests_match(&secret_digest(secret), &k.secret_sha256));
        assert!(!k.text.contains(&k.secret_sha256));
        let other = generate_key();
        assert_ne!(other.text, k.text);
        assert!(!digests_match(&secret_digest(secret), &other.secret_sha256));
    }

    #[test]
    fn configured_secrets_and_malformed_keys_are_not_keys() {
        for bad in [
            "s3cret",
            "tuna_",
            "tuna_key0123456789abcdef_",
            "tuna_key0123456789abcde_00",
            "tuna_nokey0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tenant_names_are_bounded_and_plain() {
        assert!(tenant_is_valid("acme-research_1.eu"));
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(!tenant_is_valid(bad), "{bad:?}");
        }
    }
}
