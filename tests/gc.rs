//! `berth gc`: frees what deleted images left behind, keeps what live images need.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{client, digest_of, manifest_json, push_blob, push_manifest, Server, OCI_MANIFEST};

fn berth_gc(storage: &std::path::Path, extra: &[&str]) -> common::CmdOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("gc").arg("--storage").arg(storage).args(extra);
    common::run(cmd, Duration::from_secs(60))
}

fn blob_file(storage: &std::path::Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage.join("blobs/sha256").join(&hex[..2]).join(hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_frees_a_deleted_image_and_keeps_the_live_one() {
    let server = Server::start();
    let (base, c, repo) = (server.url(), client(), "gc/app");
    let shared = b"layer both images use".to_vec();
    let only_old = b"layer only the old image uses".to_vec();
    let (config_old, config_new) = (b"{\"v\":\"old\"}".to_vec(), b"{\"v\":\"new\"}".to_vec());
    for blob in [&shared, &only_old, &config_old, &config_new] {
        push_blob(&c, &base, repo, blob).await;
    }
    let old = manifest_json(&config_old, &[&shared, &only_old], None);
    let new = manifest_json(&config_new, &[&shared], None);
    let old_digest = push_manifest(&c, &base, repo, "old", OCI_MANIFEST, &old).await;
    push_manifest(&c, &base, repo, "new", OCI_MANIFEST, &new).await;

    // Nothing is garbage yet, and nothing young is ever collected.
    let out = berth_gc(server.storage(), &["--grace", "0s", "--json"]);
    assert!(out.status.success(), "gc failed: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON report");
    assert_eq!(
        (
            report["links_removed"].as_u64(),
            report["blobs_removed"].as_u64()
        ),
        (Some(0), Some(0))
    );

    let resp = c
        .delete(format!("{base}/v2/{repo}/manifests/{old_digest}"))
        .send()
        .await
        .expect("DELETE manifest");
    assert_eq!(resp.status().as_u16(), 202);
    let out = berth_gc(server.storage(), &[]);
    assert!(out.status.success(), "gc failed: {}", out.stderr);
    assert!(
        out.stdout
            .contains("removed 0 repository links and 0 blobs"),
        "default 1h grace must spare a fresh push: {}",
        out.stdout
    );

    let out = berth_gc(server.storage(), &["--grace", "0s", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON report");
    assert!(
        blob_file(server.storage(), &digest_of(&only_old)).exists(),
        "dry run removed a blob"
    );
    let out = berth_gc(server.storage(), &["--grace", "0s", "--json"]);
    assert!(out.status.success(), "gc failed: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON report");
    // The old config and layer lose their links; they and the old manifest's bytes go.
    assert_eq!(report["links_removed"].as_u64(), Some(2), "{report}");
    assert_eq!(report["blobs_removed"].as_u64(), Some(3), "{report}");
    assert_eq!(report["links_removed"], dry["links_removed"]);
    assert_eq!(report["blobs_removed"], dry["blobs_removed"]);
    for gone in [&only_old, &config_old, &old] {
        assert!(
            !blob_file(server.storage(), &digest_of(gone)).exists(),
            "garbage left on disk"
        );
    }

    // The live image is whole, through the running server.
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/new"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.expect("body").to_vec(), new);
    for blob in [&shared, &config_new] {
        let resp = c
            .get(format!("{base}/v2/{repo}/blobs/{}", digest_of(blob)))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(&resp.bytes().await.expect("body").to_vec(), blob);
    }
    let resp = c
        .get(format!("{base}/v2/{repo}/blobs/{}", digest_of(&only_old)))
        .send()
        .await
        .expect("GET collected blob");
    assert_eq!(resp.status().as_u16(), 404);
}

#[test]
fn gc_refuses_a_folder_that_is_not_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = berth_gc(dir.path(), &[]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not a berth storage folder"),
        "{}",
        out.stderr
    );
}
