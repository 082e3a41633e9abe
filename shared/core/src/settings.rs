//! Layered, typed settings: defaults embedded in the binary, then an optional file, then
//! environment variables with one prefix and `__` for nesting; Render's `PORT` is honoured.

use std::net::{IpAddr, TcpListener};

use config::{Config, Environment, File, FileFormat};
use secrecy::ExposeSecret;

use crate::auth::{Credentials, MIN_CREDENTIAL_CHARS, Peer, credential_hash};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The one shared internal token of earlier versions, replaced by one credential per pair of
/// services: a service that finds it set refuses to start and says what to set instead.
pub const RETIRED_TOKEN_ENV: &str = "MEDCHAIN_INTERNAL_TOKEN";

/// A setting that cannot be used, naming the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("could not read settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("setting `{key}` (env {env}) is invalid: {reason}")]
    Invalid {
        key: String,
        env: String,
        reason: String,
    },
}

impl SettingsError {
    /// An invalid setting `key` (e.g. `chain.contract_address`) of the service whose env vars
    /// start with `prefix`, naming the env var that sets it.
    pub fn invalid(prefix: &str, key: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            env: format!("{prefix}__{}", key.to_ascii_uppercase().replace('.', "__")),
            reason: reason.into(),
        }
    }
}

/// The block every service's settings tree starts with — `[server]`, `[telemetry]`, `[auth]` —
/// borrowed from the tree by [`ServiceSettings::base`].
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    pub server: &'a ServerSettings,
    pub telemetry: &'a TelemetrySettings,
    pub auth: &'a AuthSettings,
}

/// A service's whole settings tree: its base block and the services it deals with. The base
/// block is checked the same way in every service ([`ServiceSettings::check_base`]), and
/// [`crate::server::main`] serves from it; each service checks the rest of its tree itself.
pub trait ServiceSettings: std::fmt::Debug {
    /// The services that may call this one (with [`Peer::Monitor`] where it may).
    const ACCEPTS: &'static [Peer];
    /// The services this one calls.
    const SENDS: &'static [Peer];

    /// The `[server]`, `[telemetry]` and `[auth]` sections.
    fn base(&self) -> Base<'_>;

    /// Checks the base block of the service whose env vars start with `prefix`: the
    /// credentials against [`Self::ACCEPTS`] and [`Self::SENDS`] (see [`AuthSettings::validate`]).
    fn check_base(&self, prefix: &str) -> Result<(), SettingsError> {
        let base = self.base();
        base.auth
            .validate(prefix, base.server, Self::ACCEPTS, Self::SENDS)
    }
}

/// Implements [`ServiceSettings`] for a settings struct with `server`, `telemetry` and `auth`
/// fields: `service_settings!(Settings, accepts [Peer::Gateway], sends [Peer::Chain]);`
#[macro_export]
macro_rules! service_settings {
    ($ty:ty, accepts [$($a:expr),* $(,)?], sends [$($s:expr),* $(,)?]) => {
        impl $crate::settings::ServiceSettings for $ty {
            const ACCEPTS: &'static [$crate::auth::Peer] = &[$($a),*];
            const SENDS: &'static [$crate::auth::Peer] = &[$($s),*];
            fn base(&self) -> $crate::settings::Base<'_> {
                $crate::settings::Base {
                    server: &self.server,
                    telemetry: &self.telemetry,
                    auth: &self.auth,
                }
            }
        }
    };
}

/// Where and how a service listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// actix worker threads; 0 means one per available CPU (cgroup-aware).
    pub workers: usize,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept open. Longer than any client's pool keeps
    /// one (the services' own client: 30 s; load balancers: 60 s), or a client writes its next
    /// request into a connection the server has just closed.
    pub keep_alive_secs: u64,
}

impl ServerSettings {
    /// Binds the listener (port 0 picks a free port, as the tests do).
    pub fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind((self.host.as_str(), self.port))
    }

    /// Worker count to give actix.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Whether it listens on loopback only.
    pub fn is_loopback(&self) -> bool {
        host_is_loopback(&self.host)
    }
}

/// Whether an http(s) URL (or `host:port`) names this machine's loopback: a service there
/// needs no credential to be reached in development; any other does.
pub fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host_is_loopback(host)
}

/// Whether a host name or address is this machine's loopback.
fn host_is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How logs are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// `EnvFilter` directives; `RUST_LOG` wins when set.
    pub filter: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Service-to-service credentials: one per pair of services (see `crate::auth`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The credentials this service takes, per calling service (`auth.accept.gateway`, ...):
    /// the value itself, or `sha256:<hex>` of it.
    #[serde(default)]
    pub accept: Credentials,
    /// The credentials this service presents, per service it calls (`auth.send.chain`, ...).
    #[serde(default)]
    pub send: Credentials,
}

