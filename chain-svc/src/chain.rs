//! The audit contract on an Ethereum node: bindings from the committed artifact, deterministic
//! (CREATE2) deployment whose address follows from the deployer and the bytecode, a check that
//! the code found at the address is ours, recording, reading, and decoded reverts.

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, Bytes, TxHash, address, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolValue;

/// Bindings generated from the committed artifact (`contracts/MedchainAudit.json`).
mod bindings {
    // The generated constructor and `record` mirror the contract's parameter lists.
    #![allow(clippy::too_many_arguments, missing_docs)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        MedchainAudit,
        "contracts/MedchainAudit.json"
    );
}
pub use bindings::MedchainAudit;

/// The CREATE2 deployment proxy present at this address on anvil, Sepolia, mainnet and most
/// public chains (deploy data = 32-byte salt ‖ init code).
pub const CREATE2_FACTORY: Address = address!("4e59b44847b379578588920ca78fbf26c0b4956c");

/// What can go wrong talking to the chain, with reverts decoded.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("prediction {0} is already recorded on chain")]
    Duplicate(B256),
    #[error("{0} is not a recorder of the audit contract")]
    NotRecorder(Address),
    #[error("{0} is not the admin of the audit contract")]
    NotAdmin(Address),
    #[error("the contract rejected the record: {0}")]
    Invalid(String),
    #[error("the code at {0} is not the MedchainAudit contract")]
    WrongCode(Address),
    #[error("no code at {0}")]
    NoContract(Address),
    #[error("chain node: {0}")]
    Node(String),
}

impl ChainError {
    fn from_contract(e: alloy::contract::Error) -> Self {
        use MedchainAudit::MedchainAuditErrors as E;
        match e.as_decoded_interface_error::<E>() {
            Some(E::DuplicatePrediction(d)) => Self::Duplicate(d.predictionId),
            Some(E::NotRecorder(d)) => Self::NotRecorder(d.caller),
            Some(E::NotAdmin(d)) => Self::NotAdmin(d.caller),
            Some(E::InvalidRecord(d)) => Self::Invalid(d.reason),
            Some(E::ZeroAddress(_)) => Self::Invalid("zero address".into()),
            None => Self::Node(e.to_string()),
        }
    }

    /// Whether sending again later may succeed (node down, nonce race), as opposed to a
    /// decided answer of the contract.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Node(_))
    }
}

/// One record as the contract takes it: hashes and small codes only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordInput {
    pub prediction_id: B256,
    pub patient_ref: B256,
    pub model_id_hash: B256,
    pub input_commitment: B256,
    pub disease: u8,
    pub modality: u8,
    pub label: u8,
    pub probability_bps: u16,
}

/// A mined record.
#[derive(Debug, Clone)]
pub struct Mined {
    pub tx_hash: TxHash,
    pub block_number: u64,
    /// The block's hash, to notice later that the chain no longer holds that block (a reset
    /// or a reorganisation) — see `Sender::reconcile`.
    pub block_hash: Option<B256>,
}

/// A record event found on chain.
#[derive(Debug, Clone)]
pub struct RecordedLog {
    pub prediction_id: B256,
    pub tx_hash: Option<TxHash>,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
    pub event: MedchainAudit::PredictionRecorded,
}

/// What became of a sent transaction after waiting for its receipt.
enum Receipt {
    Mined(Box<alloy::rpc::types::TransactionReceipt>),
    /// The node no longer knows it (dropped from its pool).
    Dropped,
    /// Still pending.
    Waiting,
}

