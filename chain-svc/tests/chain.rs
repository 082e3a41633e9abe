//! The audit contract on a real anvil: deterministic deployment found again after a restart,
//! records, duplicates and roles, decoded reverts.

mod common;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use medchain_chain_svc::anvil::Anvil;
use medchain_chain_svc::chain::{AuditChain, ChainError, RecordInput, deployment_address};

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
    let key = common::funded_key(&anvil.url()).await;
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

    let mined = chain.record(&record(1)).await.expect("record");
    assert!(mined.block_number > 0);
    let onchain = chain
        .get(B256::repeat_byte(1))
        .await
        .expect("read")
        .expect("present");
    assert_eq!(onchain.probabilityBps, 7730);
    assert_eq!(onchain.inputCommitment, B256::repeat_byte(0xCC));
    assert_eq!(onchain.recorder, key.address());
    assert!(
        chain
            .get(B256::repeat_byte(9))
            .await
            .expect("read")
            .is_none()
    );

    // A duplicate prediction id is refused by the contract, decoded.
    match chain.record(&record(1)).await {
        Err(ChainError::Duplicate(id)) => assert_eq!(id, B256::repeat_byte(1)),
        other => panic!("expected Duplicate, got {other:?}"),
    }

    // Another key may read but not write.
    let stranger = common::funded_key(&anvil.url()).await;
    let theirs = AuditChain::connect(
        anvil.url().parse().expect("url"),
        stranger.clone(),
        SALT,
        Some(chain.contract()),
    )
    .await
    .expect("connect to the existing contract");
    match theirs.record(&record(2)).await {
        Err(ChainError::NotRecorder(who)) => assert_eq!(who, stranger.address()),
        other => panic!("expected NotRecorder, got {other:?}"),
    }
    chain
        .grant_recorder(stranger.address())
        .await
        .expect("admin grants");
    theirs.record(&record(2)).await.expect("now a recorder");

    // Restart the node on the same state: the contract and its records are still there.
    anvil.stop();
    let anvil = Anvil::start(&bin, state.path(), 31337).expect("anvil restarts");
    let chain = AuditChain::connect(anvil.url().parse().expect("url"), key, SALT, None)
        .await
        .expect("found after restart");
    assert!(
        chain
            .get(B256::repeat_byte(2))
            .await
            .expect("read")
            .is_some()
    );
}

#[tokio::test]
async fn foreign_or_missing_code_is_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = Anvil::start(&Anvil::binary(""), state.path(), 31337).expect("anvil");
    let key = common::funded_key(&anvil.url()).await;
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
    let key = common::funded_key(&anvil.url()).await;
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
    let mined = again.record(&record(7)).await.expect("record");
    let found = again
        .find_recorded(B256::repeat_byte(7))
        .await
        .expect("logs")
        .expect("found");
    assert_eq!(found.block_number, mined.block_number);
}
