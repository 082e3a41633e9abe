//! Layered, typed settings: defaults embedded in the binary, then an optional file, then
//! environment variables with one prefix and `__` for nesting; Render's `PORT` is honoured.

use std::net::{IpAddr, TcpListener};

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Environment variable every service reads its shared internal token from, so that one
/// generated value (a Render env group, a compose `.env`) reaches all of them.
pub const INTERNAL_TOKEN_ENV: &str = "MEDCHAIN_INTERNAL_TOKEN";

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

    fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
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

/// Service-to-service authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Shared secret every internal call carries in `x-internal-token`. Also read from
    /// `MEDCHAIN_INTERNAL_TOKEN`. May be left unset only when the service listens on loopback.
    pub internal_token: Option<SecretString>,
}

impl AuthSettings {
    /// The token in force, or an error when it is missing on a non-loopback listener.
    pub fn validate(&self, prefix: &str, server: &ServerSettings) -> Result<(), SettingsError> {
        match &self.internal_token {
            Some(t) if t.expose_secret().len() < 16 => Err(SettingsError::Invalid {
                key: "auth.internal_token".into(),
                env: format!("{INTERNAL_TOKEN_ENV} or {prefix}__AUTH__INTERNAL_TOKEN"),
                reason: "must be at least 16 characters".into(),
            }),
            None if !server.is_loopback() => Err(SettingsError::Invalid {
                key: "auth.internal_token".into(),
                env: format!("{INTERNAL_TOKEN_ENV} or {prefix}__AUTH__INTERNAL_TOKEN"),
                reason: format!(
                    "required when listening on {} (only a loopback listener may run without it)",
                    server.host
                ),
            }),
            _ => Ok(()),
        }
    }
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
    if let Some(token) = std::env::var(INTERNAL_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
    {
        builder = builder.set_override("auth.internal_token", token)?;
    }
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

    #[test]
    fn embedded_defaults_load_without_any_file_or_env() {
        let s: S = load(DEFAULTS, "MEDCHAIN_SETTINGS_TEST_A", &[]).expect("defaults load");
        assert_eq!(s.server.port, 8080);
        assert!(s.auth.internal_token.is_none());
        assert!(s.auth.validate("X", &s.server).is_ok());
    }

    #[test]
    fn missing_token_on_public_listener_names_the_setting() {
        let s: S = load(DEFAULTS, "MEDCHAIN_SETTINGS_TEST_B", &[]).expect("defaults load");
        let public = ServerSettings {
            host: "0.0.0.0".into(),
            ..s.server
        };
        let err = s.auth.validate("SVC", &public).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("auth.internal_token"), "{msg}");
        assert!(msg.contains("SVC__AUTH__INTERNAL_TOKEN"), "{msg}");
    }

    #[test]
    fn short_token_is_refused() {
        let auth = AuthSettings {
            internal_token: Some(SecretString::from("short")),
        };
        let server = ServerSettings {
            host: "127.0.0.1".into(),
            port: 0,
            workers: 1,
            shutdown_timeout_secs: 1,
            keep_alive_secs: 75,
        };
        assert!(auth.validate("SVC", &server).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let auth = AuthSettings {
            internal_token: Some(SecretString::from("a-very-secret-token-value")),
        };
        assert!(!format!("{auth:?}").contains("a-very-secret-token-value"));
    }
}
