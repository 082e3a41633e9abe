//! Service-to-service credentials, one per pair of services: what the gateway presents to
//! diabetes-svc opens nothing on heart-svc, and what a disease service presents to chain-svc
//! writes records but reads none. Each service accepts the credentials named in its
//! `auth.accept` table (the raw value, or `sha256:<hex>` of it) and presents the ones in
//! `auth.send`, in the `x-internal-token` header. Every guarded route names the peers it
//! serves ([`only`]); the peer that called is put into the request's extensions.
//!
//! Wrong credentials are limited per address: after `MAX_FAILURES` in a minute that address is
//! refused (429) for the rest of the minute even with a right one, so none can be guessed
//! online. With no credential configured at all, a service on a loopback listener accepts every
//! call (development; the settings refuse it on any other listener).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use futures_util::future::LocalBoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Header an internal caller puts its credential in.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";
/// Header the gateway names the signed-in caller in (its key id or `oidc:<sub>`). Trusted only
/// from the gateway's credential; the gateway drops whatever a client sent.
pub const CALLER_HEADER: &str = "x-medchain-caller";
/// Header the gateway names the signed-in caller's role in.
pub const CALLER_ROLE_HEADER: &str = "x-medchain-caller-role";

/// Wrong credentials one address may present in a minute.
pub const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest windows are forgotten first).
const MAX_ADDRESSES: usize = 10_000;
/// Shortest credential accepted (a `sha256:` hash stands for one of any length).
pub const MIN_CREDENTIAL_CHARS: usize = 16;

/// A service that calls another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Gateway,
    Diabetes,
    Heart,
    Chain,
    /// Whatever scrapes `/metrics` (Prometheus) and reads detailed readiness.
    Monitor,
}

impl Peer {
    pub const ALL: [Peer; 5] = [
        Peer::Gateway,
        Peer::Diabetes,
        Peer::Heart,
        Peer::Chain,
        Peer::Monitor,
    ];

    /// The name in settings (`auth.accept.<name>`, `auth.send.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Gateway => "gateway",
            Peer::Diabetes => "diabetes",
            Peer::Heart => "heart",
            Peer::Chain => "chain",
            Peer::Monitor => "monitor",
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who calls whom in medchain: (caller, callee). The monitor calls every service besides.
pub const CALLS: [(Peer, Peer); 5] = [
    (Peer::Gateway, Peer::Diabetes),
    (Peer::Gateway, Peer::Heart),
    (Peer::Gateway, Peer::Chain),
    (Peer::Diabetes, Peer::Chain),
    (Peer::Heart, Peer::Chain),
];

/// The four services.
pub const SERVICES: [Peer; 4] = [Peer::Gateway, Peer::Diabetes, Peer::Heart, Peer::Chain];

/// A service's environment-variable prefix.
pub fn env_prefix(service: Peer) -> &'static str {
    match service {
        Peer::Gateway => "GATEWAY",
        Peer::Diabetes => "DIABETES",
        Peer::Heart => "HEART",
        Peer::Chain => "CHAIN",
        Peer::Monitor => "MONITOR",
    }
}

/// The environment that gives a whole system its credentials: for each pair of [`CALLS`] one
/// value `make(caller, callee)`, set as the caller's `auth.send.<callee>` and the callee's
/// `auth.accept.<caller>`; and `make(Monitor, service)` as each service's
/// `auth.accept.monitor`.
pub fn credentials_env(mut make: impl FnMut(Peer, Peer) -> String) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (from, to) in CALLS {
        let v = make(from, to);
        let up = |p: Peer| p.as_str().to_ascii_uppercase();
        env.push((
            format!("{}__AUTH__SEND__{}", env_prefix(from), up(to)),
            v.clone(),
        ));
        env.push((format!("{}__AUTH__ACCEPT__{}", env_prefix(to), up(from)), v));
    }
    for to in SERVICES {
        env.push((
            format!("{}__AUTH__ACCEPT__MONITOR", env_prefix(to)),
            make(Peer::Monitor, to),
        ));
    }
    env
}

