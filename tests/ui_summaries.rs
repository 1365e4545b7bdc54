//! The web UI's persisted summaries (issue 21, item 4) against real `berth serve` processes on
//! one storage folder: the catalog row (tags, size with shared layers once, newest image) and
//! the repository page are right after a push, a second tag, a tag delete and a manifest
//! delete; a push through a SECOND server sharing the folder shows on the first at once (rows
//! are checked against the tags stamp on every read) and a new repository within the list's
//! documented 15 s; a summary record that is garbage or missing is recomputed, never shown,
//! and written back.

mod common;

use std::time::{Duration, Instant};

use common::*;

const REPO: &str = "sum/app";

/// An image whose config says `created` and whose layers are these bytes: (config, manifest).
fn image(created: &str, layers: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {}, "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .expect("config JSON");
    let manifest = manifest_json(&config, layers, None);
    (config, manifest)
}

/// Push an image under `tag`; returns (manifest digest, compressed size).
async fn push(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    created: &str,
    layers: &[&[u8]],
) -> (String, usize) {
    let (config, manifest) = image(created, layers);
    for layer in layers {
        push_blob(c, base, repo, layer).await;
    }
    push_blob(c, base, repo, &config).await;
    let digest = push_manifest(c, base, repo, tag, OCI_MANIFEST, &manifest).await;
    (
        digest,
        config.len() + layers.iter().map(|l| l.len()).sum::<usize>(),
    )
}

async fn page(c: &reqwest::Client, url: &str) -> String {
    let resp = c.get(url).send().await.expect("GET page");
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    resp.text().await.expect("page body")
}

/// The cells of the table row that links to `href` (tags stripped), or None.
fn row_cells(html: &str, href: &str) -> Option<Vec<String>> {
    let start = html.find(&format!("<a href=\"{href}\">"))?;
    let row_start = html[..start].rfind("<tr>")?;
    let row_end = start + html[start..].find("</tr>")?;
    let cells = html[row_start..row_end]
        .split("<td")
        .skip(1)
        .map(|cell| {
            let inner = &cell[cell.find('>').map_or(0, |i| i + 1)..];
            let mut text = String::new();
            let mut in_tag = false;
            for ch in inner.chars() {
                match ch {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    _ if !in_tag => text.push(ch),
                    _ => {}
                }
            }
            text
        })
        .collect();
    Some(cells)
}

/// The catalog row of `repo` on `base`: (tags, size, newest image).
async fn catalog_row(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
) -> Option<(String, String, String)> {
    let html = page(c, &format!("{base}/ui/?q={repo}")).await;
    let cells = row_cells(&html, &format!("/ui/r/{repo}"))?;
    Some((cells[1].clone(), cells[2].clone(), cells[3].clone()))
}

/// The tags on the repository page of `repo`, each with its size cell, in page order.
async fn tag_sizes(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tags: &[&str],
) -> Vec<Option<String>> {
    let html = page(c, &format!("{base}/ui/r/{repo}")).await;
    tags.iter()
        .map(|t| row_cells(&html, &format!("/ui/r/{repo}/_/{t}")).map(|cells| cells[3].clone()))
        .collect()
}

