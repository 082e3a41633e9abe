//! chain-svc: owns the audit contract and the signing key; accepts prediction records into a
//! durable outbox and sends them to the chain in the background. With no RPC URL configured it
//! runs its own anvil (the embedded default).

pub mod anvil;
pub mod chain;
pub mod outbox;
pub mod privacy;
pub mod recorders;
pub mod records;
pub mod sender;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, web};
use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use medchain_core::auth::{Peer, only};
use medchain_core::health::{Check, ScrapeHook, readiness};
use medchain_core::request::request_context;
use medchain_core::server::{Application, Common};
use medchain_core::settings::{
    self, AuthSettings, ServerSettings, SettingsError, TelemetrySettings,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::anvil::Anvil;
use crate::chain::AuditChain;
use crate::outbox::Outbox;
use crate::privacy::PatientKey;
use crate::records::RecordsState;
use crate::sender::{Backoff, Sender};

const SERVICE: &str = "chain-svc";
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
    pub max_in_flight: usize,
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
        self.auth.validate(
            ENV_PREFIX,
            &self.server,
            &[Peer::Gateway, Peer::Diabetes, Peer::Heart, Peer::Monitor],
            &[],
        )?;
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
        if c.max_in_flight == 0 {
            return Err(invalid("chain.max_in_flight", "must be at least 1"));
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

/// A secret from the setting, else from its file, else (development only) generated once into
/// the data dir with mode 0600.
fn secret_bytes(
    value: &Option<SecretString>,
    file: &str,
    dev_file: Option<&Path>,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if let Some(v) = value {
        return Ok(v.expose_secret().trim().to_string());
    }
    if !file.is_empty() {
        return Ok(std::fs::read_to_string(file)?.trim().to_string());
    }
    let path = dev_file.ok_or_else(|| anyhow::anyhow!("secret not configured"))?;
    match std::fs::read_to_string(path) {
        // An empty file never held a key (written by a version without the atomic rename
        // below, cut short by a crash): made again.
        Ok(v) if !v.trim().is_empty() => return Ok(v.trim().to_string()),
        _ => {}
    }
    let v = generate();
    write_private(path, &v)?;
    Ok(v)
}

/// Writes `value` to `path` readable by its owner only (0600), atomically: into a temporary file
/// in the same folder, synced, renamed over `path`, and the folder synced — a crash leaves the
/// old file or the new one, never an empty key.
pub fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(value.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) and makes it private to its owner (0700): it holds the
/// outbox with every record's salt and the development keys.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn random_hex32() -> String {
    let mut b = [0u8; 32];
    // A failure here leaves an all-zero key, which both key parsers below reject.
    let _ = getrandom::fill(&mut b);
    alloy::primitives::hex::encode(b)
}

/// A started chain-svc: the HTTP server, its sender, and (embedded default) its anvil.
#[derive(Debug)]
pub struct Running {
    pub app: Application,
    pub contract: Address,
    pub rpc_url: String,
    anvil: Option<std::sync::Arc<std::sync::Mutex<Option<Anvil>>>>,
}

impl Running {
    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.app.port()
    }

    /// Serves until stopped, then stops the embedded anvil (which saves its state).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.app.run_until_stopped().await;
        if let Some(anvil) = self.anvil {
            let taken = anvil
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(anvil) = taken {
                anvil.stop();
            }
        }
        result
    }
}

