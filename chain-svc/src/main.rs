//! chain-svc entry point: load settings, start telemetry, start the chain side, serve.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ignore_file_size_signal();
    medchain_core::server::main(
        medchain_chain_svc::Settings::load,
        medchain_chain_svc::build,
    )
    .await
}

/// A write past the file-size limit (RLIMIT_FSIZE) would kill the process with SIGXFSZ; ignored,
/// it fails with EFBIG like any full disk, and the outbox recovers from it (see `outbox`).
#[allow(unsafe_code)] // one libc call; no Rust state is involved
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
