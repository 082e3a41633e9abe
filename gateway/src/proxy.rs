//! Forwarding to upstreams: round-robin over each upstream's instances with passive health (an
//! instance whose connection fails or times out is skipped for a while; nothing is polled). An
//! upstream given as a plain-http DNS name is looked up again and again ([`Upstream::refresh`]),
//! and every address it resolves to is an instance of its own, with its own pool of kept-alive
//! connections: a scaled service behind one name (a headless Service on Kubernetes, `--scale` on
//! Compose) gets requests spread over all of its instances without a new connection per request;
//! an address that is no longer listed is dropped. The gateway's credential for that upstream,
//! the signed-in caller and the request id added, bodies streamed both ways with a size cap
//! (small ones sent whole), per-route timeouts with extra time for an instance that may be
//! waking from sleep, and failures turned into 502/503/504 problems naming the upstream —
//! never a hang.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderName};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use medchain_core::error::ApiError;
use medchain_core::metrics::name;
use medchain_core::request::RequestId;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

/// Looks up an upstream's host name: the system's resolver, or a test's own.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system's resolver (`getaddrinfo`: /etc/hosts, then DNS), as every other client uses.
#[derive(Debug)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// One instance of an upstream.
#[derive(Debug)]
struct Instance {
    /// Where requests go: the configured base URL, or, for a resolved name, the same URL with
    /// one of its addresses in place of the name.
    base: String,
    /// `base` parsed once: a call's URL is this one with the call's path and query set, not a
    /// string parsed again (with its host put through IDNA) for every request.
    url: Option<reqwest::Url>,
    /// Skipped until then after a transport failure.
    ejected_until: Mutex<Option<Instant>>,
    /// Last time it answered; an instance silent for longer than the sleep threshold gets the
    /// wake grace on top of the route timeout.
    last_answer: Mutex<Option<Instant>>,
}

impl Instance {
    fn new(base: String) -> Arc<Self> {
        Arc::new(Instance {
            url: reqwest::Url::parse(&base).ok(),
            base,
            ejected_until: Mutex::new(None),
            last_answer: Mutex::new(None),
        })
    }
}

/// A configured base URL; `name` when it is a plain-http URL whose host is a DNS name, which is
/// then resolved to its addresses.
#[derive(Debug)]
struct Configured {
    base: String,
    name: Option<Named>,
    /// The instance URLs the name resolved to last.
    resolved: Mutex<Vec<String>>,
}

#[derive(Debug)]
struct Named {
    host: String,
    port: u16,
    /// The base URL's path (usually empty), kept after the address.
    path: String,
}

impl Configured {
    fn parse(url: &str) -> Self {
        let base = url.trim_end_matches('/').to_string();
        let name = reqwest::Url::parse(&base).ok().and_then(|u| {
            // TLS needs the name (SNI, the certificate), and a platform's https endpoint has
            // its own load balancer: only plain http is spread by address.
            if u.scheme() != "http" {
                return None;
            }
            // An address is already an instance; only a name can stand for several.
            let host = u.host_str()?;
            if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
                return None;
            }
            Some(Named {
                host: host.to_string(),
                port: u.port_or_known_default()?,
                path: u.path().trim_end_matches('/').to_string(),
            })
        });
        Configured {
            base,
            name,
            resolved: Mutex::new(Vec::new()),
        }
    }
}

/// An upstream service and its instances.
#[derive(Debug)]
pub struct Upstream {
    pub name: &'static str,
    /// The gateway's credential for this upstream (`auth.send.<upstream>`).
    token: Option<SecretString>,
    configured: Vec<Configured>,
    /// The instances now: replaced whole by [`Upstream::refresh`], read by every request.
    instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    next: AtomicUsize,
    eject_for: Duration,
}

impl Upstream {
    /// `urls` are base URLs (`https://heart-svc.onrender.com`, `http://10.0.0.5:8082`,
    /// `http://heart-svc:8082`). Until the first [`Upstream::refresh`], each is one instance.
    pub fn new(name: &'static str, urls: &[String], eject_for: Duration) -> Self {
        let configured: Vec<Configured> = urls.iter().map(|u| Configured::parse(u)).collect();
        let instances = configured
            .iter()
            .map(|c| Instance::new(c.base.clone()))
            .collect();
        Self {
            name,
            token: None,
            configured,
            instances: RwLock::new(Arc::new(instances)),
            next: AtomicUsize::new(0),
            eject_for,
        }
    }

