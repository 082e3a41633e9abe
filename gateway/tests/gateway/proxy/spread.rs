//! An upstream given as one DNS name with several addresses (a Kubernetes headless Service, a
//! Compose service scaled with `--scale`): the gateway resolves it again and again and spreads
//! requests over every address, over kept-alive connections per address. The name is given its
//! addresses by a resolver of the test's own — real stub servers on 127.0.0.1, 127.0.0.2 and
//! 127.0.0.3 (all loopback on Linux), one port.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use medchain_gateway::build_with;
use medchain_gateway::proxy::Resolve;
use medchain_tests::stub::StubServer;

use super::{Settings, Stub, client, settings, spawn_stub};

/// Names and the addresses they resolve to; `None`: the look-up fails.
#[derive(Debug, Default)]
struct TestResolver {
    names: Mutex<HashMap<String, Option<Vec<SocketAddr>>>>,
    lookups: AtomicUsize,
}

impl TestResolver {
    fn set(&self, host: &str, addrs: Option<Vec<SocketAddr>>) {
        self.names
            .lock()
            .expect("resolver")
            .insert(host.into(), addrs);
    }
}

impl Resolve for TestResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.names.lock().expect("resolver").get(host).cloned();
        Box::pin(async move {
            match found {
                Some(Some(addrs)) => Ok(addrs),
                _ => Err(std::io::Error::other(format!("{host}: no such name"))),
            }
        })
    }
}

