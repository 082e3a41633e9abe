//! The background sender: gathers waiting records into batches (one transaction commits to
//! hundreds), keeps several batch transactions in flight with nonces it assigns and stores,
//! follows their receipts, replaces a transaction that is stuck (fees raised, same nonce) or
//! dropped, gives a batch a new nonce when another transaction took its nonce, and marks the
//! batch's records confirmed. A record is only ever sent in its one batch, and the contract
//! refuses a batch id it already holds, so nothing is committed twice; a refusal of a batch of
//! ours (a resend after a crash, or a second transaction that lost the race) is recognised from
//! the chain's event and confirms it.

use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use medchain_core::metrics::name;
use tokio::sync::Notify;

use crate::chain::{AuditChain, BatchOutcome, Broadcast, ChainError, Commitment, Fees};
use crate::outbox::{Batch, Entry, Outbox, OutboxError, SentTx, now_ms};

/// Backoff bounds for an unreachable node.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// How records are batched and batch transactions sent (see `config/default.toml`).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most records in one batch.
    pub max_records: usize,
    /// A partial batch is sent once its oldest record waited this long and no other partial
    /// batch is in flight (full batches are sent at once).
    pub linger: Duration,
    /// Most batch transactions sent and not yet mined.
    pub max_in_flight: usize,
    /// A transaction not mined after this long is replaced with raised fees.
    pub replace_after: Duration,
    /// How much a replacement raises both fees (nodes want at least 10%).
    pub fee_bump_percent: u128,
    /// Never offer more than this per gas (wei).
    pub max_fee_per_gas: u128,
    /// Records confirmed this many blocks deep are final: compacted, no longer reconciled.
    pub final_depth: u64,
    /// How often the batches in flight are followed on chain (receipts, the nonce): passes
    /// woken in between by new records only form and send batches, with no reads.
    pub follow_every: Duration,
    /// Below this balance (wei) the signer is reported low (log, gauge; `/readyz` fails too).
    pub low_balance_wei: u128,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_records: 500,
            linger: Duration::from_millis(1000),
            max_in_flight: 8,
            replace_after: Duration::from_secs(60),
            fee_bump_percent: 15,
            max_fee_per_gas: 200_000_000_000,
            final_depth: 64,
            follow_every: Duration::from_secs(1),
            low_balance_wei: 1_000_000_000_000_000,
        }
    }
}

/// The sender's handles.
#[derive(Debug, Clone)]
pub struct Sender {
    outbox: Arc<Outbox>,
    chain: AuditChain,
    wake: Arc<Notify>,
    backoff: Backoff,
    batching: Batching,
    /// When the batches in flight were last followed, and the signer's balance last read.
    followed: Arc<std::sync::Mutex<(Option<std::time::Instant>, Option<std::time::Instant>)>>,
    reconcile_every: Duration,
    reconcile_asked: Arc<std::sync::atomic::AtomicBool>,
    /// The head (number, hash) the last reconciliation saw, and when it started (ms).
    checkpoint: Arc<std::sync::Mutex<Option<(u64, alloy::primitives::B256, u64)>>>,
}

/// Where a reconciliation's walk down the confirmed blocks stops (see `Sender::reconcile`).
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Before checking a block at or below this one: the chain is unchanged there.
    AtOrBelow(u64),
    /// After a block where a record confirmed by this time (ms) is still on chain.
    AtOldRecordKept(u64),
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Records confirmed.
    pub confirmed: usize,
    /// Records rejected.
    pub rejected: usize,
    /// Transactions sent (first sends, replacements and resends).
    pub sent: usize,
    /// Batches still in flight afterwards.
    pub in_flight: usize,
    /// Stopped early because the node failed; the rest waits.
    pub node_failed: bool,
}

