//! The services' allocator settings, on the real binaries: every service reports its heap in
//! `/metrics`, and heart-svc does not keep ONNX Runtime's transient load buffers once its
//! ResNet50 is loaded. Without the fixed mmap threshold (`memory::tune_allocator`), glibc kept
//! them as 157 MB of free heap (README, "Soak"); with it, a few MB.

use medchain_tests::system::{Cgroups, System, debug_bin_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_svc_keeps_no_large_free_heap_after_loading_its_image_model() {
    let bin = debug_bin_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let sys = System::start(&bin, logs.path(), Cgroups::None, &[])
        .await
        .expect("the system starts");
    let gateway = sys.gateway_api();
    let ecg = std::fs::read(
        medchain_tests::models_dir().join("examples/ecg/2-myocardial_infarction-0.jpg"),
    )
    .expect("example");
    for _ in 0..3 {
        let res = gateway
            .post_image("/heart/predict/ecg", ecg.clone(), "ecg.jpg")
            .await;
        assert_eq!(res.status(), 200);
    }

    let heap = sys.heap().await;
    for (name, figures) in &heap {
        assert!(figures.is_some(), "{name} reports no heap figures");
    }
    let heart = heap
        .iter()
        .find_map(|(n, h)| (n == "heart-svc").then_some(*h))
        .flatten()
        .expect("heart-svc's heap");
    // The loaded session itself is in use (over 100 MB); what is freed must not stay.
    assert!(heart.in_use_mb > 50.0, "{heart:?}");
    assert!(
        heart.free_mb < 32.0,
        "heart-svc keeps {:.1} MB of free heap after its model load",
        heart.free_mb
    );
}