impl AuthSettings {
    /// Checks the credentials of a service that takes calls from `accepts` and makes calls to
    /// `sends`: each value well formed, no two peers sharing one, none for a service this one
    /// has nothing to do with, and every caller but the monitor given one unless the listener
    /// is loopback (where a service with no credential at all takes every call).
    pub fn validate(
        &self,
        prefix: &str,
        server: &ServerSettings,
        accepts: &[Peer],
        sends: &[Peer],
    ) -> Result<(), SettingsError> {
        let invalid = |key: String, reason: String| SettingsError::invalid(prefix, &key, reason);
        let mut seen: Vec<([u8; 32], Peer)> = Vec::new();
        for p in self.accept.configured() {
            let key = format!("auth.accept.{p}");
            if !accepts.contains(&p) {
                return Err(invalid(
                    key,
                    format!("this service takes no calls from {p}; remove it"),
                ));
            }
            let value = self.accept.get(p).map(|v| v.expose_secret()).unwrap_or("");
            let hash = credential_hash(value).map_err(|r| invalid(key.clone(), r))?;
            if let Some((_, other)) = seen.iter().find(|(h, _)| *h == hash) {
                return Err(invalid(
                    key,
                    format!(
                        "the same credential as auth.accept.{other}: each service needs its own, \
                         or either can act as the other"
                    ),
                ));
            }
            seen.push((hash, p));
        }
        for p in self.send.configured() {
            let key = format!("auth.send.{p}");
            if !sends.contains(&p) {
                return Err(invalid(
                    key,
                    format!("this service makes no calls to {p}; remove it"),
                ));
            }
            let value = self.send.get(p).map(|v| v.expose_secret()).unwrap_or("");
            if value.starts_with("sha256:") || value.trim().chars().count() < MIN_CREDENTIAL_CHARS {
                return Err(invalid(
                    key,
                    format!(
                        "must be the credential itself, at least {MIN_CREDENTIAL_CHARS} characters"
                    ),
                ));
            }
        }
        if !server.is_loopback() {
            for p in accepts.iter().filter(|p| **p != Peer::Monitor) {
                if self.accept.get(*p).is_none() {
                    return Err(invalid(
                        format!("auth.accept.{p}"),
                        format!(
                            "required when listening on {} (only a loopback listener may run \
                             without credentials): the credential {p} presents to this service",
                            server.host
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An error when the retired shared token is set, saying what to set instead.
fn refuse_retired_token(value: Option<&str>, prefix: &str) -> Result<(), SettingsError> {
    if value.is_none_or(str::is_empty) {
        return Ok(());
    }
    Err(SettingsError::Invalid {
        key: "auth".into(),
        env: RETIRED_TOKEN_ENV.into(),
        reason: format!(
            "the one shared internal token is retired: every pair of services has its own \
             credential now ({prefix}__AUTH__ACCEPT__<CALLER> and {prefix}__AUTH__SEND__<SERVICE>, \
             see docs/security.md); unset {RETIRED_TOKEN_ENV}"
        ),
    })
}

/// Loads a settings tree: `defaults` (TOML embedded in the binary) → the file named by
/// `<PREFIX>_CONFIG` if set → `<PREFIX>__SECTION__KEY` variables → `PORT` and
/// `MEDCHAIN_INTERNAL_TOKEN`. `list_keys` are keys whose env value is a comma-separated list.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    prefix: &str,
    list_keys: &[&str],
) -> Result<T, SettingsError> {
    let mut env = Environment::with_prefix(prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true);
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for key in list_keys {
            env = env.with_list_parse_key(key);
        }
    }
    let mut builder = Config::builder().add_source(File::from_str(defaults, FileFormat::Toml));
    if let Ok(path) = std::env::var(format!("{prefix}_CONFIG")) {
        builder = builder.add_source(File::with_name(&path).required(true));
    }
    builder = builder.add_source(env);
    if let Some(port) = std::env::var("PORT").ok().filter(|p| !p.is_empty()) {
        let port: u16 = port.parse().map_err(|_| SettingsError::Invalid {
            key: "server.port".into(),
            env: "PORT".into(),
            reason: format!("`{port}` is not a port number"),
        })?;
        builder = builder.set_override("server.port", port)?;
    }
    refuse_retired_token(std::env::var(RETIRED_TOKEN_ENV).ok().as_deref(), prefix)?;
    Ok(builder.build()?.try_deserialize()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct S {
        server: ServerSettings,
        auth: AuthSettings,
    }

    const DEFAULTS: &str = r#"
        [server]
        host = "127.0.0.1"
        port = 8080
        workers = 0
        shutdown_timeout_secs = 5
        keep_alive_secs = 75
        [auth]
    "#;

    const ALL_CALLERS: [Peer; 3] = [Peer::Gateway, Peer::Diabetes, Peer::Monitor];

    fn server(host: &str) -> ServerSettings {
        ServerSettings {
            host: host.into(),
            port: 0,
            workers: 1,
            shutdown_timeout_secs: 1,
            keep_alive_secs: 75,
        }
    }

    #[test]
    fn embedded_defaults_load_without_any_file_or_env() {
        let s: S = load(DEFAULTS, "MEDCHAIN_SETTINGS_TEST_A", &[]).expect("defaults load");
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.auth.accept.configured().count(), 0);
        assert!(s.auth.validate("X", &s.server, &ALL_CALLERS, &[]).is_ok());
    }

    #[test]
    fn a_public_listener_needs_each_callers_credential_but_the_monitors() {
        let mut auth = AuthSettings::default();
        auth.accept.set(Peer::Gateway, "gateway-credential-0001");
        let err = auth
            .validate("SVC", &server("0.0.0.0"), &ALL_CALLERS, &[])
            .expect_err("diabetes missing");
        let msg = err.to_string();
        assert!(msg.contains("auth.accept.diabetes"), "{msg}");
        assert!(msg.contains("SVC__AUTH__ACCEPT__DIABETES"), "{msg}");
        auth.accept.set(Peer::Diabetes, "diabetes-credential-0001");
        assert!(
            auth.validate("SVC", &server("0.0.0.0"), &ALL_CALLERS, &[])
                .is_ok()
        );
    }

    #[test]
    fn credentials_are_each_their_own_and_only_where_they_belong() {
        let check = |f: &dyn Fn(&mut AuthSettings)| {
            let mut auth = AuthSettings::default();
            f(&mut auth);
            auth.validate(
                "SVC",
                &server("127.0.0.1"),
                &[Peer::Gateway, Peer::Monitor],
                &[Peer::Chain],
            )
            .map_err(|e| e.to_string())
        };
        assert!(
            check(&|a| a.accept.set(Peer::Gateway, "short"))
                .unwrap_err()
                .contains("16")
        );
        let twice = check(&|a| {
            a.accept.set(Peer::Gateway, "one-credential-for-two");
            a.accept.set(Peer::Monitor, "one-credential-for-two");
        })
        .unwrap_err();
        assert!(twice.contains("each service needs its own"), "{twice}");
        assert!(
            check(&|a| a.accept.set(Peer::Heart, "heart-credential-0001"))
                .unwrap_err()
                .contains("takes no calls from heart")
        );
        assert!(
            check(&|a| a.send.set(Peer::Diabetes, "diabetes-credential-1"))
                .unwrap_err()
                .contains("makes no calls to diabetes")
        );
        assert!(
            check(&|a| a
                .send
                .set(Peer::Chain, format!("sha256:{}", "ab".repeat(32))))
            .unwrap_err()
            .contains("the credential itself")
        );
        assert!(check(&|a| a.send.set(Peer::Chain, "chain-credential-0001")).is_ok());
        assert!(
            check(&|a| a.accept.set(Peer::Gateway, "")).is_ok(),
            "empty = unset"
        );
    }

    #[test]
    fn loopback_urls_are_told_from_others() {
        for u in [
            "http://127.0.0.1:8081",
            "http://localhost:8083/",
            "http://[::1]:80",
            "127.0.0.1:9",
        ] {
            assert!(url_is_loopback(u), "{u}");
        }
        for u in [
            "http://diabetes-svc:8081",
            "https://medchain-chain.onrender.com",
            "10.0.0.5:8082",
            "http://127.0.0.1.example:1",
        ] {
            assert!(!url_is_loopback(u), "{u}");
        }
    }

    #[test]
    fn the_retired_shared_token_is_refused_with_what_to_set() {
        assert!(refuse_retired_token(None, "SVC").is_ok());
        assert!(refuse_retired_token(Some(""), "SVC").is_ok());
        let msg = refuse_retired_token(Some("an-old-shared-token"), "SVC")
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("SVC__AUTH__ACCEPT__"), "{msg}");
    }
}
