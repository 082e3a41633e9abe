//! The serving stack's integration tests, in one binary (one link step): `service` runs the
//! HTTP service end to end; `downloads` serves a model by URL from a real HTTP server.

mod downloads;
mod service;
