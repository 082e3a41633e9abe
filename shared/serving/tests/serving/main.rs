//! The serving stack's integration tests, in one binary (one link step): `service` runs the
//! HTTP service end to end; `downloads` serves a model by URL from a real HTTP server;
//! `optimized` makes and loads offline-optimised variants; `v2` speaks the Open Inference
//! Protocol to it.

mod downloads;
mod optimized;
mod service;
mod v2;
