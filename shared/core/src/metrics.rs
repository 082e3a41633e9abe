//! One Prometheus facade: a global `metrics` recorder installed once per process, with every
//! metric name carrying the service's prefix (`diabetes_`, `gateway_`, ...).

use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PREFIX: OnceLock<String> = OnceLock::new();

/// Installs the recorder (first call wins; later calls, e.g. from a second app in the same test
/// process, reuse it) and returns the handle that renders the exposition text.
pub fn init(prefix: &str) -> PrometheusHandle {
    let _ = PREFIX.set(prefix.to_string());
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Histogram samples are buffered until upkeep folds them into the buckets, which
            // otherwise happens only at a scrape: unscraped (Render's free tier has no
            // Prometheus), every request's samples would stay in memory for good — a soak
            // run saw the gateway grow from 12.9 to 17.2 MB over 100,000 requests, unscraped.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            // Another crate may have installed a recorder already; our handle still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Every prefixed name made so far, made once each: a metric recorded on every request
/// formatted its name and handed the recorder an owned copy, per call (callgrind).
static NAMES: Mutex<Vec<(&'static str, &'static str)>> = Mutex::new(Vec::new());

/// `name` with the service prefix, e.g. `diabetes_http_requests_total`: made on its first use
/// and kept for the process (a few dozen names, once each).
pub fn name(name: &'static str) -> &'static str {
    let Some(p) = PREFIX.get() else {
        return name;
    };
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, full)) = names.iter().find(|(n, _)| *n == name) {
        return full;
    }
    let full: &'static str = Box::leak(format!("{p}_{name}").into_boxed_str());
    names.push((name, full));
    full
}

static LABELS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// `value` as a label value that lives for the process, made once per distinct value (a model
/// key, say: a label from a `String` is a copy on every use).
pub fn label(value: &str) -> &'static str {
    let mut labels = LABELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = labels.iter().find(|l| **l == value) {
        return l;
    }
    let l: &'static str = Box::leak(value.to_string().into_boxed_str());
    labels.push(l);
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_made_once_and_carries_the_prefix() {
        let _ = PREFIX.set("svc".into());
        let p = PREFIX.get().expect("set");
        let a = name("x_total");
        assert_eq!(a, format!("{p}_x_total"));
        assert!(
            std::ptr::eq(a, name("x_total")),
            "the same name is made once"
        );
        assert_ne!(name("y_total"), a);
        assert!(std::ptr::eq(
            label(String::from("ecg").as_str()),
            label("ecg")
        ));
    }
}
