//! Prometheus metrics of a real `berth serve`: the exposition checked by Debian's `promtool`,
//! scraped by a real `prometheus` server on loopback, counters that follow a push and a pull,
//! `/metrics` behind a login or the `[metrics] token`, its own listener (`[metrics] addr`) and
//! rate-limited requests counted, `enabled = false`, and the periodic GC and process_* series.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_storage::s3_test_server::free_port;
use common::*;

/// The value of the sample whose name and labels are exactly `series`, or None.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn get_metrics(c: &reqwest::Client, url: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = c.get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("GET /metrics");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A `prometheus` server of the test's own, stopped by PID on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: &str, token: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: berth\n    \
                 authorization:\n      credentials: {token}\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn push_pull_counted_checked_by_promtool_and_scraped_by_prometheus() {
    if !require_tool("promtool") || !require_tool("prometheus") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with_config(
        dir.path(),
        "[metrics]\nenabled = true\ntoken = \"scrape-secret\"\n",
        false,
    );
    let c = client();
    let base = server.url();
    let (config, layer, manifest) = tiny_image("metrics/app:v1");
    push_tiny_image(&c, &base, "metrics/app", "v1").await;
    let (status, _) = get_json(&c, &format!("{base}/v2/metrics/app/tags/list")).await;
    assert_eq!(status, 200);
    let resp = c
        .get(format!("{base}/v2/metrics/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.bytes().await;
    let resp = c
        .get(format!("{base}/v2/metrics/app/manifests/missing"))
        .send()
        .await
        .expect("GET missing");
    assert_eq!(resp.status().as_u16(), 404);

    // Without logins the main listener's /metrics is open.
    let (status, text) = get_metrics(&c, &format!("{base}/metrics"), None).await;
    assert_eq!(status, 200, "{text}");
    promtool_check(&text);
    let count = |series: &str| sample(&text, series).unwrap_or(0.0);
    assert_eq!(
        count(r#"berth_http_requests_total{route="manifest",method="PUT",status="2xx"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(r#"berth_http_requests_total{route="manifest",method="GET",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        count(r#"berth_http_requests_total{route="manifest",method="GET",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        count(r#"berth_http_requests_total{route="upload",method="PUT",status="2xx"}"#),
        2.0
    );
    assert_eq!(
        count(r#"berth_http_requests_total{route="tags",method="GET",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        count(r#"berth_http_request_duration_seconds_count{route="manifest"}"#),
        3.0
    );
    let pushed = (config.len() + layer.len() + manifest.len()) as f64;
    assert_eq!(
        count("berth_http_received_bytes_total"),
        pushed,
        "every body byte of the push"
    );
    assert!(count("berth_http_sent_bytes_total") >= manifest.len() as f64);
    assert_eq!(count("berth_uploads_in_progress"), 0.0);

    // A real Prometheus scrapes it (OpenMetrics, with the token) and stores the series.
    let prometheus = Prometheus::start(dir.path(), &server.host(), "scrape-secret");
    let query = format!(
        "http://127.0.0.1:{}/api/v1/query?query=berth_http_requests_total%7Broute%3D%22manifest%22%2Cmethod%3D%22PUT%22%7D",
        prometheus.port
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(resp) = c.get(&query).send().await {
            let body = resp.bytes().await.unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                let value = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_string);
                if value.as_deref() == Some("1") {
                    break;
                }
                last = v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not store berth_http_requests_total: {last}\n{}",
            fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, text) = get_metrics(&c, &format!("{base}/metrics"), None).await;
    assert!(
        sample(
            &text,
            r#"berth_http_requests_total{route="metrics",method="GET",status="2xx"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "the scrapes are counted: {text}"
    );
}

#[tokio::test]
async fn metrics_need_a_login_or_the_token_and_count_auth_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "alice-pw")], 4);
    let server = Server::start_berth_with_config(
        dir.path(),
        &format!(
            "[auth]\nhtpasswd = \"{}\"\nscheme = \"basic\"\n[metrics]\ntoken = \"scrape-secret\"\n",
            htpasswd.display()
        ),
        true,
    );
    let c = client();
    let url = format!("{}/metrics", server.url());
    let basic = |user: &str, pw: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let (status, body) = get_metrics(&c, &url, None).await;
    assert_eq!(status, 401, "no login, no token: {body}");
    assert!(body.contains("[metrics] token"), "{body}");
    let (status, _) = get_metrics(&c, &url, Some("Bearer wrong")).await;
    assert_eq!(status, 401, "a wrong token");
    let (status, _) = get_metrics(&c, &url, Some(&basic("alice", "nope"))).await;
    assert_eq!(status, 401, "a wrong password");
    let (status, text) = get_metrics(&c, &url, Some(&basic("alice", "alice-pw"))).await;
    assert_eq!(status, 200, "a login: {text}");
    let (status, text) = get_metrics(&c, &url, Some("Bearer scrape-secret")).await;
    assert_eq!(status, 200, "the token: {text}");
    assert_eq!(
        sample(&text, r#"berth_auth_failures_total{reason="unauthorized"}"#),
        Some(2.0),
        "two refused credentials: {text}"
    );
}

#[tokio::test]
async fn own_listener_counts_rate_limited_requests_and_can_be_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let server = Server::start_berth_with_config(
        dir.path(),
        &format!("[metrics]\naddr = \"127.0.0.1:{port}\"\n[limits]\nrate = 0.01\nburst = 3\n"),
        false,
    );
    let c = client();
    let mut limited = 0;
    for _ in 0..6 {
        let resp = c
            .get(format!("{}/v2/", server.url()))
            .send()
            .await
            .expect("GET /v2/");
        if resp.status().as_u16() == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 3, "the burst is 3: {limited} of 6 limited");
    let (status, _) = get_metrics(&c, &format!("{}/metrics", server.url()), None).await;
    assert_eq!(status, 404, "/metrics moved off the main listener");
    let (status, text) = get_metrics(&c, &format!("http://127.0.0.1:{port}/metrics"), None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        sample(&text, "berth_rate_limited_requests_total"),
        Some(limited as f64),
        "{text}"
    );
    drop(server);

    let off = Server::start_berth_with_config(dir.path(), "[metrics]\nenabled = false\n", false);
    let (status, _) = get_metrics(&c, &format!("{}/metrics", off.url()), None).await;
    assert_eq!(status, 404, "metrics off");
    let e = run_fail(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--storage"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg({
                let p = dir.path().join("bad.toml");
                fs::write(&p, "[metrics]\nenable = false\n").expect("write bad.toml");
                p
            }),
        Duration::from_secs(30),
    );
    assert!(
        e.stderr.contains("unknown field `enable`"),
        "names the unknown key: {}",
        e.stderr
    );
}

