//! The memory guard: a model is loaded only if what its card says loading adds fits under the
//! process' limit (the cgroup's, when one is visible), with a reserve kept for the requests in
//! flight.

use serde::Deserialize;

use super::{LazyModel, LoadError};
use crate::card::ModelCard;
use crate::runtime;
use medchain_core::memory;

/// The memory guard's budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySettings {
    /// Budget when no cgroup limit is visible, MB (Render free tier: 512).
    pub limit_mb: u64,
    /// Kept free under the limit for requests in flight, MB.
    pub reserve_mb: u64,
    /// What loading the ONNX Runtime library and environment adds the first time, MB.
    pub runtime_cost_mb: u64,
}

impl MemorySettings {
    /// The limit in force and what counts against it, bytes. The cgroup's limit when there is
    /// one (and it is lower than the configured one): then what is in use is the larger of this
    /// process' RSS and the cgroup's working set — other processes in the same container (the
    /// single-instance image runs four) spend the same budget. Else the configured limit
    /// against this process' RSS.
    pub fn in_use_and_limit(&self) -> (u64, u64) {
        let configured = self.limit_mb << 20;
        let rss = memory::rss_bytes();
        match memory::cgroup_memory() {
            Some(c) if c.limit_bytes <= configured => {
                (rss.max(c.working_set_bytes.unwrap_or(0)), c.limit_bytes)
            }
            _ => (rss, configured),
        }
    }
}

impl LazyModel {
    /// Refuses a load that would push the process past its memory limit: what loading adds is
    /// the card's figure, or the offline-optimised variant's (`variant_cost`) when that is
    /// what will be loaded.
    pub(super) fn memory_guard(
        &self,
        card: &ModelCard,
        variant_cost: Option<u64>,
    ) -> Result<(), LoadError> {
        guard(&self.memory, card, variant_cost)
    }
}

/// See [`LazyModel::memory_guard`].
pub(super) fn guard(
    memory: &MemorySettings,
    card: &ModelCard,
    variant_cost: Option<u64>,
) -> Result<(), LoadError> {
    let (in_use, limit) = memory.in_use_and_limit();
    let runtime = if runtime::is_loaded() {
        0
    } else {
        memory.runtime_cost_mb << 20
    };
    let need = variant_cost.unwrap_or(card.load_cost.rss_added_bytes) + runtime;
    let budget = limit.saturating_sub(memory.reserve_mb << 20);
    if in_use + need > budget {
        return Err(LoadError::Memory {
            need_mb: need >> 20,
            in_use_mb: in_use >> 20,
            limit_mb: limit >> 20,
            reserve_mb: memory.reserve_mb,
        });
    }
    Ok(())
}
