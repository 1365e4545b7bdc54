//! The pull-through cache (`[[mirror]]`) with real clients and real upstreams on loopback:
//! a `berth serve` with token auth, Debian's `docker-registry` (as a fallback upstream) and
//! S3 storage; skopeo through the prefix form, the `?ns=` and default-mirror forms over HTTP.
//! Upstream requests are counted from the upstream's own request log. docker and ctr are in
//! mirror_daemons_e2e.rs, the concurrency and corruption attacks in mirror_attacks.rs.

mod common;
mod mirror_support;

use common::*;
use mirror_support::*;

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_through_the_prefix_then_from_cache_with_the_upstream_gone() {
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(1);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/app:push,pull",
    )
    .await;
    push_image(&c, &upstream.url(), "library/app", "1", &img, Some(&push)).await;
    let mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "1h"));
    let from = format!("docker://{}/docker.io/library/app:1", mirror.host());

    // Eight clients ask for the cold tag at once: one upstream HEAD and one GET.
    let url = format!("{}/v2/docker.io/library/app/manifests/1", mirror.url());
    let gets = (0..8).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = c
                .get(&url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET");
            assert_eq!(resp.status().as_u16(), 200);
            resp.bytes().await.expect("body")
        }
    });
    for body in futures::future::join_all(gets).await {
        assert_eq!(body.to_vec(), img.manifest);
    }
    assert_eq!(
        requests(&upstream, "method=HEAD route=manifest"),
        1,
        "one revalidation"
    );
    assert_eq!(
        requests(&upstream, "method=GET route=manifest"),
        1,
        "one fetch"
    );

    skopeo_copy(&from, &dir.path().join("first"));
    assert_copied(&dir.path().join("first"), &img);
    let cold = requests(&upstream, "");
    assert_eq!(
        requests(&upstream, "route=blob"),
        4,
        "each blob fetched once upstream"
    );

    // Within the TTL: a second pull by tag, a pull by digest and HEADs make no upstream request.
    skopeo_copy(&from, &dir.path().join("second"));
    assert_copied(&dir.path().join("second"), &img);
    let by_digest = format!(
        "docker://{}/docker.io/library/app@{}",
        mirror.host(),
        img.digest
    );
    skopeo_copy(&by_digest, &dir.path().join("by-digest"));
    let head = c
        .head(format!(
            "{}/v2/docker.io/library/app/manifests/1",
            mirror.url()
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD");
    assert_eq!(
        header(&head, "docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(
        requests(&upstream, ""),
        cold,
        "warm pulls asked the upstream nothing"
    );

    // The containerd form (?ns=) and the registry-mirrors form (no prefix) are the same cache.
    for url in [
        format!("{}/v2/library/app/manifests/1?ns=docker.io", mirror.url()),
        format!("{}/v2/library/app/manifests/1", mirror.url()),
    ] {
        let resp = c
            .get(&url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        assert_eq!(
            resp.bytes().await.expect("body").to_vec(),
            img.manifest,
            "{url}"
        );
    }
    assert_eq!(
        requests(&upstream, ""),
        cold,
        "other forms asked the upstream nothing"
    );

    // Upstream gone: the same pulls still work.
    upstream.stop();
    skopeo_copy(&from, &dir.path().join("offline"));
    assert_copied(&dir.path().join("offline"), &img);
    skopeo_copy(&by_digest, &dir.path().join("offline-digest"));

    // Pushes to the mirrored prefix (by any form) are refused.
    for base in [
        format!("{}/v2/docker.io/library/app", mirror.url()),
        format!("{}/v2/library/app", mirror.url()),
    ] {
        let resp = c
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 403, "push to {base}");
        let body = resp.bytes().await.expect("body");
        assert_eq!(
            error_codes(&body),
            Some(vec!["DENIED".to_string()]),
            "{base}"
        );
        let resp = c
            .put(format!("{base}/manifests/evil"))
            .header("content-type", OCI_MANIFEST)
            .body(img.manifest.clone())
            .send()
            .await
            .expect("PUT");
        assert_eq!(resp.status().as_u16(), 403, "manifest push to {base}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_revalidated_after_the_ttl_and_served_stale_when_the_upstream_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/app:push,pull",
    )
    .await;
    let (one, two) = (image(2), image(3));
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        "latest",
        &one,
        Some(&push),
    )
    .await;
    let mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "0s"));
    let url = format!("{}/v2/docker.io/library/app/manifests/latest", mirror.url());
    let get = |url: String| {
        let c = c.clone();
        async move {
            let resp = c
                .get(&url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET");
            let status = resp.status().as_u16();
            let warning = header(&resp, "warning");
            let digest = header(&resp, "docker-content-digest");
            let body = resp.bytes().await.expect("body");
            assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
            (digest, warning)
        }
    };
    assert_eq!(get(url.clone()).await, (Some(one.digest.clone()), None));
    let manifest_gets = requests(&upstream, "method=GET route=manifest");
    // TTL 0: every request revalidates with a HEAD; an unchanged tag is not fetched again.
    assert_eq!(get(url.clone()).await, (Some(one.digest.clone()), None));
    assert_eq!(
        requests(&upstream, "method=GET route=manifest"),
        manifest_gets
    );
    assert!(
        requests(&upstream, "method=HEAD route=manifest") >= 2,
        "revalidated with HEAD"
    );
    // The tag moves upstream: the mirror follows.
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        "latest",
        &two,
        Some(&push),
    )
    .await;
    assert_eq!(get(url.clone()).await, (Some(two.digest.clone()), None));
    // An index by tag, for a client that reads only image manifests: its amd64 child, fetched
    // through the cache on demand (never pulled before).
    let three = image(10);
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        &three.digest,
        &three,
        Some(&push),
    )
    .await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": three.digest, "size": three.manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .expect("index");
    let resp = c
        .put(format!("{}/v2/library/app/manifests/multi", upstream.url()))
        .bearer_auth(&push)
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await
        .expect("PUT index");
    assert_eq!(resp.status().as_u16(), 201);
    let (digest, _) = get(format!(
        "{}/v2/docker.io/library/app/manifests/multi",
        mirror.url()
    ))
    .await;
    assert_eq!(
        digest,
        Some(three.digest.clone()),
        "the platform's image for an index-blind client"
    );
    // Referrers come from the upstream's list, and are pulled through the cache by digest.
    let referrer = push_referrer(&c, &upstream.url(), &push, &two).await;
    let referrers_url = format!(
        "{}/v2/docker.io/library/app/referrers/{}",
        mirror.url(),
        two.digest
    );
    let listed = |url: String| {
        let c = c.clone();
        async move {
            let (status, index) = get_json(&c, &url).await;
            assert_eq!(status, 200, "{url}: {index}");
            index["manifests"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|d| d["digest"].as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    assert_eq!(listed(referrers_url.clone()).await, vec![referrer.clone()]);
    let by_digest = c
        .get(format!(
            "{}/v2/docker.io/library/app/manifests/{referrer}",
            mirror.url()
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET referrer");
    assert_eq!(by_digest.status().as_u16(), 200);
    // Upstream down: the cached tag, marked stale, rather than an error.
    upstream.stop();
    assert_eq!(
        listed(referrers_url).await,
        vec![referrer],
        "cached referrers when the upstream is down"
    );
    let (digest, warning) = get(url.clone()).await;
    assert_eq!(digest, Some(two.digest.clone()));
    assert!(
        warning.is_some_and(|w| w.starts_with("110 ")),
        "stale answer carries a Warning"
    );
    assert!(
        mirror.log().contains("serving the cached tag stale"),
        "and a log line"
    );
    // Never cached, upstream down: a clear 503, not a hang or a 404.
    let resp = c
        .get(format!(
            "{}/v2/docker.io/library/other/manifests/1",
            mirror.url()
        ))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_registry_as_the_fallback_upstream() {
    if !(require_tool("skopeo") && require_tool("docker-registry")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = Server::start_kind(ServerKind::Distribution);
    let c = client();
    let img = image(4);
    push_image(&c, &upstream.url(), "team/tool", "v1", &img, None).await;
    // The first upstream is a closed loopback port: the fallback serves.
    let table = format!(
        "[[mirror]]\nupstream = \"http://127.0.0.1:9\"\nfallback = [\"{}\"]\nprefix = \"dist\"\nmanifest_ttl = \"1h\"\n",
        upstream.url()
    );
    let mirror = mirror_server(dir.path(), &table);
    let from = format!("docker://{}/dist/team/tool:v1", mirror.host());
    skopeo_copy(&from, &dir.path().join("first"));
    assert_copied(&dir.path().join("first"), &img);
    upstream.stop();
    skopeo_copy(&from, &dir.path().join("offline"));
    assert_copied(&dir.path().join("offline"), &img);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_on_s3_storage() {
    let Some(s3) = s3_server("mirror-cache") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(9);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/s3app:push,pull",
    )
    .await;
    push_image(&c, &upstream.url(), "library/s3app", "1", &img, Some(&push)).await;
    let config = dir.path().join("mirror.toml");
    std::fs::write(&config, hub_mirror_table(&upstream, "1h")).expect("config");
    let mirror = Server::start_s3(&s3, "cache", &["--config", &config.display().to_string()]);
    let base = format!("{}/v2/docker.io/library/s3app", mirror.url());
    let pull = || async {
        let resp = c
            .get(format!("{base}/manifests/1"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.bytes().await.expect("body").to_vec(), img.manifest);
        for blob in img.layers.iter().chain([&img.config]) {
            let url = format!("{base}/blobs/{}", digest_of(blob));
            let got = c
                .get(&url)
                .send()
                .await
                .expect("GET blob")
                .bytes()
                .await
                .expect("blob");
            assert!(got == *blob, "{url}");
        }
    };
    pull().await;
    let cold = requests(&upstream, "");
    pull().await;
    assert_eq!(requests(&upstream, ""), cold, "warm from S3");
    upstream.stop();
    pull().await;
}

/// A missing tag, manifest digest or blob is asked upstream once per `not_found_ttl`, not
/// once per pull; a restart does not revalidate tags validated within the TTL.
#[tokio::test(flavor = "multi_thread")]
async fn misses_are_remembered_and_tag_freshness_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = token_upstream(dir.path());
    let c = client();
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/app:push,pull",
    )
    .await;
    let img = image(21);
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        "latest",
        &img,
        Some(&push),
    )
    .await;
    let mut mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "1h"));
    let base = format!("{}/v2/docker.io/library/app", mirror.url());
    let status = |url: String| {
        let c = c.clone();
        async move {
            let resp = c
                .get(&url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET");
            resp.status().as_u16()
        }
    };
    let missing_digest = format!("sha256:{}", "0".repeat(64));
    let misses = [
        ("manifests/nope", format!("{base}/manifests/nope")),
        (
            missing_digest.as_str(),
            format!("{base}/manifests/{missing_digest}"),
        ),
        ("blobs/sha256:", format!("{base}/blobs/{missing_digest}")),
    ];
    for (filter, url) in &misses {
        assert_eq!(status(url.clone()).await, 404, "{url}");
        let asked = requests(&upstream, filter);
        assert!(asked >= 1, "{filter}: the first miss asks upstream");
        for _ in 0..20 {
            assert_eq!(status(url.clone()).await, 404, "{url}");
        }
        assert_eq!(
            requests(&upstream, filter),
            asked,
            "{filter}: twenty more pulls of a missing name ask upstream nothing"
        );
    }

    // A tag validated now stays fresh across a restart of the mirror.
    assert_eq!(status(format!("{base}/manifests/latest")).await, 200);
    let asked = requests(&upstream, "manifests/latest");
    assert!(asked >= 1);
    mirror.stop();
    mirror.start_again();
    let base = format!("{}/v2/docker.io/library/app", mirror.url());
    assert_eq!(status(format!("{base}/manifests/latest")).await, 200);
    assert_eq!(
        requests(&upstream, "manifests/latest"),
        asked,
        "after a restart the tag is served from the cache within its TTL, not revalidated"
    );
}

/// Three images of about 3.2 MiB under an 8 MiB `max_size`: housekeeping evicts the least
/// recently pulled (manifest, links, and with GC its bytes); the others stay whole and are
/// served with the upstream gone; a re-pull refills the evicted one.
#[tokio::test(flavor = "multi_thread")]
async fn the_least_recently_pulled_image_is_evicted_beyond_max_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let images = [
        ("library/a", image(31)),
        ("library/b", image(32)),
        ("library/c", image(33)),
    ];
    push_latest(&c, &upstream, &images).await;
    let table = evicting_hub_table(&upstream, "8MiB");
    let mirror = mirror_server(dir.path(), &table);
    for (i, (repo, img)) in images.iter().enumerate() {
        if i > 0 {
            // Pull times are kept in whole seconds: one apart orders them.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        let got = pull_all(&c, &mirror.url(), &format!("hub/{repo}")).await;
        assert_eq!(got, Ok(img.blobs()), "{repo} through the mirror");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while evictions(&mirror) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no eviction within a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        mirror
            .log()
            .contains("repository=hub/library/a digest=sha256:"),
        "the least recently pulled image is the one evicted"
    );
    let big_a = digest_of(&images[0].1.layers[0]);
    let stored = |hex: &str| {
        let mut stack = vec![mirror.storage().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().contains(hex) {
                    return true;
                }
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        false
    };
    assert!(
        !stored(big_a.trim_start_matches("sha256:")),
        "the evicted image's big layer is gone from disk"
    );
    upstream.stop();
    assert_ne!(
        pull_all(&c, &mirror.url(), "hub/library/a").await.err(),
        None,
        "evicted: not served from the cache"
    );
    for (repo, img) in &images[1..] {
        let got = pull_all(&c, &mirror.url(), &format!("hub/{repo}")).await;
        assert_eq!(got, Ok(img.blobs()), "{repo} intact, from the cache alone");
    }
    upstream.start_again();
    let got = pull_all(&c, &mirror.url(), "hub/library/a").await;
    assert_eq!(got, Ok(images[0].1.blobs()), "a re-pull refills it");
}
