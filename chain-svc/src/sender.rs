//! The background sender: drains the outbox oldest first, sends each record, waits for its
//! receipt, and marks it confirmed; retries with exponential backoff while the node is
//! unreachable; never records twice (the contract refuses a duplicate id, and a duplicate that
//! is ours — a resend after a crash — is recognised and confirmed from the chain's event).

use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use medchain_shared::metrics::name;
use tokio::sync::Notify;

use crate::chain::{AuditChain, ChainError};
use crate::outbox::{Entry, Outbox, OutboxError};

/// Backoff bounds for an unreachable node.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// The sender's handles.
#[derive(Debug, Clone)]
pub struct Sender {
    outbox: Arc<Outbox>,
    chain: AuditChain,
    wake: Arc<Notify>,
    backoff: Backoff,
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
    pub confirmed: usize,
    pub rejected: usize,
    /// Stopped early because the node failed; the rest stays pending.
    pub node_failed: bool,
}

impl Sender {
    pub fn new(outbox: Arc<Outbox>, chain: AuditChain, backoff: Backoff) -> Self {
        Self {
            outbox,
            chain,
            wake: Arc::new(Notify::new()),
            backoff,
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
                    Ok(_) => reconciled = Some(std::time::Instant::now()),
                    Err(e) => {
                        tracing::warn!(error = %e, "reconciliation with the chain failed; will retry")
                    }
                }
            }
            match self.pass(64).await {
                Ok(p) if p.node_failed => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.max);
                    continue;
                }
                Ok(p) => {
                    delay = self.backoff.initial;
                    if p.confirmed + p.rejected > 0 {
                        continue; // there may be more
                    }
                }
                Err(e) => tracing::error!(error = %e, "outbox unreadable"),
            }
            let _ = tokio::time::timeout(poll, self.wake.notified()).await;
        }
    }

    /// One pass over up to `limit` pending entries.
    pub async fn pass(&self, limit: usize) -> Result<Pass, OutboxError> {
        let mut pass = Pass::default();
        for entry in self.outbox.pending(limit)? {
            match self.send(&entry).await {
                Ok(()) => {
                    metrics::counter!(name("records_confirmed_total")).increment(1);
                    pass.confirmed += 1;
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!(name("send_failures_total"), "kind" => "transient")
                        .increment(1);
                    tracing::warn!(prediction = %entry.id(), error = %e, "send failed; will retry");
                    self.outbox
                        .mark_attempt_failed(&entry.id(), &e.to_string())?;
                    pass.node_failed = true;
                    return Ok(pass);
                }
                Err(e) => {
                    metrics::counter!(name("send_failures_total"), "kind" => "rejected")
                        .increment(1);
                    tracing::error!(prediction = %entry.id(), error = %e, "record rejected");
                    self.outbox.mark_rejected(&entry.id(), &e.to_string())?;
                    pass.rejected += 1;
                }
            }
        }
        Ok(pass)
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
        let checkpoint = *self
            .checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stop = match checkpoint {
            // The first pass of this process: every record was confirmed before it.
            None => Stop::AtOldRecordKept(u64::MAX),
            // The chain is as it was up to the checkpoint: only blocks above it can have changed.
            Some((n, hash, _)) if self.chain.block_hash(n).await? == Some(hash) => {
                Stop::AtOrBelow(n)
            }
            // Replaced from lower down.
            Some((_, _, at_ms)) => Stop::AtOldRecordKept(at_ms),
        };
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
                let current = if block > head {
                    None
                } else {
                    self.chain.block_hash(block).await?
                };
                let mut old_kept = false;
                for e in &entries {
                    let gone = match (e.block_hash, current) {
                        (Some(h), Some(c)) => h != c,
                        (Some(_), None) => true,
                        // Confirmed before block hashes were kept: ask for the record itself.
                        (None, _) => self.chain.get(e.id()).await?.is_none(),
                    };
                    if gone {
                        let why = format!(
                            "block {block} no longer holds it (the chain was reset or \
                             reorganised); sending it again"
                        );
                        tracing::warn!(prediction = %e.id(), block, "confirmed record not on chain; sending it again");
                        self.outbox.mark_lost(&e.id(), &why).map_err(outbox_err)?;
                        metrics::counter!(name("records_reconciled_total")).increment(1);
                        lost += 1;
                    } else if let Stop::AtOldRecordKept(by) = stop {
                        old_kept |= e.confirmed_at_ms.is_none_or(|at| at <= by);
                    }
                }
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

    async fn send(&self, entry: &Entry) -> Result<(), ChainError> {
        let id = entry.id();
        let mined = match self.chain.record(&entry.record).await {
            Ok(m) => m,
            Err(ChainError::Duplicate(_)) => {
                // Ours if the chain holds our commitment: a resend after a crash.
                let on_chain = self.chain.get(id).await?;
                match on_chain {
                    Some(r) if r.inputCommitment == entry.record.input_commitment => self
                        .chain
                        .find_recorded(id)
                        .await?
                        .ok_or_else(|| ChainError::Node("record event not found yet".into()))?,
                    _ => return Err(ChainError::Duplicate(id)),
                }
            }
            Err(e) => return Err(e),
        };
        self.outbox
            .mark_confirmed(&id, mined.tx_hash, mined.block_number, mined.block_hash)
            .map_err(|e| ChainError::Node(format!("outbox: {e}")))?;
        Ok(())
    }
}
