//! chain-svc, started from its settings: the node (the embedded anvil, or the configured
//! RPC URL), the keys, the contract (deployed or found), the outbox and its sender, and the
//! HTTP application.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, web};
use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest::Url;
use medchain_core::health::ScrapeHook;
use medchain_core::request::request_context;
use medchain_core::server::{Application, Common, Serve};
use secrecy::ExposeSecret;

use crate::anvil::{self, Anvil};
use crate::chain::AuditChain;
use crate::configuration::{ChainSettings, SERVICE, Settings};
use crate::outbox::Outbox;
use crate::privacy::PatientKey;
use crate::routes::{self, Readiness, RecordLimits, RecordsState};
use crate::secrets::{private_dir, random_hex32, secret_bytes};
use crate::sender::{self, Backoff, Sender};

/// The embedded anvil, shared with its supervisor (which replaces it when it dies).
type SharedAnvil = Arc<Mutex<Option<Anvil>>>;

/// A started chain-svc: the HTTP server, its sender, and (embedded default) its anvil.
#[derive(Debug)]
pub struct Running {
    pub app: Application,
    pub contract: Address,
    pub rpc_url: String,
    anvil: Option<SharedAnvil>,
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

impl Serve for Running {
    fn port(&self) -> u16 {
        Running::port(self)
    }

