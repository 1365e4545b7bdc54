//! Runs our spec-derived conformance suite (`berth-conformance`) against `berth serve`.

mod common;

use common::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_passes_the_conformance_suite() {
    let server = Server::start();
    let options = berth_conformance::Options {
        url: server.url(),
        namespace: "conformance/test".to_string(),
        only: std::env::var("BERTH_CONFORMANCE_ONLY").ok(),
        credentials: None,
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
