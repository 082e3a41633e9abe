//! heart-svc entry point: load settings, start telemetry, serve until stopped.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    medchain_core::server::main(medchain_heart_svc::load_settings, async |settings| {
        Ok(medchain_heart_svc::build(settings)?)
    })
    .await
}
