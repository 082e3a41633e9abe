//! `gateway healthcheck` (the container health check) exits 0 while the server answers on its
//! port and 1 when nothing does.

use std::process::{Command, Stdio};
use std::time::Duration;

fn check(port: u16) -> i32 {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("healthcheck")
        .env("GATEWAY__SERVER__PORT", port.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("run")
        .code()
        .expect("exit code")
}

#[test]
fn the_health_check_command_reports_the_server_state() {
    let port = medchain_tests::free_port();
    assert_eq!(check(port), 1, "nothing listens yet");
    let mut server = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY__SERVER__PORT", port.to_string())
        .env("GATEWAY__SERVER__WORKERS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway");
    let mut code = 1;
    for _ in 0..100 {
        code = check(port);
        if code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 0);
}

/// A rate limit of zero would refuse every caller: the gateway does not start, and says which
/// setting (the limits are `NonZeroU32`, so no zero gets past reading the settings).
#[test]
fn a_zero_rate_limit_is_refused_naming_its_setting() {
    for (env, key) in [
        (
            "GATEWAY__CLIENTS__RATE_PER_SECOND",
            "clients.rate_per_second",
        ),
        ("GATEWAY__CLIENTS__RATE_BURST", "clients.rate_burst"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env(env, "0")
            .env("GATEWAY__SERVER__PORT", "0")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{env}=0 started the gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{env}=0: {stderr}");
    }
}