/// One credential per service (`auth.accept`: the ones this service takes; `auth.send`: the
/// ones it presents). Empty values count as unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub gateway: Option<SecretString>,
    #[serde(default)]
    pub diabetes: Option<SecretString>,
    #[serde(default)]
    pub heart: Option<SecretString>,
    #[serde(default)]
    pub chain: Option<SecretString>,
    #[serde(default)]
    pub monitor: Option<SecretString>,
}

impl Credentials {
    /// The credential for `peer`, if set and not empty.
    pub fn get(&self, peer: Peer) -> Option<&SecretString> {
        let v = match peer {
            Peer::Gateway => &self.gateway,
            Peer::Diabetes => &self.diabetes,
            Peer::Heart => &self.heart,
            Peer::Chain => &self.chain,
            Peer::Monitor => &self.monitor,
        };
        v.as_ref().filter(|s| !s.expose_secret().trim().is_empty())
    }

    /// Sets the credential for `peer` (tests and harnesses).
    pub fn set(&mut self, peer: Peer, value: impl Into<String>) {
        let v = Some(SecretString::from(value.into()));
        match peer {
            Peer::Gateway => self.gateway = v,
            Peer::Diabetes => self.diabetes = v,
            Peer::Heart => self.heart = v,
            Peer::Chain => self.chain = v,
            Peer::Monitor => self.monitor = v,
        }
    }

    /// The peers with a credential set.
    pub fn configured(&self) -> impl Iterator<Item = Peer> + '_ {
        Peer::ALL.into_iter().filter(|p| self.get(*p).is_some())
    }
}

/// The SHA-256 an accepted credential stands for: `sha256:<64 hex>` as given, any other value
/// hashed (so that a deployment may hold only hashes, or wire the raw value from the caller's
/// own settings, as Render's `fromService` does).
pub fn credential_hash(value: &str) -> Result<[u8; 32], String> {
    let value = value.trim();
    if let Some(h) = value.strip_prefix("sha256:") {
        return hex::decode(h)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| "`sha256:` must be followed by 64 hex digits".into());
    }
    if value.chars().count() < MIN_CREDENTIAL_CHARS {
        return Err(format!(
            "must be at least {MIN_CREDENTIAL_CHARS} characters (or `sha256:<hex>` of one)"
        ));
    }
    Ok(Sha256::digest(value.as_bytes()).into())
}

/// The accepted credentials, shared with the middleware through app data.
#[derive(Debug, Clone)]
pub struct ServiceAuth {
    peers: Arc<Vec<(Peer, [u8; 32])>>,
    open: bool,
    /// Per address: when its window started and how many wrong credentials it sent in it.
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

/// Who made an internal call: a peer, or anyone (open development mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calling {
    Peer(Peer),
    /// No credential is configured (a loopback listener in development): every call is taken,
    /// and nothing is known about who made it.
    Anyone,
}

impl ServiceAuth {
    /// From `auth.accept` (already validated by the settings; a bad value is left out, so that
    /// it opens nothing). With no credential at all, a loopback listener takes every call and
    /// any other takes none.
    pub fn new(accept: &Credentials, loopback: bool) -> Self {
        let peers = accept
            .configured()
            .filter_map(|p| {
                let v = accept.get(p)?;
                credential_hash(v.expose_secret()).ok().map(|h| (p, h))
            })
            .collect();
        let peers: Vec<_> = peers;
        Self {
            open: loopback && peers.is_empty(),
            peers: Arc::new(peers),
            failures: Arc::default(),
        }
    }

