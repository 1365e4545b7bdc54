//! The UI through its router, over in-memory storage: escaping, paths,
//! CSRF and the delete switch. Logins and rules are tested end to end
//! (tests/ui_e2e.rs) with a real server and browser.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_storage::{Digest, MemoryStorage, Storage};
use tower::ServiceExt;

use super::*;

const EVIL: &str = "<script>alert(1)</script>";

fn digest_of(data: &[u8]) -> String {
    Digest::sha256_of(data).to_string()
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path).header("host", "reg.test:5000");
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r.body(Body::empty()).expect("request")
}

fn post(path: &str, cookie: &str, form: String) -> Request<Body> {
    Request::post(path)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .expect("request")
}

/// Push an image whose config has a hostile label and history, through the API.
async fn push_image(router: &Router, repo: &str, tag: &str) -> String {
    let layer = b"layer bytes".to_vec();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05Z",
        "config": {"Labels": {"evil": EVIL}, "Env": ["A=1"], "Cmd": ["/app"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
        "history": [{"created_by": format!("RUN echo {EVIL}")}]
    }))
    .expect("json");
    for blob in [&layer, &config] {
        let uri = format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(blob));
        let (status, _, body) = send(
            router,
            Request::post(uri)
                .body(Body::from(blob.clone()))
                .expect("req"),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(&layer), "size": layer.len()}],
        "annotations": {"note": EVIL}
    }))
    .expect("json");
    let (status, _, body) = send(
        router,
        Request::put(format!("/v2/{repo}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(Body::from(manifest.clone()))
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    digest_of(&manifest)
}

fn router(options: UiOptions) -> (Router, Arc<MemoryStorage>) {
    let storage = Arc::new(MemoryStorage::new());
    let registry = Registry::new(storage.clone()).with_ui(options);
    (registry.router(), storage)
}

/// The CSRF cookie a first page view sets, as a `Cookie` header value.
fn csrf_cookie(headers: &HeaderMap) -> String {
    let set = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("berth_csrf="))
        .expect("a CSRF cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().expect("pair").to_string()
}

#[tokio::test]
async fn pages_show_pushed_data_as_text() {
    let (router, _) = router(UiOptions::default());
    let digest = push_image(&router, "team/app", "v1").await;
    let (status, headers, page) = send(&router, get("/ui/", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("href=\"/ui/r/team/app\""), "{page}");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let head = Request::head("/ui/r/team/app")
        .body(Body::empty())
        .expect("req");
    let (status, _, _) = send(&router, head).await;
    assert_eq!(status, StatusCode::OK, "HEAD answers as GET");
    let (status, _, page) = send(&router, get("/ui/r/team/app", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("docker pull reg.test:5000/team/app:v1"),
        "{page}"
    );
    assert!(page.contains("linux/amd64"));
    for path in [
        "/ui/r/team/app/_/v1".to_string(),
        format!("/ui/r/team/app/_/{digest}"),
    ] {
        let (status, _, page) = send(&router, get(&path, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            page.contains("RUN echo &lt;script&gt;"),
            "history per layer"
        );
        assert!(page.contains("Raw config"));
        // Read-only without logins: no delete link.
        assert!(!page.contains("/delete"), "{page}");
    }
}

#[tokio::test]
async fn paths_are_checked_like_the_api() {
    let (router, _) = router(UiOptions::default());
    push_image(&router, "app", "v1").await;
    for bad in [
        "/ui/r/../app",
        "/ui/r/%2e%2e/app",
        "/ui/r/App",
        "/ui/r/app/_/..",
        "/ui/r/app/_/sha256:nothex",
        "/ui/r/nothing",
        "/ui/r/app/_/v2",
        "/ui/nope",
    ] {
        let (status, _, _) = send(&router, get(bad, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
    assert_eq!(parse_path("a/b/_/v1"), Some(UiPath::Image("a/b", "v1")));
    assert_eq!(parse_path("a/b/"), Some(UiPath::Repository("a/b")));
    assert_eq!(parse_path("a/_/v1/delete"), Some(UiPath::Delete("a", "v1")));
    assert_eq!(parse_path("a/_/_/v1"), None);
}

#[test]
fn only_local_pages_after_login() {
    assert_eq!(safe_next("/ui/r/app"), "/ui/r/app");
    for bad in [
        "https://evil.example/",
        "//evil.example/ui/",
        "/ui//evil.example",
        "/ui/\\evil",
        "/v2/",
        "/ui/a b",
        "",
    ] {
        assert_eq!(safe_next(bad), "/ui/", "{bad}");
    }
}

#[tokio::test]
async fn delete_needs_the_switch_and_a_csrf_token() {
    let (router, storage) = router(UiOptions::default());
    push_image(&router, "app", "v1").await;
    let (status, _, _) = send(&router, get("/ui/r/app/_/v1/delete", None)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "read-only without the switch"
    );

    let (router, _) = {
        let registry = Registry::new(storage.clone()).with_ui(UiOptions {
            allow_delete: true,
            ..UiOptions::default()
        });
        (registry.router(), ())
    };
    let (status, headers, page) = send(&router, get("/ui/r/app/_/v1/delete", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Delete the tag"));
    let cookie = csrf_cookie(&headers);
    let token = cookie.trim_start_matches("berth_csrf=").to_string();
    // No token, a wrong one, or a token without its cookie: refused, nothing lost.
    for (cookie_sent, form) in [
        (cookie.as_str(), String::new()),
        (cookie.as_str(), format!("csrf={}", "0".repeat(64))),
        ("", format!("csrf={token}")),
    ] {
        let (status, _, _) = send(&router, post("/ui/r/app/_/v1/delete", cookie_sent, form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(storage.tag_resolve("app", "v1").await.unwrap().is_some());
    }
    let (status, headers, _) = send(
        &router,
        post("/ui/r/app/_/v1/delete", &cookie, format!("csrf={token}")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/r/app");
    assert!(storage.tag_resolve("app", "v1").await.unwrap().is_none());
}

#[tokio::test]
async fn browsers_go_from_the_root_to_the_ui() {
    let (router, _) = router(UiOptions::default());
    let request = Request::get("/")
        .header("accept", "text/html,application/xhtml+xml")
        .body(Body::empty())
        .expect("req");
    let (status, headers, _) = send(&router, request).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/");
    let (status, _, body) = send(&router, get("/", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("UNSUPPORTED"), "{body}");
}

#[tokio::test]
async fn pushes_and_deletes_show_at_once_despite_the_cache() {
    let (router, _) = router(UiOptions::default());
    push_image(&router, "one", "v1").await;
    let (_, _, page) = send(&router, get("/ui/", None)).await;
    assert!(page.contains("/ui/r/one") && !page.contains("/ui/r/two"));
    push_image(&router, "two", "v1").await;
    push_image(&router, "one", "v2").await;
    let (_, _, page) = send(&router, get("/ui/", None)).await;
    assert!(page.contains("/ui/r/two"), "a new repository shows: {page}");
    let counts: Vec<&str> = page
        .match_indices("<td class=\"num\">2</td>")
        .map(|m| m.1)
        .collect();
    assert_eq!(counts.len(), 1, "one now has 2 tags: {page}");
    let (status, _, _) = send(
        &router,
        Request::delete("/v2/one/manifests/v2")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, _, page) = send(&router, get("/ui/", None)).await;
    assert!(
        !page.contains("<td class=\"num\">2</td>"),
        "back to 1 tag: {page}"
    );
}

/// "Last pushed" comes from the tag records (storage's write time), on the
/// catalog and on the repository page, which can sort by it.
#[tokio::test]
async fn last_pushed_shows_on_both_pages() {
    let (router, storage) = router(UiOptions::default());
    push_image(&router, "one", "v1").await;
    push_image(&router, "one", "v2").await;
    let records = storage.tag_records("one").await.expect("records");
    let newest = records.iter().map(|r| r.pushed).max().expect("a record");
    let minute = humantime::format_rfc3339_seconds(newest).to_string()[..16].to_string();
    let (_, _, page) = send(&router, get("/ui/", None)).await;
    assert!(page.contains("Last pushed"), "{page}");
    assert!(
        page.contains(&format!("<td>{minute}</td>")),
        "{minute} in {page}"
    );
    let (status, _, page) = send(&router, get("/ui/r/one?sort=pushed", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Last pushed ▾"), "sorted by it: {page}");
    assert!(page.contains(&format!("<td>{minute}</td>")), "{page}");
}

#[tokio::test]
async fn off_means_no_pages() {
    let router = Registry::new(Arc::new(MemoryStorage::new())).router();
    for path in ["/ui/", "/ui/static/style.css", "/ui/login"] {
        let (status, _, body) = send(&router, get(path, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            body.contains("UNSUPPORTED"),
            "the API's 404, not a page: {body}"
        );
    }
    let request = Request::get("/")
        .header("accept", "text/html")
        .body(Body::empty())
        .expect("req");
    let (status, _, _) = send(&router, request).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no redirect to a UI that is off"
    );
}
