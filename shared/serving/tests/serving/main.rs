//! The serving stack's integration tests, in one binary (one link step): `service` runs the
//! HTTP service end to end; `downloads` serves a model by URL from a real HTTP server; `v2` speaks the Open Inference
//! Protocol to it.

mod downloads;
mod service;
mod v2;