    /// Whether every call is accepted (no credential configured, loopback listener).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The peer whose credential `presented` is (every configured hash compared, each in
    /// constant time).
    pub fn identify(&self, presented: Option<&[u8]>) -> Option<Calling> {
        if self.is_open() {
            return Some(Calling::Anyone);
        }
        let digest: [u8; 32] = Sha256::digest(presented?).into();
        let mut found = None;
        for (peer, hash) in self.peers.iter() {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(*peer);
            }
        }
        found.map(Calling::Peer)
    }

    /// Seconds until `addr` may try again, if it used up its wrong credentials.
    fn blocked(&self, addr: IpAddr) -> Option<u64> {
        let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, n) = f.get(&addr)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*n >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn failed(&self, addr: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if f.len() >= MAX_ADDRESSES {
            f.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if f.len() >= MAX_ADDRESSES {
                // Flooded from many addresses: forget the oldest window.
                if let Some(oldest) = f.iter().min_by_key(|(_, (s, _))| *s).map(|(a, _)| *a) {
                    f.remove(&oldest);
                }
            }
        }
        let e = f.entry(addr).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// The peer of a request the guard let through (`Calling::Anyone` in open mode; `None` on a
/// route that is not guarded).
pub fn calling(req: &actix_web::HttpRequest) -> Option<Calling> {
    req.extensions().get::<Calling>().copied()
}

/// Whether `s` can be a caller id: printable ASCII, 1 to 160 characters (it travels in a
/// header and is stored with the records a caller creates).
pub fn is_caller_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 160 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The caller a request is made for, as the gateway named them: `Some((id, role))`; `None` in
/// open development mode with no caller named (the operator at the machine); a 403 naming
/// `what` when a peer's call names nobody.
pub fn named_caller(
    req: &actix_web::HttpRequest,
    what: &str,
) -> Result<Option<(String, String)>, ApiError> {
    match (forwarded_caller(req), calling(req)) {
        (Some(c), _) => Ok(Some(c)),
        (None, Some(Calling::Anyone)) => Ok(None),
        (None, _) => Err(ApiError::Forbidden(format!(
            "{what} on behalf of a signed-in caller, and the gateway named none"
        ))),
    }
}

/// The signed-in caller the gateway named (`CALLER_HEADER`, `CALLER_ROLE_HEADER`): believed
/// only on a request the gateway's credential made (or any, in open development mode), and
/// only if it is printable ASCII of at most 160 characters. `(id, role)`.
pub fn forwarded_caller(req: &actix_web::HttpRequest) -> Option<(String, String)> {
    match calling(req)? {
        Calling::Peer(Peer::Gateway) | Calling::Anyone => {}
        Calling::Peer(_) => return None,
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_caller_id(v))
            .map(str::to_string)
    };
    Some((header(CALLER_HEADER)?, header(CALLER_ROLE_HEADER)?))
}

type Guarded =
    LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error>>;

/// Middleware (for `from_fn`): 401 unless the request carries the credential of one of
/// `allowed`; 403 when it is another peer's.
pub fn only(
    allowed: &'static [Peer],
) -> impl Fn(ServiceRequest, Next<BoxBody>) -> Guarded + Clone + 'static {
    move |req, next| Box::pin(guard(req, next, allowed))
}

