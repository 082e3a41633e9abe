//! chain-svc as a real process whose disk fills up while records stream in (its file-size limit,
//! RLIMIT_FSIZE, set to 0 with `prlimit`: every write of the process fails, as on a full disk
//! where the file cannot take a page more): the record that cannot be written
//! is refused with a 503 that says so — nothing accepted is lost — `/readyz` names the outbox,
//! and once there is room again the service writes again without a restart and every accepted
//! record reaches the chain exactly once. (Before: one I/O error latched redb, every later write
//! answered 500 "Previous I/O error" until a restart, and `/readyz` stayed 200; and with its log
//! on the same disk, every request died unanswered: the log library's report of the failed log
//! write panicked.)

use medchain_tests::chain as kit;

use medchain_core::auth::Peer;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

/// Its log is a file on the same (full) disk, as in a deployment that redirects stderr.
fn start(data: &Path, port: u16) -> Child {
    kit::start_chain_svc(super::chain_svc_bin(), data, port)
}

fn id(n: usize) -> String {
    format!("{n:08x}-0000-4000-8000-0000000d15c0")
}

fn record(n: usize) -> Value {
    kit::record(&id(n), "MRN-DISKFULL", n)
}

fn set_file_size_limit(pid: u32, soft: &str) {
    let ok = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--fsize={soft}:unlimited"),
        ])
        .status()
        .expect("prlimit (util-linux)")
        .success();
    assert!(ok, "prlimit --fsize={soft}");
}

async fn post(client: &reqwest::Client, base: &str, n: usize) -> (u16, Value) {
    let r = client
        .post(format!("{base}/v1/records"))
        .header("x-internal-token", kit::credential(Peer::Heart))
        .json(&record(n))
        .send()
        .await
        .unwrap_or_else(|e| panic!("record {n} unanswered: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// (0, null) while nothing listens yet.
async fn readyz(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let Ok(r) = client.get(format!("{base}/readyz")).send().await else {
        return (0, Value::Null);
    };
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn outbox_check(body: &Value) -> Value {
    body["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "outbox").cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_full_disk_refuses_clearly_and_the_service_recovers_without_a_restart() {
    medchain_core::http::init_tls();
    let data = tempfile::tempdir().expect("tempdir");
    let port = medchain_tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut child = start(data.path(), port);
    let mut up = false;
    for _ in 0..600 {
        if readyz(&client, &base).await.0 == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "chain-svc did not become ready");
    let mut accepted = Vec::new();
    for n in 0..5 {
        assert_eq!(post(&client, &base, n).await.0, 202);
        accepted.push(n);
    }

    // The disk is full: no write of the process succeeds.
    set_file_size_limit(child.id(), "0");
    let mut refused = None;
    for n in 5..50 {
        let (status, body) = post(&client, &base, n).await;
        match status {
            202 => accepted.push(n),
            503 => {
                let detail = body["detail"].as_str().unwrap_or_default().to_string();
                assert!(detail.contains("outbox cannot write"), "{body}");
                assert!(detail.contains("not accepted"), "{body}");
                refused = Some(n);
                break;
            }
            other => panic!("record {n}: {other} {body}"),
        }
    }
    let refused = refused.expect("a write on a full disk must fail");
    assert_eq!(
        refused, 5,
        "the first record after the disk filled is refused"
    );
    let (status, body) = readyz(&client, &base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(outbox_check(&body)["ok"], false, "{body}");
    // Still full: still refused, still clearly (not a latched 500).
    assert_eq!(post(&client, &base, refused).await.0, 503);

    // Room again: the same process writes again.
    set_file_size_limit(child.id(), "unlimited");
    let mut ready = (0, Value::Null);
    for _ in 0..100 {
        ready = readyz(&client, &base).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(post(&client, &base, refused).await.0, 202);
    accepted.push(refused);
    for n in refused + 1..refused + 4 {
        assert_eq!(post(&client, &base, n).await.0, 202);
        accepted.push(n);
    }

    // Every accepted record confirmed on chain exactly once; the refused attempt left nothing.
    for &n in &accepted {
        kit::confirmed_once(&base, &id(n), 30).await;
    }
    let listed = kit::list_patient(&base, "MRN-DISKFULL").await;
    assert_eq!(listed["count"], accepted.len(), "{listed}");
    eprintln!(
        "refused record {refused} while full; all {} accepted records confirmed once",
        accepted.len()
    );
    child.kill().expect("kill");
    child.wait().expect("reaped");
}
