//! Runs our spec-derived conformance suite (`berth-conformance`) against `berth serve`.

mod common;

use berth_conformance::{Options, Report};
use common::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_passes_the_conformance_suite() {
    let server = Server::start();
    let options = berth_conformance::Options {
        url: server.url(),
        namespace: "conformance/test".to_string(),
        only: std::env::var("BERTH_CONFORMANCE_ONLY").ok(),
        credentials: None,
        next: false,
    };
    let report = berth_conformance::run(&options).await;
    let failed = report.failed();
    eprintln!(
        "conformance against {}: {} checks, {} failed",
        server.url(),
        report.results.len(),
        failed.len()
    );
    for f in &failed {
        eprintln!("FAILED {}: {}", f.id, f.detail);
    }
    assert!(
        !report.results.is_empty(),
        "the conformance suite ran no checks at all"
    );
    assert!(
        failed.is_empty(),
        "{} conformance check(s) failed:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|f| format!("  {}: {}", f.id, f.detail))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn failures(report: &Report) -> String {
    report
        .failed()
        .iter()
        .map(|f| format!("  {}: {}", f.id, f.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The checks of features after v1.1 (`--next`: several tags per manifest PUT, also by
/// sha512; sparse indexes; digests on every GET/HEAD) pass with `[manifests]
/// sparse_indexes = true`, and the option really decides: a strict server fails the sparse
/// check, a sparse one fails the v1.1 "index with a missing child is refused" check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_passes_the_next_checks_with_sparse_indexes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sparse =
        Server::start_berth_with_config(dir.path(), "[manifests]\nsparse_indexes = true\n", false);
    let options = Options {
        url: sparse.url(),
        namespace: "conformance/next".to_string(),
        only: None,
        credentials: None,
        next: true,
    };
    let report = berth_conformance::run(&options).await;
    let next_ran = report
        .results
        .iter()
        .filter(|r| r.id.starts_with("next."))
        .count();
    assert!(next_ran >= 4, "only {next_ran} NEXT checks ran");
    assert!(
        report.failed().is_empty(),
        "with --next against sparse_indexes = true:\n{}",
        failures(&report)
    );
    let contradicted = berth_conformance::run(&Options {
        only: Some("=pull.manifest.index-missing-child".to_string()),
        next: false,
        ..options.clone()
    })
    .await;
    assert_eq!(contradicted.results.len(), 1);
    assert!(
        !contradicted.results[0].passed,
        "a sparse server still refused an index with a missing child"
    );

    let strict = Server::start();
    let report = berth_conformance::run(&Options {
        url: strict.url(),
        only: Some("=next.manifest.sparse-index".to_string()),
        ..options
    })
    .await;
    assert_eq!(report.results.len(), 1);
    assert!(
        !report.results[0].passed,
        "a strict server (sparse_indexes off) accepted a sparse index"
    );
}