/// Waits up to `timeout` for `hash`'s receipt with alloy's own watcher (it follows new blocks at
/// the client's poll interval), then asks the node whether it still has the transaction.
async fn pending_receipt(
    provider: &DynProvider,
    hash: TxHash,
    timeout: std::time::Duration,
) -> Result<Receipt, ChainError> {
    use alloy::providers::{PendingTransactionBuilder, PendingTransactionError, WatchTxError};
    let node = |e: &dyn std::fmt::Display| ChainError::Node(e.to_string());
    let watched = PendingTransactionBuilder::new(provider.root().clone(), hash)
        .with_timeout(Some(timeout))
        .get_receipt()
        .await;
    match watched {
        Ok(r) => Ok(Receipt::Mined(Box::new(r))),
        Err(PendingTransactionError::TxWatcher(WatchTxError::Timeout)) => {
            let known = provider
                .get_transaction_by_hash(hash)
                .await
                .map_err(|e| node(&e))?;
            Ok(if known.is_some() {
                Receipt::Waiting
            } else {
                Receipt::Dropped
            })
        }
        Err(e) => Err(node(&e)),
    }
}

/// The contract, reached through one provider built once.
#[derive(Debug, Clone)]
pub struct AuditChain {
    provider: DynProvider,
    signer: Address,
    contract: Address,
    /// The block the contract was deployed in: where every log query starts (not block 0, which
    /// on a public chain scans its whole history).
    deployed_at: u64,
    /// How long a sent transaction's receipt is waited for before the node is asked what became
    /// of it (see `record`).
    receipt_timeout: std::time::Duration,
}

/// Init code of the contract with its constructor arguments.
pub fn init_code(admin: Address, recorder: Address) -> Bytes {
    let mut code = MedchainAudit::BYTECODE.to_vec();
    code.extend_from_slice(&(admin, recorder).abi_encode_params());
    code.into()
}

/// Where the CREATE2 deployment of (admin, recorder, salt) lands.
pub fn deployment_address(admin: Address, recorder: Address, salt: B256) -> Address {
    CREATE2_FACTORY.create2(salt, keccak256(init_code(admin, recorder)))
}

impl AuditChain {
    /// Connects with `signer` and makes sure the contract is at its deterministic address:
    /// deploys it when there is no code there yet, and refuses foreign code.
    pub async fn connect(
        rpc_url: alloy::transports::http::reqwest::Url,
        signer: PrivateKeySigner,
        salt: B256,
        configured: Option<Address>,
    ) -> Result<Self, ChainError> {
        medchain_shared::http::init_tls();
        let me = signer.address();
        // Nonces are read from the node before every send (no cached counter that a failed
        // send would leave ahead of the chain), and every call is simulated first.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(EthereumWallet::from(signer))
            .connect_http(rpc_url)
            .erased();
        let contract = match configured {
            Some(addr) => addr,
            None => deployment_address(me, me, salt),
        };
        let mut chain = Self {
            provider,
            signer: me,
            contract,
            deployed_at: 0,
            receipt_timeout: std::time::Duration::from_secs(120),
        };
        match chain.check_code().await {
            Ok(()) => chain.deployed_at = chain.find_deployment_block().await,
            Err(ChainError::NoContract(_)) if configured.is_none() => {
                chain.deployed_at = chain.deploy(salt).await?;
                chain.check_code().await?;
            }
            Err(e) => return Err(e),
        }
        Ok(chain)
    }

