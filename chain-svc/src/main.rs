//! chain-svc entry point: load settings, start telemetry, start the chain side, serve.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    medchain_core::memory::tune_allocator();
    ignore_file_size_signal();
    let settings = medchain_chain_svc::Settings::load()?;
    if let Some(code) = medchain_core::server::healthcheck_command(&settings.server) {
        std::process::exit(code);
    }
    medchain_core::telemetry::init(&settings.telemetry);
    tracing::info!(?settings, "starting");
    let running = medchain_chain_svc::build(settings).await?;
    tracing::info!(port = running.port(), contract = %running.contract, "listening");
    running.run_until_stopped().await?;
    Ok(())
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
