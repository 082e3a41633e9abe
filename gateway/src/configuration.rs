//! The gateway's settings: embedded defaults (`config/default.toml`), a file, the environment;
//! and the checks their types cannot express.

use medchain_core::auth::Peer;
use medchain_core::settings::{
    self, AuthSettings, ServerSettings, ServiceSettings, SettingsError, TelemetrySettings,
};
use serde::Deserialize;

/// The service's name, in health answers and logs.
pub(crate) const SERVICE: &str = "gateway";
const ENV_PREFIX: &str = "GATEWAY";

/// All settings of the gateway (see `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub upstreams: UpstreamsSettings,
    pub proxy: ProxySettings,
    pub limits: LimitSettings,
    pub clients: ClientSettings,
}

/// Base URLs of each upstream's instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsSettings {
    pub diabetes: Vec<String>,
    pub heart: Vec<String>,
    pub chain: Vec<String>,
}

/// Timeouts and passive health.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    pub connect_timeout_ms: u64,
    pub tabular_timeout_ms: u64,
    pub image_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub wake_grace_ms: u64,
    pub sleep_after_secs: u64,
    pub eject_secs: u64,
    pub readiness_timeout_ms: u64,
    /// Keep connections to upstreams alive (a pool per instance address).
    pub reuse_connections: bool,
    /// How often an upstream given as a plain-http DNS name is looked up again, each address
    /// it lists becoming an instance; 0: never (the name is then one instance, resolved by
    /// each new connection).
    pub resolve_secs: u64,
}

/// Body size limits per kind of route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub tabular_max_bytes: usize,
    pub image_max_bytes: usize,
    pub verify_max_bytes: usize,
    /// An Open Inference Protocol inference body (JSON or binary tensors).
    pub inference_max_bytes: usize,
}

/// Who may call the public API, and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Origins (scheme://host[:port]) of web frontends hosted elsewhere; the gateway's own
    /// page needs none.
    pub cors_origins: Vec<String>,
    /// Requests per second per client, and the burst above it.
    pub rate_per_second: std::num::NonZeroU32,
    pub rate_burst: std::num::NonZeroU32,
    /// Proxies in front of the gateway that append to `X-Forwarded-For` (Render: 1). The
    /// client is the entry that many from the right; 0: the peer address, the header ignored.
    pub trusted_proxy_hops: usize,
    /// Callers' API keys, `id:role:sha256hex` each (`gateway new-key <role> <id>` makes
    /// one). Every route under `/api/v1/` but the OpenAPI document needs one.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Bearer tokens from an identity provider (OIDC), besides the keys.
    pub oidc: crate::oidc::OidcSettings,
}

medchain_core::service_settings!(
    Settings,
    accepts [Peer::Monitor],
    sends [Peer::Diabetes, Peer::Heart, Peer::Chain]
);

fn invalid(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::invalid(ENV_PREFIX, key, reason)
}

impl Settings {
    /// Embedded defaults → `GATEWAY_CONFIG` file → `GATEWAY__*` env vars (lists comma
    /// separated); validated.
    pub fn load() -> Result<Self, SettingsError> {
        let s: Self = settings::load(
            include_str!("../config/default.toml"),
            ENV_PREFIX,
            &[
                "upstreams.diabetes",
                "upstreams.heart",
                "upstreams.chain",
                "clients.cors_origins",
                "clients.keys",
                "clients.oidc.role_map",
            ],
        )?;
        let mut s = s;
        // `host:port` (what Render's `fromService … property: hostport` gives) means plain http.
        for urls in [
            &mut s.upstreams.diabetes,
            &mut s.upstreams.heart,
            &mut s.upstreams.chain,
        ] {
            for u in urls.iter_mut() {
                if !u.contains("://") {
                    *u = format!("http://{u}");
                }
            }
        }
        s.validate()?;
        Ok(s)
    }

    /// Checks that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.check_base(ENV_PREFIX)?;
        for (key, urls, peer) in [
            (
                "upstreams.diabetes",
                &self.upstreams.diabetes,
                Peer::Diabetes,
            ),
            ("upstreams.heart", &self.upstreams.heart, Peer::Heart),
            ("upstreams.chain", &self.upstreams.chain, Peer::Chain),
        ] {
            if urls.is_empty() {
                return Err(invalid(key, "needs at least one URL"));
            }
            // Beyond loopback an upstream takes no call without the gateway's credential.
            if self.auth.send.get(peer).is_none()
                && let Some(u) = urls.iter().find(|u| !settings::url_is_loopback(u))
            {
                return Err(invalid(
                    &format!("auth.send.{peer}"),
                    format!(
                        "required: {u} is not on loopback, and {peer} takes no call without \
                         the gateway's credential (docs/security.md)"
                    ),
                ));
            }
            for u in urls {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && reqwest::Url::parse(u).is_ok();
                if !ok {
                    return Err(invalid(key, format!("`{u}` is not an http(s) URL")));
                }
            }
        }
        for o in &self.clients.cors_origins {
            if reqwest::Url::parse(o).is_err() || o.ends_with('/') {
                return Err(invalid(
                    "clients.cors_origins",
                    format!("`{o}` is not an origin like https://app.example.org"),
                ));
            }
        }
        crate::callers::Callers::from_entries(&self.clients.keys)
            .map_err(|e| invalid("clients.keys", e))?;
        self.clients
            .oidc
            .check()
            .map_err(|e| invalid("clients.oidc", e))?;
        Ok(())
    }
}
