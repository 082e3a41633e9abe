//! The end-to-end tests, in one binary (one link step): the services against each other in
//! this process (`audit`, `bad_inputs`, `missing_model`), the whole system as processes
//! (`allocator`, `secrets`, `single_instance`, `small_instance`, and `v2_clients`: the real
//! tritonclient against it), and the fuzz corpora
//! replayed (`fuzz_corpus`). `no_runtime.rs` and `decode_memory.rs` stay binaries of their own:
//! ONNX Runtime loads once per process, and the decode's heap is measured in-process.

mod allocator;
mod audit;
mod bad_inputs;
mod fuzz_corpus;
mod missing_model;
mod secrets;
mod single_instance;
mod small_instance;
mod v2_clients;
