//! Helpers shared by chain-svc's tests.

use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;

/// A fresh key funded through anvil's cheat RPC: no well-known key in the repository.
pub async fn funded_key(rpc_url: &str) -> PrivateKeySigner {
    medchain_shared::http::init_tls();
    let signer = PrivateKeySigner::random();
    let provider =
        alloy::providers::ProviderBuilder::new().connect_http(rpc_url.parse().expect("url"));
    let _: () = provider
        .raw_request(
            "anvil_setBalance".into(),
            (signer.address(), U256::from(10u128.pow(20))),
        )
        .await
        .expect("fund");
    signer
}
