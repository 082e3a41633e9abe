//! chain-svc entry point: load settings, start telemetry, start the chain side, serve.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    medchain_shared::memory::tune_allocator();
    let settings = medchain_chain_svc::Settings::load()?;
    if let Some(code) = medchain_shared::server::healthcheck_command(&settings.server) {
        std::process::exit(code);
    }
    medchain_shared::telemetry::init(&settings.telemetry);
    tracing::info!(?settings, "starting");
    let running = medchain_chain_svc::build(settings).await?;
    tracing::info!(port = running.port(), contract = %running.contract, "listening");
    running.run_until_stopped().await?;
    Ok(())
}
