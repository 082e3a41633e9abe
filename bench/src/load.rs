//! The load generator: a fixed number of identical requests sent by `concurrency` workers over
//! kept-alive connections, each request's wall time recorded from send to the end of the body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

/// One kind of request.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub body: Bytes,
    pub content_type: String,
    /// The internal token, for requests straight to a service.
    pub token: Option<String>,
    /// The caller's API key, for requests through the gateway.
    pub api_key: Option<String>,
    /// More headers (the V2 binary extension's `Inference-Header-Content-Length`).
    pub headers: Vec<(&'static str, String)>,
}

impl Target {
    /// The same request, signed in with `key` (through the gateway).
    pub fn signed_in(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }

    pub fn json(url: String, body: &Value, token: Option<&str>) -> Self {
        Target {
            url,
            body: Bytes::from(body.to_string()),
            content_type: "application/json".into(),
            token: token.map(str::to_string),
            api_key: None,
            headers: Vec::new(),
        }
    }

    /// An Open Inference Protocol inference: `doc`, then (binary extension) `blobs` after it.
    pub fn v2(url: String, doc: &Value, blobs: &[Vec<u8>]) -> Self {
        let json = doc.to_string().into_bytes();
        let mut headers = Vec::new();
        if !blobs.is_empty() {
            headers.push((
                medchain_core::contract::INFERENCE_HEADER_CONTENT_LENGTH,
                json.len().to_string(),
            ));
        }
        let body = [json]
            .into_iter()
            .chain(blobs.iter().cloned())
            .collect::<Vec<_>>();
        Target {
            url,
            body: Bytes::from(body.concat()),
            content_type: "application/json".into(),
            token: None,
            api_key: None,
            headers,
        }
    }

    /// A multipart upload with the file in the `image` part.
    pub fn image(url: String, file: &[u8], mime: &str, token: Option<&str>) -> Self {
        let boundary = "medchain-bench-0123456789abcdef";
        let mut body = Vec::with_capacity(file.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"upload\"\r\nContent-Type: {mime}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Target {
            url,
            body: Bytes::from(body),
            content_type: format!("multipart/form-data; boundary={boundary}"),
            token: token.map(str::to_string),
            api_key: None,
            headers: Vec::new(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Successful (2xx) requests' latencies, ms, sorted.
    pub latencies_ms: Vec<f64>,
    /// The services' own `inference_ms` from successful responses.
    pub inference_ms: Vec<f64>,
    pub statuses: BTreeMap<u16, usize>,
    pub transport_errors: usize,
    pub first_failure: Option<String>,
    pub wall_s: f64,
    pub concurrency: usize,
}

impl Outcome {
    pub fn ok(&self) -> usize {
        self.latencies_ms.len()
    }

    pub fn failed(&self) -> usize {
        self.transport_errors
            + self
                .statuses
                .iter()
                .filter(|(s, _)| !(200..300).contains(*s))
                .map(|(_, n)| n)
                .sum::<usize>()
    }

    pub fn p(&self, q: f64) -> Option<f64> {
        percentile(&self.latencies_ms, q)
    }

    /// The figures the results files hold.
    pub fn figures(&self) -> LoadFigures {
        let mut inf = self.inference_ms.clone();
        inf.sort_by(f64::total_cmp);
        LoadFigures {
            concurrency: self.concurrency,
            requests: self.ok() + self.failed(),
            ok: self.ok(),
            failed: self.failed(),
            statuses: self.statuses.clone(),
            first_failure: self.first_failure.clone(),
            wall_s: self.wall_s,
            throughput_rps: if self.wall_s > 0.0 {
                self.ok() as f64 / self.wall_s
            } else {
                0.0
            },
            p50_ms: self.p(50.0),
            p95_ms: self.p(95.0),
            p99_ms: self.p(99.0),
            max_ms: self.latencies_ms.last().copied(),
            service_inference_p50_ms: percentile(&inf, 50.0),
        }
    }
}

/// What a run measured, as the results files hold it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadFigures {
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// HTTP status → how many.
    #[serde(deserialize_with = "status_keys")]
    pub statuses: BTreeMap<u16, usize>,
    pub first_failure: Option<String>,
    pub wall_s: f64,
    pub throughput_rps: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub service_inference_p50_ms: Option<f64>,
}

/// `statuses` read back: JSON keys are strings, and inside a flattened struct serde hands them
/// over as strings, which the map's `u16` keys would not take.
fn status_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, usize>, D::Error> {
    use serde::Deserialize as _;
    BTreeMap::<String, usize>::deserialize(d)?
        .into_iter()
        .map(|(k, n)| Ok((k.parse().map_err(serde::de::Error::custom)?, n)))
        .collect()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A client whose pool keeps one connection per worker.
pub fn client(concurrency: usize) -> reqwest::Client {
    medchain_core::http::init_tls();
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(300))
        .build()
        .expect("a plain HTTP client builds")
}

/// Sends `total` requests to `target` with `concurrency` workers.
pub async fn drive(target: &Target, concurrency: usize, total: usize) -> Outcome {
    let client = client(concurrency);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, target, next) = (client.clone(), target.clone(), next.clone());
        workers.spawn(async move {
            let mut out = Outcome::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                one(&client, &target, &mut out).await;
            }
            out
        });
    }
    let mut all = Outcome {
        concurrency,
        ..Outcome::default()
    };
    while let Some(Ok(part)) = workers.join_next().await {
        all.latencies_ms.extend(part.latencies_ms);
        all.inference_ms.extend(part.inference_ms);
        for (s, n) in part.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.transport_errors += part.transport_errors;
        all.first_failure = all.first_failure.or(part.first_failure);
    }
    all.wall_s = start.elapsed().as_secs_f64();
    all.latencies_ms.sort_by(f64::total_cmp);
    all
}