/// Starts everything: anvil if embedded, keys, contract (deployed or found), outbox, sender,
/// and the HTTP server.
pub async fn build(settings: Settings) -> anyhow::Result<Running> {
    medchain_core::http::init_tls();
    let data = settings.data_dir();
    private_dir(&data)?;
    let embedded = settings.chain.rpc_url.is_none();
    let anvil_bin = Anvil::binary(&settings.chain.anvil_binary);
    let anvil_dir = data.join("anvil");
    let anvil = if embedded {
        let (bin, dir) = (anvil_bin.clone(), anvil_dir.clone());
        let id = settings.chain.chain_id;
        Some(tokio::task::spawn_blocking(move || Anvil::start(&bin, &dir, id)).await??)
    } else {
        None
    };
    let rpc_url = match (&anvil, &settings.chain.rpc_url) {
        (Some(a), _) => a.url(),
        (None, Some(u)) => u.expose_secret().to_string(),
        (None, None) => unreachable!("embedded when no URL"),
    };
    let dev_chain = embedded || settings.chain.dev_chain;
    let dev = |name: &str| dev_chain.then(|| data.join(name));
    let signer_hex = secret_bytes(
        &settings.secrets.signer_key,
        &settings.secrets.signer_key_file,
        dev("dev-signer.key").as_deref(),
        random_hex32,
    )?;
    let signer: PrivateKeySigner = signer_hex
        .parse()
        .map_err(|_| anyhow::anyhow!("secrets.signer_key is not a valid private key"))?;
    let patient_key = PatientKey::new(
        secret_bytes(
            &settings.secrets.patient_key,
            &settings.secrets.patient_key_file,
            dev("dev-patient.key").as_deref(),
            random_hex32,
        )?
        .into_bytes(),
    )
    .map_err(anyhow::Error::msg)?;
    let url: alloy::transports::http::reqwest::Url = rpc_url.parse()?;
    let chain_id = alloy::providers::ProviderBuilder::new()
        .connect_http(url.clone())
        .get_chain_id()
        .await?;
    if chain_id != settings.chain.chain_id {
        // Checked before anything is deployed or signed: say it plainly at start-up.
        anyhow::bail!(
            "the node at chain.rpc_url is chain {chain_id}, but chain.chain_id is {} \
             (CHAIN__CHAIN__CHAIN_ID)",
            settings.chain.chain_id
        );
    }
    if dev_chain {
        // The development signer pays for its own transactions on the local chain.
        let p = alloy::providers::ProviderBuilder::new().connect_http(url.clone());
        let _: () = p
            .raw_request(
                "anvil_setBalance".into(),
                (signer.address(), U256::from(10u128.pow(21))),
            )
            .await?;
    }
    let configured = (!settings.chain.contract_address.is_empty())
        .then(|| settings.chain.contract_address.parse::<Address>())
        .transpose()?;
    let salt: B256 = keccak256(settings.chain.deploy_salt.as_bytes());
    let chain = AuditChain::connect(url.clone(), signer, salt, configured)
        .await?
        .with_receipt_timeout(Duration::from_millis(settings.chain.receipt_timeout_ms));
    let outbox = Arc::new(Outbox::open(&data.join("outbox.redb"))?);
    let sender = Sender::new(
        outbox.clone(),
        chain.clone(),
        Backoff {
            initial: Duration::from_millis(settings.chain.backoff_initial_ms),
            max: Duration::from_millis(settings.chain.backoff_max_ms),
        },
    );
    let c = &settings.chain;
    let sender = sender
        .reconcile_every(Duration::from_millis(c.reconcile_interval_ms))
        .batching(sender::Batching {
            max_records: c.batch_max_records,
            linger: Duration::from_millis(c.batch_linger_ms),
            max_in_flight: c.max_in_flight,
            replace_after: Duration::from_millis(c.receipt_timeout_ms),
            fee_bump_percent: u128::from(c.fee_bump_percent),
            max_fee_per_gas: u128::from(c.max_fee_per_gas_wei),
            final_depth: c.final_depth_blocks,
            follow_every: Duration::from_millis(c.poll_interval_ms),
            low_balance_wei: u128::from(c.min_signer_balance_wei),
        });
    let wake = sender.notifier();
    let anvil = anvil.map(|a| Arc::new(std::sync::Mutex::new(Some(a))));
    if let Some(a) = &anvil {
        // Back from its saved state — or from none, if it died within its first second — the
        // development chain may lack the signer's funds and the contract: both made again
        // (the address is deterministic), then the outbox is reconciled with it.
        let (chain, rpc) = (chain.clone(), url.clone());
        let reconcile = Arc::new(sender.reconcile_trigger());
        let signer = chain.signer();
        let configured_address = configured.is_some();
        let restarted = move || {
            let (chain, rpc, trigger) = (chain.clone(), rpc.clone(), reconcile.clone());
            tokio::spawn(async move {
                let p = alloy::providers::ProviderBuilder::new().connect_http(rpc);
                let funded: Result<(), _> = p
                    .raw_request(
                        "anvil_setBalance".into(),
                        (signer, U256::from(10u128.pow(21))),
                    )
                    .await;
                if let Err(e) = funded {
                    tracing::error!(error = %e, "could not fund the signer on the restarted anvil");
                }
                if !configured_address && let Err(e) = chain.ensure_deployed(salt).await {
                    tracing::error!(error = %e, "could not deploy the contract on the restarted anvil");
                }
                trigger();
            });
        };
        tokio::spawn(anvil::supervise(
            a.clone(),
            anvil_bin,
            anvil_dir,
            settings.chain.chain_id,
            restarted,
        ));
    }
    tokio::spawn(sender.run(Duration::from_millis(settings.chain.poll_interval_ms)));
    tracing::info!(contract = %chain.contract(), signer = %chain.signer(), chain_id, embedded, "audit contract ready");

    let read_timeout = Duration::from_millis(settings.chain.read_timeout_ms);
    let state = web::Data::new(RecordsState {
        limits: records::RecordLimits::new(
            settings.limits.records_per_minute,
            settings.limits.records_per_minute_per_source,
            settings.limits.max_pending,
            settings.limits.stored_salt_per_minute,
        ),
        outbox: outbox.clone(),
        patient_key,
        wake,
        contract: chain.contract(),
        chain_id,
        chain: chain.clone(),
        verify_max_bytes: settings.chain.verify_max_bytes,
        read_timeout,
    });
    let ready = web::Data::new(Readiness {
        chain: chain.clone(),
        outbox: outbox.clone(),
        min_balance: U256::from(settings.chain.min_signer_balance_wei),
        timeout: read_timeout,
    });
    let hook = web::Data::new(ScrapeHook(Box::new(move || outbox_gauges(&outbox))));
    let common = Common::new(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "chain",
        &settings.auth,
        &settings.server,
    );
    let app = Application::build(&settings.server, move || {
        let common = common.clone();
        App::new()
            .wrap(from_fn(request_context))
            .configure(move |cfg| common.register(cfg))
            .app_data(state.clone())
            .app_data(ready.clone())
            .app_data(hook.clone())
            .route("/readyz", web::get().to(readyz))
            // Writing: the disease services (each its own disease). Reading: the gateway, on
            // behalf of the caller it names.
            .service(
                web::resource("/v1/records")
                    .wrap(from_fn(only(&[Peer::Diabetes, Peer::Heart])))
                    .route(web::post().to(records::accept)),
            )
            .service(
                web::scope("")
                    .wrap(from_fn(only(&[Peer::Gateway])))
                    .route("/v1/records/{id}", web::get().to(records::get))
                    .route("/v1/records/{id}/verify", web::post().to(records::verify))
                    .route("/v1/patients/records", web::post().to(records::by_patient))
                    .route("/v1/recorders/{address}", web::get().to(recorders::status))
                    .route("/v1/recorders/{address}", web::post().to(recorders::change)),
            )
    })?;
    Ok(Running {
        app,
        contract: chain.contract(),
        rpc_url,
        anvil,
    })
}

