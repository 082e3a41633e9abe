//! Loopback ports and child processes: the one place tests find a free port.

use std::net::TcpListener;
use std::process::Child;

use anyhow::bail;

/// A free loopback port (bound, then released; the caller binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A loopback port nothing listens on (bound, then released): an upstream that is down.
pub fn closed_port() -> u16 {
    free_port()
}

/// `http://127.0.0.1:<port>` of a port nothing listens on.
pub fn closed_url() -> String {
    format!("http://127.0.0.1:{}", closed_port())
}

/// `n` free loopback ports (all bound at once, so they differ, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// The first of `n` consecutive free loopback ports (for programs that take a base port).
pub fn consecutive_free_ports(n: u16) -> anyhow::Result<u16> {
    let mut raw = [0u8; 2];
    for _ in 0..200 {
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let base = 20000 + u16::from_le_bytes(raw) % 40000;
        let held: Vec<_> = (base..base + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports found")
}

/// A child process killed and reaped when dropped, so a failing assertion leaves nothing
/// running.
#[derive(Debug)]
pub struct Reap(pub Child);

impl Reap {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
