//! Records the outbox holds as confirmed but the chain no longer does — the chain went back to an
//! earlier state (as an embedded anvil killed together with chain-svc restarts from the state it
//! saved up to a second before; or a reset, or a reorganisation) — are found and sent again, and
//! end on chain exactly once. (Before: they stayed `confirmed` with `matches_chain: null`, never
//! sent again.)

use medchain_tests::chain as kit;

use medchain_core::auth::Peer;

use alloy::primitives::U256;
use alloy::providers::{Provider, ProviderBuilder};
use medchain_tests::spawn_chain;
use serde_json::Value;

fn id(n: usize) -> String {
    format!("{n:08x}-2222-4000-8000-00000000feed")
}

fn record(n: usize) -> Value {
    kit::record(&id(n), "MRN-RESET", n)
}

/// chain-svc in this process with its embedded anvil, reconciling every 200 ms: (its URL, the
/// anvil's RPC URL).
async fn start(data: &std::path::Path) -> (String, String) {
    start_reconciling_every(data, 200).await
}

async fn start_reconciling_every(data: &std::path::Path, ms: u64) -> (String, String) {
    spawn_chain(data, |s| s.chain.reconcile_interval_ms = ms).await
}

async fn status_of(base: &str, n: usize) -> Value {
    kit::get_json(&format!("{base}/v1/records/{}", id(n))).await
}

async fn all_confirmed(base: &str, n: usize) {
    for i in 0..n {
        kit::confirmed_once(base, &id(i), 20).await;
    }
}

#[tokio::test]
async fn records_the_chain_lost_are_sent_again_and_recorded_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, rpc_url) = start(data.path()).await;
    let rpc = ProviderBuilder::new().connect_http(rpc_url.parse().expect("url"));

    // The state the chain will go back to: the contract deployed, no record yet.
    let snapshot: U256 = rpc
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    let client = reqwest::Client::new();
    const N: usize = 8;
    for n in 0..N {
        let res = client
            .post(format!("{base}/v1/records"))
            .header("x-internal-token", kit::credential(Peer::Heart))
            .json(&record(n))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 202);
    }
    all_confirmed(&base, N).await;
    let head_before = rpc.get_block_number().await.expect("head");

    // The chain goes back: every record's block is gone.
    let reverted: bool = rpc
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("revert");
    assert!(reverted);
    assert!(rpc.get_block_number().await.expect("head") < head_before);

    // Found, sent again, confirmed — and on chain once each.
    all_confirmed(&base, N).await;
    let listed = kit::list_patient(&base, "MRN-RESET").await;
    assert_eq!(listed["count"], N, "{listed}");
    let rec = status_of(&base, 0).await;
    assert!(rec["attempts"].as_u64().is_some(), "{rec}");
}

/// The embedded anvil dies while chain-svc runs (the review: nothing watched it): it is started
/// again on its port from its saved state, records keep being taken and confirmed, and the
/// records its restart lost are sent again.
#[tokio::test]
async fn a_dead_embedded_anvil_is_started_again() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, _) = start(data.path()).await;
    let client = reqwest::Client::new();
    let post = |n: usize| {
        client
            .post(format!("{base}/v1/records"))
            .header("x-internal-token", kit::credential(Peer::Heart))
            .json(&record(n))
            .send()
    };
    for n in 0..4 {
        assert_eq!(post(n).await.expect("post").status(), 202);
    }
    all_confirmed(&base, 4).await;

    let pid_file = data.path().join("anvil/anvil.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill")
        .success();
    assert!(killed);
    // Records keep coming while it is down and after.
    for n in 4..8 {
        assert_eq!(post(n).await.expect("post").status(), 202);
    }
    all_confirmed(&base, 8).await;
    let again = std::fs::read_to_string(&pid_file).expect("pid");
    assert_ne!(again.trim(), pid.trim(), "a new anvil runs");
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let listed = kit::list_patient(&base, "MRN-RESET").await;
    assert_eq!(listed["count"], 8, "{listed}");
}

/// The chain goes back, and new records are confirmed on it — in blocks of the same numbers
/// as the lost ones, and above them — before the next reconciliation. That one must still find
/// every lost record: it may not stop at the newest block the chain holds.
#[tokio::test]
async fn records_confirmed_after_a_reset_do_not_hide_the_lost_ones() {
    let data = tempfile::tempdir().expect("tempdir");
    // Long enough that the revert and the new records land between two passes.
    let (base, rpc_url) = start_reconciling_every(data.path(), 3000).await;
    let rpc = ProviderBuilder::new().connect_http(rpc_url.parse().expect("url"));
    let snapshot: U256 = rpc
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    let client = reqwest::Client::new();
    let post = |n: usize| {
        client
            .post(format!("{base}/v1/records"))
            .header("x-internal-token", kit::credential(Peer::Heart))
            .json(&record(n))
            .send()
    };
    const N: usize = 6;
    for n in 0..N {
        assert_eq!(post(n).await.expect("post").status(), 202);
    }
    all_confirmed(&base, N).await;
    let reverted: bool = rpc
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("revert");
    assert!(reverted);
    // More new records than lost ones: the newest confirmed blocks are all on the new chain.
    for n in N..3 * N {
        assert_eq!(post(n).await.expect("post").status(), 202);
    }
    all_confirmed(&base, 3 * N).await;
    let listed = kit::list_patient(&base, "MRN-RESET").await;
    assert_eq!(listed["count"], 3 * N, "{listed}");
}
