//! chain-svc: owns the audit contract and the signing key; accepts prediction records into a
//! durable outbox and sends them to the chain in the background. With no RPC URL configured it
//! runs its own anvil (the embedded default).

//!
//! | module | what it holds |
//! |---|---|
//! | [`configuration`] | the settings tree and its checks |
//! | [`startup`] | chain-svc started: node, keys, contract, outbox, sender, HTTP application |
//! | [`routes`] | records (accept, read, per patient, verify), recorders, readiness |
//! | [`outbox`] | the durable redb outbox of accepted records |
//! | [`sender`] | sends the outbox to the chain in batches, follows them to finality |
//! | [`chain`] | the audit contract through alloy |
//! | [`privacy`] | keyed patient references and salted input commitments |
//! | [`anvil`] | the embedded development chain, supervised |
//! | [`secrets`] | the signer's and patient keys' secrets |

pub mod anvil;
pub mod chain;
pub mod configuration;
pub mod outbox;
pub mod privacy;
pub mod routes;
pub mod secrets;
pub mod sender;
pub mod startup;

pub use configuration::Settings;
pub use secrets::{private_dir, write_private};
pub use startup::{Running, build};
