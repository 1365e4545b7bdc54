//! The `range` fuzz target: its checks are in `fuzz/logic/range.rs`, a plain
//! function that `tests/fuzz_regressions.rs` also runs on the saved inputs.
#![no_main]

#[path = "../logic/range.rs"]
mod logic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| logic::run(data));
