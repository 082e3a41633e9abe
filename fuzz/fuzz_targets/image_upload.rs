//! An uploaded image file: see `src/checks.rs`.
#![no_main]

#[path = "../src/checks.rs"]
// Each target uses half of the shared checks.
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::image_upload(data));