impl Sender {
    pub fn new(outbox: Arc<Outbox>, chain: AuditChain, backoff: Backoff) -> Self {
        Self {
            outbox,
            chain,
            wake: Arc::new(Notify::new()),
            backoff,
            batching: Batching::default(),
            followed: Arc::new(std::sync::Mutex::new((None, None))),
            reconcile_every: Duration::from_secs(30),
            reconcile_asked: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            checkpoint: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Asks for a reconciliation now (e.g. after the embedded anvil came back from its state).
    pub fn reconcile_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let (asked, wake) = (self.reconcile_asked.clone(), self.wake.clone());
        move || {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            wake.notify_one();
        }
    }

    /// How often [`Sender::reconcile`] runs (it also runs at start).
    pub fn reconcile_every(mut self, every: Duration) -> Self {
        self.reconcile_every = every;
        self
    }

    /// How records are batched and sent.
    pub fn batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// Wakes the sender (call after accepting a record).
    pub fn notifier(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs forever: passes over the outbox, sleeping between them until woken or polled.
    pub async fn run(self, poll: Duration) {
        let mut delay = self.backoff.initial;
        let mut reconciled: Option<std::time::Instant> = None;
        loop {
            let asked = self
                .reconcile_asked
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            if asked || reconciled.is_none_or(|at| at.elapsed() >= self.reconcile_every) {
                match self.reconcile().await {
                    Ok(_) => {
                        reconciled = Some(std::time::Instant::now());
                        let _ = self.compact().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reconciliation with the chain failed; will retry")
                    }
                }
            }
            match self.pass().await {
                Ok(p) if p.node_failed => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.max);
                    continue;
                }
                Ok(p) => {
                    delay = self.backoff.initial;
                    if p.confirmed + p.rejected > 0 && p.in_flight < self.batching.max_in_flight {
                        continue; // room for more right away
                    }
                }
                Err(e) => tracing::error!(error = %e, "outbox unreadable"),
            }
            let _ = tokio::time::timeout(poll, self.wake.notified()).await;
        }
    }

