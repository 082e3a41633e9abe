//! The batch sender against a real anvil: every accepted record confirmed exactly once — in
//! batches mined in one block, under interval mining with records streaming in, across a node
//! outage, a resend after a crash, a transaction dropped from the pool, one stuck under a raised
//! base fee, and transactions from the same key sent by someone else.

use medchain_tests::chain as kit;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{B256, U256};
use alloy::providers::{DynProvider, Provider};
use medchain_chain_svc::anvil::Anvil;
use medchain_chain_svc::chain::{AuditChain, RecordInput};
use medchain_chain_svc::outbox::{Entry, Outbox, Status};
use medchain_chain_svc::sender::{Backoff, Batching, Pass, Sender};

fn entry(n: u32, now: u64) -> Entry {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[15] = 1;
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

struct Rig {
    state: tempfile::TempDir,
    anvil: Anvil,
    key: alloy::signers::local::PrivateKeySigner,
    chain: AuditChain,
    outbox: Arc<Outbox>,
    sender: Sender,
    rpc: DynProvider,
}

/// Batches sent at once (no linger), replaced after 1 s.
fn quick() -> Batching {
    Batching {
        max_records: 100,
        linger: Duration::ZERO,
        replace_after: Duration::from_secs(1),
        follow_every: Duration::ZERO,
        ..Batching::default()
    }
}

async fn rig(batching: Batching) -> Rig {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = Anvil::start(&Anvil::binary(""), state.path(), 31337).expect("anvil");
    let key = kit::funded_key(&anvil.url()).await;
    let chain = AuditChain::connect(
        anvil.url().parse().expect("url"),
        key.clone(),
        B256::ZERO,
        None,
    )
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
    )
    .batching(batching);
    let rpc = chain.provider().clone();
    Rig {
        state,
        anvil,
        key,
        chain,
        outbox,
        sender,
        rpc,
    }
}

impl Rig {
    /// Records `ns` into the outbox, each accepted at its number (ms).
    fn enqueue(&self, ns: std::ops::Range<u32>) {
        for n in ns {
            self.outbox
                .enqueue(entry(n, u64::from(n)))
                .expect("enqueue");
        }
    }