/// The server's periodic garbage collection is counted (runs by result, duration, what it
/// removed: the blobs of a deleted image), and the standard process_* series are there:
/// all of it passes promtool.
#[tokio::test]
async fn garbage_collections_and_the_process_are_measured() {
    if !require_tool("promtool") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with_config(
        dir.path(),
        // A grace of 2 s: the blobs of the push survive until its manifest lands (with 0 s a
        // collection may take them first); the deleted image's go soon after.
        "gc_interval = \"100ms\"\ngc_grace = \"2s\"\n[metrics]\nenabled = true\n",
        false,
    );
    let c = client();
    let base = server.url();
    let (digest, _, _) = push_tiny_image(&c, &base, "gc/app", "v1").await;
    let resp = c
        .delete(format!("{base}/v2/gc/app/manifests/{digest}"))
        .send()
        .await
        .expect("DELETE manifest");
    assert_eq!(resp.status().as_u16(), 202);

    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = get_metrics(&c, &format!("{base}/metrics"), None).await;
        assert_eq!(status, 200, "{text}");
        if sample(&text, "berth_gc_blobs_removed_total").unwrap_or(0.0) >= 2.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no collection removed the deleted image's blobs:\n{text}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    promtool_check(&text);
    assert!(sample(&text, r#"berth_gc_runs_total{result="ok"}"#).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        sample(&text, r#"berth_gc_runs_total{result="error"}"#),
        None
    );
    assert!(sample(&text, "berth_gc_duration_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "berth_gc_freed_bytes_total").unwrap_or(0.0) > 0.0);
    let pid = server.pid().expect("berth serve runs");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    let rss = sample(&text, "process_resident_memory_bytes").expect("process RSS");
    assert!(
        rss > 1e6 && (rss / (rss_kib * 1024.0) - 1.0).abs() < 0.5,
        "process_resident_memory_bytes {rss} against VmRSS {rss_kib} KiB"
    );
    assert!(
        sample(&text, "process_open_fds").unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    assert!(
        sample(&text, "process_max_fds").unwrap_or(0.0) >= 1024.0,
        "{text}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "process_start_time_seconds").unwrap_or(0.0) > 1.7e9,
        "{text}"
    );
}
