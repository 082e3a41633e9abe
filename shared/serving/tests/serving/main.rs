//! The serving stack's integration tests, in one binary (one link step): `service` runs the
//! HTTP service end to end; `explain` checks TreeSHAP against XGBoost and in predictions; `downloads` serves a model by URL from a real HTTP server;
//! `optimized` makes and loads offline-optimised variants; `v2` speaks the Open Inference
//! Protocol to it.

mod downloads;
mod explain;
mod optimized;
mod service;
mod v2;
