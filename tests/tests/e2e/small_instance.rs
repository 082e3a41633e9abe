//! The whole system on Render's free instance, reproduced: each service in a cgroup of its
//! own with 512 MB and 0.1 CPU (10 ms in every 100 ms), as each runs on Render. The test
//! command's short check (the benchmark command measures the same instance at length): the
//! first prediction of each of the four models (each loads lazily, under the quota), then
//! bursts of tabular and image requests at once. Every answer must be a 200 or a clean 429/503
//! with `Retry-After`; a recorded prediction must say `pending`/`confirmed`, not `unrecorded`;
//! no process may be OOM-killed or exit.

use medchain_tests::system::{Cgroup, Cgroups, RENDER_FREE, System, debug_bin_dir};
use serde_json::{Value, json};

/// Only a 200, or a refusal that tells the caller when to come back.
async fn clean(res: reqwest::Response, what: &str) -> Option<Value> {
    let status = res.status().as_u16();
    let retry = res.headers().contains_key("retry-after");
    let body: Value = res.json().await.unwrap_or(Value::Null);
    match status {
        200 => Some(body),
        429 | 503 if retry => None,
        _ => panic!("{what}: {status} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_holds_on_a_free_instance() {
    Cgroup::probe_cpu().expect("cgroups with a memory limit and a CPU quota can be made here");
    let logs = tempfile::tempdir().expect("tempdir");
    let mut sys = System::start(
        &debug_bin_dir(),
        logs.path(),
        Cgroups::Instance(RENDER_FREE),
        &[],
    )
    .await
    .expect("the system starts on 0.1 CPU");
    let gateway = sys.gateway_api();
    let example = |p: &str| std::fs::read(medchain_tests::models_dir().join(p)).expect(p);
    let retina = example("examples/retina/0-no_dr-1.jpg");
    let ecg = example("examples/ecg/0-normal-0.jpg");

    // Each model's first prediction, its lazy load included, within the gateway's timeouts.
    for disease in ["diabetes", "heart"] {
        let mut body = medchain_tests::sample_record(disease);
        body["patient_id"] = json!("MRN-SMALL-1");
        let p = gateway
            .post_json_ok(&format!("/{disease}/predict/tabular"), &body)
            .await;
        let audit = p["audit"]["status"].as_str().unwrap_or("");
        assert!(
            audit == "pending" || audit == "confirmed",
            "{disease}: a recorded prediction says {audit}: {p}"
        );
    }
    for (path, bytes) in [
        ("/diabetes/predict/retina", &retina),
        ("/heart/predict/ecg", &ecg),
    ] {
        let res = gateway.post_image(path, bytes.clone(), "x.jpg").await;
        assert_eq!(res.status(), 200, "{path}: {:?}", res.text().await);
    }

    // Bursts: tabular of both diseases and uploads to both image models, all at once.
    let tabular = (0..32).map(|i| {
        let disease = if i % 2 == 0 { "diabetes" } else { "heart" };
        let body = medchain_tests::sample_record(disease);
        let gateway = &gateway;
        async move {
            let path = format!("/{disease}/predict/tabular");
            clean(gateway.post_json(&path, &body).await, &path).await
        }
    });
    let images = (0..8).map(|i| {
        let (path, bytes) = if i % 2 == 0 {
            ("/diabetes/predict/retina", retina.clone())
        } else {
            ("/heart/predict/ecg", ecg.clone())
        };
        let gateway = &gateway;
        async move { clean(gateway.post_image(path, bytes, "x.jpg").await, path).await }
    });
    let (tabular, images) = futures_util::future::join(
        futures_util::future::join_all(tabular),
        futures_util::future::join_all(images),
    )
    .await;
    let served = tabular
        .iter()
        .chain(&images)
        .filter(|r| r.is_some())
        .count();
    assert!(served > 0, "nothing was served");

    assert!(sys.exited().is_empty(), "exited: {:?}", sys.exited());
    for s in &sys.services {
        let cg = s.cgroup.as_ref().expect("each service has its instance");
        let stats = cg.stats();
        assert_eq!(stats.oom_kills.unwrap_or(0), 0, "{}: {stats:?}", s.name);
        assert!(
            cg.cpu_throttled_seconds().is_some(),
            "{}: the CPU quota is in force",
            s.name
        );
    }
    sys.stop();
}