/// One instance behind the name: counts requests and the connections they came on.
#[derive(Clone, Default)]
struct Counted {
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Counted {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A stub on `ip:port` that answers every request with 200 and keeps connections alive longer
/// than any test takes.
fn spawn_at(ip: &str, port: u16) -> std::io::Result<Counted> {
    let c = Counted::default();
    let (requests, connections) = (c.requests.clone(), c.connections.clone());
    StubServer::new()
        .at(ip.parse().map_err(std::io::Error::other)?, port)
        .keep_alive(Duration::from_secs(300))
        .on_connect(move || {
            connections.fetch_add(1, Ordering::SeqCst);
        })
        .serve(move |cfg| {
            let requests = requests.clone();
            // The body is read, as a service does (an unread body closes the connection).
            cfg.default_service(web::to(move |_body: web::Bytes| {
                requests.fetch_add(1, Ordering::SeqCst);
                async { HttpResponse::Ok().json(serde_json::json!({"ok": true})) }
            }));
        })?;
    Ok(c)
}

/// Instances on 127.0.0.1 … 127.0.0.n, one port (found free on all of them).
fn spawn_instances(n: u8) -> (u16, Vec<Counted>, Vec<SocketAddr>) {
    for _ in 0..50 {
        let port = medchain_tests::free_port();
        let ips: Vec<String> = (1..=n).map(|i| format!("127.0.0.{i}")).collect();
        // Every address must be free before any stub starts.
        if ips
            .iter()
            .any(|ip| std::net::TcpListener::bind((ip.as_str(), port)).is_err())
        {
            continue;
        }
        let stubs: std::io::Result<Vec<Counted>> =
            ips.iter().map(|ip| spawn_at(ip, port)).collect();
        if let Ok(stubs) = stubs {
            let addrs = ips
                .iter()
                .map(|ip| format!("{ip}:{port}").parse().expect("address"))
                .collect();
            return (port, stubs, addrs);
        }
    }
    panic!("no port free on all of 127.0.0.1..{n}");
}

/// A gateway whose heart upstream is `http://heart.test:<port>`, resolved by `resolver` every
/// second.
async fn start_named(port: u16, resolver: Arc<TestResolver>, reuse: bool) -> String {
    let mut s: Settings = settings(
        vec![spawn_stub(Stub::default()).await],
        vec![format!("http://heart.test:{port}")],
        vec![spawn_stub(Stub::default()).await],
    );
    s.proxy.resolve_secs = 1;
    // One test client is one caller: the per-caller limit would count the test itself.
    s.clients.rate_per_second = std::num::NonZeroU32::new(100_000).expect("positive");
    s.clients.rate_burst = std::num::NonZeroU32::new(100_000).expect("positive");
    s.proxy.reuse_connections = reuse;
    s.validate().expect("valid");
    medchain_tests::serve(build_with(s, resolver).expect("gateway"))
}

/// Sends `n` heart predictions one after the other; all must succeed.
async fn send(gw: &str, n: usize) {
    let c = client();
    for i in 0..n {
        let res = c
            .post(format!("{gw}/api/v1/heart/predict/tabular"))
            .json(&serde_json::json!({"age": 50}))
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 200, "request {i}: {body}");
    }
}

/// Waits until `done` holds, sending a request now and then (the gateway looks names up in
/// the background).
async fn until(gw: &str, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        let _ = client()
            .post(format!("{gw}/api/v1/heart/predict/tabular"))
            .json(&serde_json::json!({"age": 50}))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reset(stubs: &[Counted]) {
    for s in stubs {
        s.requests.store(0, Ordering::SeqCst);
        s.connections.store(0, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_name_with_several_addresses_gets_requests_spread_over_kept_alive_connections() {
    let (port, stubs, addrs) = spawn_instances(3);
    let resolver = Arc::new(TestResolver::default());
    resolver.set("heart.test", Some(addrs));
    let gw = start_named(port, resolver.clone(), true).await;
    until(&gw, "every address is in use", || {
        stubs.iter().all(|s| s.requests() > 0)
    })
    .await;
    reset(&stubs);
    send(&gw, 60).await;
    let requests: Vec<usize> = stubs.iter().map(Counted::requests).collect();
    let connections: Vec<usize> = stubs.iter().map(Counted::connections).collect();
    // Round-robin over the three addresses: 20 each.
    assert_eq!(requests, vec![20, 20, 20], "requests per instance");
    // Kept alive: one connection per instance serves many requests (a connection may be
    // opened anew when the previous one is not back in the pool yet, never once per request).
    for (i, c) in connections.iter().enumerate() {
        assert!(*c <= 5, "instance {i}: {c} connections for 20 requests");
    }

    // The same with reuse off: every request a connection of its own (what Compose needed
    // before: the comparison shows the pooling is real).
    let (port, stubs, addrs) = spawn_instances(3);
    resolver.set("heart.test", Some(addrs));
    let gw = start_named(port, resolver.clone(), false).await;
    until(&gw, "every address is in use", || {
        stubs.iter().all(|s| s.requests() > 0)
    })
    .await;
    reset(&stubs);
    send(&gw, 30).await;
    for s in &stubs {
        assert_eq!(s.requests(), 10);
        assert_eq!(
            s.connections(),
            10,
            "without reuse, a connection per request"
        );
    }
}

#[tokio::test]
async fn an_address_that_disappears_is_dropped_and_a_new_one_taken_on() {
    let (port, stubs, addrs) = spawn_instances(4);
    let resolver = Arc::new(TestResolver::default());
    resolver.set("heart.test", Some(addrs[..3].to_vec()));
    let gw = start_named(port, resolver.clone(), true).await;
    until(&gw, "the first three addresses are in use", || {
        stubs[..3].iter().all(|s| s.requests() > 0)
    })
    .await;
    assert_eq!(stubs[3].requests(), 0, "the fourth is not listed yet");

    // The third instance goes (scaled down), a fourth comes (scaled up).
    resolver.set("heart.test", Some(vec![addrs[0], addrs[1], addrs[3]]));
    until(&gw, "the new address is in use", || stubs[3].requests() > 0).await;
    reset(&stubs);
    send(&gw, 30).await;
    let requests: Vec<usize> = stubs.iter().map(Counted::requests).collect();
    assert_eq!(
        requests,
        vec![10, 10, 0, 10],
        "the dropped address gets nothing"
    );

    // The resolver fails for a while: the addresses it gave last are kept, nothing is lost.
    resolver.set("heart.test", None);
    let before = resolver.lookups.load(Ordering::SeqCst);
    until(&gw, "the failing look-up ran twice", || {
        resolver.lookups.load(Ordering::SeqCst) >= before + 2
    })
    .await;
    reset(&stubs);
    send(&gw, 30).await;
    let requests: Vec<usize> = stubs.iter().map(Counted::requests).collect();
    assert_eq!(requests, vec![10, 10, 0, 10], "the last addresses are kept");
}

#[tokio::test]
async fn a_listed_address_nobody_answers_on_is_ejected_and_costs_no_request() {
    let (port, stubs, mut addrs) = spawn_instances(2);
    // A third address the name lists, where nothing listens.
    let dead: SocketAddr = format!("127.0.0.9:{port}").parse().expect("address");
    addrs.push(dead);
    let resolver = Arc::new(TestResolver::default());
    resolver.set("heart.test", Some(addrs));
    let gw = start_named(port, resolver, true).await;
    until(&gw, "both live addresses are in use", || {
        stubs.iter().all(|s| s.requests() > 0)
    })
    .await;
    // Every request succeeds: a refused connection is retried on another address, and the
    // dead one is ejected for eject_secs.
    send(&gw, 40).await;
    let total: usize = stubs.iter().map(Counted::requests).sum();
    assert!(total >= 40, "{total}");
}
