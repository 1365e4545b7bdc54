//! The fuzz targets' inputs replayed as ordinary tests: every file in
//! `fuzz/regressions/TARGET/` (inputs that once made a target fail, kept by name) and in
//! `fuzz/corpus/TARGET/` runs once through that target's checks, so a bug a fuzzer found
//! stays found in every CI run, with no libFuzzer and no nightly flags.
//!
//! The checks are plain functions, `run(data: &[u8])` in `fuzz/logic/TARGET.rs`, which
//! panic when a property fails; `fuzz/fuzz_targets/TARGET.rs` wraps the same file for
//! `cargo fuzz` (scripts/fuzz.sh). Each test runs every input of its target, even after
//! one fails, and names all the failing files.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../fuzz/logic/auth.rs"]
mod auth;
#[path = "../fuzz/logic/manifest.rs"]
mod manifest;
#[path = "../fuzz/logic/range.rs"]
mod range;
#[path = "../fuzz/logic/reference.rs"]
mod reference;
#[path = "../fuzz/logic/uploads.rs"]
mod uploads;

/// The files of `fuzz/FOLDER/TARGET/`, sorted (a missing folder has none).
fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder)
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("read fuzz input folder").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let regressions = inputs("regressions", target);
    let corpus = inputs("corpus", target);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing: nothing to replay"
    );
    let started = Instant::now();
    let mut failed = Vec::new();
    for file in regressions.iter().chain(&corpus) {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // The panic's message is printed by the default hook as it happens.
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    eprintln!(
        "{target}: {} regression and {} corpus inputs in {:.2?}",
        regressions.len(),
        corpus.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{target}: {} input(s) failed (reproduce one with `cargo fuzz run {target} FILE`):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

#[test]
fn reference() {
    replay("reference", reference::run);
}

#[test]
fn manifest() {
    replay("manifest", manifest::run);
}

#[test]
fn range() {
    replay("range", range::run);
}

#[test]
fn auth() {
    replay("auth", auth::run);
}

#[test]
fn uploads() {
    replay("uploads", uploads::run);
    // The target keeps one scratch folder per process (each input's storage inside it is
    // removed after the input); a test process leaves nothing behind.
    let folder = format!("berth-fuzz-uploads-{}", std::process::id());
    for base in [std::path::PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let _ = std::fs::remove_dir_all(base.join(&folder));
    }
}
