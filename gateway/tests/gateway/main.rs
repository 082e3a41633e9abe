//! The gateway's integration tests, in one binary (one link step): `proxy` against real stub
//! upstreams on port 0 (with `proxy/spread`, DNS spreading over loopback addresses);
//! `streaming` and `healthcheck` run the gateway binary as its own process.

mod healthcheck;
mod proxy;
mod streaming;
