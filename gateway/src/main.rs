//! gateway entry point: load settings, start telemetry, serve until stopped.
//! `gateway new-key <role> <id>` makes a caller's API key instead and prints it with the
//! `clients.keys` entry to configure (the key itself is not stored anywhere).
//! `gateway new-credentials` prints a fresh credential for every pair of services, as the
//! environment of a whole system (`NAME=value` lines: a compose `.env` file, a Kubernetes
//! Secret's literals).

use medchain_gateway::callers::{Role, new_key};
use medchain_gateway::{Settings, build};

fn key_command(args: &[String]) -> anyhow::Result<()> {
    let [role, id] = args else {
        anyhow::bail!("usage: gateway new-key <clinician|auditor|admin> <id>");
    };
    let role: Role = role.parse().map_err(anyhow::Error::msg)?;
    let (key, entry) = new_key(role, id).map_err(anyhow::Error::msg)?;
    println!("key (give it to the caller; it is shown only now): {key}");
    println!("clients.keys entry (configure this; GATEWAY__CLIENTS__KEYS): {entry}");
    Ok(())
}

fn credentials_command() -> anyhow::Result<()> {
    let mut failed = None;
    let env = medchain_core::auth::credentials_env(|_, _| {
        let mut raw = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut raw) {
            failed = Some(e);
        }
        hex::encode(raw)
    });
    if let Some(e) = failed {
        anyhow::bail!("no randomness: {e}");
    }
    println!("# medchain service credentials, one per pair of services (docs/security.md).");
    println!("# Each service reads the lines of its own prefix; keep this file secret.");
    for (k, v) in env {
        println!("{k}={v}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("new-key") {
        return key_command(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("new-credentials") {
        return credentials_command();
    }
    medchain_core::server::main(Settings::load, async |settings| Ok(build(settings)?)).await
}