    /// The first block whose state holds the contract's code, by bisection over historical
    /// state (`eth_getCode` at a block): about 2·log2(head) reads. A node without historical
    /// state (not an archive node) cannot answer; then 0, and log queries scan from the start.
    async fn find_deployment_block(&self) -> u64 {
        let has_code = |block: u64| async move {
            self.provider
                .get_code_at(self.contract)
                .block_id(block.into())
                .await
                .map(|c| !c.is_empty())
        };
        let Ok(head) = self.provider.get_block_number().await else {
            return 0;
        };
        let (mut lo, mut hi) = (0u64, head);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match has_code(mid).await {
                Ok(true) => hi = mid,
                Ok(false) => lo = mid + 1,
                Err(e) => {
                    tracing::warn!(error = %e, "the node has no historical state; log queries start at block 0");
                    return 0;
                }
            }
        }
        lo
    }

    /// Sets how long a receipt is waited for (`chain.receipt_timeout_ms`).
    pub fn with_receipt_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.receipt_timeout = timeout;
        self
    }

    /// The block the contract was deployed in (log queries start there).
    pub fn deployment_block(&self) -> u64 {
        self.deployed_at
    }

    /// Deploys the contract again if its address holds no code (a development chain that came
    /// back from an empty or early state); refuses foreign code as `connect` does.
    pub async fn ensure_deployed(&self, salt: B256) -> Result<(), ChainError> {
        match self.check_code().await {
            Err(ChainError::NoContract(_)) => {
                self.deploy(salt).await?;
                self.check_code().await
            }
            other => other,
        }
    }

    /// Deploys through the CREATE2 proxy; returns the block it landed in.
    async fn deploy(&self, salt: B256) -> Result<u64, ChainError> {
        let node = |e: &dyn std::fmt::Display| ChainError::Node(e.to_string());
        let factory_code = self
            .provider
            .get_code_at(CREATE2_FACTORY)
            .await
            .map_err(|e| node(&e))?;
        if factory_code.is_empty() {
            return Err(ChainError::Node(format!(
                "no CREATE2 deployment proxy at {CREATE2_FACTORY}; configure the contract \
                 address instead"
            )));
        }
        let mut data = salt.to_vec();
        data.extend_from_slice(&init_code(self.signer, self.signer));
        let tx = TransactionRequest::default()
            .to(CREATE2_FACTORY)
            .input(Bytes::from(data).into());
        let receipt = self
            .provider
            .send_transaction(tx)
            .await
            .map_err(|e| node(&e))?
            .get_receipt()
            .await
            .map_err(|e| node(&e))?;
        if !receipt.status() {
            return Err(ChainError::Node(format!(
                "deployment transaction {} reverted",
                receipt.transaction_hash
            )));
        }
        tracing::info!(contract = %self.contract, tx = %receipt.transaction_hash, "audit contract deployed");
        Ok(receipt.block_number.unwrap_or_default())
    }

    /// The code at the contract address must be exactly our runtime bytecode.
    pub async fn check_code(&self) -> Result<(), ChainError> {
        let code = self
            .provider
            .get_code_at(self.contract)
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        if code.is_empty() {
            return Err(ChainError::NoContract(self.contract));
        }
        if code != MedchainAudit::DEPLOYED_BYTECODE {
            return Err(ChainError::WrongCode(self.contract));
        }
        Ok(())
    }

    /// The contract's address.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// The signer's address.
    pub fn signer(&self) -> Address {
        self.signer
    }

    /// The provider (reads: balances, blocks, transactions).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Sends one record and waits for its receipt.
    pub async fn record(&self, r: &RecordInput) -> Result<Mined, ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let call = c.record(
            r.prediction_id,
            r.patient_ref,
            r.model_id_hash,
            r.input_commitment,
            r.disease,
            r.modality,
            r.label,
            r.probability_bps,
        );
        // Simulate first: a revert (duplicate, not a recorder) is decided here, decoded, and
        // no transaction is signed for it.
        call.call().await.map_err(ChainError::from_contract)?;
        let pending = call.send().await.map_err(ChainError::from_contract)?;
        let hash = *pending.tx_hash();
        // Not forever: a transaction the node dropped from its pool never gets a receipt.
        let receipt = loop {
            match pending_receipt(&self.provider, hash, self.receipt_timeout).await? {
                Receipt::Mined(r) => break r,
                Receipt::Dropped => {
                    return Err(ChainError::Node(format!(
                        "transaction {hash} was dropped by the node without being mined; \
                         the record will be sent again"
                    )));
                }
                Receipt::Waiting => {
                    // Still in the pool (fees below the base fee, a congested chain): waited
                    // for again rather than sent twice.
                    tracing::warn!(tx = %hash, timeout = ?self.receipt_timeout, "transaction not mined yet; still waiting");
                }
            }
        };
        if !receipt.status() {
            return Err(ChainError::Node(format!(
                "record transaction {} reverted",
                receipt.transaction_hash
            )));
        }
        // Mined is not recorded: a call to an address without code (a development chain back
        // from an empty state, before the contract is deployed again) succeeds and records
        // nothing. Only the contract's own event for this id counts.
        let recorded = receipt.inner.logs().iter().any(|l| {
            use alloy::sol_types::SolEvent;
            l.address() == self.contract
                && l.topics().first() == Some(&MedchainAudit::PredictionRecorded::SIGNATURE_HASH)
                && l.topics().get(1) == Some(&r.prediction_id)
        });
        if !recorded {
            return Err(ChainError::Node(format!(
                "transaction {} was mined without recording {} (no contract at {}?); it will \
                 be sent again",
                receipt.transaction_hash, r.prediction_id, self.contract
            )));
        }
        Ok(Mined {
            tx_hash: receipt.transaction_hash,
            block_number: receipt.block_number.unwrap_or_default(),
            block_hash: receipt.block_hash,
        })
    }

    /// The on-chain record of `prediction_id`, if any.
    pub async fn get(
        &self,
        prediction_id: B256,
    ) -> Result<Option<MedchainAudit::Record>, ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let rec = c
            .getRecord(prediction_id)
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        Ok((rec.timestamp != 0).then_some(rec))
    }

    /// How many records the contract holds.
    pub async fn record_count(&self) -> Result<u64, ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let n = c
            .recordCount()
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        Ok(n.to::<u64>())
    }

    /// The transaction that recorded `prediction_id`, found from the contract's event (after a
    /// crash between sending and noting the receipt, the resend is refused as a duplicate).
    pub async fn find_recorded(&self, prediction_id: B256) -> Result<Option<Mined>, ChainError> {
        let logs = self.record_events(|f| f.topic1(prediction_id)).await?;
        Ok(logs.first().and_then(|l| {
            Some(Mined {
                tx_hash: l.tx_hash?,
                block_number: l.block_number?,
                block_hash: l.block_hash,
            })
        }))
    }

    /// The contract's `PredictionRecorded` events matching `narrow`, decoded, oldest first.
    async fn record_events(
        &self,
        narrow: impl FnOnce(alloy::rpc::types::Filter) -> alloy::rpc::types::Filter,
    ) -> Result<Vec<RecordedLog>, ChainError> {
        use alloy::rpc::types::Filter;
        use alloy::sol_types::SolEvent;
        let filter = narrow(
            Filter::new()
                .address(self.contract)
                .event_signature(MedchainAudit::PredictionRecorded::SIGNATURE_HASH)
                .from_block(self.deployed_at),
        );
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        logs.iter()
            .map(|l| {
                let decoded = l
                    .log_decode::<MedchainAudit::PredictionRecorded>()
                    .map_err(|e| ChainError::Node(format!("undecodable record event: {e}")))?;
                Ok(RecordedLog {
                    prediction_id: decoded.inner.data.predictionId,
                    tx_hash: l.transaction_hash,
                    block_number: l.block_number,
                    block_hash: l.block_hash,
                    event: decoded.inner.data,
                })
            })
            .collect()
    }

    /// Every record of a patient reference, oldest first, from the contract's indexed event.
    pub async fn records_of(&self, patient_ref: B256) -> Result<Vec<RecordedLog>, ChainError> {
        self.record_events(|f| f.topic2(patient_ref)).await
    }

    /// The hash of block `number` as the node has it now; None beyond its head.
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(number.into())
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        Ok(block.map(|b| b.header.hash))
    }

    /// The signer's balance in wei.
    pub async fn signer_balance(&self) -> Result<alloy::primitives::U256, ChainError> {
        self.provider
            .get_balance(self.signer)
            .await
            .map_err(|e| ChainError::Node(e.to_string()))
    }

    /// Grants `account` the recorder role (the signer must be admin).
    pub async fn grant_recorder(&self, account: Address) -> Result<(), ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let call = c.grantRecorder(account);
        call.call().await.map_err(ChainError::from_contract)?;
        call.send()
            .await
            .map_err(ChainError::from_contract)?
            .get_receipt()
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        Ok(())
    }
}