    fn announce(&self) {
        tracing::info!(port = self.port(), contract = %self.contract, "listening");
    }

    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>> {
        Running::run_until_stopped(self)
    }
}

/// Starts everything: anvil if embedded, keys, contract (deployed or found), outbox, sender,
/// and the HTTP server.
pub async fn build(settings: Settings) -> anyhow::Result<Running> {
    medchain_core::http::init_tls();
    let data = settings.data_dir();
    private_dir(&data)?;
    let c = &settings.chain;
    let embedded = c.rpc_url.is_none();
    let anvil = if embedded {
        let (bin, dir, id) = (
            Anvil::binary(&c.anvil_binary),
            data.join("anvil"),
            c.chain_id,
        );
        Some(tokio::task::spawn_blocking(move || Anvil::start(&bin, &dir, id)).await??)
    } else {
        None
    };
    let rpc_url = match (&anvil, &c.rpc_url) {
        (Some(a), _) => a.url(),
        (None, Some(u)) => u.expose_secret().to_string(),
        (None, None) => unreachable!("embedded when no URL"),
    };
    let dev_chain = embedded || c.dev_chain;
    let (signer, patient_key) = keys(&settings, &data, dev_chain)?;
    let url: Url = rpc_url.parse()?;
    let chain_id = check_chain_id(&url, c.chain_id).await?;
    if dev_chain {
        // The development signer pays for its own transactions on the local chain.
        fund(&url, signer.address()).await?;
    }
    let configured = (!c.contract_address.is_empty())
        .then(|| c.contract_address.parse::<Address>())
        .transpose()?;
    let salt: B256 = keccak256(c.deploy_salt.as_bytes());
    let chain = AuditChain::connect(url.clone(), signer, salt, configured)
        .await?
        .with_receipt_timeout(Duration::from_millis(c.receipt_timeout_ms));
    let outbox = Arc::new(Outbox::open(&data.join("outbox.redb"))?);
    let sender = sender_for(c, outbox.clone(), chain.clone());
    let wake = sender.notifier();
    let anvil = anvil.map(|a| Arc::new(Mutex::new(Some(a))));
    if let Some(a) = &anvil {
        let redeploy = configured.is_none().then_some(salt);
        supervise(a.clone(), &data, c, &chain, &url, &sender, redeploy);
    }
    tokio::spawn(sender.run(Duration::from_millis(c.poll_interval_ms)));
    tracing::info!(contract = %chain.contract(), signer = %chain.signer(), chain_id, embedded, "audit contract ready");
    let read_timeout = Duration::from_millis(c.read_timeout_ms);
    let l = &settings.limits;
    let records = RecordsState {
        limits: RecordLimits::new(
            l.records_per_minute,
            l.records_per_minute_per_source,
            l.max_pending,
            l.stored_salt_per_minute,
        ),
        outbox: outbox.clone(),
        patient_key,
        wake,
        contract: chain.contract(),
        chain_id,
        chain: chain.clone(),
        verify_max_bytes: c.verify_max_bytes,
        read_timeout,
    };
    let ready = Readiness {
        chain: chain.clone(),
        outbox: outbox.clone(),
        min_balance: U256::from(c.min_signer_balance_wei),
        timeout: read_timeout,
    };
    Ok(Running {
        app: serve(&settings, records, ready, outbox)?,
        contract: chain.contract(),
        rpc_url,
        anvil,
    })
}

/// The signer's key and the patient key: configured, or (development chain only) generated
/// once into the data folder.
fn keys(
    settings: &Settings,
    data: &Path,
    dev_chain: bool,
) -> anyhow::Result<(PrivateKeySigner, PatientKey)> {
    let s = &settings.secrets;
    let dev = |name: &str| dev_chain.then(|| data.join(name));
    let signer_hex = secret_bytes(
        &s.signer_key,
        &s.signer_key_file,
        dev("dev-signer.key").as_deref(),
        random_hex32,
    )?;
    let signer: PrivateKeySigner = signer_hex
        .parse()
        .map_err(|_| anyhow::anyhow!("secrets.signer_key is not a valid private key"))?;
    let patient = secret_bytes(
        &s.patient_key,
        &s.patient_key_file,
        dev("dev-patient.key").as_deref(),
        random_hex32,
    )?;
    let patient_key = PatientKey::new(patient.into_bytes()).map_err(anyhow::Error::msg)?;
    Ok((signer, patient_key))
}

/// The node's chain id, which must be the configured one: checked before anything is deployed
/// or signed, and said plainly at start-up.
async fn check_chain_id(url: &Url, expected: u64) -> anyhow::Result<u64> {
    let chain_id = alloy::providers::ProviderBuilder::new()
        .connect_http(url.clone())
        .get_chain_id()
        .await?;
    if chain_id != expected {
        anyhow::bail!(
            "the node at chain.rpc_url is chain {chain_id}, but chain.chain_id is {expected} \
             (CHAIN__CHAIN__CHAIN_ID)"
        );
    }
    Ok(chain_id)
}

/// Gives `signer` 1000 ether on a development chain (anvil's `anvil_setBalance`).
async fn fund(url: &Url, signer: Address) -> anyhow::Result<()> {
    let p = alloy::providers::ProviderBuilder::new().connect_http(url.clone());
    let _: () = p
        .raw_request(
            "anvil_setBalance".into(),
            (signer, U256::from(10u128.pow(21))),
        )
        .await?;
    Ok(())
}

/// The sender of the outbox, batching as the settings say.
fn sender_for(c: &ChainSettings, outbox: Arc<Outbox>, chain: AuditChain) -> Sender {
    let backoff = Backoff {
        initial: Duration::from_millis(c.backoff_initial_ms),
        max: Duration::from_millis(c.backoff_max_ms),
    };
    Sender::new(outbox, chain, backoff)
        .reconcile_every(Duration::from_millis(c.reconcile_interval_ms))
        .batching(sender::Batching {
            max_records: c.batch_max_records,
            linger: Duration::from_millis(c.batch_linger_ms),
            max_in_flight: c.max_in_flight.get(),
            replace_after: Duration::from_millis(c.receipt_timeout_ms),
            fee_bump_percent: u128::from(c.fee_bump_percent),
            max_fee_per_gas: u128::from(c.max_fee_per_gas_wei),
            final_depth: c.final_depth_blocks,
            follow_every: Duration::from_millis(c.poll_interval_ms),
            low_balance_wei: u128::from(c.min_signer_balance_wei),
        })
}

/// Restarts the embedded anvil whenever it dies. Back from its saved state — or from none, if
/// it died within its first second — the development chain may lack the signer's funds and the
/// contract: both are made again (`redeploy`: the salt, unless the address is configured; the
/// address is deterministic), then the outbox is reconciled with it.
fn supervise(
    anvil: SharedAnvil,
    data: &Path,
    c: &ChainSettings,
    chain: &AuditChain,
    url: &Url,
    sender: &Sender,
    redeploy: Option<B256>,
) {
    let (chain, rpc) = (chain.clone(), url.clone());
    let reconcile = Arc::new(sender.reconcile_trigger());
    let restarted = move || {
        let (chain, rpc, trigger) = (chain.clone(), rpc.clone(), reconcile.clone());
        tokio::spawn(async move {
            if let Err(e) = fund(&rpc, chain.signer()).await {
                tracing::error!(error = %e, "could not fund the signer on the restarted anvil");
            }
            if let Some(salt) = redeploy
                && let Err(e) = chain.ensure_deployed(salt).await
            {
                tracing::error!(error = %e, "could not deploy the contract on the restarted anvil");
            }
            trigger();
        });
    };
    tokio::spawn(anvil::supervise(
        anvil,
        Anvil::binary(&c.anvil_binary),
        data.join("anvil"),
        c.chain_id,
        restarted,
    ));
}

/// The HTTP application: the common routes, readiness and the record routes.
fn serve(
    settings: &Settings,
    records: RecordsState,
    ready: Readiness,
    outbox: Arc<Outbox>,
) -> std::io::Result<Application> {
    let records = web::Data::new(records);
    let ready = web::Data::new(ready);
    let hook = web::Data::new(ScrapeHook(Box::new(move || outbox_gauges(&outbox))));
    let common = Common::new(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "chain",
        &settings.auth,
        &settings.server,
    );
    Application::build(&settings.server, move || {
        let common = common.clone();
        App::new()
            .wrap(from_fn(request_context))
            .configure(move |cfg| common.register(cfg))
            .app_data(records.clone())
            .app_data(ready.clone())
            .app_data(hook.clone())
            .configure(routes::mount)
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