    /// The same, presenting `token` on every call.
    pub fn presenting(mut self, token: Option<SecretString>) -> Self {
        self.token = token;
        self
    }

    /// Whether any base URL is a name to resolve.
    pub fn has_names(&self) -> bool {
        self.configured.iter().any(|c| c.name.is_some())
    }

    fn current(&self) -> Arc<Vec<Arc<Instance>>> {
        self.instances
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Looks every name up again and makes each address an instance. An address still listed
    /// keeps its state (ejection, last answer) and its pooled connections; one no longer listed
    /// is dropped. A name that cannot be resolved keeps the addresses it had (a resolver that
    /// fails for a moment drops nothing), or stays the name itself if it never had any.
    pub async fn refresh(&self, resolver: &dyn Resolve) {
        let old = self.current();
        let mut bases = Vec::new();
        for c in &self.configured {
            let Some(n) = &c.name else {
                bases.push(c.base.clone());
                continue;
            };
            match resolver.lookup(&n.host, n.port).await {
                Ok(mut addrs) if !addrs.is_empty() => {
                    addrs.sort();
                    let urls: Vec<String> = addrs
                        .iter()
                        .map(|a| format!("http://{a}{}", n.path))
                        .collect();
                    bases.extend(urls.iter().cloned());
                    *lock(&c.resolved) = urls;
                }
                result => {
                    let kept = lock(&c.resolved).clone();
                    let error = match result {
                        Err(e) => e.to_string(),
                        Ok(_) => "no address".into(),
                    };
                    tracing::warn!(upstream = self.name, host = %n.host, %error, kept = kept.len(),
                        "upstream name not resolved; keeping its last addresses");
                    if kept.is_empty() {
                        bases.push(c.base.clone());
                    } else {
                        bases.extend(kept);
                    }
                }
            }
        }
        // One instance per URL, in the order first listed.
        let mut seen = std::collections::HashSet::new();
        bases.retain(|b| seen.insert(b.clone()));
        let same =
            bases.len() == old.len() && bases.iter().zip(old.iter()).all(|(b, i)| *b == i.base);
        metrics::gauge!(name("upstream_instances"), "upstream" => self.name)
            .set(bases.len() as f64);
        if same {
            return;
        }
        let new: Vec<Arc<Instance>> = bases
            .into_iter()
            .map(|b| {
                old.iter()
                    .find(|i| i.base == b)
                    .cloned()
                    .unwrap_or_else(|| Instance::new(b))
            })
            .collect();
        tracing::info!(upstream = self.name, instances = ?new.iter().map(|i| i.base.as_str()).collect::<Vec<_>>(), "upstream instances changed");
        *self
            .instances
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
    }

    /// Instances in the order to try them: round-robin from the next one, healthy first;
    /// ejected ones last (soonest back first), so a request is never refused untried.
    fn order(&self) -> Vec<Arc<Instance>> {
        let instances = self.current();
        let n = instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut healthy = Vec::with_capacity(n);
        let mut ejected = Vec::new();
        for k in 0..n {
            let inst = &instances[(start + k) % n];
            match *lock(&inst.ejected_until) {
                Some(until) if until > now => ejected.push((until, inst.clone())),
                _ => healthy.push(inst.clone()),
            }
        }
        ejected.sort_by_key(|(until, _)| *until);
        healthy.extend(ejected.into_iter().map(|(_, i)| i));
        healthy
    }

    fn eject(&self, inst: &Instance) {
        *lock(&inst.ejected_until) = Some(Instant::now() + self.eject_for);
        metrics::counter!(name("upstream_ejections_total"), "upstream" => self.name).increment(1);
    }

    fn answered(&self, inst: &Instance) {
        *lock(&inst.ejected_until) = None;
        *lock(&inst.last_answer) = Some(Instant::now());
    }

    fn may_be_asleep(inst: &Instance, after: Duration) -> bool {
        lock(&inst.last_answer).is_none_or(|t| t.elapsed() > after)
    }

    /// The instances' base URLs now (for readiness).
    pub fn bases(&self) -> Vec<String> {
        self.current().iter().map(|i| i.base.clone()).collect()
    }
}

/// Refreshes every upstream that has names to resolve, now and then every `every`, for as long
/// as `upstreams` lives (the server's lifetime).
pub fn spawn_refresh(
    upstreams: std::sync::Weak<crate::Gateway>,
    resolver: Arc<dyn Resolve>,
    every: Duration,
) {
    if tokio::runtime::Handle::try_current().is_err() || every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(g) = upstreams.upgrade() else { return };
            for up in [&g.diabetes, &g.heart, &g.chain] {
                if up.has_names() {
                    up.refresh(resolver.as_ref()).await;
                }
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How one route is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct RoutePolicy {
    pub timeout: Duration,
    pub max_body: usize,
}

/// Everything forwarding needs.
#[derive(Debug)]
pub struct Proxy {
    pub client: reqwest::Client,
    /// Added to the timeout of a request to an instance that may be asleep.
    pub wake_grace: Duration,
    /// Silence after which an instance may be asleep (Render free tier: 15 minutes).
    pub sleep_after: Duration,
}

/// Request headers passed on (everything else is dropped: cookies, auth of the client,
/// hop-by-hop headers).
const FORWARD_REQUEST: [HeaderName; 1] = [header::ACCEPT];
/// Request headers passed on with a body only: on a bodiless request they would announce
/// bytes that never come (the upstream then waits for them until a timeout).
const FORWARD_WITH_BODY: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    INFERENCE_HEADER_LENGTH,
];
/// Response headers passed back.
const FORWARD_RESPONSE: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::RETRY_AFTER,
    header::CACHE_CONTROL,
    header::CONTENT_LENGTH,
    INFERENCE_HEADER_LENGTH,
];
/// Where an Open Inference Protocol body's JSON ends and its binary tensors begin.
const INFERENCE_HEADER_LENGTH: HeaderName =
    HeaderName::from_static(medchain_core::contract::INFERENCE_HEADER_CONTENT_LENGTH);

/// Bodies up to this size, both ways, are read whole and sent as one piece rather than
/// streamed: a prediction's JSON is a few hundred bytes, and streaming it cost a task, a
/// channel and chunked framing per request. Larger ones (uploads) stream, never buffered.
const WHOLE_BODY_UP_TO: usize = 64 * 1024;

/// What goes upstream as the request body.
enum Outgoing {
    None,
    /// A small body, read whole first: sent in one piece, and again to another instance if
    /// the first could not be reached.
    Whole(web::Bytes),
    /// A larger one, streamed as it arrives; `pump` says whether it went over the limit.
    Streamed {
        feed: BodyFeed,
        pump: actix_web::rt::task::JoinHandle<bool>,
    },
}

impl Outgoing {
    /// The client's body as the route takes it (`declared`: its Content-Length). A small body
    /// must be all in within the route's timeout, as a streamed one must reach the upstream.
    async fn of(
        payload: web::Payload,
        has_body: bool,
        declared: Option<usize>,
        policy: RoutePolicy,
    ) -> Result<Self, ApiError> {
        let max = policy.max_body;
        if !has_body {
            return Ok(Outgoing::None);
        }
        if let Some(n) = declared.filter(|&n| n <= WHOLE_BODY_UP_TO) {
            return match tokio::time::timeout(policy.timeout, read_whole(payload, n, max)).await {
                Ok(read) => read.map(Outgoing::Whole),
                Err(_) => Err(ApiError::Timeout(format!(
                    "the request body did not arrive within {} ms",
                    policy.timeout.as_millis()
                ))),
            };
        }
        let (tx, rx) = mpsc::channel(4);
        let feed = BodyFeed {
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            taken: Arc::new(AtomicBool::new(false)),
        };
        // The pump runs on this worker (the payload is not Send) alongside the upstream call.
        let pump = actix_web::rt::spawn(pump(payload, tx, max));
        Ok(Outgoing::Streamed { feed, pump })
    }