async fn guard(
    req: ServiceRequest,
    next: Next<BoxBody>,
    allowed: &'static [Peer],
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    let addr = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    // A service that forgot to register its credentials fails closed.
    let Some(auth) = req.app_data::<web::Data<ServiceAuth>>().cloned() else {
        let err = ApiError::Internal(anyhow::anyhow!("no ServiceAuth registered"));
        return Ok(req.error_response(err).map_into_right_body());
    };
    if let Some(wait) = auth.blocked(addr) {
        metrics::counter!(crate::metrics::name("auth_blocked_total")).increment(1);
        let err = ApiError::RateLimited {
            detail: format!(
                "too many wrong `{INTERNAL_TOKEN_HEADER}` headers from this address; retry in \
                 {wait} s"
            ),
            retry_after: wait,
        };
        return Ok(req.error_response(err).map_into_right_body());
    }
    let who = auth.identify(
        req.headers()
            .get(INTERNAL_TOKEN_HEADER)
            .map(|v| v.as_bytes()),
    );
    let err = match who {
        Some(c @ Calling::Anyone) => {
            req.extensions_mut().insert(c);
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_left_body);
        }
        Some(Calling::Peer(p)) if allowed.contains(&p) => {
            req.extensions_mut().insert(Calling::Peer(p));
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_left_body);
        }
        Some(Calling::Peer(p)) => {
            metrics::counter!(crate::metrics::name("auth_forbidden_total"), "peer" => p.as_str())
                .increment(1);
            let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
            ApiError::Forbidden(format!(
                "the {p} credential may not call this route (it is for {})",
                names.join(" or ")
            ))
        }
        None => {
            auth.failed(addr);
            metrics::counter!(crate::metrics::name("auth_failures_total")).increment(1);
            ApiError::Unauthorized(format!(
                "missing or wrong `{INTERNAL_TOKEN_HEADER}` header: this endpoint is for medchain \
                 services only"
            ))
        }
    };
    Ok(req.error_response(err).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(pairs: &[(Peer, &str)]) -> ServiceAuth {
        let mut c = Credentials::default();
        for (p, v) in pairs {
            c.set(*p, *v);
        }
        ServiceAuth::new(&c, true)
    }

    #[test]
    fn each_peer_is_known_by_its_own_credential() {
        let hashed = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"heart-to-chain-0123456789"))
        );
        let a = accept(&[
            (Peer::Diabetes, "diabetes-to-chain-0123456789"),
            (Peer::Heart, &hashed),
        ]);
        assert_eq!(
            a.identify(Some(b"diabetes-to-chain-0123456789")),
            Some(Calling::Peer(Peer::Diabetes))
        );
        assert_eq!(
            a.identify(Some(b"heart-to-chain-0123456789")),
            Some(Calling::Peer(Peer::Heart)),
            "a hash stands for its credential"
        );
        assert_eq!(
            a.identify(Some(hashed.as_bytes())),
            None,
            "the hash itself opens nothing"
        );
        assert_eq!(a.identify(Some(b"diabetes-to-chain-012345678")), None);
        assert_eq!(a.identify(None), None);
        assert!(!a.is_open());
        assert_eq!(accept(&[]).identify(None), Some(Calling::Anyone));
        let public = ServiceAuth::new(&Credentials::default(), false);
        assert_eq!(
            public.identify(None),
            None,
            "a public listener is never open"
        );
        assert_eq!(public.identify(Some(b"anything-at-all-0123")), None);
    }

    #[test]
    fn the_system_environment_gives_each_pair_one_value_on_both_sides() {
        let env = credentials_env(|a, b| format!("{a}->{b}"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GATEWAY__AUTH__SEND__HEART"), Some("gateway->heart"));
        assert_eq!(get("HEART__AUTH__ACCEPT__GATEWAY"), Some("gateway->heart"));
        assert_eq!(
            get("CHAIN__AUTH__ACCEPT__DIABETES"),
            Some("diabetes->chain")
        );
        assert_eq!(get("DIABETES__AUTH__SEND__CHAIN"), Some("diabetes->chain"));
        assert_eq!(get("CHAIN__AUTH__ACCEPT__MONITOR"), Some("monitor->chain"));
        assert_eq!(get("DIABETES__AUTH__ACCEPT__HEART"), None);
        assert_eq!(env.len(), 2 * CALLS.len() + SERVICES.len());
    }

    #[test]
    fn bad_credentials_say_what_is_wrong() {
        assert!(credential_hash("short").unwrap_err().contains("16"));
        assert!(credential_hash("sha256:00").unwrap_err().contains("64 hex"));
        assert!(credential_hash(&format!("sha256:{}", "ab".repeat(32))).is_ok());
    }

    #[test]
    fn an_address_that_guesses_is_shut_out_for_the_minute() {
        let t = accept(&[(Peer::Gateway, "0123456789abcdef")]);
        let (a, b) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(a);
        }
        assert_eq!(t.blocked(a), None);
        t.failed(a);
        assert!(t.blocked(a).is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(t.blocked(b), None, "other addresses are not affected");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let mut c = Credentials::default();
        c.set(Peer::Chain, "a-very-secret-token-value");
        assert!(!format!("{c:?}").contains("a-very-secret-token-value"));
    }
}
