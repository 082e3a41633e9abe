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
    #[error("batch {0} is already recorded on chain")]
    DuplicateBatch(B256),
    #[error("{0} is not a recorder of the audit contract")]
    NotRecorder(Address),
    #[error("{0} is not the admin of the audit contract")]
    NotAdmin(Address),
    #[error("the contract rejected the batch: {0}")]
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
            Some(E::DuplicateBatch(d)) => Self::DuplicateBatch(d.batchId),
            Some(E::NotRecorder(d)) => Self::NotRecorder(d.caller),
            Some(E::NotAdmin(d)) => Self::NotAdmin(d.caller),
            Some(E::InvalidBatch(d)) => Self::Invalid(d.reason),
            Some(E::InvalidRecord(d)) => Self::Invalid(format!("record {}: {}", d.index, d.reason)),
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

/// One record's fields: hashes and small codes only. Only its hash goes on chain (with the id
/// and the patient reference); the fields travel in the receipt and stay in the outbox.
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

impl RecordInput {
    /// keccak256(abi.encode(predictionId, patientRef, modelIdHash, inputCommitment, disease,
    /// modality, label, probabilityBps)), as the contract's `hashRecord`.
    pub fn record_hash(&self) -> B256 {
        // abi.encode of eight static values: one 32-byte word each, integers right-aligned.
        let mut words = [0u8; 8 * 32];
        for (i, h) in [
            self.prediction_id,
            self.patient_ref,
            self.model_id_hash,
            self.input_commitment,
        ]
        .iter()
        .enumerate()
        {
            words[i * 32..(i + 1) * 32].copy_from_slice(h.as_slice());
        }
        words[4 * 32 + 31] = self.disease;
        words[5 * 32 + 31] = self.modality;
        words[6 * 32 + 31] = self.label;
        words[7 * 32 + 30..].copy_from_slice(&self.probability_bps.to_be_bytes());
        keccak256(words)
    }

    /// What the batch call carries for it.
    pub fn commitment(&self) -> Commitment {
        Commitment {
            predictionId: self.prediction_id,
            patientRef: self.patient_ref,
            recordHash: self.record_hash(),
        }
    }
}

pub use MedchainAudit::Commitment;

/// The id the contract gives a batch: keccak256(abi.encode(items)).
pub fn batch_id(items: &[Commitment]) -> B256 {
    keccak256(items.to_vec().abi_encode())
}

/// A mined batch.
#[derive(Debug, Clone)]
pub struct Mined {
    pub tx_hash: TxHash,
    pub block_number: u64,
    /// The block's hash, to notice later that the chain no longer holds that block (a reset
    /// or a reorganisation) — see `Sender::reconcile`.
    pub block_hash: Option<B256>,
}

/// A record's commitment found on chain.
#[derive(Debug, Clone)]
pub struct CommittedLog {
    pub prediction_id: B256,
    pub patient_ref: B256,
    pub record_hash: B256,
    pub tx_hash: Option<TxHash>,
    pub block_number: Option<u64>,
    pub block_hash: Option<B256>,
}

/// EIP-1559 fees of one transaction, wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

impl Fees {
    /// The fees of a replacement: both raised by at least `percent` (nodes refuse a replacement
    /// that raises either by less than their minimum: geth 10%) and to at least `market`.
    pub fn bumped(self, market: Fees, percent: u128) -> Fees {
        let up = |x: u128| {
            x.saturating_add((x * percent).div_ceil(100))
                .saturating_add(1)
        };
        let tip = up(self.max_priority_fee_per_gas).max(market.max_priority_fee_per_gas);
        Fees {
            max_fee_per_gas: up(self.max_fee_per_gas)
                .max(market.max_fee_per_gas)
                .max(tip),
            max_priority_fee_per_gas: tip,
        }
    }
}

/// A signed transaction, not yet sent.
#[derive(Debug, Clone)]
pub struct Signed {
    pub hash: TxHash,
    pub raw: Bytes,
}

/// The node's answer to a broadcast.
#[derive(Debug)]
pub enum Broadcast {
    Accepted,
    /// The node holds this very transaction already.
    AlreadyKnown,
    /// A transaction with this nonce is already mined (ours or another).
    NonceTooLow,
    /// A transaction with this nonce waits in the pool with fees this one does not exceed
    /// enough.
    Underpriced(String),
    Failed(ChainError),
}

