//! The background sender: drains the outbox oldest first, sends each record, waits for its
//! receipt, and marks it confirmed; retries with exponential backoff while the node is
//! unreachable; never records twice (the contract refuses a duplicate id, and a duplicate that
//! is ours — a resend after a crash — is recognised and confirmed from the chain's event).

use std::sync::Arc;
use std::time::Duration;

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
        }
    }

    /// Wakes the sender (call after accepting a record).
    pub fn notifier(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs forever: passes over the outbox, sleeping between them until woken or polled.
    pub async fn run(self, poll: Duration) {
        let mut delay = self.backoff.initial;
        loop {
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
            .mark_confirmed(&id, mined.tx_hash, mined.block_number)
            .map_err(|e| ChainError::Node(format!("outbox: {e}")))?;
        Ok(())
    }
}
