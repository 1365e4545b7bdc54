//! `_catalog` and `tags/list` pages read from the storage's sorted indexes, against a real
//! `berth serve` on disk and on S3 (s3s-fs): walking the pages by their `Link` headers gives
//! exactly the whole sorted list; deleted tags leave the pages; a repository pushed through
//! another replica sharing the bucket shows up on this one's pages. And the web UI shares the
//! API's `[limits] rate` budget.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;

/// Repositories seeded: nested names at several depths, so the catalog's order cannot come
/// from walking folders.
fn repository_names() -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..60 {
        names.push(format!("team{}/app{i}", i % 7));
    }
    for name in ["a", "a-b", "a.b", "a/b", "a/b/c", "a0", "z/z/z/z"] {
        names.push(name.to_string());
    }
    names
}

const TAGGED: &str = "big/tags";

async fn seed(c: &reqwest::Client, base: &str) -> Vec<String> {
    let names = repository_names();
    futures::stream::iter(names.iter())
        .map(|name| async move {
            push_blob(c, base, name, name.as_bytes()).await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (config, layer, manifest) = tiny_image("tags");
    push_blob(c, base, TAGGED, &layer).await;
    push_blob(c, base, TAGGED, &config).await;
    let tags: Vec<String> = (0..120)
        .map(|i| format!("v{i}"))
        .chain(["1", "9z", "A1", "_x", "latest"].map(String::from))
        .collect();
    let manifest = &manifest;
    futures::stream::iter(tags.iter())
        .map(|tag| async move {
            push_manifest(c, base, TAGGED, tag, OCI_MANIFEST, manifest).await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut all = names;
    all.push(TAGGED.to_string());
    all.sort();
    all
}

/// Every page from `first`, following `Link` headers: (names in page order, pages read).
async fn walk(c: &reqwest::Client, base: &str, first: &str, key: &str) -> (Vec<String>, usize) {
    let mut url = format!("{base}{first}");
    let (mut names, mut pages) = (Vec::new(), 0);
    loop {
        let resp = c.get(&url).send().await.expect("GET page");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        let link = header(&resp, "link");
        let raw = resp.bytes().await.expect("page body");
        let body: serde_json::Value = serde_json::from_slice(&raw).expect("JSON page");
        let page: Vec<String> = body[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {body}"))
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect();
        pages += 1;
        names.extend(page);
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(u, _)| u.to_string())
            .unwrap_or_else(|| panic!("Link header {link:?}"));
        url = format!("{base}{next}");
    }
    (names, pages)
}

async fn whole(c: &reqwest::Client, url: &str, key: &str) -> Vec<String> {
    let (status, body) = get_json(c, url).await;
    assert_eq!(status, 200, "{url}");
    serde_json::from_value(body[key].clone()).expect("names")
}

/// The pages of `base` walk to exactly `expected` (sorted), and tag pages to the whole list.
async fn check_pages(c: &reqwest::Client, base: &str, expected: &[String]) {
    let all = whole(c, &format!("{base}/v2/_catalog"), "repositories").await;
    assert_eq!(all, expected, "the whole catalog, sorted");
    let (paged, pages) = walk(c, base, "/v2/_catalog?n=7", "repositories").await;
    assert_eq!(paged, expected, "catalog pages of 7");
    assert_eq!(pages, expected.len().div_ceil(7));
    // `last` need not be a repository: the page starts after it in string order.
    let after = whole(
        c,
        &format!("{base}/v2/_catalog?n=3&last=a%2F"),
        "repositories",
    )
    .await;
    assert_eq!(after, ["a/b", "a/b/c", "a0"]);

    let tags_url = format!("/v2/{TAGGED}/tags/list");
    let mut tags = whole(c, &format!("{base}{tags_url}"), "tags").await;
    let mut sorted = tags.clone();
    sorted.sort();
    assert_eq!(tags, sorted, "tags sorted");
    let (paged, _) = walk(c, base, &format!("{tags_url}?n=11"), "tags").await;
    assert_eq!(paged, tags, "tag pages of 11");

    // A deleted tag leaves the pages.
    let resp = c
        .delete(format!("{base}/v2/{TAGGED}/manifests/v7"))
        .send()
        .await
        .expect("DELETE tag");
    assert_eq!(resp.status().as_u16(), 202);
    tags.retain(|t| t != "v7");
    let (paged, _) = walk(c, base, &format!("{tags_url}?n=11"), "tags").await;
    assert_eq!(paged, tags, "tag pages after a delete");
    let page = whole(c, &format!("{base}{tags_url}?n=2&last=v69"), "tags").await;
    assert_eq!(page, ["v70", "v71"]);
    let (status, _) = get_json(c, &format!("{base}/v2/no/such/tags/list?n=5&last=a")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_disk_walk_to_the_whole_lists() {
    let server = Server::start_berth_with(&[], false, false);
    let c = client();
    let expected = seed(&c, &server.url()).await;
    check_pages(&c, &server.url(), &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_s3_walk_to_the_whole_lists_across_replicas() {
    let Some(s3) = s3_server("catalog") else {
        return;
    };
    let one = Server::start_s3(&s3, "reg", &[]);
    let two = Server::start_s3(&s3, "reg", &[]);
    let c = client();
    let mut expected = seed(&c, &one.url()).await;
    check_pages(&c, &two.url(), &expected).await;
    // Pushed through replica one after replica two served its pages.
    push_blob(&c, &one.url(), "a/late", b"late").await;
    expected.push("a/late".to_string());
    expected.sort();
    let (paged, _) = walk(&c, &two.url(), "/v2/_catalog?n=5", "repositories").await;
    assert_eq!(paged, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_shares_the_api_rate_limit() {
    const BURST: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    // One request back per 1,000 s: the refill cannot race the test.
    let server = Server::start_berth_with_config(
        dir.path(),
        &format!("[limits]\nrate = 0.001\nburst = {BURST}\n"),
        false,
    );
    // The harness probed from 127.0.0.1; these come from 127.0.0.3, whose bucket is full.
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client on 127.0.0.3");
    let base = server.url();
    for i in 0..BURST - 1 {
        let resp = other
            .get(format!("{base}/ui/"))
            .send()
            .await
            .expect("GET /ui/");
        assert_eq!(resp.status().as_u16(), 200, "request {i} within the burst");
    }
    let resp = other
        .get(format!("{base}/v2/"))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(resp.status().as_u16(), 200, "the last request of the burst");
    let resp = other
        .get(format!("{base}/ui/"))
        .send()
        .await
        .expect("GET /ui/");
    assert_eq!(resp.status().as_u16(), 429, "past the burst");
    let retry: u64 = header(&resp, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(retry >= 1);
    assert!(header(&resp, "content-type").is_some_and(|t| t.starts_with("text/html")));
    let page = resp.text().await.expect("body");
    assert!(page.contains("Too many requests"), "{page}");
    let resp = other
        .get(format!("{base}/v2/"))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(resp.status().as_u16(), 429, "the API shares the budget");
    // Another client is not affected.
    let resp = client()
        .get(format!("{base}/ui/"))
        .send()
        .await
        .expect("GET /ui/");
    assert_eq!(resp.status().as_u16(), 200);
}
