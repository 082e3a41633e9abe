//! chain-svc's integration tests, in one binary (one link step), each against an anvil of its
//! own: `contract` (the audit contract), `artifact` (the committed ABI and bytecode), `api`
//! (the HTTP API), `sender` (the batch sender), `reconcile` (records the chain lost), and
//! `crash` and `disk_full`, which run chain-svc as a process of its own (`kill -9`, a full
//! disk).

mod api;
mod artifact;
mod contract;
mod crash;
mod disk_full;
mod reconcile;
mod sender;

/// The chain-svc binary these tests start as a process.
fn chain_svc_bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_chain-svc"))
}
