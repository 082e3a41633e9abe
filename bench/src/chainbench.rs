//! `medchain-bench chain`: the audit trail's throughput and cost. For each mining mode
//! (anvil's automine, 2-second and 12-second blocks) a release chain-svc in front of its own
//! anvil takes a stream of records as fast as it accepts them; the command waits until every
//! one is confirmed and reads, per record, when it was accepted and confirmed and in which
//! block and transaction, and per transaction its gas. Then records arrive at 20 a second on
//! 12-second blocks while the outbox backlog is sampled.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medchain_core::auth::Peer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Args;
use crate::load::percentile;
use crate::results::{self, Header};

/// What `medchain-bench chain` writes to `results/chain.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainRun {
    #[serde(flatten)]
    pub header: Header,
    pub streams: Vec<Stream>,
    pub backlog: Backlog,
}

/// One mining mode's stream of records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stream {
    /// `automine`, `2-second blocks`, `12-second blocks`.
    pub mode: String,
    pub block_time_s: Option<u64>,
    pub records: usize,
    pub all_confirmed_once: bool,
    pub accepted_in_s: f64,
    pub drained_in_s: f64,
    pub blocks_with_records: usize,
    pub blocks_mined: u64,
    pub records_per_block_mean: f64,
    pub records_per_block_max: Option<usize>,
    pub transactions: usize,
    pub records_per_second: f64,
    pub first_accept_to_last_confirm_s: f64,
    pub gas_per_record: f64,
    pub largest_batch: Option<Batch>,
    pub latency_s: Latency,
}

/// One transaction's batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub records: usize,
    pub gas_used: u64,
    pub gas_per_record: f64,
}

/// From acceptance (the `202`) to confirmation, seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// Records arriving at a steady rate, the outbox backlog sampled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backlog {
    pub block_time_s: u64,
    pub rate_per_s: u64,
    pub seconds: u64,
    pub records: usize,
    pub pending_max: u64,
    pub pending_max_first_half: u64,
    pub pending_max_second_half: u64,
    pub pending_when_sending_stopped: u64,
    pub drained_after_s: f64,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub pending: u64,
}

/// The credential of each caller of chain-svc in the bench (as `credential(from)`).
fn credential(from: Peer) -> String {
    format!("chain-bench-{from}-credential")
}

fn say(msg: &str) {
    eprintln!("[chain-bench] {msg}");
}