/// Pending count and the oldest pending record's age, current at every scrape.
fn outbox_gauges(outbox: &Outbox) {
    use medchain_core::metrics::name;
    match outbox.pending_stats() {
        Ok((n, oldest)) => {
            metrics::gauge!(name("outbox_pending")).set(n as f64);
            let age = oldest.map_or(0.0, |at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                now.saturating_sub(at) as f64 / 1e3
            });
            metrics::gauge!(name("outbox_oldest_pending_age_seconds")).set(age);
        }
        Err(e) => tracing::error!(error = %e, "outbox unreadable for metrics"),
    }
}

/// What `/readyz` checks.
#[derive(Debug)]
struct Readiness {
    chain: AuditChain,
    outbox: Arc<Outbox>,
    min_balance: U256,
    timeout: Duration,
}

/// `GET /readyz`: node reachable, our contract at the address, the signer able to pay for gas,
/// the outbox able to write.
async fn readyz(r: web::Data<Readiness>) -> HttpResponse {
    let outbox = r.outbox.clone();
    let outbox = match tokio::task::spawn_blocking(move || outbox.health()).await {
        Ok(res) => res.map(|()| "writable".to_string()),
        Err(e) => Err(format!("outbox check failed: {e}")),
    };
    let code = match tokio::time::timeout(r.timeout, r.chain.check_code()).await {
        Ok(res) => res.map_err(|e| e.to_string()),
        Err(_) => Err("the chain node did not answer in time".to_string()),
    };
    let balance = match tokio::time::timeout(r.timeout, r.chain.signer_balance()).await {
        Ok(Ok(b)) if b >= r.min_balance => Ok(format!("{} holds {b} wei", r.chain.signer())),
        Ok(Ok(b)) => Err(format!(
            "signer {} holds {b} wei, below the {} wei it needs to pay for records",
            r.chain.signer(),
            r.min_balance
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the chain node did not answer in time".to_string()),
    };
    let check = |name: &str, res: Result<String, String>| Check {
        name: name.into(),
        ok: res.is_ok(),
        detail: res.unwrap_or_else(|e| e),
    };
    readiness(
        SERVICE,
        vec![
            check(
                "contract",
                code.map(|()| format!("MedchainAudit at {}", r.chain.contract())),
            ),
            check("signer_funds", balance),
            check("outbox", outbox),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn secrets_are_written_privately_and_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("chain");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&data).expect("private");
        assert_eq!(mode(&data), 0o700, "an existing folder is made private too");
        let key = data.join("dev-signer.key");
        write_private(&key, "first").expect("write");
        assert_eq!(mode(&key), 0o600);
        write_private(&key, "second").expect("replace");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "second");
        let names: Vec<_> = std::fs::read_dir(&data)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["dev-signer.key"], "no temporary file is left");
    }

    #[test]
    fn an_empty_development_key_is_made_again() {
        // What a crash of the landed version (no rename) could leave behind.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("dev-patient.key");
        std::fs::write(&key, "").expect("empty");
        let v = secret_bytes(&None, "", Some(&key), || "generated".into()).expect("secret");
        assert_eq!(v, "generated");
        let again = secret_bytes(&None, "", Some(&key), || "other".into()).expect("secret");
        assert_eq!(again, "generated", "kept once written");
    }
}
