//! The audit contract on a real anvil: deterministic deployment found again after a restart,
//! batches of records, duplicate batches and roles, decoded reverts, gas per record.

use medchain_tests::chain as kit;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use medchain_chain_svc::anvil::Anvil;
use medchain_chain_svc::chain::{
    AuditChain, ChainError, Commitment, MedchainAudit, RecordInput, batch_id, deployment_address,
};

const SALT: B256 = B256::repeat_byte(0x42);

fn record(n: u8) -> RecordInput {
    RecordInput {
        prediction_id: B256::repeat_byte(n),
        patient_ref: B256::repeat_byte(0xAA),
        model_id_hash: B256::repeat_byte(0xBB),
        input_commitment: B256::repeat_byte(0xCC),
        disease: 1,
        modality: 1,
        label: 1,
        probability_bps: 7730,
    }
}

async fn nonce(chain: &AuditChain) -> u64 {
    chain
        .provider()
        .get_transaction_count(chain.signer())
        .await
        .expect("nonce")
}

#[tokio::test]
async fn deploys_once_records_and_survives_a_node_restart() {
    let state = tempfile::tempdir().expect("tempdir");
    let bin = Anvil::binary("");
    let anvil = Anvil::start(&bin, state.path(), 31337).expect("anvil starts");
    let key = kit::funded_key(&anvil.url()).await;
    let url = anvil.url().parse().expect("url");

    let chain = AuditChain::connect(url, key.clone(), SALT, None)
        .await
        .expect("deploy");
    assert_eq!(
        chain.contract(),
        deployment_address(key.address(), key.address(), SALT)
    );
    let after_deploy = nonce(&chain).await;
    assert_eq!(after_deploy, 1);

    // Connecting again finds the contract and sends nothing.
    let again = AuditChain::connect(anvil.url().parse().expect("url"), key.clone(), SALT, None)
        .await
        .expect("reconnect");
    assert_eq!(again.contract(), chain.contract());
    assert_eq!(nonce(&again).await, after_deploy);

    let batch = [record(1), record(3)];
    let items: Vec<Commitment> = batch.iter().map(RecordInput::commitment).collect();
    // The batch id and the record hash computed here are the contract's.
    let (id, _) = chain.simulate_batch(&items).await.expect("simulate");
    assert_eq!(id, batch_id(&items));
    let c = MedchainAudit::new(chain.contract(), chain.provider());
    let r = record(1);
    let on_chain_hash = c
        .hashRecord(
            r.prediction_id,
            r.patient_ref,
            r.model_id_hash,
            r.input_commitment,
            r.disease,
            r.modality,
            r.label,
            r.probability_bps,
        )
        .call()
        .await
        .expect("hashRecord");
    assert_eq!(on_chain_hash, r.record_hash());

    let mined = chain.record_batch(&batch).await.expect("record");
    assert!(mined.block_number > 0);
    let found = chain.commitments(B256::repeat_byte(1)).await.expect("read");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record_hash, r.record_hash());
    assert_eq!(found[0].patient_ref, r.patient_ref);
    assert_eq!(found[0].tx_hash, Some(mined.tx_hash));
    let stored = chain.get_batch(id).await.expect("read").expect("present");
    assert_eq!((stored.count, stored.recorder), (2, key.address()));
    assert_eq!(chain.record_count().await.expect("count"), 2);
    assert!(
        chain
            .commitments(B256::repeat_byte(9))
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        chain
            .records_of(B256::repeat_byte(0xAA))
            .await
            .expect("read")
            .len(),
        2
    );

    // The same batch again is refused by the contract, decoded.
    match chain.record_batch(&batch).await {
        Err(ChainError::DuplicateBatch(d)) => assert_eq!(d, id),
        other => panic!("expected DuplicateBatch, got {other:?}"),
    }
    // An empty batch, a zero id: refused, saying which record.
    match chain.record_batch(&[]).await {
        Err(ChainError::Invalid(why)) => assert!(why.contains("empty"), "{why}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let mut zero = record(4);
    zero.prediction_id = B256::ZERO;
    match chain.record_batch(&[record(4), zero]).await {
        Err(ChainError::Invalid(why)) => {
            assert_eq!(why, "record 1: prediction id is zero")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    // Another key may read but not write.
    let stranger = kit::funded_key(&anvil.url()).await;
    let theirs = AuditChain::connect(
        anvil.url().parse().expect("url"),
        stranger.clone(),
        SALT,
        Some(chain.contract()),
    )
    .await
    .expect("connect to the existing contract");
    match theirs.record_batch(&[record(2)]).await {
        Err(ChainError::NotRecorder(who)) => assert_eq!(who, stranger.address()),
        other => panic!("expected NotRecorder, got {other:?}"),
    }
    chain
        .grant_recorder(stranger.address())
        .await
        .expect("admin grants");
    theirs
        .record_batch(&[record(2)])
        .await
        .expect("now a recorder");

    // Restart the node on the same state: the contract and its records are still there.
    anvil.stop();
    let anvil = Anvil::start(&bin, state.path(), 31337).expect("anvil restarts");
    let chain = AuditChain::connect(anvil.url().parse().expect("url"), key, SALT, None)
        .await
        .expect("found after restart");
    assert_eq!(
        chain
            .commitments(B256::repeat_byte(2))
            .await
            .expect("read")
            .len(),
        1
    );
}

/// Gas per record: the target is at most 5,000 at batches of 100 or more (one record
/// per transaction cost 148,119). Gas is deterministic; the figures for other sizes are in the
/// benchmark.
#[tokio::test]
async fn a_batch_of_a_hundred_costs_under_5000_gas_per_record() {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = Anvil::start(&Anvil::binary(""), state.path(), 31337).expect("anvil");
    let key = kit::funded_key(&anvil.url()).await;
    let chain = AuditChain::connect(anvil.url().parse().expect("url"), key, SALT, None)
        .await
        .expect("deploy");
    let records: Vec<RecordInput> = (0..100u16)
        .map(|n| {
            let mut r = record(1);
            let mut id = [0u8; 32];
            id[..2].copy_from_slice(&n.to_be_bytes());
            id[15] = 1;
            r.prediction_id = B256::from(id);
            r.patient_ref = B256::from(U256::from(n) + U256::from(1u64 << 60));
            r
        })
        .collect();
    let mined = chain.record_batch(&records).await.expect("record");
    let receipt = chain
        .receipt(mined.tx_hash)
        .await
        .expect("receipt")
        .expect("mined");
    let per_record = receipt.gas_used / 100;
    assert!(per_record <= 5_000, "{per_record} gas per record");
    assert_eq!(chain.record_count().await.expect("count"), 100);
}

#[tokio::test]
async fn foreign_or_missing_code_is_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = Anvil::start(&Anvil::binary(""), state.path(), 31337).expect("anvil");
    let key = kit::funded_key(&anvil.url()).await;
    let nobody = Address::repeat_byte(0x11);
    match AuditChain::connect(
        anvil.url().parse().expect("url"),
        key.clone(),
        SALT,
        Some(nobody),
    )
    .await
    {
        Err(ChainError::NoContract(a)) => assert_eq!(a, nobody),
        other => panic!("expected NoContract, got {other:?}"),
    }
    // The CREATE2 proxy has code, but not ours.
    let proxy = medchain_chain_svc::chain::CREATE2_FACTORY;
    match AuditChain::connect(anvil.url().parse().expect("url"), key, SALT, Some(proxy)).await {
        Err(ChainError::WrongCode(a)) => assert_eq!(a, proxy),
        other => panic!("expected WrongCode, got {other:?}"),
    }
}

/// Log queries start at the contract's deployment block (the review: from block 0, which on a
/// public chain scans its whole history): known from the deployment, found again by bisection
/// over historical state when the contract was there already.
#[tokio::test]
async fn log_queries_start_at_the_deployment_block() {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = Anvil::start(&Anvil::binary(""), state.path(), 31337).expect("anvil starts");
    let key = kit::funded_key(&anvil.url()).await;
    let provider =
        alloy::providers::ProviderBuilder::new().connect_http(anvil.url().parse().expect("url"));
    let _: () = provider
        .raw_request("anvil_mine".into(), (U256::from(300u64),))
        .await
        .expect("mine");
    let chain = AuditChain::connect(anvil.url().parse().expect("url"), key.clone(), SALT, None)
        .await
        .expect("deploy");
    let deployed = chain.deployment_block();
    assert!(deployed > 300, "{deployed}");
    let _: () = provider
        .raw_request("anvil_mine".into(), (U256::from(50u64),))
        .await
        .expect("mine");
    let again = AuditChain::connect(anvil.url().parse().expect("url"), key, SALT, None)
        .await
        .expect("reconnect");
    assert_eq!(again.deployment_block(), deployed);
    let batch = [record(7)];
    let mined = again.record_batch(&batch).await.expect("record");
    let items: Vec<Commitment> = batch.iter().map(RecordInput::commitment).collect();
    let found = again
        .find_batch(batch_id(&items))
        .await
        .expect("logs")
        .expect("found");
    assert_eq!(found.block_number, mined.block_number);
}