/// anvil and chain-svc, stopped on drop.
struct Rig {
    procs: Vec<Child>,
    rpc: String,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn anvil_binary() -> anyhow::Result<String> {
    let a = std::env::var("MEDCHAIN_ANVIL").unwrap_or_default();
    if a.is_empty() || !Path::new(&a).is_file() {
        bail!("MEDCHAIN_ANVIL must name the anvil binary (bench/run.sh sets it)");
    }
    Ok(a)
}

async fn wait_ok(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not answer 200 within 120 s")
}

async fn start(args: &Args, block_time: Option<u64>) -> anyhow::Result<Rig> {
    let dir = tempfile::tempdir()?;
    let (rpc_port, port) = (medchain_tests::closed_port(), medchain_tests::closed_port());
    let mut anvil = Command::new(anvil_binary()?);
    anvil.args(["--host", "127.0.0.1", "--port", &rpc_port.to_string()]);
    if let Some(s) = block_time {
        anvil.args(["--block-time", &s.to_string()]);
    }
    let mut procs = vec![
        anvil
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("anvil")?,
    ];
    let rpc = format!("http://127.0.0.1:{rpc_port}");
    let http = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", rpc_port)).is_err() {
        if Instant::now() > end {
            bail!("anvil did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::File::create(dir.path().join("chain-svc.log"))?;
    procs.push(
        Command::new(args.bin_dir.join("chain-svc"))
            .env("CHAIN__SERVER__PORT", port.to_string())
            .envs(
                [Peer::Gateway, Peer::Diabetes, Peer::Heart, Peer::Monitor].map(|p| {
                    (
                        format!("CHAIN__AUTH__ACCEPT__{}", p.as_str().to_ascii_uppercase()),
                        credential(p),
                    )
                }),
            )
            .env("CHAIN__STORAGE__DATA_DIR", dir.path().join("state"))
            .env("CHAIN__CHAIN__RPC_URL", &rpc)
            .env("CHAIN__CHAIN__DEV_CHAIN", "true")
            .env("CHAIN__LIMITS__RECORDS_PER_MINUTE", "1000000")
            .env("CHAIN__LIMITS__RECORDS_PER_MINUTE_PER_SOURCE", "1000000")
            .env("CHAIN__TELEMETRY__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("chain-svc")?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let rig = Rig {
        procs,
        rpc,
        base,
        http,
        _dir: dir,
    };
    wait_ok(&rig.http, &format!("{}/readyz", rig.base)).await?;
    Ok(rig)
}

fn record(tag: u32, n: usize) -> Value {
    json!({
        "prediction_id": format!("{tag:08x}-0000-4000-8000-{n:012x}"),
        "disease": if n.is_multiple_of(2) { "diabetes" } else { "heart" },
        "modality": "tabular",
        "model": {"id": "bench", "version": "1", "sha256": "00"},
        "label": 1,
        "probability": 0.77,
        "patient_id": format!("BENCH-{}", n % 97),
        "input_digest": format!("0x{:064x}", n + 1),
    })
}

impl Rig {
    async fn post(&self, body: &Value) -> anyhow::Result<()> {
        // Each record from its own disease's service.
        let writer = if body["disease"] == "heart" {
            Peer::Heart
        } else {
            Peer::Diabetes
        };
        let r = self
            .http
            .post(format!("{}/v1/records", self.base))
            .header("x-internal-token", credential(writer))
            .json(body)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("POST /v1/records: {} {}", r.status(), r.text().await?);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/records/{id}", self.base))
            .header("x-internal-token", credential(Peer::Gateway))
            .header(medchain_core::auth::CALLER_HEADER, "chain-bench")
            .header(medchain_core::auth::CALLER_ROLE_HEADER, "auditor")
            .send()
            .await?
            .json()
            .await?)
    }

    async fn pending(&self) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .header("x-internal-token", credential(Peer::Monitor))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix("chain_outbox_pending "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .context("no chain_outbox_pending in /metrics")
    }

    async fn rpc(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let v: Value = self
            .http
            .post(&self.rpc)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["result"].clone())
    }

    async fn drained(&self, limit: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + limit;
        while self.pending().await? > 0 {
            if Instant::now() > end {
                bail!("records still pending after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

fn hex_u64(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// One mining mode: `n` records sent as fast as chain-svc takes them (16 at a time).
async fn stream(
    args: &Args,
    mode: &str,
    block_time: Option<u64>,
    n: usize,
) -> anyhow::Result<Stream> {
    say(&format!("{mode}: {n} records"));
    let rig = start(args, block_time).await?;
    let tag = 0x1000_0000 + block_time.unwrap_or(0) as u32;
    let started = Instant::now();
    let first_block = hex_u64(&rig.rpc("eth_blockNumber", json!([])).await?);
    let mut next = 0;
    while next < n {
        let k = (n - next).min(16);
        let sends = (next..next + k).map(|i| {
            let body = record(tag, i);
            let rig = &rig;
            async move { rig.post(&body).await }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
        next += k;
    }
    let accepted_s = started.elapsed().as_secs_f64();
    rig.drained(Duration::from_secs(600)).await?;
    let drained_s = started.elapsed().as_secs_f64();
    let mut confirmed = confirmed(&rig, tag, n).await?;
    let (gas_total, per_tx) = gas(&rig, &confirmed.txs).await?;
    confirmed.latencies.sort_by(f64::total_cmp);
    let span_s = confirmed
        .last_confirm
        .saturating_sub(confirmed.first_accept) as f64
        / 1000.0;
    let largest = per_tx.iter().max_by_key(|t| t.records).cloned();
    let last_block = hex_u64(&rig.rpc("eth_blockNumber", json!([])).await?);
    let (blocks, latencies) = (&confirmed.blocks, &confirmed.latencies);
    Ok(Stream {
        mode: mode.into(),
        block_time_s: block_time,
        records: n,
        all_confirmed_once: true,
        accepted_in_s: accepted_s,
        drained_in_s: drained_s,
        blocks_with_records: blocks.len(),
        blocks_mined: last_block.saturating_sub(first_block),
        records_per_block_mean: n as f64 / blocks.len().max(1) as f64,
        records_per_block_max: blocks.values().max().copied(),
        transactions: confirmed.txs.len(),
        records_per_second: n as f64 / span_s.max(1e-3),
        first_accept_to_last_confirm_s: span_s,
        gas_per_record: gas_total as f64 / n as f64,
        largest_batch: largest,
        latency_s: Latency {
            p50: percentile(latencies, 50.0),
            p99: percentile(latencies, 99.0),
            max: latencies.last().copied(),
        },
    })
}

/// Where a stream's records ended up, read back from chain-svc.
struct Confirmed {
    /// Accepted → confirmed per record, s.
    latencies: Vec<f64>,
    /// Block number → records in it.
    blocks: std::collections::BTreeMap<u64, usize>,
    /// Transaction hash → records in it.
    txs: std::collections::BTreeMap<String, usize>,
    first_accept: u64,
    last_confirm: u64,
}

/// Reads the stream's `n` records back; an error unless every one is confirmed and matches
/// the chain.
async fn confirmed(rig: &Rig, tag: u32, n: usize) -> anyhow::Result<Confirmed> {
    let mut c = Confirmed {
        latencies: Vec::with_capacity(n),
        blocks: Default::default(),
        txs: Default::default(),
        first_accept: u64::MAX,
        last_confirm: 0,
    };
    for i in 0..n {
        let r = rig
            .get(&format!("{tag:08x}-0000-4000-8000-{i:012x}"))
            .await?;
        if r["status"] != "confirmed" || r["matches_chain"] != true {
            bail!("record {i} is not confirmed on chain: {r}");
        }
        let (acc, conf) = (
            r["accepted_at_unix_ms"].as_u64().unwrap_or(0),
            r["confirmed_at_unix_ms"].as_u64().unwrap_or(0),
        );
        c.first_accept = c.first_accept.min(acc);
        c.last_confirm = c.last_confirm.max(conf);
        c.latencies.push(conf.saturating_sub(acc) as f64 / 1000.0);
        *c.blocks
            .entry(r["block_number"].as_u64().unwrap_or(0))
            .or_default() += 1;
        *c.txs
            .entry(r["tx_hash"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    Ok(c)
}

/// The gas the transactions used, in all and per transaction.
async fn gas(
    rig: &Rig,
    txs: &std::collections::BTreeMap<String, usize>,
) -> anyhow::Result<(u64, Vec<Batch>)> {
    let mut gas_total = 0u64;
    let mut per_tx = Vec::new();
    for (hash, count) in txs {
        let receipt = rig.rpc("eth_getTransactionReceipt", json!([hash])).await?;
        let gas = hex_u64(&receipt["gasUsed"]);
        gas_total += gas;
        per_tx.push(Batch {
            records: *count,
            gas_used: gas,
            gas_per_record: gas as f64 / *count as f64,
        });
    }
    Ok((gas_total, per_tx))
}

/// Records arriving at `rate` a second for `secs` on `block_time`-second blocks; the outbox
/// backlog sampled every 500 ms.
async fn backlog(args: &Args, block_time: u64, rate: u64, secs: u64) -> anyhow::Result<Backlog> {
    say(&format!(
        "backlog: {rate} records/s for {secs} s on {block_time}-second blocks"
    ));
    let rig = start(args, Some(block_time)).await?;
    let tag = 0x2000_0000;
    let started = Instant::now();
    let total = (rate * secs) as usize;
    let mut samples = Vec::new();
    let mut sent = 0usize;
    let mut next_sample = Duration::ZERO;
    while sent < total {
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        let now = started.elapsed();
        if now >= next_sample {
            samples.push(Sample {
                t_s: now.as_secs_f64(),
                pending: rig.pending().await?,
            });
            next_sample += Duration::from_millis(500);
        }
        if now < due {
            tokio::time::sleep((due - now).min(Duration::from_millis(50))).await;
            continue;
        }
        rig.post(&record(tag, sent)).await?;
        sent += 1;
    }
    let at_end = rig.pending().await?;
    let sending_s = started.elapsed().as_secs_f64();
    rig.drained(Duration::from_secs(300)).await?;
    let drained_after_s = started.elapsed().as_secs_f64() - sending_s;
    let max_of = |s: &[Sample]| s.iter().map(|x| x.pending).max().unwrap_or(0);
    // Bounded: the second half never holds more than the first did plus one block's worth.
    let half = samples.len() / 2;
    Ok(Backlog {
        block_time_s: block_time,
        rate_per_s: rate,
        seconds: secs,
        records: total,
        pending_max: max_of(&samples),
        pending_max_first_half: max_of(&samples[..half]),
        pending_max_second_half: max_of(&samples[half..]),
        pending_when_sending_stopped: at_end,
        drained_after_s,
        samples,
    })
}

pub async fn run(args: &Args) -> anyhow::Result<ChainRun> {
    medchain_core::http::init_tls();
    let header = results::run_header(args, "chain");
    let n = if args.quick { 200 } else { 2000 };
    let modes: &[(&str, Option<u64>)] = if args.quick {
        &[("automine", None), ("2-second blocks", Some(2))]
    } else {
        &[
            ("automine", None),
            ("2-second blocks", Some(2)),
            ("12-second blocks", Some(12)),
        ]
    };
    let mut streams = Vec::new();
    for (mode, bt) in modes {
        streams.push(stream(args, mode, *bt, n).await?);
    }
    let backlog = if args.quick {
        backlog(args, 2, 20, 10).await?
    } else {
        backlog(args, 12, 20, 120).await?
    };
    Ok(ChainRun {
        header,
        streams,
        backlog,
    })
}
