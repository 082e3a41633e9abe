//! diabetes-svc entry point: `optimize-models`, or load settings, start telemetry, serve until stopped.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(code) = medchain_serving::optimize::command(&medchain_diabetes_svc::SPEC) {
        std::process::exit(code);
    }
    medchain_core::server::main(medchain_diabetes_svc::load_settings, async |settings| {
        Ok(medchain_diabetes_svc::build(settings)?)
    })
    .await
}