    /// Compacts the records confirmed deeper than the finality depth; returns how many.
    pub async fn compact(&self) -> usize {
        let Ok(head) = self.chain.provider().get_block_number().await else {
            return 0;
        };
        // Final: at least `final_depth` blocks under the head.
        let Some(below) = (head + 1).checked_sub(self.batching.final_depth) else {
            return 0;
        };
        let outbox = self.outbox.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut n = 0;
            loop {
                match outbox.compact(below, 2_000) {
                    Ok(0) => break Ok(n),
                    Ok(k) => n += k,
                    Err(e) => break Err(e),
                }
            }
        })
        .await;
        match done {
            Ok(Ok(n)) => {
                if n > 0 {
                    metrics::counter!(name("records_compacted_total")).increment(n as u64);
                    tracing::info!(records = n, below, "final records compacted");
                }
                n
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "compaction failed; will retry");
                0
            }
            Err(_) => 0,
        }
    }

    /// One pass: follows the batches in flight (confirms the mined, replaces the stuck, resends
    /// the dropped, re-nonces those whose nonce another transaction took), then forms and sends
    /// new batches while there is room in flight.
    pub async fn pass(&self) -> Result<Pass, OutboxError> {
        let mut pass = Pass::default();
        let open = self.outbox.open_batches()?;
        let sent: Vec<&Batch> = open.iter().filter(|b| b.nonce.is_some()).collect();
        let mut in_flight = sent.len();
        let follow = self.follow_due();
        if follow && !sent.is_empty() {
            // The nonce the chain has mined up to, read once per follow.
            let mined_nonce = match self.chain.nonce(false).await {
                Ok(n) => n,
                Err(e) => return Ok(self.node_failed(pass, &e)),
            };
            in_flight = 0;
            for batch in sent {
                match self.follow(batch, mined_nonce, &mut pass).await {
                    Ok(still) => in_flight += usize::from(still),
                    Err(e) if e.is_transient() => return Ok(self.node_failed(pass, &e)),
                    Err(e) => self.reject(batch, &e, &mut pass)?,
                }
            }
        }
        if follow {
            self.check_balance().await;
        }
        // Batches waiting for a nonce: reopened after a reset, or their nonce taken.
        let mut waiting: std::collections::VecDeque<Batch> =
            open.into_iter().filter(|b| b.nonce.is_none()).collect();
        let partial_in_flight = self
            .outbox
            .open_batches()?
            .iter()
            .any(|b| b.nonce.is_some() && b.members.len() < self.batching.max_records);
        loop {
            if in_flight >= self.batching.max_in_flight {
                break;
            }
            let batch = match waiting.pop_front() {
                Some(b) => b,
                None => match self.new_batch(partial_in_flight, in_flight)? {
                    Some(b) => b,
                    None => break,
                },
            };
            match self.first_send(batch.clone(), &mut pass).await {
                Ok(true) => in_flight += 1,
                Ok(false) => {}
                Err(e) if e.is_transient() => return Ok(self.node_failed(pass, &e)),
                Err(e) => self.reject(&batch, &e, &mut pass)?,
            }
            if !waiting.is_empty() {
                continue;
            }
            let (count, _) = self.outbox.unbatched_stats()?;
            if (count as usize) < self.batching.max_records {
                break;
            }
        }
        pass.in_flight = in_flight;
        metrics::gauge!(name("batches_in_flight")).set(in_flight as f64);
        Ok(pass)
    }

    /// Whether this pass follows the batches in flight (every `follow_every`); if so, the
    /// next is due from now.
    fn follow_due(&self) -> bool {
        let mut f = self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due =
            f.0.is_none_or(|at| at.elapsed() >= self.batching.follow_every);
        if due {
            f.0 = Some(std::time::Instant::now());
        }
        due
    }

    /// A new batch of the records not yet in one, when it is time for one: a full batch at
    /// once; a partial one once its oldest record has lingered, and only while no batch is in
    /// flight (Nagle: one partial batch in flight at a time; full ones pipeline).
    fn new_batch(
        &self,
        partial_in_flight: bool,
        in_flight: usize,
    ) -> Result<Option<Batch>, OutboxError> {
        let (count, oldest) = self.outbox.unbatched_stats()?;
        let full = count as usize >= self.batching.max_records;
        let lingered = oldest.is_some_and(|at| {
            now_ms().saturating_sub(at) >= self.batching.linger.as_millis() as u64
        });
        if count == 0 || !(full || (lingered && !partial_in_flight && in_flight == 0)) {
            return Ok(None);
        }
        self.outbox.form_batch(self.batching.max_records)
    }

    /// Reads the signer's balance (at most once a minute) into `chain_signer_balance_wei` and
    /// says so loudly when it is below `low_balance_wei`: sending stops when gas cannot be paid.
    async fn check_balance(&self) {
        {
            let mut f = self
                .followed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if f.1.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
                return;
            }
            f.1 = Some(std::time::Instant::now());
        }
        let Ok(balance) = self.chain.signer_balance().await else {
            return;
        };
        let wei: u128 = balance.saturating_to();
        metrics::gauge!(name("signer_balance_wei")).set(wei as f64);
        if wei < self.batching.low_balance_wei {
            metrics::counter!(name("signer_balance_low_total")).increment(1);
            tracing::error!(signer = %self.chain.signer(), balance_wei = wei, below_wei = self.batching.low_balance_wei, "the signer is running out of funds for gas: add funds");
        }
    }

    fn node_failed(&self, mut pass: Pass, e: &ChainError) -> Pass {
        metrics::counter!(name("send_failures_total"), "kind" => "transient").increment(1);
        tracing::warn!(error = %e, "chain node failed; will retry");
        pass.node_failed = true;
        pass
    }

    fn reject(&self, batch: &Batch, e: &ChainError, pass: &mut Pass) -> Result<(), OutboxError> {
        metrics::counter!(name("send_failures_total"), "kind" => "rejected").increment(1);
        tracing::error!(batch = batch.seq, records = batch.members.len(), error = %e, "batch rejected");
        self.outbox.reject_batch(batch.seq, &e.to_string())?;
        pass.rejected += batch.members.len();
        Ok(())
    }

    fn confirm(
        &self,
        batch: &Batch,
        mined: &crate::chain::Mined,
        pass: &mut Pass,
    ) -> Result<(), ChainError> {
        let (_, accepted) = self
            .outbox
            .confirm_batch(batch.seq, mined)
            .map_err(|e| ChainError::Node(format!("outbox: {e}")))?;
        let n = batch.members.len();
        metrics::counter!(name("records_confirmed_total")).increment(n as u64);
        metrics::counter!(name("batches_confirmed_total")).increment(1);
        let now = now_ms();
        let latency = metrics::histogram!(name("record_confirm_seconds"));
        for at in accepted {
            latency.record(now.saturating_sub(at) as f64 / 1000.0);
        }
        tracing::info!(batch = batch.seq, records = n, block = mined.block_number, tx = %mined.tx_hash, "batch confirmed");
        pass.confirmed += n;
        Ok(())
    }

    /// The batch's commitments, from its records in the outbox.
    fn items(&self, batch: &Batch) -> Result<Vec<Commitment>, ChainError> {
        batch
            .members
            .iter()
            .map(|id| match self.outbox.get(id) {
                Ok(Some(e)) => Ok(e.record.commitment()),
                Ok(None) => Err(ChainError::Node(format!("outbox lost record {id}"))),
                Err(e) => Err(ChainError::Node(format!("outbox: {e}"))),
            })
            .collect()
    }

    /// A batch already on chain (a resend refused as a duplicate): confirms it from the event.
    async fn confirm_from_chain(&self, batch: &Batch, pass: &mut Pass) -> Result<bool, ChainError> {
        if self.chain.get_batch(batch.id).await?.is_none() {
            return Ok(false);
        }
        let mined = self
            .chain
            .find_batch(batch.id)
            .await?
            .ok_or_else(|| ChainError::Node("batch event not found yet".into()))?;
        self.confirm(batch, &mined, pass)?;
        Ok(true)
    }

    /// Sends a batch that has no nonce: simulates it, takes the lowest nonce no other open batch
    /// holds (at or above the chain's pending nonce: this fills a gap a reset left, and never
    /// competes with a transaction already waiting in the pool), stores nonce and hash, sends.
    /// Returns whether it is in flight.
    async fn first_send(&self, mut batch: Batch, pass: &mut Pass) -> Result<bool, ChainError> {
        let items = self.items(&batch)?;
        let gas = match self.chain.simulate_batch(&items).await {
            Ok((id, _)) if id != batch.id => {
                // The contract's id is what its event carries: a batch whose id we computed
                // differently could never be confirmed.
                return Err(ChainError::Invalid(format!(
                    "the contract gives batch {} the id {id}, not {}",
                    batch.seq, batch.id
                )));
            }
            Ok((_, gas)) => gas,
            Err(ChainError::DuplicateBatch(_)) => {
                if self.confirm_from_chain(&batch, pass).await? {
                    return Ok(false);
                }
                return Err(ChainError::Node(
                    "batch refused as a duplicate but not found".into(),
                ));
            }
            Err(e) => return Err(e),
        };
        let pending = self.chain.nonce(true).await?;
        let held: std::collections::HashSet<u64> = self
            .outbox
            .open_batches()
            .map_err(|e| ChainError::Node(format!("outbox: {e}")))?
            .iter()
            .filter_map(|b| b.nonce)
            .collect();
        let nonce = (pending..).find(|n| !held.contains(n)).unwrap_or(pending);
        let fees = self
            .chain
            .market_fees(self.batching.max_fee_per_gas)
            .await?;
        batch.nonce = Some(nonce);
        batch.gas = Some(gas);
        self.send_signed(&mut batch, &items, fees, pass).await?;
        Ok(true)
    }

    /// Signs the batch at its nonce with `fees`, stores the hash, then broadcasts.
    async fn send_signed(
        &self,
        batch: &mut Batch,
        items: &[Commitment],
        fees: Fees,
        pass: &mut Pass,
    ) -> Result<(), ChainError> {
        let (Some(nonce), Some(gas)) = (batch.nonce, batch.gas) else {
            return Err(ChainError::Node("batch without nonce or gas".into()));
        };
        let signed = self.chain.sign_batch(items, nonce, gas, fees).await?;
        if !batch.sends.iter().any(|t| t.hash == signed.hash) {
            batch.sends.push(SentTx {
                hash: signed.hash,
                nonce,
                fees,
                sent_at_ms: now_ms(),
            });
        }
        // Stored before it leaves: after a crash, every hash that may be mined is known.
        self.outbox
            .save_batch(batch)
            .map_err(|e| ChainError::Node(format!("outbox: {e}")))?;
        match self.chain.broadcast(&signed.raw).await {
            Broadcast::Accepted | Broadcast::AlreadyKnown => {
                metrics::counter!(name("batch_transactions_sent_total")).increment(1);
                tracing::debug!(batch = batch.seq, nonce, tx = %signed.hash, records = items.len(), "batch sent");
                pass.sent += 1;
                Ok(())
            }
            Broadcast::NonceTooLow => {
                // Mined already: ours (followed next pass) or another's (then re-nonced).
                tracing::info!(
                    batch = batch.seq,
                    nonce,
                    "nonce already used; checking receipts"
                );
                Ok(())
            }
            Broadcast::Underpriced(e) => {
                // Another transaction with this nonce waits in the pool; replaced later.
                tracing::warn!(batch = batch.seq, nonce, error = %e, "a transaction with this nonce is waiting; will replace it");
                Ok(())
            }
            Broadcast::Failed(e) => Err(e),
        }
    }

    /// Follows a sent batch; returns whether it is still in flight.
    async fn follow(
        &self,
        batch: &Batch,
        mined_nonce: u64,
        pass: &mut Pass,
    ) -> Result<bool, ChainError> {
        let Some(nonce) = batch.nonce else {
            return Ok(false);
        };
        // Every hash ever sent for it, newest first: any of them may be the one mined.
        for sent in batch.sends.iter().rev() {
            let Some(receipt) = self.chain.receipt(sent.hash).await? else {
                continue;
            };
            match self.chain.outcome(&receipt, batch.id) {
                BatchOutcome::Recorded(m) => {
                    self.confirm(batch, &m, pass)?;
                    return Ok(false);
                }
                BatchOutcome::Reverted | BatchOutcome::NotRecorded => {
                    // Its nonce is spent. Refused as a duplicate of ours: confirmed from the
                    // chain; refused for a reason the contract decides: rejected; otherwise
                    // (no contract yet, out of gas) sent again at a new nonce.
                    if self.confirm_from_chain(batch, pass).await? {
                        return Ok(false);
                    }
                    let items = self.items(batch)?;
                    self.chain.simulate_batch(&items).await?;
                    self.renonce(batch, "its transaction was mined without recording it")?;
                    return Ok(false);
                }
            }
        }
        if mined_nonce > nonce {
            // The chain has passed this nonce and none of our hashes holds it: another
            // transaction from the signer took it (or ours is mined and its receipt not yet
            // served; then the duplicate check at the next send finds it).
            if self.confirm_from_chain(batch, pass).await? {
                return Ok(false);
            }
            metrics::counter!(name("nonce_taken_total")).increment(1);
            tracing::warn!(
                batch = batch.seq,
                nonce,
                "another transaction from the signer used this nonce; sending the batch at a new one"
            );
            self.renonce(batch, "another transaction from the signer used its nonce")?;
            return Ok(false);
        }
        let Some(last) = batch.last_send().cloned() else {
            return Ok(true);
        };
        let age = Duration::from_millis(now_ms().saturating_sub(last.sent_at_ms));
        let dropped = !self.chain.knows(last.hash).await?;
        if !dropped && age < self.batching.replace_after {
            return Ok(true);
        }
        // Dropped from the pool, or stuck (fees below what blocks now take): replaced at the
        // same nonce with both fees raised.
        let market = self
            .chain
            .market_fees(self.batching.max_fee_per_gas)
            .await?;
        let mut fees = last.fees.bumped(market, self.batching.fee_bump_percent);
        fees.max_fee_per_gas = fees.max_fee_per_gas.min(self.batching.max_fee_per_gas);
        fees.max_priority_fee_per_gas = fees.max_priority_fee_per_gas.min(fees.max_fee_per_gas);
        let why = if dropped { "dropped" } else { "stuck" };
        metrics::counter!(name("batch_transactions_replaced_total"), "why" => why).increment(1);
        tracing::warn!(batch = batch.seq, nonce, tx = %last.hash, why, max_fee = fees.max_fee_per_gas, tip = fees.max_priority_fee_per_gas, "replacing the batch transaction");
        let items = self.items(batch)?;
        let mut b = batch.clone();
        self.send_signed(&mut b, &items, fees, pass).await?;
        Ok(true)
    }

    /// Takes a batch's nonce away (it is spent or lost); it is sent again at a new one.
    fn renonce(&self, batch: &Batch, why: &str) -> Result<(), ChainError> {
        let mut b = batch.clone();
        b.nonce = None;
        b.last_error = Some(why.to_string());
        self.outbox
            .save_batch(&b)
            .map_err(|e| ChainError::Node(format!("outbox: {e}")))
    }

    /// Finds records the outbox holds as confirmed that the chain no longer holds — their block
    /// was dropped by a reset (an embedded anvil killed with chain-svc restarts from the state it
    /// saved up to a second earlier) or a reorganisation — and queues them to be sent again
    /// (the resend of one the chain does hold after all is recognised as a duplicate of ours).
    ///
    /// A reset or a reorganisation replaces the chain from some block on, and the blocks below
    /// stay as they were. Each pass remembers the head it saw (number, hash, time). When that
    /// block still has its hash, only confirmed blocks above it are checked. Otherwise the walk
    /// goes down, checking every block, to the first block that still holds a record confirmed
    /// before that pass: that block is from before the change, so everything below it is too.
    /// (Stopping at the first block the chain still has is not enough: records confirmed on the
    /// new chain after a reset can sit in blocks above the lost ones — seen with the CPUs busy
    /// in `a_dead_embedded_anvil_is_started_again`, and made to happen in
    /// `records_confirmed_after_a_reset_do_not_hide_the_lost_ones`.) The first pass of a process
    /// runs before it sends anything: every confirmed record there is from before. Returns how
    /// many were queued again.
    pub async fn reconcile(&self) -> Result<usize, ChainError> {
        let outbox_err = |e: OutboxError| ChainError::Node(format!("outbox: {e}"));
        let head = self
            .chain
            .provider()
            .get_block_number()
            .await
            .map_err(|e| ChainError::Node(e.to_string()))?;
        let head_hash = self.chain.block_hash(head).await?;
        let started_ms = crate::outbox::now_ms();
        let stop = self.stop_point().await?;
        let mut below = u64::MAX;
        let mut lost = 0;
        'walk: loop {
            let groups = self
                .outbox
                .confirmed_blocks(below, 16)
                .map_err(outbox_err)?;
            if groups.is_empty() {
                break;
            }
            for (block, entries) in groups {
                if matches!(stop, Stop::AtOrBelow(n) if block <= n) {
                    break 'walk;
                }
                let (sent_again, old_kept) = self.check_block(block, &entries, head, stop).await?;
                lost += sent_again;
                if old_kept || block == 0 {
                    break 'walk;
                }
                below = block - 1;
            }
        }
        if let Some(hash) = head_hash {
            *self
                .checkpoint
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((head, hash, started_ms));
        }
        if lost > 0 {
            self.wake.notify_one();
        }
        Ok(lost)
    }

    /// Where this pass's walk down the confirmed blocks may stop, from the last checkpoint.
    async fn stop_point(&self) -> Result<Stop, ChainError> {
        let checkpoint = *self
            .checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(match checkpoint {
            // The first pass of this process: every record was confirmed before it.
            None => Stop::AtOldRecordKept(u64::MAX),
            // The chain is as it was up to the checkpoint: only blocks above it can have changed.
            Some((n, hash, _)) if self.chain.block_hash(n).await? == Some(hash) => {
                Stop::AtOrBelow(n)
            }
            // Replaced from lower down.
            Some((_, _, at_ms)) => Stop::AtOldRecordKept(at_ms),
        })
    }

    /// Checks the records confirmed in `block` against the chain and sends again those it no
    /// longer holds (a whole batch again, as it was). Returns how many were sent again and
    /// whether a record older than `stop` is still there (the walk can stop).
    async fn check_block(
        &self,
        block: u64,
        entries: &[Entry],
        head: u64,
        stop: Stop,
    ) -> Result<(usize, bool), ChainError> {
        let outbox_err = |e: OutboxError| ChainError::Node(format!("outbox: {e}"));
        let current = if block > head {
            None
        } else {
            self.chain.block_hash(block).await?
        };
        let mut old_kept = false;
        let mut lost = 0;
        let mut reopened = std::collections::HashSet::new();
        for e in entries {
            let gone = match (e.block_hash, current) {
                (Some(h), Some(c)) => h != c,
                (Some(_), None) => true,
                // Confirmed before block hashes were kept: ask for the record itself.
                (None, _) => self.chain.commitments(e.id()).await?.is_empty(),
            };
            if !gone {
                if let Stop::AtOldRecordKept(by) = stop {
                    old_kept |= e.confirmed_at_ms.is_none_or(|at| at <= by);
                }
                continue;
            }
            let why = format!(
                "block {block} no longer holds it (the chain was reset or reorganised); sending \
                 it again"
            );
            tracing::warn!(prediction = %e.id(), block, "confirmed record not on chain; sending it again");
            match e.batch {
                // The whole batch again, as it was (same id).
                Some(seq) => {
                    if reopened.insert(seq) {
                        let b = self.outbox.reopen_batch(seq, &why).map_err(outbox_err)?;
                        metrics::counter!(name("records_reconciled_total"))
                            .increment(b.members.len() as u64);
                        lost += b.members.len();
                    }
                }
                None => {
                    self.outbox.mark_lost(&e.id(), &why).map_err(outbox_err)?;
                    metrics::counter!(name("records_reconciled_total")).increment(1);
                    lost += 1;
                }
            }
        }
        Ok((lost, old_kept))
    }
}
