//! chain-svc's settings: embedded defaults (`config/default.toml`), a file, the environment;
//! and the checks their types cannot express.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use alloy::primitives::Address;
use medchain_core::auth::Peer;
use medchain_core::settings::{
    self, AuthSettings, ServerSettings, ServiceSettings, SettingsError, TelemetrySettings,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The service's name, in health answers and logs.
pub(crate) const SERVICE: &str = "chain-svc";
const ENV_PREFIX: &str = "CHAIN";

/// All settings of chain-svc (see `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub storage: StorageSettings,
    pub chain: ChainSettings,
    pub limits: LimitSettings,
    pub secrets: SecretSettings,
}

/// How many records are taken (see `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub records_per_minute: u32,
    pub records_per_minute_per_source: u32,
    pub max_pending: u64,
    /// Verifications one auditor may make with the stored salt a minute.
    pub stored_salt_per_minute: u32,
}

/// Where state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: String,
}

/// The chain and the contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    /// Empty: the embedded anvil. May embed an API key, hence a secret.
    pub rpc_url: Option<SecretString>,
    pub chain_id: u64,
    pub contract_address: String,
    pub deploy_salt: String,
    pub poll_interval_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Reads (record lookups, verify, readiness) give up on the node after this long.
    pub read_timeout_ms: u64,
    /// How often the outbox's confirmed records are checked against the chain (and at start).
    pub reconcile_interval_ms: u64,
    /// A batch transaction not mined after this long is replaced (same nonce, fees raised).
    pub receipt_timeout_ms: u64,
    /// Most records in one batch transaction.
    pub batch_max_records: usize,
    /// A partial batch waits this long for more records (full batches go at once).
    pub batch_linger_ms: u64,
    /// Most batch transactions sent and not yet mined.
    pub max_in_flight: NonZeroUsize,
    /// How much a replacement raises both fees, percent (nodes want at least 10).
    pub fee_bump_percent: u64,
    /// The most offered per gas, wei.
    pub max_fee_per_gas_wei: u64,
    /// Records confirmed this many blocks deep are final: compacted and no longer reconciled.
    pub final_depth_blocks: u64,
    /// `/readyz` fails while the signer holds less than this (wei): it could not pay for gas.
    pub min_signer_balance_wei: u64,
    /// Largest image body `verify` hashes.
    pub verify_max_bytes: usize,
    /// The external node is a disposable development chain (an anvil container): keys may be
    /// generated into the data dir and the signer funded with `anvil_setBalance`, as with the
    /// embedded anvil. Never on a real network.
    #[serde(default)]
    pub dev_chain: bool,
    pub anvil_binary: String,
}

/// Keys (never committed, never logged).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    #[serde(default)]
    pub signer_key: Option<SecretString>,
    pub signer_key_file: String,
    #[serde(default)]
    pub patient_key: Option<SecretString>,
    pub patient_key_file: String,
}

medchain_core::service_settings!(
    Settings,
    accepts [Peer::Gateway, Peer::Diabetes, Peer::Heart, Peer::Monitor],
    sends []
);

fn invalid(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::invalid(ENV_PREFIX, key, reason)
}

impl Settings {
    /// Embedded defaults → `CHAIN_CONFIG` file → `CHAIN__*` env vars; validated.
    pub fn load() -> Result<Self, SettingsError> {
        let mut s: Self = settings::load(include_str!("../config/default.toml"), ENV_PREFIX, &[])?;
        if s.chain
            .rpc_url
            .as_ref()
            .is_some_and(|u| u.expose_secret().is_empty())
        {
            s.chain.rpc_url = None;
        }
        s.validate()?;
        Ok(s)
    }

    /// Checks that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.check_base(ENV_PREFIX)?;
        if !self.chain.contract_address.is_empty()
            && self.chain.contract_address.parse::<Address>().is_err()
        {
            return Err(invalid("chain.contract_address", "not an address"));
        }
        let c = &self.chain;
        if !(1..=5_000).contains(&c.batch_max_records) {
            return Err(invalid(
                "chain.batch_max_records",
                "must be 1 to 5000 (the contract's MAX_BATCH)",
            ));
        }
        if c.fee_bump_percent < 10 {
            return Err(invalid(
                "chain.fee_bump_percent",
                "must be at least 10: nodes refuse a replacement that raises the fees by less",
            ));
        }
        if self.chain.rpc_url.is_some() && !self.chain.dev_chain {
            let signer =
                self.secrets.signer_key.is_some() || !self.secrets.signer_key_file.is_empty();
            let patient =
                self.secrets.patient_key.is_some() || !self.secrets.patient_key_file.is_empty();
            if !signer {
                return Err(invalid(
                    "secrets.signer_key",
                    "required with an external chain.rpc_url (or secrets.signer_key_file)",
                ));
            }
            if !patient {
                return Err(invalid(
                    "secrets.patient_key",
                    "required with an external chain.rpc_url (or secrets.patient_key_file)",
                ));
            }
        }
        Ok(())
    }

    /// The data folder in force.
    pub fn data_dir(&self) -> PathBuf {
        if !self.storage.data_dir.is_empty() {
            return PathBuf::from(&self.storage.data_dir);
        }
        if let Some(d) = std::env::var_os("MEDCHAIN_DATA_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("chain");
        }
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.data/chain"))
    }
}
