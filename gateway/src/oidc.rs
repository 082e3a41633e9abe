//! Bearer tokens from the operator's identity provider (OpenID Connect access or ID tokens,
//! JWTs): checked against the provider's published keys (JWKS), its issuer, the audience the
//! gateway is registered as, and the time (with a leeway for clock skew); the caller's role
//! comes from a claim, mapped by `clients.oidc.role_map`.
//!
//! Only RS256 (RSA keys) and ES256 (P-256 keys) are accepted, and a key is used only with the
//! algorithm of its type: a token saying `alg: none`, or `HS256` "signed" with a public key,
//! is refused before any signature is looked at. Keys are fetched when first needed, kept for
//! `clients.oidc.jwks_cache_secs`, and fetched again when a token names a key id not in the
//! cache (the provider rotated its keys) — at most once every `jwks_min_refetch_secs`, so that
//! tokens with made-up key ids cannot make the gateway hammer the provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use medchain_core::error::ApiError;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::callers::{Caller, Role};

/// The most of a JWKS document read.
const MAX_JWKS_BYTES: usize = 256 << 10;

/// How tokens are checked (see `config/default.toml`, `[clients.oidc]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The provider's issuer (`iss`); empty: no identity provider, API keys only.
    pub issuer: String,
    /// What tokens must be issued for (`aud`): the gateway's client id at the provider.
    pub audience: String,
    /// The provider's JSON Web Key Set.
    pub jwks_url: String,
    /// The claim that holds the caller's roles (a string, or a list of strings).
    pub roles_claim: String,
    /// `value=role` entries: which claim values give which medchain role; the first entry the
    /// token has decides.
    #[serde(default)]
    pub role_map: Vec<String>,
    pub leeway_secs: u64,
    pub jwks_cache_secs: u64,
    /// Unknown key ids fetch the JWKS again at most this often.
    pub jwks_min_refetch_secs: u64,
}

impl OidcSettings {
    /// Whether an identity provider is configured.
    pub fn enabled(&self) -> bool {
        !self.issuer.trim().is_empty()
    }

    /// The role map, parsed; the first bad entry is the error.
    pub fn roles(&self) -> Result<Vec<(String, Role)>, String> {
        self.role_map
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let (value, role) = e
                    .split_once('=')
                    .ok_or_else(|| format!("`{e}` is not `claim value=role`"))?;
                Ok((value.trim().to_string(), role.trim().parse()?))
            })
            .collect()
    }

    /// Checks that cannot be expressed in types (when enabled).
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.audience.trim().is_empty() {
            return Err("an identity provider needs clients.oidc.audience".into());
        }
        let url = reqwest::Url::parse(&self.jwks_url)
            .map_err(|_| format!("clients.oidc.jwks_url `{}` is not a URL", self.jwks_url))?;
        if url.scheme() != "https" && url.host_str() != Some("127.0.0.1") {
            return Err("clients.oidc.jwks_url must be https (or loopback for tests)".into());
        }
        if self.roles()?.is_empty() {
            return Err(
                "clients.oidc.role_map is empty: no token could carry a role (e.g. \
                 medchain-clinician=clinician)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The provider's keys as last fetched: key id → (algorithm, key).
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

/// The token checker.
pub struct Oidc {
    settings: OidcSettings,
    roles: Vec<(String, Role)>,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
    /// Held while fetching, so that concurrent requests fetch once.
    fetching: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish()
    }
}

/// One entry of a JWKS (the fields used).
#[derive(Debug, Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(rename = "use", default)]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl Jwk {
    /// The key and the one algorithm it may be used with, or why it is skipped.
    fn key(&self) -> Result<(Algorithm, DecodingKey), String> {
        if self.usage.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signing key".into());
        }
        let (alg, key) = match self.kty.as_str() {
            "RSA" => {
                let (Some(n), Some(e)) = (&self.n, &self.e) else {
                    return Err("RSA key without n and e".into());
                };
                (
                    Algorithm::RS256,
                    DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?,
                )
            }
            "EC" if self.crv.as_deref() == Some("P-256") => {
                let (Some(x), Some(y)) = (&self.x, &self.y) else {
                    return Err("EC key without x and y".into());
                };
                (
                    Algorithm::ES256,
                    DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?,
                )
            }
            other => return Err(format!("key type {other} is not used")),
        };
        let named = match alg {
            Algorithm::RS256 => "RS256",
            _ => "ES256",
        };
        if self.alg.as_deref().is_some_and(|a| a != named) {
            return Err(format!(
                "key for {} is not used",
                self.alg.as_deref().unwrap_or("")
            ));
        }
        Ok((alg, key))
    }
}

fn denied(why: impl std::fmt::Display) -> ApiError {
    metrics::counter!(medchain_core::metrics::name("token_refused_total")).increment(1);
    ApiError::Unauthorized(format!("the bearer token is not accepted: {why}"))
}