    fn attach(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Outgoing::None => rb,
            Outgoing::Whole(b) => rb.body(b.clone()),
            Outgoing::Streamed { feed, .. } => rb.body(feed.body()),
        }
    }

    /// Whether the body can still be sent to another instance: nobody has read any of it.
    fn resendable(&self) -> bool {
        match self {
            Outgoing::None | Outgoing::Whole(_) => true,
            Outgoing::Streamed { feed, .. } => !feed.taken.load(Ordering::Relaxed),
        }
    }

    /// Whether the body went over the route's limit (a streamed one is only known at the end).
    async fn was_too_large(self) -> bool {
        match self {
            Outgoing::Streamed { feed, pump } => {
                // Unblocks a pump waiting on a full channel, then asks it.
                drop(feed);
                pump.await.unwrap_or(false)
            }
            _ => false,
        }
    }
}

/// A small body of `declared` bytes, read whole (at most `max`).
async fn read_whole(
    mut payload: web::Payload,
    declared: usize,
    max: usize,
) -> Result<web::Bytes, ApiError> {
    let mut buf = web::BytesMut::with_capacity(declared.min(max));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A request body fed from the client as it arrives: a small bounded channel, so a slow
/// upstream slows the client down instead of the gateway buffering the upload.
struct BodyFeed {
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Result<web::Bytes, std::io::Error>>>>,
    /// Whether any chunk went out: only a body nobody read can be sent to another instance.
    taken: Arc<AtomicBool>,
}

impl BodyFeed {
    fn body(&self) -> reqwest::Body {
        let rx = self.rx.clone();
        let taken = self.taken.clone();
        reqwest::Body::wrap_stream(futures_util::stream::unfold(
            (rx, taken),
            |(rx, taken)| async move {
                let item = rx.lock().await.recv().await?;
                taken.store(true, Ordering::Relaxed);
                Some((item, (rx, taken)))
            },
        ))
    }
}

/// Reads the client's body into the channel, enforcing `max` bytes. Returns whether the
/// limit was exceeded (the upstream request then fails and the client gets 413).
async fn pump(
    mut payload: web::Payload,
    tx: mpsc::Sender<Result<web::Bytes, std::io::Error>>,
    max: usize,
) -> bool {
    let mut n = 0usize;
    while let Some(chunk) = payload.next().await {
        let item = match chunk {
            Ok(c) => {
                n += c.len();
                if n > max {
                    let _ = tx
                        .send(Err(std::io::Error::other("request body over the limit")))
                        .await;
                    return true;
                }
                Ok(c)
            }
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return false;
        }
    }
    false
}

fn too_large(max: usize) -> ApiError {
    ApiError::TooLarge {
        detail: format!("the request body is larger than this route's limit of {max} bytes"),
        field: None,
    }
}

fn upstream_error(up: &Upstream, status: u16, detail: String) -> ApiError {
    ApiError::Upstream {
        upstream: up.name.to_string(),
        status,
        detail,
    }
}

/// Forwards `req` (with its streamed body) to `path` on `up`: to each instance in turn while
/// the request has not reached one (a refused connection, a body nobody read yet).
pub async fn forward(
    proxy: &Proxy,
    up: &Upstream,
    policy: RoutePolicy,
    req: &HttpRequest,
    payload: web::Payload,
    path: &str,
) -> Result<HttpResponse, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > policy.max_body) {
        return Err(too_large(policy.max_body));
    }
    let has_body = req.method() == Method::POST || req.method() == Method::PUT;
    let outgoing = Outgoing::of(payload, has_body, declared, policy).await?;
    let started = Instant::now();
    let mut last_err = None;
    for inst in up.order() {
        let timeout = if Upstream::may_be_asleep(&inst, proxy.sleep_after) {
            policy.timeout + proxy.wake_grace
        } else {
            policy.timeout
        };
        let rb = upstream_request(proxy, up, &inst, req, path, has_body).timeout(timeout);
        match outgoing.attach(rb).send().await {
            Ok(res) => {
                up.answered(&inst);
                record(up, "answered", started);
                return Ok(respond(up, res).await);
            }
            Err(e) => {
                // The URL carries path parameters (a patient id on the per-patient route):
                // it goes neither into logs nor into the public answer.
                let e = e.without_url();
                let connect = e.is_connect();
                if connect || e.is_timeout() {
                    up.eject(&inst);
                }
                tracing::warn!(upstream = up.name, instance = %inst.base, error = %e, connect, "upstream call failed");
                // Only a request that never reached the instance may go to another one:
                // idempotent reads, and bodies nobody has read yet.
                let retry = connect && outgoing.resendable();
                last_err = Some((e, timeout));
                if !retry {
                    break;
                }
            }
        }
    }
    if outgoing.was_too_large().await {
        record(up, "too_large", started);
        return Err(too_large(policy.max_body));
    }
    Err(failure(up, last_err, started))
}

