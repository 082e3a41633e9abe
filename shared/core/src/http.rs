//! Outgoing HTTP, configured once for every service: TLS through rustls with the ring crypto
//! provider (installed process-wide on first use, so alloy's own client gets it too), and a
//! client builder with the settings every service-to-service call shares.

use std::sync::Once;
use std::time::Duration;

static TLS: Once = Once::new();

/// Installs the TLS crypto provider (idempotent; call before building any HTTP client).
pub fn init_tls() {
    TLS.call_once(|| {
        // Err means another provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder for calls to other services: TLS ready, connect timeout, no proxy
/// lookups, a pool that drops idle connections before free-tier load balancers do.
pub fn client_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    init_tls();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .no_proxy()
        .user_agent(concat!("medchain/", env!("CARGO_PKG_VERSION")))
}
