//! A memory budget shared by the requests of one service: each reserves what it will hold
//! before it holds it and waits while the budget is spent (upload bodies, image decodes). The
//! high-water mark is kept for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are reserved in KiB (a semaphore's permits are counted, not sized).
const UNIT: u64 = 1024;

#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total_units: u64,
    peak_units: AtomicU64,
}

/// Part of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl Budget {
    /// A budget of `mib` MiB (at least 1 MiB).
    pub fn new(mib: usize) -> Self {
        let total_units = (mib.max(1) as u64) << 10;
        Budget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            peak_units: AtomicU64::new(0),
        }
    }

    /// The whole budget, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_units * UNIT
    }

    /// Waits until `bytes` are free, then holds them. A request larger than the whole budget
    /// waits for all of it (callers that must refuse such a request check first).
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = bytes.div_ceil(UNIT).clamp(1, self.total_units);
        let permit = self
            .permits
            .clone()
            // Both bounded by `total_units`, which came from a usize.
            .acquire_many_owned(u32::try_from(units).unwrap_or(u32::MAX))
            .await
            .expect("the budget's semaphore is never closed");
        self.peak_units
            .fetch_max(self.in_use_units(), Ordering::Relaxed);
        Reservation(permit)
    }

    fn in_use_units(&self) -> u64 {
        self.total_units
            .saturating_sub(self.permits.available_permits() as u64)
    }

    /// Held now, bytes.
    pub fn in_use_bytes(&self) -> u64 {
        self.in_use_units() * UNIT
    }

    /// The most ever held at once, bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_units.load(Ordering::Relaxed) * UNIT
    }

    /// Size, held now and peak, bytes, for `/models`.
    pub fn figures(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes": self.total_bytes(),
            "in_use_bytes": self.in_use_bytes(),
            "peak_bytes": self.peak_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_the_budget_and_give_it_back() {
        let b = Arc::new(Budget::new(1));
        let first = b.reserve(700 * 1024).await;
        assert_eq!(b.in_use_bytes(), 700 * 1024);
        // 400 KiB more does not fit: it waits until the first is given back.
        let b2 = b.clone();
        let second = tokio::spawn(async move { b2.reserve(400 * 1024).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        drop(first);
        let second = second.await.expect("reserved");
        assert_eq!(b.in_use_bytes(), 400 * 1024);
        drop(second);
        assert_eq!(b.in_use_bytes(), 0);
        assert_eq!(b.peak_bytes(), 700 * 1024);
        // More than the whole budget: capped at all of it, so it still goes through alone.
        let all = b.reserve(5 << 20).await;
        assert_eq!(b.in_use_bytes(), b.total_bytes());
        drop(all);
    }
}