    async fn call(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        self.rpc
            .raw_request(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn pass(&self) -> Pass {
        self.sender.pass().await.expect("pass")
    }

    /// Passes until nothing is pending (a liveness bound, not a timing).
    async fn drain(&self) {
        for _ in 0..600 {
            if self.outbox.pending_stats().expect("stats").0 == 0 {
                return;
            }
            self.pass().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "still pending: {:?}",
            self.outbox.pending_stats().expect("stats")
        );
    }

    /// Every record `0..n` is confirmed in the outbox and committed on chain exactly once.
    async fn all_once(&self, ids: impl IntoIterator<Item = u32>) {
        let mut count = 0;
        for n in ids {
            let e = entry(n, 0);
            let stored = self.outbox.get(&e.id()).expect("get").expect("present");
            assert_eq!(stored.status, Status::Confirmed, "record {n}");
            let on_chain = self.chain.commitments(e.id()).await.expect("logs");
            assert_eq!(
                on_chain.len(),
                1,
                "record {n} on chain {} times",
                on_chain.len()
            );
            assert_eq!(on_chain[0].record_hash, stored.record.record_hash());
            assert_eq!(on_chain[0].tx_hash, stored.tx_hash);
            count += 1;
        }
        assert_eq!(self.chain.record_count().await.expect("count"), count);
    }

    /// The hashes in the node's pool.
    async fn pool(&self) -> Vec<String> {
        let pool = self.call("txpool_content", serde_json::json!([])).await;
        pool["pending"]
            .as_object()
            .into_iter()
            .flat_map(|by_sender| by_sender.values())
            .filter_map(|by_nonce| by_nonce.as_object())
            .flat_map(|txs| txs.values())
            .filter_map(|tx| tx["hash"].as_str().map(String::from))
            .collect()
    }

    async fn mine(&self) {
        self.call("evm_mine", serde_json::json!([])).await;
    }

    async fn automine(&self, on: bool) {
        self.call("evm_setAutomine", serde_json::json!([on])).await;
    }
}

#[tokio::test]
async fn a_batch_of_records_is_mined_in_one_block() {
    let r = rig(Batching {
        max_records: 500,
        ..quick()
    })
    .await;
    r.automine(false).await;
    r.enqueue(0..300);
    let sent = r.pass().await;
    assert_eq!((sent.sent, sent.in_flight), (1, 1), "{sent:?}");
    assert_eq!(r.pool().await.len(), 1);
    r.mine().await;
    let done = r.pass().await;
    assert_eq!(done.confirmed, 300, "{done:?}");
    r.all_once(0..300).await;
    let blocks: std::collections::HashSet<Option<u64>> = (0..300)
        .map(|n| {
            r.outbox
                .get(&entry(n, 0).id())
                .expect("get")
                .expect("present")
                .block_number
        })
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
}

/// Interval mining (anvil's `--block-time`, 1 s) with records streaming in while the sender
/// runs: many records per block, each once.
#[tokio::test]
async fn records_streaming_in_under_interval_mining_share_blocks() {
    let r = rig(Batching {
        linger: Duration::from_millis(200),
        ..quick()
    })
    .await;
    r.automine(false).await;
    r.call("evm_setIntervalMining", serde_json::json!([1]))
        .await;
    let first_block = r.rpc.get_block_number().await.expect("block");
    let run = tokio::spawn(r.sender.clone().run(Duration::from_millis(50)));
    let wake = r.sender.notifier();
    for n in 0..400u32 {
        r.outbox.enqueue(entry(n, 0)).expect("enqueue");
        wake.notify_one();
        if n % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..600 {
        if r.outbox.pending_stats().expect("stats").0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.abort();
    r.all_once(0..400).await;
    let blocks: std::collections::HashSet<u64> = (0..400)
        .filter_map(|n| {
            r.outbox
                .get(&entry(n, 0).id())
                .expect("get")
                .expect("present")
                .block_number
        })
        .collect();
    let last_block = r.rpc.get_block_number().await.expect("block");
    assert!(
        blocks.len() * 10 <= 400,
        "400 records took {} blocks: {blocks:?} (blocks {first_block}..{last_block})",
        blocks.len()
    );
}

#[tokio::test]
async fn every_accepted_record_is_confirmed_exactly_once_across_an_outage_and_a_crash() {
    let r = rig(quick()).await;
    let port = r.anvil.port();
    r.enqueue(0..250);
    r.drain().await;
    r.all_once(0..250).await;

    // Node down: records stay pending.
    r.enqueue(250..255);
    let Rig {
        state,
        anvil,
        chain,
        outbox,
        sender,
        rpc,
        key,
    } = r;
    anvil.stop();
    let pass = sender.pass().await.expect("pass");
    assert!(pass.node_failed, "{pass:?}");
    assert_eq!(outbox.pending_stats().expect("stats").0, 5);

    // Node back (same port, same state): the rest goes through, nothing twice.
    let anvil = Anvil::start_on(&Anvil::binary(""), state.path(), 31337, port).expect("again");
    let r = Rig {
        state,
        anvil,
        key,
        chain,
        outbox,
        sender,
        rpc,
    };
    r.drain().await;
    r.all_once(0..255).await;

    // A crash after the batch was formed and sent but before its hash was stored: the resend
    // is refused as a duplicate batch, recognised as ours and confirmed from the event.
    r.enqueue(255..260);
    let batch = r.outbox.form_batch(100).expect("form").expect("a batch");
    let records: Vec<RecordInput> = batch
        .members
        .iter()
        .map(|id| r.outbox.get(id).expect("get").expect("present").record)
        .collect();
    let direct = r
        .chain
        .record_batch(&records)
        .await
        .expect("sent before the crash");
    r.drain().await;
    let stored = r
        .outbox
        .get(&entry(257, 0).id())
        .expect("get")
        .expect("present");
    assert_eq!(stored.tx_hash, Some(direct.tx_hash));
    r.all_once(0..260).await;
}

/// A transaction the node drops from its pool (`anvil_dropTransaction`) is sent again — at
/// once, not after the replacement timeout — and confirmed once.
#[tokio::test]
async fn a_dropped_transaction_is_sent_again() {
    let r = rig(Batching {
        replace_after: Duration::from_secs(3600),
        ..quick()
    })
    .await;
    r.automine(false).await;
    r.enqueue(0..10);
    assert_eq!(r.pass().await.sent, 1);
    let pool = r.pool().await;
    assert_eq!(pool.len(), 1);
    r.call("anvil_dropTransaction", serde_json::json!([pool[0]]))
        .await;
    assert!(r.pool().await.is_empty());
    let again = r.pass().await;
    assert_eq!(again.sent, 1, "{again:?}");
    assert_eq!(r.pool().await.len(), 1);
    r.mine().await;
    assert_eq!(r.pass().await.confirmed, 10);
    r.all_once(0..10).await;
    let batch = r.outbox.batch(1).expect("batch").expect("present");
    assert_eq!(batch.sends.len(), 2, "{:?}", batch.sends);
    assert_eq!(batch.sends[0].nonce, batch.sends[1].nonce);
}

/// A transaction stuck in the pool is replaced after the replacement timeout at the same nonce
/// with both fees raised by at least the bump (the node takes it in place of the first); one
/// stuck under a raised base fee (`anvil_setNextBlockBaseFeePerGas`) — anvil then evicts it, a
/// geth node would keep it — is sent again offering what blocks now take. The batch is
/// confirmed once, by the last transaction.
#[tokio::test]
async fn a_stuck_transaction_is_replaced_with_raised_fees() {
    let r = rig(Batching {
        replace_after: Duration::from_secs(3),
        ..quick()
    })
    .await;
    r.automine(false).await;
    r.enqueue(0..10);
    assert_eq!(r.pass().await.sent, 1);
    let first = r.outbox.batch(1).expect("batch").expect("present").sends[0].clone();
    // Not mined; still in the pool: left alone until the replacement timeout.
    assert_eq!(r.pass().await.sent, 0);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(r.pass().await.sent, 1);
    let batch = r.outbox.batch(1).expect("batch").expect("present");
    let second = batch.sends[1].clone();
    assert_eq!(second.nonce, first.nonce);
    for (new, old) in [
        (second.fees.max_fee_per_gas, first.fees.max_fee_per_gas),
        (
            second.fees.max_priority_fee_per_gas,
            first.fees.max_priority_fee_per_gas,
        ),
    ] {
        assert!(new >= old * 115 / 100, "{new} after {old}");
    }
    assert_eq!(
        r.pool().await,
        [second.hash.to_string()],
        "replaced in the pool"
    );

    // The next block's base fee far above what it offers: it is not included.
    let high = second.fees.max_fee_per_gas * 20;
    r.call(
        "anvil_setNextBlockBaseFeePerGas",
        serde_json::json!([U256::from(high)]),
    )
    .await;
    r.mine().await;
    assert!(
        r.chain
            .receipt(second.hash)
            .await
            .expect("receipt")
            .is_none()
    );
    assert_eq!(r.pass().await.confirmed, 0);
    let batch = r.outbox.batch(1).expect("batch").expect("present");
    let third = batch.sends.last().expect("sent").clone();
    assert_eq!((batch.sends.len(), third.nonce), (3, first.nonce));
    // Offers what the last block took.
    assert!(third.fees.max_fee_per_gas >= high, "{third:?}");
    r.mine().await;
    let done = r.pass().await;
    assert_eq!(done.confirmed, 10, "{done:?}");
    r.all_once(0..10).await;
    let stored = r
        .outbox
        .get(&entry(0, 0).id())
        .expect("get")
        .expect("present");
    assert_eq!(stored.tx_hash, Some(third.hash));
}

/// Transactions sent by someone else from the signer's key: one between two batches (the next
/// batch takes the nonce after it), and one that takes the nonce of a batch waiting in the pool
/// (the batch is sent again at a new nonce). The nonce follows the chain; each record once.
#[tokio::test]
async fn outside_transactions_from_the_signer_key_are_worked_around() {
    use alloy::network::{EthereumWallet, TransactionBuilder};
    use alloy::rpc::types::TransactionRequest;
    let r = rig(quick()).await;
    let outside = alloy::providers::ProviderBuilder::new()
        .wallet(EthereumWallet::from(r.key.clone()))
        .connect_http(r.anvil.url().parse().expect("url"));
    let someone = alloy::primitives::Address::repeat_byte(0x77);
    r.enqueue(0..5);
    r.drain().await;
    // Between two batches.
    outside
        .send_transaction(
            TransactionRequest::default()
                .with_to(someone)
                .with_value(U256::from(1)),
        )
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("mined");
    r.enqueue(5..10);
    r.drain().await;
    r.all_once(0..10).await;

    // Taking a waiting batch's nonce: a transfer at the same nonce with higher fees replaces
    // the batch's transaction in the pool and is mined.
    r.automine(false).await;
    r.enqueue(10..15);
    assert_eq!(r.pass().await.sent, 1);
    let open = r.outbox.open_batches().expect("open");
    let sent = open[0].sends[0].clone();
    let _ = outside
        .send_transaction(
            TransactionRequest::default()
                .with_to(someone)
                .with_value(U256::from(2))
                .with_nonce(sent.nonce)
                .with_gas_limit(21_000)
                .with_max_fee_per_gas(sent.fees.max_fee_per_gas * 3)
                .with_max_priority_fee_per_gas(sent.fees.max_priority_fee_per_gas * 3),
        )
        .await
        .expect("the outside transaction replaces ours");
    r.mine().await;
    assert!(r.chain.receipt(sent.hash).await.expect("receipt").is_none());
    let renonced = r.pass().await;
    assert_eq!(renonced.confirmed, 0, "{renonced:?}");
    r.automine(true).await;
    r.drain().await;
    r.all_once(0..15).await;
    let batch = r
        .outbox
        .batch(open[0].seq)
        .expect("batch")
        .expect("present");
    assert_eq!(batch.nonce, Some(sent.nonce + 1), "{batch:?}");
}

/// Records confirmed deeper than the finality depth are compacted: out of the reconciliation's
/// walk, still found (salt and all), still taken once.
#[tokio::test]
async fn final_records_are_compacted_and_still_found() {
    let r = rig(Batching {
        final_depth: 3,
        ..quick()
    })
    .await;
    r.enqueue(0..20);
    r.drain().await;
    assert_eq!(r.sender.compact().await, 0, "not final yet");
    for _ in 0..3 {
        r.mine().await;
    }
    assert_eq!(r.sender.compact().await, 20);
    assert_eq!(r.outbox.final_count().expect("count"), 20);
    assert_eq!(r.sender.reconcile().await.expect("reconcile"), 0);
    r.all_once(0..20).await;
    let again = r.outbox.enqueue(entry(3, 99)).expect("idempotent");
    assert_eq!(again.status, Status::Confirmed);
}
