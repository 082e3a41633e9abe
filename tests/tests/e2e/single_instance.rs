//! The single-instance image's supervisor (`deploy/supervise.sh`) on the real binaries (test
//! build), as the image runs it: the four services behind the gateway on one public port,
//! the others on loopback with generated credentials (one per pair) and the int8 ECG model; SIGTERM
//! stops everything; a service that dies takes the whole instance down for the platform to
//! restart, leaving nothing running.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medchain_tests::system::{children, consecutive_free_ports, debug_bin_dir, terminate, wait_ok};
use medchain_tests::{TestApp, sample_record};
use serde_json::json;

struct Instance {
    child: Child,
    gateway: TestApp,
    base: u16,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Instance {
    async fn start() -> Self {
        medchain_core::http::init_tls();
        let bin = debug_bin_dir();
        for name in ["gateway", "diabetes-svc", "heart-svc", "chain-svc"] {
            assert!(
                bin.join(name).is_file(),
                "{} is missing: `cargo test --workspace` builds it",
                bin.join(name).display()
            );
        }
        let public = consecutive_free_ports(1).expect("a free port");
        let base = loop {
            let b = consecutive_free_ports(3).expect("free ports");
            if !(b..b + 3).contains(&public) {
                break b;
            }
        };
        let data = tempfile::tempdir().expect("tempdir");
        let log = data.path().join("supervise.log");
        let out = std::fs::File::create(&log).expect("log file");
        let script = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/supervise.sh"
        ));
        let child = Command::new("bash")
            .arg(script)
            .env("PORT", public.to_string())
            .env("MEDCHAIN_INTERNAL_PORT_BASE", base.to_string())
            .env("MEDCHAIN_BIN_DIR", &bin)
            .env("MEDCHAIN_DATA_DIR", data.path())
            .env("GATEWAY__SERVER__HOST", "127.0.0.1")
            .env("GATEWAY__CLIENTS__KEYS", medchain_tests::test_key_entry())
            .env_remove("MEDCHAIN_INTERNAL_TOKEN")
            .env_remove("HEART__MODELS__IMAGE__CARD")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("bash runs the supervisor");
        let mut instance = Instance {
            child,
            gateway: TestApp {
                address: format!("http://127.0.0.1:{public}"),
                client: medchain_tests::signed_in_client(medchain_tests::TEST_API_KEY),
                token: None,
                monitor: None,
            },
            base,
            log,
            _data: data,
        };
        instance.wait_ready().await;
        instance
    }

    /// Until the gateway's readiness (which asks every upstream) answers 200.
    async fn wait_ready(&mut self) {
        let url = format!("{}/readyz", self.gateway.address);
        let client = self.gateway.client.clone();
        if let Err(e) = wait_ok(
            &client,
            &url,
            &mut self.child,
            "the supervisor",
            Instant::now(),
        )
        .await
        {
            panic!("{e}:\n{}", self.log_text());
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every process under the supervisor: the four services and chain-svc's anvil.
    fn descendants(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let mut todo = children(self.child.id());
        while let Some(pid) = todo.pop() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
            todo.extend(children(pid));
        }
        out
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor did not end within {within:?}; under it: {:?}\n{}",
                self.descendants(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let pid = self.child.id();
        terminate(&mut self.child, pid);
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        // A zombie (state Z) has ended; only its parent has not collected it yet.
        .is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
}

/// The local addresses of listening TCP sockets on `port` (from /proc/net/tcp and tcp6).
fn listening_on(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3] == "0A" {
                let (addr, p) = f[1].split_once(':').unwrap_or_default();
                if u16::from_str_radix(p, 16) == Ok(port) {
                    out.push(addr.to_string());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_runs_all_four_behind_one_port_and_stops_them_on_sigterm() {
    let mut instance = Instance::start().await;
    let gw = &instance.gateway;

    // The ECG model is the int8 one unless configured otherwise.
    let ecg = std::fs::read(
        medchain_tests::models_dir().join("examples/ecg/2-myocardial_infarction-0.jpg"),
    )
    .expect("example");
    let res = gw
        .post_image("/api/v1/heart/predict/ecg", ecg, "ecg.jpg")
        .await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["model"]["id"], "heart-ecg-resnet50-int8", "{body}");

    // A prediction with a patient reaches chain-svc: the services share the generated token.
    let mut record = sample_record("diabetes");
    record["patient_id"] = json!("MRN-SINGLE-1");
    let p = gw
        .post_json_ok("/api/v1/diabetes/predict/tabular", &record)
        .await;
    assert_eq!(p["audit"]["status"], "pending", "{p}");

    // The services listen on loopback only, and want the token there too.
    for port in instance.base..instance.base + 3 {
        let addrs = listening_on(port);
        assert!(!addrs.is_empty(), "nothing listens on {port}");
        assert!(
            addrs.iter().all(|a| a == "0100007F"),
            "port {port} listens beyond loopback: {addrs:?}"
        );
    }
    let direct = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v1/predict/tabular",
            instance.base
        ))
        .json(&sample_record("diabetes"))
        .send()
        .await
        .expect("diabetes-svc answers");
    assert_eq!(direct.status(), 401);

    let procs = instance.descendants();
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    for name in ["gateway", "diabetes-svc", "heart-svc", "chain-svc", "anvil"] {
        assert!(names.contains(&name), "{name} not running: {names:?}");
    }
    Command::new("kill")
        .args(["-TERM", &instance.child.id().to_string()])
        .status()
        .expect("kill");
    let status = instance.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", instance.log_text());
    for (pid, name) in procs {
        assert!(!alive(pid), "{name} ({pid}) still running after SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_dies_takes_the_instance_down_for_a_restart() {
    let mut instance = Instance::start().await;
    let procs = instance.descendants();
    let (heart, _) = procs
        .iter()
        .find(|(_, n)| n == "heart-svc")
        .expect("heart-svc runs");
    Command::new("kill")
        .args(["-KILL", &heart.to_string()])
        .status()
        .expect("kill");
    let status = instance.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exit status {status}");
    let log = instance.log_text();
    assert!(
        log.contains("heart-svc ended") && log.contains("stopping the others"),
        "{log}"
    );
    for (pid, name) in procs {
        assert!(!alive(pid), "{name} ({pid}) still running");
    }
}
