//! Building and running a service's HTTP server the same way everywhere: bind (port 0 in
//! tests), worker count, graceful shutdown, and the `Application` handle tests use.

use std::fmt::Debug;
use std::net::TcpListener;
use std::time::Duration;

use actix_http::Request;
use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Response, Server, ServerHandle, ServiceFactory};
use actix_web::{Error, HttpServer};

use crate::settings::{ServerSettings, ServiceSettings, SettingsError};

/// A built, not yet running, HTTP server.
pub struct Application {
    port: u16,
    server: Server,
}

impl Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds according to `settings` and builds the server from `factory`.
    pub fn build<F, I, S, B>(settings: &ServerSettings, factory: F) -> std::io::Result<Self>
    where
        F: Fn() -> I + Send + Clone + 'static,
        I: IntoServiceFactory<S, Request>,
        S: ServiceFactory<Request, Config = AppConfig> + 'static,
        S::Error: Into<Error> + 'static,
        S::InitError: Debug,
        S::Response: Into<Response<B>> + 'static,
        B: MessageBody + 'static,
    {
        let listener = settings.bind()?;
        Self::from_listener(listener, settings, factory)
    }

    /// Builds the server on an already bound listener.
    pub fn from_listener<F, I, S, B>(
        listener: TcpListener,
        settings: &ServerSettings,
        factory: F,
    ) -> std::io::Result<Self>
    where
        F: Fn() -> I + Send + Clone + 'static,
        I: IntoServiceFactory<S, Request>,
        S: ServiceFactory<Request, Config = AppConfig> + 'static,
        S::Error: Into<Error> + 'static,
        S::InitError: Debug,
        S::Response: Into<Response<B>> + 'static,
        B: MessageBody + 'static,
    {
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(factory)
            .workers(settings.worker_count())
            .shutdown_timeout(settings.shutdown_timeout_secs)
            .client_request_timeout(Duration::from_secs(30))
            .keep_alive(Duration::from_secs(settings.keep_alive_secs))
            // actix leaves Nagle's algorithm on: a response written in pieces (the gateway
            // streams head and body separately) then waits for the peer's delayed ACK, 40 ms
            // on Linux. Measured by bench/run.sh: gateway tabular p99 47 ms before.
            .tcp_nodelay(true)
            .listen(listener)?
            .run();
        Ok(Self { port, server })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (actix handles the signals) or `handle().stop()`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// What every service registers on its `App`: service info, the metrics handle, the credentials
/// it accepts, and the `/healthz` + `/metrics` routes.
#[derive(Debug, Clone)]
pub struct Common {
    info: actix_web::web::Data<crate::health::ServiceInfo>,
    prometheus: actix_web::web::Data<metrics_exporter_prometheus::PrometheusHandle>,
    auth: actix_web::web::Data<crate::auth::ServiceAuth>,
}

impl Common {
    /// `metrics_prefix` starts every metric name of this service (`diabetes`, `gateway`, ...).
    pub fn new(
        service: &'static str,
        version: &'static str,
        metrics_prefix: &str,
        auth: &crate::settings::AuthSettings,
        server: &crate::settings::ServerSettings,
    ) -> Self {
        Self {
            info: actix_web::web::Data::new(crate::health::ServiceInfo { service, version }),
            prometheus: actix_web::web::Data::new(crate::metrics::init(metrics_prefix)),
            auth: actix_web::web::Data::new(crate::auth::ServiceAuth::new(
                &auth.accept,
                server.is_loopback(),
            )),
        }
    }

    /// The service's name.
    pub fn service(&self) -> &'static str {
        self.info.service
    }

    /// Registers the shared app data and base routes.
    pub fn register(&self, cfg: &mut actix_web::web::ServiceConfig) {
        cfg.app_data(self.info.clone())
            .app_data(self.prometheus.clone())
            .app_data(self.auth.clone())
            .configure(crate::health::base_routes);
    }
}

/// A built service, ready to serve: what [`main`] runs.
pub trait Serve: Sized {
    /// The bound HTTP port.
    fn port(&self) -> u16;

    /// Logs that the service is listening (the default names the port).
    fn announce(&self) {
        tracing::info!(port = self.port(), "listening");
    }

    /// Serves until stopped (SIGINT, SIGTERM), then shuts down gracefully.
    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>>;
}

impl Serve for Application {
    fn port(&self) -> u16 {
        self.port
    }

    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>> {
        Application::run_until_stopped(self)
    }
}

/// Every service's `main`, the same steps in the same order: tune the allocator, `load` the
/// settings, answer a `healthcheck` command line, start telemetry, `build`, serve until stopped.
pub async fn main<S, A>(
    load: impl FnOnce() -> Result<S, SettingsError>,
    build: impl AsyncFnOnce(S) -> anyhow::Result<A>,
) -> anyhow::Result<()>
where
    S: ServiceSettings,
    A: Serve,
{
    crate::memory::tune_allocator();
    let settings = load()?;
    if let Some(code) = healthcheck_command(settings.base().server) {
        std::process::exit(code);
    }
    crate::telemetry::init(settings.base().telemetry);
    tracing::info!(?settings, "starting");
    let app = build(settings).await?;
    app.announce();
    app.run_until_stopped().await?;
    Ok(())
}

/// `<binary> healthcheck`: asks this process's own `/healthz` on loopback and exits 0 or 1 — the
/// container health check, so runtime images need no curl. Returns `None` for any other
/// command line (the caller then serves).
pub fn healthcheck_command(settings: &ServerSettings) -> Option<i32> {
    if std::env::args().nth(1).as_deref() != Some("healthcheck") {
        return None;
    }
    Some(match probe_healthz(settings.port) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            1
        }
    })
}

fn probe_healthz(port: u16) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 16];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("/healthz answered {line:?}")))
    }
}
