use super::dns_label;
use super::kube_pod::{bytes_quantity, http_check};

fn words(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn names_become_dns_labels() {
    assert_eq!(dns_label("app_example"), "app-example");
    assert_eq!(dns_label("_DB.Data_"), "db-data");
    assert_eq!(dns_label("127.0.0.1:5000"), "127-0-0-1-5000");
    assert_eq!(dns_label("___"), "x");
    let long = "a".repeat(70) + "_b";
    assert_eq!(dns_label(&long).len(), 63);
}

#[test]
fn http_checks_become_http_get_probes() {
    let wget = words(&[
        "CMD",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:8000/",
    ]);
    assert_eq!(http_check(&wget), Some((8000, "/".to_string())));
    let curl = words(&["CMD-SHELL", "curl -f http://localhost/health?full=1"]);
    assert_eq!(http_check(&curl), Some((80, "/health?full=1".to_string())));
    let bin = words(&["CMD", "/usr/bin/curl", "-fsS", "http://localhost:9000"]);
    assert_eq!(http_check(&bin), Some((9000, "/".to_string())));
}

#[test]
fn other_checks_stay_exec_probes() {
    // A shell line does more than fetch: the probe must run it.
    let piped = words(&["CMD-SHELL", "curl -f http://localhost:80/ | grep ok"]);
    assert_eq!(http_check(&piped), None);
    let chained = words(&["CMD-SHELL", "curl -f http://localhost:80/ && test -f /x"]);
    assert_eq!(http_check(&chained), None);
    // Another host, or another tool, is not the pod's own HTTP endpoint.
    let remote = words(&["CMD", "curl", "-f", "http://db:5432/"]);
    assert_eq!(http_check(&remote), None);
    let other = words(&["CMD", "pg_isready", "-h", "localhost"]);
    assert_eq!(http_check(&other), None);
    let https = words(&["CMD", "curl", "-f", "https://localhost/"]);
    assert_eq!(http_check(&https), None);
    let bad_port = words(&["CMD", "curl", "http://localhost:99999/"]);
    assert_eq!(http_check(&bad_port), None);
    assert_eq!(http_check(&words(&["NONE"])), None);
    assert_eq!(http_check(&[]), None);
}

#[test]
fn sizes_read_as_kubernetes_writes_them() {
    assert_eq!(bytes_quantity(256 << 20), "256Mi");
    assert_eq!(bytes_quantity(2 << 30), "2Gi");
    assert_eq!(bytes_quantity(1000), "1000");
    assert_eq!(bytes_quantity(0), "0");
}