/// The call to `path` on one instance: the client's method, query and forwarded headers, the
/// gateway's credential for this upstream, the signed-in caller and the request id.
fn upstream_request(
    proxy: &Proxy,
    up: &Upstream,
    inst: &Instance,
    req: &HttpRequest,
    path: &str,
    has_body: bool,
) -> reqwest::RequestBuilder {
    let query = req.query_string();
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut rb = match &inst.url {
        Some(base) => {
            let mut url = base.clone();
            let joined = format!("{}{path}", base.path().trim_end_matches('/'));
            url.set_path(&joined);
            url.set_query((!query.is_empty()).then_some(query));
            proxy.client.request(method, url)
        }
        None if query.is_empty() => proxy.client.request(method, format!("{}{path}", inst.base)),
        None => proxy
            .client
            .request(method, format!("{}{path}?{query}", inst.base)),
    };
    let with_body: &[HeaderName] = if has_body { &FORWARD_WITH_BODY } else { &[] };
    for h in FORWARD_REQUEST.iter().chain(with_body) {
        if let Some(v) = req.headers().get(h) {
            rb = rb.header(h.as_str(), v.as_bytes());
        }
    }
    if let Some(t) = &up.token {
        rb = rb.header(
            medchain_core::auth::INTERNAL_TOKEN_HEADER,
            t.expose_secret(),
        );
    }
    // Who is asking, for the upstream's own decisions (who may read which record). Client
    // headers never pass (see FORWARD_REQUEST), so these are the gateway's word.
    if let Some(c) = actix_web::HttpMessage::extensions(req).get::<crate::callers::Caller>() {
        rb = rb
            .header(medchain_core::auth::CALLER_HEADER, c.id.as_str())
            .header(medchain_core::auth::CALLER_ROLE_HEADER, c.role.as_str());
    }
    if let Some(id) = &RequestId::of(req) {
        rb = rb.header(medchain_core::request::REQUEST_ID_HEADER, id);
    }
    rb
}

