//! Memory budgets shared by the requests of one service, with their high-water marks for
//! `/metrics`: [`Budget`], where each image decode reserves what it will hold before it holds
//! it and waits while the budget is spent; and [`UploadBuffer`], where an upload body's bytes
//! are reserved as they arrive, so a slow sender holds only what it has sent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Bytes are reserved in KiB (a semaphore's permits are counted, not sized).
const UNIT: u64 = 1024;

/// A budget's size, what is held now and the most ever held at once, bytes (`/models`,
/// `/metrics`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Figures {
    pub bytes: u64,
    pub in_use_bytes: u64,
    pub peak_bytes: u64,
}

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

    /// Size, held now and peak.
    pub fn figures(&self) -> Figures {
        Figures {
            bytes: self.total_bytes(),
            in_use_bytes: self.in_use_bytes(),
            peak_bytes: self.peak_bytes(),
        }
    }
}

/// Upload bytes held at once: each body's bytes are reserved chunk by chunk as they arrive
/// ([`UploadHold::grow`]), and a body that would take the buffer past its size waits — its
/// sender is paused — until other bodies are decoded and give theirs back.
///
/// Bodies still arriving can hold the whole buffer between them, each waiting for more: none
/// would ever finish. So when every byte held belongs to bodies still arriving (nothing else
/// will give any back), the oldest of them may go past the size. What is held is therefore at
/// most the size plus one upload; slow senders never hold more than they have sent.
#[derive(Debug)]
pub struct UploadBuffer {
    total: u64,
    state: Mutex<UploadState>,
    freed: Notify,
    peak: AtomicU64,
}

#[derive(Debug, Default)]
struct UploadState {
    in_use: u64,
    /// Bodies still arriving, oldest first: ticket → bytes they hold.
    arriving: BTreeMap<u64, u64>,
    next_ticket: u64,
}

/// One body's share of an [`UploadBuffer`], given back when dropped.
#[derive(Debug)]
pub struct UploadHold {
    buffer: Arc<UploadBuffer>,
    ticket: u64,
    bytes: u64,
    arriving: bool,
}

impl UploadBuffer {
    /// A buffer of `mib` MiB (at least 1 MiB).
    pub fn new(mib: usize) -> Arc<Self> {
        Arc::new(UploadBuffer {
            total: (mib.max(1) as u64) << 20,
            state: Mutex::new(UploadState::default()),
            freed: Notify::new(),
            peak: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UploadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A hold of nothing yet, for a body about to arrive.
    pub fn hold(self: &Arc<Self>) -> UploadHold {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.arriving.insert(ticket, 0);
        UploadHold {
            buffer: self.clone(),
            ticket,
            bytes: 0,
            arriving: true,
        }
    }

    /// Size, held now and peak.
    pub fn figures(&self) -> Figures {
        Figures {
            bytes: self.total,
            in_use_bytes: self.in_use_bytes(),
            peak_bytes: self.peak_bytes(),
        }
    }

    /// The size, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Held now, bytes.
    pub fn in_use_bytes(&self) -> u64 {
        self.lock().in_use
    }

    /// The most ever held at once, bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl UploadHold {
    /// Reserves `bytes` more for this body, waiting while the buffer is spent.
    pub async fn grow(&mut self, bytes: u64) {
        let buffer = self.buffer.clone();
        loop {
            let freed = buffer.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the check and the wait wakes
            // this one too.
            freed.as_mut().enable();
            {
                let mut state = buffer.lock();
                let fits = state.in_use + bytes <= buffer.total;
                let stuck = self.arriving
                    && state.arriving.keys().next() == Some(&self.ticket)
                    && state.arriving.values().sum::<u64>() == state.in_use;
                if fits || stuck {
                    state.in_use += bytes;
                    if let Some(held) = state.arriving.get_mut(&self.ticket) {
                        *held += bytes;
                    }
                    self.bytes += bytes;
                    buffer.peak.fetch_max(state.in_use, Ordering::Relaxed);
                    return;
                }
            }
            freed.await;
        }
    }

    /// The body is in: what it holds is given back once it is decoded, without waiting on
    /// anything else, so it no longer counts among the bodies still arriving.
    pub fn arrived(&mut self) {
        if std::mem::take(&mut self.arriving) {
            self.buffer.lock().arriving.remove(&self.ticket);
            // The oldest body still arriving may have changed.
            self.buffer.freed.notify_waiters();
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for UploadHold {
    fn drop(&mut self) {
        let mut state = self.buffer.lock();
        state.in_use -= self.bytes;
        state.arriving.remove(&self.ticket);
        drop(state);
        self.buffer.freed.notify_waiters();
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

    #[tokio::test]
    async fn uploads_hold_what_arrived_and_wait_for_the_buffer() {
        let buf = UploadBuffer::new(1);
        let mut slow = buf.hold();
        slow.grow(100 << 10).await;
        assert_eq!(buf.in_use_bytes(), 100 << 10);
        // A finished body holding most of the rest.
        let mut done = buf.hold();
        done.grow(900 << 10).await;
        done.arrived();
        // A third body waits: the buffer is spent, and the finished body will give back.
        let b2 = buf.clone();
        let waiting = tokio::spawn(async move {
            let mut h = b2.hold();
            h.grow(200 << 10).await;
            h
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(done);
        let third = waiting
            .await
            .expect("granted once the finished body is gone");
        assert_eq!(buf.in_use_bytes(), 300 << 10);
        drop((slow, third));
        assert_eq!(buf.in_use_bytes(), 0);
        assert_eq!(buf.peak_bytes(), 1000 << 10);
    }

    #[tokio::test]
    async fn bodies_still_arriving_never_hold_each_other_up_for_ever() {
        let buf = UploadBuffer::new(1);
        // Two bodies still arriving hold the whole buffer between them.
        let mut older = buf.hold();
        let mut newer = buf.hold();
        older.grow(512 << 10).await;
        newer.grow(512 << 10).await;
        // The newer one waits: the older may still finish and give back.
        let newer_waits = tokio::spawn(async move {
            newer.grow(1).await;
            newer
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!newer_waits.is_finished());
        // The oldest goes past the size: nothing else would ever give anything back.
        tokio::time::timeout(Duration::from_secs(10), older.grow(256 << 10))
            .await
            .expect("the oldest body still arriving is never stuck");
        assert_eq!(buf.in_use_bytes(), (1 << 20) + (256 << 10));
        drop(older);
        let newer = newer_waits.await.expect("granted once the oldest is gone");
        assert_eq!(newer.bytes(), (512 << 10) + 1);
    }
}