async fn one(client: &reqwest::Client, t: &Target, out: &mut Outcome) {
    let mut req = client
        .post(&t.url)
        .header(reqwest::header::CONTENT_TYPE, &t.content_type)
        .body(t.body.clone());
    if let Some(token) = &t.token {
        req = req.header(medchain_core::auth::INTERNAL_TOKEN_HEADER, token);
    }
    if let Some(key) = &t.api_key {
        req = req.bearer_auth(key);
    }
    for (name, value) in &t.headers {
        req = req.header(*name, value);
    }
    let start = Instant::now();
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            out.transport_errors += 1;
            out.first_failure.get_or_insert_with(|| e.to_string());
            return;
        }
    };
    let status = resp.status().as_u16();
    // A V2 binary answer: its JSON is the first so many bytes.
    let json_len = resp
        .headers()
        .get(medchain_core::contract::INFERENCE_HEADER_CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let body = resp.bytes().await;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    *out.statuses.entry(status).or_default() += 1;
    match body {
        Ok(body) if (200..300).contains(&status) => {
            out.latencies_ms.push(ms);
            let json = &body[..json_len.unwrap_or(body.len()).min(body.len())];
            if let Some(inf) = serde_json::from_slice::<Value>(json).ok().and_then(|v| {
                v["inference_ms"]
                    .as_f64()
                    .or_else(|| v["parameters"]["inference_ms"].as_f64())
            }) {
                out.inference_ms.push(inf);
            }
        }
        Ok(body) => {
            out.first_failure
                .get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Err(e) => {
            out.transport_errors += 1;
            out.first_failure.get_or_insert_with(|| e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn multipart_body_frames_the_file() {
        let t = Target::image(
            "http://x/".into(),
            b"\xff\xd8abc\xff\xd9",
            "image/jpeg",
            None,
        );
        let body = String::from_utf8_lossy(&t.body);
        let boundary = t.content_type.split("boundary=").nth(1).expect("boundary");
        assert!(body.starts_with(&format!("--{boundary}\r\n")));
        assert!(body.contains("name=\"image\""));
        assert!(body.ends_with(&format!("\r\n--{boundary}--\r\n")));
    }
}