/// The answer when no instance answered: 504 after a timeout, 502 otherwise (or 503 with no
/// instance at all); counted by outcome.
fn failure(
    up: &Upstream,
    last_err: Option<(reqwest::Error, Duration)>,
    started: Instant,
) -> ApiError {
    let Some((e, timeout)) = last_err else {
        return upstream_error(up, 503, "no instance is configured".into());
    };
    if e.is_timeout() {
        record(up, "timeout", started);
        upstream_error(
            up,
            504,
            format!("did not answer within {} ms", timeout.as_millis()),
        )
    } else if e.is_connect() {
        record(up, "unreachable", started);
        upstream_error(up, 502, "no instance could be reached".into())
    } else {
        record(up, "failed", started);
        upstream_error(up, 502, format!("the call failed: {e}"))
    }
}

fn record(up: &Upstream, outcome: &'static str, started: Instant) {
    metrics::counter!(name("upstream_requests_total"), "upstream" => up.name, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(name("upstream_duration_seconds"), "upstream" => up.name)
        .record(started.elapsed().as_secs_f64());
}

/// The upstream's answer: read whole when it is small, else streamed back. A 5xx that is not
/// one of our problem documents (e.g. a platform's HTML error page) becomes a 502 problem
/// naming the upstream, and so does a small answer cut off before its end.
async fn respond(up: &Upstream, res: reqwest::Response) -> HttpResponse {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ours = res
        .headers()
        .get(header::CONTENT_TYPE.as_str())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if status.is_server_error() && !ours {
        let e = upstream_error(
            up,
            502,
            format!("answered {status} without a JSON body (is the URL right?)"),
        );
        return actix_web::ResponseError::error_response(&e);
    }
    let mut out = HttpResponse::build(status);
    copy_headers(res.headers(), &mut out);
    if res
        .content_length()
        .is_some_and(|n| n <= WHOLE_BODY_UP_TO as u64)
    {
        return match res.bytes().await {
            Ok(body) => out.body(body),
            Err(e) => actix_web::ResponseError::error_response(&upstream_error(
                up,
                502,
                format!("the answer was cut off: {}", e.without_url()),
            )),
        };
    }
    out.streaming(res.bytes_stream())
}

fn copy_headers(from: &reqwest::header::HeaderMap, to: &mut actix_web::HttpResponseBuilder) {
    for h in &FORWARD_RESPONSE {
        if *h == header::CONTENT_LENGTH {
            continue; // the streaming body sets its own framing
        }
        if let Some(v) = from.get(h.as_str()) {
            to.insert_header((h.clone(), v.as_bytes()));
        }
    }
}

/// The upstream's `/readyz`, asked once with a short timeout.
pub async fn ready(proxy: &Proxy, up: &Upstream, timeout: Duration) -> (bool, String) {
    let mut details = Vec::new();
    let mut any = false;
    for base in &up.bases() {
        let res = proxy
            .client
            .get(format!("{base}/readyz"))
            .timeout(timeout)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                any = true;
                details.push(format!("{base}: ready"));
            }
            Ok(r) => details.push(format!("{base}: {}", r.status())),
            Err(e) if e.is_timeout() => details.push(format!("{base}: no answer in time")),
            Err(_) => details.push(format!("{base}: unreachable")),
        }
    }
    (any, details.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(url: &str) -> Option<(String, u16, String)> {
        Configured::parse(url)
            .name
            .map(|n| (n.host, n.port, n.path))
    }

    #[test]
    fn only_plain_http_names_are_resolved_to_addresses() {
        assert_eq!(
            named("http://heart-svc:8082"),
            Some(("heart-svc".into(), 8082, String::new()))
        );
        assert_eq!(
            named("http://heart-svc.medchain.svc.cluster.local/api/"),
            Some((
                "heart-svc.medchain.svc.cluster.local".into(),
                80,
                "/api".into()
            ))
        );
        // Addresses are instances already; TLS needs its name.
        assert_eq!(named("http://127.0.0.1:8082"), None);
        assert_eq!(named("http://[::1]:8082"), None);
        assert_eq!(named("https://medchain-heart.onrender.com"), None);
    }

    #[derive(Debug)]
    struct Fixed(std::io::Result<Vec<SocketAddr>>);

    impl Resolve for Fixed {
        fn lookup<'a>(
            &'a self,
            _: &'a str,
            _: u16,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
            let r = match &self.0 {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn a_refresh_keeps_the_state_of_addresses_still_listed() {
        let up = Upstream::new(
            "heart-svc",
            &[
                "http://heart-svc:8082/".into(),
                "http://10.0.0.9:8082".into(),
            ],
            Duration::from_secs(15),
        );
        assert_eq!(
            up.bases(),
            ["http://heart-svc:8082", "http://10.0.0.9:8082"]
        );
        let a: SocketAddr = "10.0.0.1:8082".parse().unwrap();
        let b: SocketAddr = "[fd00::2]:8082".parse().unwrap();
        up.refresh(&Fixed(Ok(vec![b, a, a]))).await;
        assert_eq!(
            up.bases(),
            [
                "http://10.0.0.1:8082",
                "http://[fd00::2]:8082",
                "http://10.0.0.9:8082"
            ]
        );
        let first = up.current()[0].clone();
        up.eject(&first);
        up.refresh(&Fixed(Ok(vec![a]))).await;
        assert_eq!(up.bases(), ["http://10.0.0.1:8082", "http://10.0.0.9:8082"]);
        // The same instance, still ejected: it goes last.
        assert!(Arc::ptr_eq(&first, &up.current()[0]));
        assert_eq!(
            up.order().last().map(|i| i.base.clone()),
            Some(first.base.clone())
        );
        // A failing look-up keeps what the name had.
        up.refresh(&Fixed(Err(std::io::Error::other("SERVFAIL"))))
            .await;
        assert_eq!(up.bases(), ["http://10.0.0.1:8082", "http://10.0.0.9:8082"]);
    }
}