/// What a mined transaction did for its batch.
#[derive(Debug, Clone)]
pub enum BatchOutcome {
    Recorded(Mined),
    Reverted,
    /// Succeeded without the contract's event (no code at the address).
    NotRecorded,
}

/// The contract, reached through one provider built once.
#[derive(Debug, Clone)]
pub struct AuditChain {
    provider: DynProvider,
    wallet: EthereumWallet,
    chain_id: u64,
    signer: Address,
    contract: Address,
    /// The block the contract was deployed in: where every log query starts (not block 0, which
    /// on a public chain scans its whole history).
    deployed_at: u64,
    /// How long `record_batch` waits for a receipt.
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
        medchain_core::http::init_tls();
        let me = signer.address();
        let wallet = EthereumWallet::from(signer);
        // Record batches are signed here with nonces the sender manages; the provider's own
        // fillers serve the rare other transactions (deployment, roles).
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(wallet.clone())
            .connect_http(rpc_url)
            .erased();
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        let contract = match configured {
            Some(addr) => addr,
            None => deployment_address(me, me, salt),
        };
        let mut chain = Self {
            provider,
            wallet,
            chain_id,
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

    /// The chain id the node reports.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The signer's address.
    pub fn signer(&self) -> Address {
        self.signer
    }

    /// The provider (reads: balances, blocks, transactions).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Checks a batch by simulating it (a revert — not a recorder, a batch already recorded —
    /// is decided here and decoded, before anything is signed) and estimates its gas. Returns
    /// the batch id the contract computes and the gas limit to send with (the estimate + 20%).
    pub async fn simulate_batch(&self, items: &[Commitment]) -> Result<(B256, u64), ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let call = c.recordBatch(items.to_vec()).from(self.signer);
        let id = call.call().await.map_err(ChainError::from_contract)?;
        let gas = call
            .estimate_gas()
            .await
            .map_err(ChainError::from_contract)?;
        Ok((id, gas + gas / 5))
    }

