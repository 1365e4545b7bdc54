//! The runner must report, never panic, when the registry is unreachable or
//! the URL is unusable.

use berth_conformance::{list, run, Options};

#[tokio::test]
async fn unreachable_registry_fails_every_check_without_panicking() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let opts = Options {
        url: "http://127.0.0.1:9".to_string(),
        namespace: "conformance/offline".to_string(),
        only: Some("base.".to_string()),
        credentials: None,
        next: false,
    };
    let report = run(&opts).await;
    assert_eq!(report.results.len(), 2);
    assert_eq!(report.passed_count(), 0);
    assert_eq!(report.failed().len(), 2);
    for r in report.failed() {
        assert!(!r.detail.is_empty());
        assert!(!r.detail.contains("panicked"), "{}", r.detail);
    }
    assert_eq!(report.summary(), "0 passed, 2 failed");
}

#[tokio::test]
async fn bad_url_is_one_failed_setup_check() {
    let opts = Options {
        url: "not a url".to_string(),
        namespace: "x".to_string(),
        only: None,
        credentials: None,
        next: false,
    };
    let report = run(&opts).await;
    assert_eq!(report.results.len(), 1);
    assert_eq!(report.results[0].id, "setup");
    assert!(!report.results[0].passed);
}

#[test]
fn exact_only_selects_exactly_the_listed_ids() {
    use berth_conformance::selects;
    assert!(selects("push.blob.chunked", "push.blob.chunked-large"));
    assert!(selects("=push.blob.chunked", "push.blob.chunked"));
    assert!(!selects("=push.blob.chunked", "push.blob.chunked-large"));
    assert!(selects("=base.v2,push.blob.chunked", "base.v2"));
    assert!(selects("=base.v2, push.blob.chunked", "push.blob.chunked"));
    assert!(!selects(
        "=base.v2,push.blob.chunked",
        "base.v2.api-version-header"
    ));
}

#[test]
fn only_filter_matches_ids() {
    let ids: Vec<_> = list().into_iter().map(|c| c.id).collect();
    assert!(ids.iter().any(|i| i.starts_with("push.")));
    assert!(ids.iter().any(|i| i.starts_with("pull.")));
    assert!(ids.iter().any(|i| i.starts_with("discovery.")));
    assert!(ids.iter().any(|i| i.starts_with("management.")));
}
