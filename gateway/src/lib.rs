//! gateway: the only public front. Serves the web page and the public API under `/api/v1/`,
//! proxying each route to its upstream (diabetes-svc, heart-svc, chain-svc) with streamed
//! bodies, per-route limits and timeouts, round-robin with passive health over every instance
//! (an upstream's DNS name resolved to all of its addresses, each with kept-alive
//! connections), a credential per upstream, request ids, CORS, per-client rate limits, API keys
//! and OIDC bearer tokens. No business logic.
//!
//! | module | what it holds |
//! |---|---|
//! | [`configuration`] | the settings tree and its checks |
//! | [`startup`] | the gateway assembled: upstreams, the callers' gate, the HTTP application |
//! | [`routes`] | the public route table, each route served, `whoami`, readiness |
//! | [`proxy`] | streaming a request to an upstream instance, ejection, DNS spreading |
//! | [`edge`] | what every API request passes first: CORS, sign-in, rate limits |
//! | [`callers`] | API keys and roles |
//! | [`oidc`] | bearer tokens from an identity provider |
//! | [`page`] | the web page and the OpenAPI document |

pub mod callers;
pub mod configuration;
pub mod edge;
pub mod oidc;
pub mod page;
pub mod proxy;
pub mod routes;
pub mod startup;

pub use configuration::Settings;
pub use startup::{Gateway, build, build_with};

/// The routes table, for tests and the OpenAPI check.
pub fn route_table() -> &'static [routes::Route] {
    routes::ROUTES
}
