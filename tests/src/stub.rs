//! Stub upstreams: real actix servers on loopback, built the same way by every test that
//! needs something to stand in for a service.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};

/// A stub server to start: where, how many workers, keep-alive, and a hook per connection.
/// Bodies of any size are taken (the stub never refuses for size).
#[derive(Clone)]
pub struct StubServer {
    ip: IpAddr,
    port: u16,
    workers: usize,
    keep_alive: Option<Duration>,
    on_connect: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for StubServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubServer")
            .field("ip", &self.ip)
            .field("port", &self.port)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Default for StubServer {
    fn default() -> Self {
        Self::new()
    }
}

impl StubServer {
    /// On 127.0.0.1, a port of its own, one worker.
    pub fn new() -> Self {
        Self {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            workers: 1,
            keep_alive: None,
            on_connect: None,
        }
    }

    /// On `ip:port` (another loopback address, a port chosen beforehand).
    pub fn at(mut self, ip: IpAddr, port: u16) -> Self {
        self.ip = ip;
        self.port = port;
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = Some(d);
        self
    }

    /// Calls `f` on every new connection (to count them).
    pub fn on_connect(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Starts the server with the routes `routes` configures, on the current tokio runtime;
    /// returns its base URL (`http://ip:port`).
    pub fn serve<F>(self, routes: F) -> std::io::Result<String>
    where
        F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
    {
        let listener = std::net::TcpListener::bind((self.ip, self.port))?;
        let addr = listener.local_addr()?;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(web::PayloadConfig::new(usize::MAX))
                .configure(routes.clone())
        })
        .workers(self.workers);
        if let Some(d) = self.keep_alive {
            server = server.keep_alive(d);
        }
        if let Some(f) = self.on_connect {
            server = server.on_connect(move |_, _| f());
        }
        tokio::spawn(server.listen(listener)?.run());
        Ok(format!("http://{addr}"))
    }
}

/// A stub on 127.0.0.1 with one worker answering every request with `handler`.
pub fn serve<H, Args>(handler: H) -> String
where
    H: actix_web::Handler<Args> + Clone + Send + 'static,
    Args: actix_web::FromRequest + 'static,
    H::Output: actix_web::Responder + 'static,
{
    StubServer::new()
        .serve(move |cfg| {
            cfg.default_service(web::to(handler.clone()));
        })
        .expect("stub server")
}