/// The content of a record once `ok` says it is what the test waits for: pages write records
/// off the request's path, so a page may answer before its record is on disk.
async fn stored_when(path: &std::path::Path, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if ok(&content) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became right: {content:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expect_row(tags: usize, size: usize, newest: &str) -> Option<(String, String, String)> {
    Some((tags.to_string(), format!("{size} B"), newest.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_pages_follow_pushes_deletes_and_a_second_server() {
    if ServerKind::from_env() == ServerKind::Distribution {
        return; // no web UI there
    }
    let mut one = Server::start_berth_with(&[], false, false);
    let c = client();
    let base = one.url();
    let shared: &[u8] = b"a layer both images share\n";
    let (_, size_a) = push(&c, &base, REPO, "v1", "2026-01-01T00:00:00Z", &[shared]).await;
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        expect_row(1, size_a, "2026-01-01T00:00")
    );
    // The row as stored now, to put back later when it is outdated.
    let row_file = one
        .storage()
        .join("repositories")
        .join(REPO)
        .join("_summary");
    let outdated = stored_when(&row_file, |row| row.contains("\"tags\":1")).await;

    // A second tag, sharing the layer: counted once.
    let (_, size_b) = push(&c, &base, REPO, "v2", "2026-02-01T00:00:00Z", &[shared]).await;
    let both = size_a + size_b - shared.len();
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        expect_row(2, both, "2026-02-01T00:00")
    );
    let b_size = format!("{size_b} B");
    assert_eq!(
        tag_sizes(&c, &base, REPO, &["v1", "v2"]).await,
        [Some(format!("{size_a} B")), Some(b_size.clone())]
    );

    // A tag delete.
    let resp = c
        .delete(format!("{base}/v2/{REPO}/manifests/v1"))
        .send()
        .await
        .expect("DELETE tag");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        expect_row(1, size_b, "2026-02-01T00:00")
    );
    assert_eq!(
        tag_sizes(&c, &base, REPO, &["v1", "v2"]).await,
        [None, Some(b_size.clone())]
    );

    // A manifest delete takes its tag with it.
    let own: &[u8] = b"a layer of its own\n";
    let (digest_c, size_c) = push(&c, &base, REPO, "v3", "2026-03-01T00:00:00Z", &[own]).await;
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        expect_row(2, size_b + size_c, "2026-03-01T00:00")
    );
    let resp = c
        .delete(format!("{base}/v2/{REPO}/manifests/{digest_c}"))
        .send()
        .await
        .expect("DELETE manifest");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        expect_row(1, size_b, "2026-02-01T00:00")
    );
    assert_eq!(
        tag_sizes(&c, &base, REPO, &["v2", "v3"]).await,
        [Some(b_size.clone()), None]
    );

    // A second server on the same folder: its push shows on the first at once.
    let two = Server::start_berth_sharing(&one);
    let (_, size_d) = push(&c, &two.url(), REPO, "v4", "2026-04-01T00:00:00Z", &[own]).await;
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        expect_row(2, size_b + size_d, "2026-04-01T00:00")
    );
    assert_eq!(
        tag_sizes(&c, &base, REPO, &["v2", "v4"]).await,
        [Some(b_size.clone()), Some(format!("{size_d} B"))]
    );
    // A repository new to the first server: within the list's 15 s (docs/ui.md).
    let (_, size_e) = push(
        &c,
        &two.url(),
        "sum/other",
        "x",
        "2026-05-01T00:00:00Z",
        &[own],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = catalog_row(&c, &base, "sum/other").await;
        if row == expect_row(1, size_e, "2026-05-01T00:00") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sum/other not on the first server's catalog: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(two);

    // Garbage in the stored records, and a fresh process with no memory of the rows: the page
    // is still right, and the records are written again.
    let manifests_file = row_file.with_file_name("_summary_manifests");
    stored_when(&manifests_file, |m| m.contains("manifests")).await;
    for (file, garbage) in [
        (&row_file, "{\"v\":1,\"stamp\":"),
        (&manifests_file, "\u{0}\u{1}not json"),
    ] {
        std::fs::write(file, garbage).expect("write garbage");
    }
    one.restart();
    let want = expect_row(2, size_b + size_d, "2026-04-01T00:00");
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        want,
        "garbage is recomputed"
    );
    assert_eq!(
        tag_sizes(&c, &base, REPO, &["v2", "v4"]).await,
        [Some(b_size.clone()), Some(format!("{size_d} B"))]
    );
    // The records are written off the request's path: wait for them, then check them.
    let parses = |raw: &str| serde_json::from_str::<serde_json::Value>(raw).is_ok();
    let stored: serde_json::Value =
        serde_json::from_str(&stored_when(&row_file, parses).await).expect("a JSON row again");
    assert_eq!(stored["tags"], 2, "{stored}");
    let stored: serde_json::Value =
        serde_json::from_str(&stored_when(&manifests_file, parses).await).expect("JSON");
    assert_eq!(
        stored["manifests"].as_object().map(|m| m.len()),
        Some(2),
        "{stored}"
    );

    // A well-formed row computed for other tags (an outdated stamp) is not believed either.
    std::fs::write(&row_file, &outdated).expect("write the outdated row");
    one.restart();
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        want,
        "an outdated row is recomputed"
    );
    // Its rewrite lands off the request's path; removing the file before it lands would see
    // the rewrite put it back (and the next server believe it, rightly: it is current).
    stored_when(&row_file, |row| row.contains("\"tags\":2")).await;

    // Missing records: recomputed and stored.
    std::fs::remove_file(&row_file).expect("remove row");
    std::fs::remove_file(&manifests_file).expect("remove manifests");
    one.restart();
    assert_eq!(
        catalog_row(&c, &base, REPO).await,
        want,
        "a missing row is recomputed"
    );
    stored_when(&row_file, |row| row.contains("\"tags\":2")).await;
    stored_when(&manifests_file, |m| m.contains("manifests")).await;

    // A repository removed by hand while the UI holds the list (its names are not checked one
    // by one, only the rows shown): no row for it, and the others are still right.
    assert!(catalog_row(&c, &base, "sum/other").await.is_some());
    let other = row_file
        .parent()
        .and_then(|p| p.parent())
        .expect("sum/")
        .join("other");
    std::fs::remove_dir_all(&other).expect("remove sum/other");
    assert_eq!(catalog_row(&c, &base, "sum/other").await, None);
    assert_eq!(catalog_row(&c, &base, REPO).await, want);
}
