//! Who is calling the public API: callers present an API key (`Authorization: Bearer <key>` or
//! `x-api-key`), each key with an id and a role. Keys are configured as SHA-256 hashes only
//! (`clients.keys`, entries `id:role:sha256hex`), several at once so that a key can be rotated
//! without downtime; a presented key is hashed and compared with every configured hash in
//! constant time. `gateway new-key <role> <id>` makes a key and prints its entry.

use std::fmt;
use std::str::FromStr;

use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use medchain_core::error::ApiError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Header a client may present its API key in (or `Authorization: Bearer`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Predicts, and reads and verifies records.
    Clinician,
    /// Reads and verifies any record; makes no predictions.
    Auditor,
    /// Operates the models (warm-up, full model state); makes no predictions.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Clinician, Role::Auditor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}` (clinician, auditor or admin)"))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    /// The key's id (never the key).
    pub id: String,
    pub role: Role,
}

/// One configured key.
#[derive(Debug, Clone)]
struct Key {
    id: String,
    role: Role,
    sha256: [u8; 32],
}

/// Parses `id:role:sha256hex`.
fn parse_entry(entry: &str) -> Result<Key, String> {
    let mut parts = entry.trim().splitn(3, ':');
    let (Some(id), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "`{entry}` is not `id:role:sha256` (make one with `gateway new-key <role> <id>`)"
        ));
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "key id `{id}`: 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    let role: Role = role.parse()?;
    let bytes = hex::decode(hash.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!("key `{id}`: the hash must be 64 hex digits (the key's SHA-256), not the key")
        })?;
    Ok(Key {
        id: id.to_string(),
        role,
        sha256: bytes,
    })
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    keys: Vec<Key>,
}

impl Callers {
    /// From `clients.keys` entries; the first bad entry is the error.
    pub fn from_entries(entries: &[String]) -> Result<Self, String> {
        let keys = entries
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| parse_entry(e))
            .collect::<Result<Vec<_>, _>>()?;
        // A caller may hold several keys at once (rotation: the new key is added under the same
        // id, the old one removed later), so that what they created stays theirs; one id with
        // two roles, or one key twice, is a mistake.
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[..i] {
                if a.sha256 == b.sha256 {
                    return Err(format!(
                        "keys `{}` and `{}` are the same key: make a new one",
                        b.id, a.id
                    ));
                }
                if a.id == b.id && a.role != b.role {
                    return Err(format!(
                        "key id `{}` is configured with two roles ({} and {}): one caller, one \
                         role",
                        a.id, b.role, a.role
                    ));
                }
            }
        }
        Ok(Self { keys })
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a request's credential names, or the 401 to answer.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let presented =
            bearer(headers).or_else(|| headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()));
        let Some(presented) = presented.filter(|p| !p.is_empty()) else {
            return Err(ApiError::Unauthorized(if self.keys.is_empty() {
                "this gateway has no API keys configured (clients.keys): no one can call it \
                 yet; make one with `gateway new-key <role> <id>`"
                    .into()
            } else {
                format!(
                    "sign in: send your API key as `Authorization: Bearer <key>` (or \
                     `{API_KEY_HEADER}`)"
                )
            }));
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every configured hash is compared, in constant time each: timing says nothing
        // about which key matched, or how far a guess got.
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.sha256.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        found
            .map(|k| Caller {
                id: k.id.clone(),
                role: k.role,
            })
            .ok_or_else(|| ApiError::Unauthorized("unknown API key".into()))
    }
}

/// The credential of `Authorization: Bearer <credential>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
}

/// A new random key for `role` and `id`: the key (shown once) and its `clients.keys` entry.
pub fn new_key(role: Role, id: &str) -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    let key = format!("mk_{}", hex::encode(bytes));
    let entry = entry_for(id, role, &key);
    parse_entry(&entry)?;
    Ok((key, entry))
}

/// The `clients.keys` entry of an existing `key`.
pub fn entry_for(id: &str, role: Role, key: &str) -> String {
    format!(
        "{id}:{role}:{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn keys_are_checked_by_hash_with_their_roles_and_rotate() {
        let (old, old_entry) = new_key(Role::Clinician, "ward-7").expect("key");
        // Rotated under the same id: the caller stays who they are.
        let (new, new_entry) = new_key(Role::Clinician, "ward-7").expect("key");
        let (audit, audit_entry) = new_key(Role::Auditor, "audit").expect("key");
        assert!(
            !old_entry.contains(&old),
            "the entry holds the hash, not the key"
        );
        // Both keys of a rotation work at once.
        let c = Callers::from_entries(&[old_entry, new_entry.clone(), audit_entry.clone()])
            .expect("entries");
        let who = |h: HeaderMap| c.authenticate(&h);
        assert_eq!(
            who(headers("authorization", &format!("Bearer {old}"))).expect("old"),
            Caller {
                id: "ward-7".into(),
                role: Role::Clinician
            }
        );
        assert_eq!(who(headers("x-api-key", &new)).expect("new").id, "ward-7");
        assert_eq!(
            who(headers("authorization", &format!("bearer {audit}")))
                .expect("audit")
                .role,
            Role::Auditor
        );
        assert!(who(headers("x-api-key", "mk_guess")).is_err());
        assert!(who(HeaderMap::new()).is_err());
        // The old key retired: it no longer opens anything.
        let c = Callers::from_entries(&[new_entry, audit_entry]).expect("entries");
        assert!(
            c.authenticate(&headers("x-api-key", &old)).is_err(),
            "retired key"
        );
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let err = |e: &str| Callers::from_entries(&[e.to_string()]).expect_err(e);
        assert!(err("just-a-key").contains("id:role:sha256"));
        assert!(err("a:nurse:00").contains("unknown role"));
        assert!(err("a:admin:mk_0123").contains("64 hex digits"));
        assert!(err("a b:admin:00").contains("key id"));
        let (key, e) = new_key(Role::Admin, "ops").expect("key");
        assert!(
            Callers::from_entries(&[e.clone(), e.clone()])
                .expect_err("twice")
                .contains("the same key")
        );
        let other_role = entry_for("ops", Role::Auditor, &format!("{key}-2"));
        assert!(
            Callers::from_entries(&[e, other_role])
                .expect_err("two roles")
                .contains("two roles")
        );
    }
}
