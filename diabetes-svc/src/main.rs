//! diabetes-svc entry point: load settings, start telemetry, serve until stopped.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    medchain_core::memory::tune_allocator();
    let settings = medchain_diabetes_svc::load_settings()?;
    if let Some(code) = medchain_core::server::healthcheck_command(&settings.server) {
        std::process::exit(code);
    }
    medchain_core::telemetry::init(&settings.telemetry);
    tracing::info!(?settings, "starting");
    let app = medchain_diabetes_svc::build(settings)?;
    tracing::info!(port = app.port(), "listening");
    app.run_until_stopped().await?;
    Ok(())
}
