//! The `auth` fuzz target: its checks are in `fuzz/logic/auth.rs`, a plain
//! function that `tests/fuzz_regressions.rs` also runs on the saved inputs.
#![no_main]

#[path = "../logic/auth.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
