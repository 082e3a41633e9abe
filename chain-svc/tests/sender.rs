//! The outbox sender against a real anvil: everything accepted is confirmed exactly once,
//! including across a node outage and a resend after a crash.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{B256, U256};
use alloy::providers::Provider;
use medchain_chain_svc::anvil::Anvil;
use medchain_chain_svc::chain::{AuditChain, RecordInput};
use medchain_chain_svc::outbox::{Entry, Outbox, Status};
use medchain_chain_svc::sender::{Backoff, Sender};

fn entry(n: u16, now: u64) -> Entry {
    let mut id = [0u8; 32];
    id[..2].copy_from_slice(&n.to_be_bytes());
    id[31] = 1;
    let r = RecordInput {
        prediction_id: B256::from(id),
        patient_ref: B256::repeat_byte(0xAA),
        model_id_hash: B256::repeat_byte(0xBB),
        input_commitment: B256::from(U256::from(1000 + u64::from(n))),
        disease: 2,
        modality: 2,
        label: 3,
        probability_bps: 9000,
    };
    Entry::new(&r, B256::repeat_byte(0x5A), now)
}

#[tokio::test]
async fn every_accepted_record_is_confirmed_exactly_once() {
    let state = tempfile::tempdir().expect("tempdir");
    let bin = Anvil::binary("");
    let anvil = Anvil::start(&bin, state.path(), 31337).expect("anvil");
    let port = anvil.port();
    let key = common::funded_key(&anvil.url()).await;
    let chain = AuditChain::connect(anvil.url().parse().expect("url"), key, B256::ZERO, None)
        .await
        .expect("deploy");
    let outbox = Arc::new(Outbox::open(&state.path().join("outbox.redb")).expect("outbox"));
    let sender = Sender::new(
        outbox.clone(),
        chain.clone(),
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    );

    for n in 0..10 {
        outbox.enqueue(entry(n, u64::from(n))).expect("enqueue");
    }
    let pass = sender.pass(64).await.expect("pass");
    assert_eq!((pass.confirmed, pass.node_failed), (10, false));
    assert_eq!(chain.record_count().await.expect("count"), 10);
    assert_eq!(outbox.pending_stats().expect("stats").0, 0);

    // Node down: records stay pending, with the failure noted.
    for n in 10..15 {
        outbox.enqueue(entry(n, u64::from(n))).expect("enqueue");
    }
    anvil.stop();
    let pass = sender.pass(64).await.expect("pass");
    assert!(pass.node_failed);
    assert_eq!(pass.confirmed, 0);
    let waiting = outbox.pending(64).expect("pending");
    assert_eq!(waiting.len(), 5);
    assert_eq!(waiting[0].attempts, 1);

    // Node back (same port, same state): the rest goes through, nothing twice.
    let anvil = Anvil::start_on(&bin, state.path(), 31337, port).expect("anvil again");
    let pass = sender.pass(64).await.expect("pass");
    assert_eq!((pass.confirmed, pass.node_failed), (5, false));
    assert_eq!(chain.record_count().await.expect("count"), 15);

    // A crash after sending but before noting the receipt: the resend is recognised as ours.
    let crashed = entry(20, 20);
    outbox.enqueue(crashed.clone()).expect("enqueue");
    let direct = chain
        .record(&crashed.record)
        .await
        .expect("sent before the crash");
    let pass = sender.pass(64).await.expect("pass");
    assert_eq!(pass.confirmed, 1);
    let stored = outbox.get(&crashed.id()).expect("get").expect("present");
    assert_eq!(stored.status, Status::Confirmed);
    assert_eq!(stored.tx_hash, Some(direct.tx_hash));
    assert_eq!(chain.record_count().await.expect("count"), 16);

    // Someone else's record under the same id is not ours: rejected, not confirmed.
    let mut foreign = entry(20, 21);
    foreign.record.prediction_id = crashed.id();
    foreign.record.input_commitment = B256::repeat_byte(0xEE);
    let other = Outbox::open(&state.path().join("other.redb")).expect("outbox");
    other.enqueue(foreign.clone()).expect("enqueue");
    let other = Arc::new(other);
    let pass = Sender::new(
        other.clone(),
        chain.clone(),
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    )
    .pass(64)
    .await
    .expect("pass");
    assert_eq!(pass.rejected, 1);
    assert_eq!(
        other
            .get(&foreign.id())
            .expect("get")
            .expect("present")
            .status,
        Status::Rejected
    );
    assert_eq!(chain.record_count().await.expect("count"), 16);
    let block = chain.provider().get_block_number().await.expect("block");
    assert!(block >= 16);
    drop(anvil);
}

/// A transaction the node drops from its pool (the review: the sender then waited for its
/// receipt forever, every later record stuck `pending` with 0 attempts): after the receipt
/// timeout the node is asked, the record is sent again, and it is on chain once.
#[tokio::test]
async fn a_dropped_transaction_is_sent_again() {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = Anvil::start(&Anvil::binary(""), state.path(), 31337).expect("anvil");
    let key = common::funded_key(&anvil.url()).await;
    let chain = AuditChain::connect(anvil.url().parse().expect("url"), key, B256::ZERO, None)
        .await
        .expect("deploy")
        .with_receipt_timeout(Duration::from_millis(1500));
    let outbox = Arc::new(Outbox::open(&state.path().join("outbox.redb")).expect("outbox"));
    let sender = Sender::new(
        outbox.clone(),
        chain.clone(),
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
    );
    let rpc = chain.provider().clone();
    // Nothing is mined until the test says so.
    let _: () = rpc
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .expect("automine off");
    outbox.enqueue(entry(1, 1)).expect("enqueue");
    let pass = tokio::spawn({
        let sender = sender.clone();
        async move { sender.pass(64).await }
    });
    // The transaction reaches the pool; the node drops it.
    let mut dropped = false;
    for _ in 0..100 {
        let pool: serde_json::Value = rpc
            .raw_request("txpool_content".into(), ())
            .await
            .expect("txpool");
        let hashes: Vec<String> = pool["pending"]
            .as_object()
            .into_iter()
            .flat_map(|by_sender| by_sender.values())
            .filter_map(|by_nonce| by_nonce.as_object())
            .flat_map(|txs| txs.values())
            .filter_map(|tx| tx["hash"].as_str().map(String::from))
            .collect();
        if let Some(h) = hashes.first() {
            let _: serde_json::Value = rpc
                .raw_request("anvil_dropTransaction".into(), (h.clone(),))
                .await
                .expect("drop");
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "the transaction never reached the pool");
    let first = pass.await.expect("task").expect("pass");
    assert!(first.node_failed, "{first:?}");
    let e = outbox.pending(10).expect("pending");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].last_error
            .as_deref()
            .is_some_and(|m| m.contains("dropped")),
        "{:?}",
        e[0].last_error
    );
    let _: () = rpc
        .raw_request("evm_setAutomine".into(), (true,))
        .await
        .expect("automine on");
    let second = sender.pass(64).await.expect("pass");
    assert_eq!(second.confirmed, 1, "{second:?}");
    assert_eq!(chain.record_count().await.expect("count"), 1);
}
