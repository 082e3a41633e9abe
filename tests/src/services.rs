//! The gateway and chain-svc started in the test's own process on port 0 (see
//! [`crate::spawn_disease`] for the disease services).

use std::path::Path;

use medchain_core::server::Application;

/// Serves `app` on the current tokio runtime; its base URL.
pub fn serve(app: Application) -> String {
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    base
}

/// A gateway's settings for tests: port 0, two workers, the test credentials
/// ([`crate::secure`]), diabetes-svc at `diabetes`, chain-svc at `chain`, heart-svc down (a
/// closed port).
pub fn gateway_settings(diabetes: &str, chain: &str) -> medchain_gateway::Settings {
    medchain_core::telemetry::init_for_tests();
    medchain_core::http::init_tls();
    let mut g = medchain_gateway::Settings::load().expect("gateway defaults");
    g.server.port = 0;
    g.server.workers = 2;
    crate::secure(&mut g.auth, medchain_core::auth::Peer::Gateway);
    g.upstreams.diabetes = vec![diabetes.to_string()];
    g.upstreams.heart = vec![crate::closed_url()];
    g.upstreams.chain = vec![chain.to_string()];
    g
}

/// Starts a gateway with `settings` (validated first, as a start-up would); its base URL.
pub fn spawn_gateway(settings: medchain_gateway::Settings) -> String {
    settings
        .validate()
        .expect("test gateway settings are valid");
    serve(medchain_gateway::build(settings).expect("gateway starts"))
}

/// Starts chain-svc with its embedded anvil, its state in `data`, the test credentials
/// ([`crate::chain::secure`]), one worker, polling every 100 ms, changed by `tweak`: (its URL,
/// the anvil's RPC URL).
pub async fn spawn_chain(
    data: &Path,
    tweak: impl FnOnce(&mut medchain_chain_svc::Settings),
) -> (String, String) {
    medchain_core::telemetry::init_for_tests();
    let mut s = medchain_chain_svc::Settings::load().expect("defaults");
    tweak(&mut s);
    s.server.port = 0;
    s.server.workers = 1;
    s.storage.data_dir = data.to_str().expect("utf-8").into();
    s.chain.poll_interval_ms = 100;
    crate::chain::secure(&mut s.auth);
    let running = medchain_chain_svc::build(s)
        .await
        .expect("chain-svc starts");
    let base = format!("http://127.0.0.1:{}", running.port());
    let rpc = running.rpc_url.clone();
    tokio::spawn(running.run_until_stopped());
    (base, rpc)
}