    /// Fees to offer now: a tip of what the node suggests, and a cap of twice the latest base
    /// fee plus the tip (room for six full blocks of base-fee rises), never above `max_fee`.
    pub async fn market_fees(&self, max_fee: u128) -> Result<Fees, ChainError> {
        let node = |e: &dyn std::fmt::Display| ChainError::Node(e.to_string());
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| node(&e))?
            .ok_or_else(|| ChainError::Node("the node has no latest block".into()))?;
        let base = u128::from(block.header.base_fee_per_gas.unwrap_or_default());
        let tip = self
            .provider
            .get_max_priority_fee_per_gas()
            .await
            .map_err(|e| node(&e))?;
        let tip = tip.min(max_fee);
        Ok(Fees {
            max_fee_per_gas: (2 * base + tip).min(max_fee).max(tip),
            max_priority_fee_per_gas: tip,
        })
    }

    /// Signs the batch as an EIP-1559 transaction with the given nonce, gas and fees; nothing
    /// is sent. The hash is known (and can be stored) before the transaction leaves.
    pub async fn sign_batch(
        &self,
        items: &[Commitment],
        nonce: u64,
        gas: u64,
        fees: Fees,
    ) -> Result<Signed, ChainError> {
        use alloy::eips::eip2718::Encodable2718;
        use alloy::network::{NetworkTransactionBuilder, TransactionBuilder};
        use alloy::sol_types::SolCall;
        let data = MedchainAudit::recordBatchCall {
            items: items.to_vec(),
        }
        .abi_encode();
        let tx = TransactionRequest::default()
            .with_from(self.signer)
            .with_to(self.contract)
            .with_input(data)
            .with_chain_id(self.chain_id)
            .with_nonce(nonce)
            .with_gas_limit(gas)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let envelope = tx
            .build(&self.wallet)
            .await
            .map_err(|e| ChainError::Node(format!("signing: {e}")))?;
        Ok(Signed {
            hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
        })
    }

    /// Hands a signed transaction to the node, with its answer sorted out.
    pub async fn broadcast(&self, raw: &[u8]) -> Broadcast {
        match self.provider.send_raw_transaction(raw).await {
            Ok(_) => Broadcast::Accepted,
            Err(e) => {
                let text = e.to_string();
                let lower = text.to_ascii_lowercase();
                if lower.contains("nonce too low") || lower.contains("nonce is too low") {
                    Broadcast::NonceTooLow
                } else if lower.contains("already known")
                    || lower.contains("already imported")
                    || lower.contains("known transaction")
                {
                    Broadcast::AlreadyKnown
                } else if lower.contains("underpriced") {
                    Broadcast::Underpriced(text)
                } else {
                    Broadcast::Failed(ChainError::Node(text))
                }
            }
        }
    }

    /// The receipt of `hash`, if mined.
    pub async fn receipt(
        &self,
        hash: TxHash,
    ) -> Result<Option<alloy::rpc::types::TransactionReceipt>, ChainError> {
        self.provider
            .get_transaction_receipt(hash)
            .await
            .map_err(|e| ChainError::Node(e.to_string()))
    }

    /// Whether the node still knows `hash` (in its pool or mined).
    pub async fn knows(&self, hash: TxHash) -> Result<bool, ChainError> {
        self.provider
            .get_transaction_by_hash(hash)
            .await
            .map(|t| t.is_some())
            .map_err(|e| ChainError::Node(e.to_string()))
    }

    /// The signer's nonce: mined transactions only (`pending = false`) or with the node's pool.
    pub async fn nonce(&self, pending: bool) -> Result<u64, ChainError> {
        let call = self.provider.get_transaction_count(self.signer);
        let call = if pending {
            call.pending()
        } else {
            call.latest()
        };
        call.await.map_err(|e| ChainError::Node(e.to_string()))
    }

    /// What a mined receipt did for batch `batch_id`: recorded it (the contract's own
    /// `BatchRecorded` log for that id is in it: mined is not recorded — a call to an address
    /// without code succeeds and records nothing), reverted, or mined without recording.
    pub fn outcome(
        &self,
        receipt: &alloy::rpc::types::TransactionReceipt,
        batch_id: B256,
    ) -> BatchOutcome {
        use alloy::sol_types::SolEvent;
        if !receipt.status() {
            return BatchOutcome::Reverted;
        }
        let recorded = receipt.inner.logs().iter().any(|l| {
            l.address() == self.contract
                && l.topics().first() == Some(&MedchainAudit::BatchRecorded::SIGNATURE_HASH)
                && l.topics().get(1) == Some(&batch_id)
        });
        if recorded {
            BatchOutcome::Recorded(Mined {
                tx_hash: receipt.transaction_hash,
                block_number: receipt.block_number.unwrap_or_default(),
                block_hash: receipt.block_hash,
            })
        } else {
            BatchOutcome::NotRecorded
        }
    }

    /// Records a batch the simple way — simulate, sign at the node's pending nonce, send, wait
    /// for the receipt (up to the receipt timeout) — for tools and tests. The service's sender
    /// keeps several batches in flight instead (`Sender`).
    pub async fn record_batch(&self, records: &[RecordInput]) -> Result<Mined, ChainError> {
        let items: Vec<Commitment> = records.iter().map(RecordInput::commitment).collect();
        let (id, gas) = self.simulate_batch(&items).await?;
        let fees = self.market_fees(u128::MAX).await?;
        let nonce = self.nonce(true).await?;
        let signed = self.sign_batch(&items, nonce, gas, fees).await?;
        match self.broadcast(&signed.raw).await {
            Broadcast::Accepted | Broadcast::AlreadyKnown => {}
            Broadcast::NonceTooLow => return Err(ChainError::Node("nonce too low".into())),
            Broadcast::Underpriced(e) => return Err(ChainError::Node(e)),
            Broadcast::Failed(e) => return Err(e),
        }
        let deadline = std::time::Instant::now() + self.receipt_timeout;
        loop {
            if let Some(r) = self.receipt(signed.hash).await? {
                return match self.outcome(&r, id) {
                    BatchOutcome::Recorded(m) => Ok(m),
                    BatchOutcome::Reverted => Err(ChainError::Node(format!(
                        "batch transaction {} reverted",
                        signed.hash
                    ))),
                    BatchOutcome::NotRecorded => Err(ChainError::Node(format!(
                        "transaction {} was mined without recording the batch (no contract at \
                         {}?)",
                        signed.hash, self.contract
                    ))),
                };
            }
            if std::time::Instant::now() >= deadline {
                return Err(ChainError::Node(format!(
                    "transaction {} not mined within {:?}",
                    signed.hash, self.receipt_timeout
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The batch of `batch_id` as the contract holds it, if recorded.
    pub async fn get_batch(
        &self,
        batch_id: B256,
    ) -> Result<Option<MedchainAudit::Batch>, ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let b = c
            .getBatch(batch_id)
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        Ok((b.timestamp != 0).then_some(b))
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

    /// The transaction that recorded batch `batch_id`, from the contract's `BatchRecorded`
    /// event (after a crash between sending and noting the receipt, or when a second
    /// transaction for the same batch was refused as a duplicate).
    pub async fn find_batch(&self, batch_id: B256) -> Result<Option<Mined>, ChainError> {
        use alloy::rpc::types::Filter;
        use alloy::sol_types::SolEvent;
        let filter = Filter::new()
            .address(self.contract)
            .event_signature(MedchainAudit::BatchRecorded::SIGNATURE_HASH)
            .topic1(batch_id)
            .from_block(self.deployed_at);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        Ok(logs.first().and_then(|l| {
            Some(Mined {
                tx_hash: l.transaction_hash?,
                block_number: l.block_number?,
                block_hash: l.block_hash,
            })
        }))
    }

    /// The contract's `PredictionCommitted` events matching `narrow`, decoded, oldest first.
    async fn commitment_events(
        &self,
        narrow: impl FnOnce(alloy::rpc::types::Filter) -> alloy::rpc::types::Filter,
    ) -> Result<Vec<CommittedLog>, ChainError> {
        use alloy::rpc::types::Filter;
        use alloy::sol_types::SolEvent;
        let filter = narrow(
            Filter::new()
                .address(self.contract)
                .event_signature(MedchainAudit::PredictionCommitted::SIGNATURE_HASH)
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
                    .log_decode::<MedchainAudit::PredictionCommitted>()
                    .map_err(|e| ChainError::Node(format!("undecodable record event: {e}")))?;
                let ev = decoded.inner.data;
                Ok(CommittedLog {
                    prediction_id: ev.predictionId,
                    patient_ref: ev.patientRef,
                    record_hash: ev.recordHash,
                    tx_hash: l.transaction_hash,
                    block_number: l.block_number,
                    block_hash: l.block_hash,
                })
            })
            .collect()
    }

    /// The chain's commitments to `prediction_id`, oldest first: one, unless another recorder
    /// (or another outbox) committed the same id too — the first one counts.
    pub async fn commitments(&self, prediction_id: B256) -> Result<Vec<CommittedLog>, ChainError> {
        self.commitment_events(|f| f.topic1(prediction_id)).await
    }

    /// Every record of a patient reference, oldest first, from the contract's indexed event.
    pub async fn records_of(&self, patient_ref: B256) -> Result<Vec<CommittedLog>, ChainError> {
        self.commitment_events(|f| f.topic2(patient_ref)).await
    }

    /// The time of block `number` (seconds), if the node has it.
    pub async fn block_time(&self, number: u64) -> Result<Option<u64>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(number.into())
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        Ok(block.map(|b| b.header.timestamp))
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

    /// Whether `account` may record, and the contract's admin (who grants and revokes).
    pub async fn recorder_status(&self, account: Address) -> Result<(bool, Address), ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let is = c
            .isRecorder(account)
            .call()
            .await
            .map_err(ChainError::from_contract)?;
        let admin = c.admin().call().await.map_err(ChainError::from_contract)?;
        Ok((is, admin))
    }

    /// Grants (`on`) or revokes the recorder role of `account`, signed by this service's key
    /// (which must be the contract's admin: the call is simulated first, so a refusal costs
    /// nothing). Returns the transaction's hash once the node has it, not waiting for a block.
    pub async fn set_recorder(&self, account: Address, on: bool) -> Result<TxHash, ChainError> {
        let c = MedchainAudit::new(self.contract, &self.provider);
        let pending = if on {
            let call = c.grantRecorder(account);
            call.call().await.map_err(ChainError::from_contract)?;
            call.send().await.map_err(ChainError::from_contract)?
        } else {
            let call = c.revokeRecorder(account);
            call.call().await.map_err(ChainError::from_contract)?;
            call.send().await.map_err(ChainError::from_contract)?
        };
        Ok(*pending.tx_hash())
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