impl Oidc {
    pub fn new(settings: &OidcSettings) -> Result<Self, String> {
        settings.check()?;
        let http = medchain_core::http::client_builder(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            roles: settings.roles()?,
            settings: settings.clone(),
            http,
            keys: RwLock::default(),
            fetching: Mutex::new(None),
        })
    }

    /// Whether `token` looks like a JWT (three base64url parts) rather than an API key.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && !token.starts_with("mk_")
    }

    /// The caller `token` names, or the 401/403/503 to answer.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        let header = decode_header(token).map_err(|_| denied("it is not a JWT"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(denied(format!(
                "algorithm {:?} is not accepted (RS256 or ES256)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| denied("its header names no key (kid)"))?;
        let (alg, key) = self.key(&kid).await?;
        if alg != header.alg {
            return Err(denied(format!(
                "key {kid} is for {alg:?}, the token says {:?}",
                header.alg
            )));
        }
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.set_audience(&[self.settings.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            denied(match e.kind() {
                K::ExpiredSignature => "it has expired".to_string(),
                K::ImmatureSignature => "it is not valid yet (nbf)".to_string(),
                K::InvalidIssuer => format!("it was not issued by {}", self.settings.issuer),
                K::InvalidAudience => format!("it is not for {}", self.settings.audience),
                K::InvalidSignature => "its signature does not verify".to_string(),
                K::MissingRequiredClaim(c) => format!("it has no `{c}` claim"),
                other => format!("{other:?}"),
            })
        })?;
        let claims = data.claims;
        let sub = claims["sub"].as_str().unwrap_or_default();
        let held: Vec<&str> = match &claims[&self.settings.roles_claim] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let role = self
            .roles
            .iter()
            .find(|(value, _)| held.contains(&value.as_str()))
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "signed in, but the token's `{}` claim gives no medchain role \
                     (clients.oidc.role_map)",
                    self.settings.roles_claim
                ))
            })?;
        let id = caller_id(sub);
        Ok(Caller { id, role })
    }

    /// The key `kid`, fetching the JWKS when it is not cached (rotation) or the cache is old.
    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), ApiError> {
        let max_age = Duration::from_secs(self.settings.jwks_cache_secs);
        {
            let set = self.keys.read().await;
            let fresh = set.fetched.is_some_and(|at| at.elapsed() < max_age);
            if fresh && let Some(k) = set.keys.get(kid) {
                return Ok(k.clone());
            }
        }
        {
            let mut last = self.fetching.lock().await;
            // Another request may have fetched while this one waited.
            let current = self.keys.read().await.keys.get(kid).cloned();
            let min = Duration::from_secs(self.settings.jwks_min_refetch_secs);
            let recent = last.is_some_and(|at| at.elapsed() < min);
            match (current, recent) {
                (Some(k), true) => return Ok(k),
                (None, true) => {
                    return Err(denied(format!("key {kid} is not one of the provider's")));
                }
                _ => {}
            }
            *last = Some(Instant::now());
            match self.fetch().await {
                Ok(set) => *self.keys.write().await = set,
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.settings.jwks_url, "could not fetch the identity provider's keys");
                    // Keep using the keys we have; without any, tokens cannot be checked.
                    let cached = self.keys.read().await.keys.get(kid).cloned();
                    return cached.ok_or_else(|| {
                        ApiError::unavailable(
                            format!("the identity provider's keys cannot be fetched: {e}"),
                            Some(10),
                        )
                    });
                }
            }
        }
        let set = self.keys.read().await;
        set.keys
            .get(kid)
            .cloned()
            .ok_or_else(|| denied(format!("key {kid} is not one of the provider's")))
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        let mut res = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!(
                "{} answered {}",
                self.settings.jwks_url,
                res.status()
            ));
        }
        // A key set is a few KB: one that sends more (or whatever answers at its URL) is not
        // read into memory.
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("the key set is over {MAX_JWKS_BYTES} bytes"));
            }
        }
        let jwks: Jwks = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for k in jwks.keys {
            let Some(kid) = k.kid.clone() else { continue };
            match k.key() {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                Err(why) => tracing::debug!(kid, why, "JWKS key skipped"),
            }
        }
        metrics::counter!(medchain_core::metrics::name("jwks_fetches_total")).increment(1);
        Ok(KeySet {
            keys,
            fetched: Some(Instant::now()),
        })
    }
}

/// A caller id for a token's subject: `oidc:<sub>` when the subject is printable ASCII of up to
/// 120 characters (what travels to the services in a header), else `oidc:~` and a hash of it.
pub fn caller_id(sub: &str) -> String {
    if !sub.is_empty() && sub.len() <= 120 && sub.bytes().all(|b| b.is_ascii_graphic()) {
        format!("oidc:{sub}")
    } else {
        use sha2::Digest;
        format!(
            "oidc:~{}",
            &hex::encode(sha2::Sha256::digest(sub.as_bytes()))[..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OidcSettings {
        OidcSettings {
            issuer: "https://idp.example.org".into(),
            audience: "medchain".into(),
            jwks_url: "https://idp.example.org/jwks".into(),
            roles_claim: "roles".into(),
            role_map: vec!["medchain-clinician=clinician".into()],
            leeway_secs: 60,
            jwks_cache_secs: 300,
            jwks_min_refetch_secs: 10,
        }
    }

    #[test]
    fn settings_say_what_is_missing() {
        assert!(settings().check().is_ok());
        let mut s = settings();
        s.issuer = String::new();
        assert!(!s.enabled() && s.check().is_ok(), "off is valid");
        let mut s = settings();
        s.audience = String::new();
        assert!(s.check().expect_err("audience").contains("audience"));
        let mut s = settings();
        s.jwks_url = "http://idp.example.org/jwks".into();
        assert!(s.check().expect_err("https").contains("https"));
        let mut s = settings();
        s.role_map = vec!["medchain-nurse=nurse".into()];
        assert!(s.check().expect_err("role").contains("unknown role"));
        s.role_map = vec![];
        assert!(s.check().expect_err("empty").contains("role_map"));
    }

    #[test]
    fn api_keys_are_not_taken_for_tokens() {
        assert!(Oidc::looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(!Oidc::looks_like_jwt("mk_0123abcd"));
        assert!(!Oidc::looks_like_jwt("mk_a.b.c"));
    }
}
