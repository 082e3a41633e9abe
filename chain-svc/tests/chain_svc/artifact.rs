//! The committed ABI + bytecode artifact is what the pinned solc makes of the committed source.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_artifact_matches_a_fresh_compile() {
    let contracts = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/contracts"));
    let node_modules = std::env::var("MEDCHAIN_NODE_MODULES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/node/node_modules").to_string()
    });
    let out = Command::new("node")
        .arg(contracts.join("compile.cjs"))
        .arg("--check")
        .env("NODE_PATH", &node_modules)
        .output()
        .expect("node runs (scripts/setup.sh installs solc)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
