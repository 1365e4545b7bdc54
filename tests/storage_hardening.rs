//! What `berth serve` leaves on disk when things go wrong or others look: a full disk answers
//! 507 and keeps no partial upload; a completion cut between the link into the blob store and
//! the session's removal completes on retry; a session whose data is gone is unknown (404),
//! never a 500; stored files are not readable by other users of the machine.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed)
        .collect()
}

fn blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn upload_sessions(storage: &Path) -> Vec<String> {
    fs::read_dir(storage.join("uploads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// POST + PATCH `data`; returns the upload's Location.
async fn start_chunked(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 202);
    let location = absolute(base, &header(&resp, "location").expect("Location"));
    let resp = c
        .patch(&location)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status().as_u16(), 202, "PATCH");
    location
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_files_are_not_readable_by_other_users() {
    let server = Server::start_berth_with(&[], false, false);
    let c = client();
    push_tiny_image(&c, &server.url(), "modes/app", "v1").await;
    start_chunked(&c, &server.url(), "modes/app", b"half an upload").await;
    let mut stack = vec![server.storage().to_path_buf()];
    let (mut files, mut dirs) = (0, 0);
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(
                mode & 0o027,
                0,
                "{} is mode {mode:o}: group-writable or open to others",
                entry.path().display()
            );
            if meta.is_dir() {
                dirs += 1;
                stack.push(entry.path());
            } else {
                files += 1;
            }
        }
    }
    assert!(
        files >= 4 && dirs >= 4,
        "{files} files, {dirs} folders: nothing was checked"
    );
}

/// A tmpfs mounted over a folder, unmounted (lazily: the server may still hold files) on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_keeps_no_partial_upload() {
    let mounting_works = {
        let probe = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(probe.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let _ = Command::new("umount").arg(probe.path()).status();
        }
        ok
    };
    if !require((!mounting_works).then(|| "mounting a tmpfs (needs root)".to_string())) {
        return;
    }
    let mut server = Server::start_berth_with(&[], false, false);
    server.stop();
    let storage = server.storage().to_path_buf();
    fs::create_dir_all(&storage).expect("storage dir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&storage)
        .status()
        .expect("mount");
    assert!(status.success(), "mount tmpfs");
    let _mount = Tmpfs(storage.clone());
    server.start_again();
    let (c, base) = (client(), server.url());

    // Monolithic: a 6 MiB blob on a 4 MiB disk.
    let big = pattern(6 << 20, 1);
    let resp = c
        .post(format!(
            "{base}/v2/full/app/blobs/uploads/?digest={}",
            digest_of(&big)
        ))
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .timeout(WAIT)
        .send()
        .await
        .expect("POST ?digest=");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 507, "a full disk must answer 507: {body}");
    assert!(body.contains("storage is full"), "{body}");
    assert!(
        upload_sessions(&storage).is_empty(),
        "partial upload left behind"
    );

    // Chunked: the first chunk fits, the second does not; the whole session goes.
    let location = start_chunked(&c, &base, "full/app", &pattern(1 << 20, 2)).await;
    let resp = c
        .patch(&location)
        .header("content-type", "application/octet-stream")
        .body(pattern(5 << 20, 3))
        .timeout(WAIT)
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status().as_u16(), 507);
    let resp = c.get(&location).send().await.expect("GET status");
    assert_eq!(
        resp.status().as_u16(),
        404,
        "the failed upload must be gone"
    );
    assert!(
        upload_sessions(&storage).is_empty(),
        "partial upload left behind"
    );

    // The space came back: a small push works at once.
    let small = pattern(100 << 10, 4);
    push_blob(&c, &base, "full/app", &small).await;
    assert!(
        server.log().contains("storage full"),
        "the log must name the cause"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_cut_after_the_link_completes_on_retry() {
    let mut server = Server::start_berth_with(&[], false, false);
    let (c, base) = (client(), server.url());
    let data = pattern(300 << 10, 5);
    let digest = digest_of(&data);
    let location = start_chunked(&c, &base, "crash/app", &data).await;
    let id = location.rsplit('/').next().expect("id").to_string();
    server.kill9();
    // Where a kill between the link and the session's removal leaves things.
    let storage = server.storage().to_path_buf();
    let blob = blob_path(&storage, &digest);
    fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
    fs::hard_link(storage.join("uploads").join(&id).join("data"), &blob).expect("link");
    server.start_again();
    let resp = c
        .put(with_query(&location, "digest", &digest))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        resp.status().as_u16(),
        201,
        "retried completion: {}",
        resp.text().await.unwrap_or_default()
    );
    let resp = c.get(&location).send().await.expect("GET status");
    assert_eq!(resp.status().as_u16(), 404, "the session must be gone");
    assert_blob_served(
        &c,
        &base,
        "crash/app",
        &digest,
        "the retried completion made it",
    )
    .await;

    // An older version renamed the data away instead: that session is unknown, never a 500.
    let data = pattern(200 << 10, 6);
    let digest = digest_of(&data);
    let location = start_chunked(&c, &base, "crash/app", &data).await;
    let id = location.rsplit('/').next().expect("id").to_string();
    server.kill9();
    let blob = blob_path(&storage, &digest);
    fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
    fs::rename(storage.join("uploads").join(&id).join("data"), &blob).expect("rename");
    server.start_again();
    let status = c
        .get(&location)
        .send()
        .await
        .expect("GET")
        .status()
        .as_u16();
    assert_eq!(status, 404, "GET of a session without data");
    let resp = c
        .patch(&location)
        .body(b"more".to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(
        resp.status().as_u16(),
        404,
        "PATCH of a session without data"
    );
    let resp = c
        .put(with_query(&location, "digest", &digest))
        .send()
        .await
        .expect("PUT");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    assert_eq!(status, 404, "PUT of a session without data");
    assert_eq!(
        error_codes(&body),
        Some(vec!["BLOB_UPLOAD_UNKNOWN".to_string()])
    );
}
