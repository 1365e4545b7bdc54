//! Image references (`berth_client::reference`), command-line locations
//! (`berth_client::location`) and the registry's `/v2/...` path router, on
//! arbitrary strings.
//!
//! Properties: no panic; what parses prints back to a string that parses to
//! the same value; every accepted repository name passes the one name
//! grammar (`berth_oci::names`, which guards storage paths and token
//! scopes); that grammar's hand-written scanners accept exactly what the
//! distribution spec's regexes accept.

use std::sync::LazyLock;

use berth_client::location::Location;
use berth_client::reference::{is_loopback_host, ImageRef};
use berth_oci::names::{is_valid_repository_name, is_valid_tag, MAX_NAME_LEN};
use berth_registry::route::{self, Route};
use regex::Regex;

/// The distribution spec's grammar for repository names, as a regex: an
/// independent oracle for the hand-written scanner.
static NAME_REGEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
        .expect("static regex")
});

/// The distribution spec's grammar for tags.
static TAG_REGEX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("static regex"));

fn check_image_ref(input: &str) {
    let Ok(r) = ImageRef::parse(input) else {
        return;
    };
    assert!(
        is_valid_repository_name(&r.repository),
        "{input:?} gave repository {:?}",
        r.repository
    );
    if let Some(tag) = &r.tag {
        assert!(is_valid_tag(tag), "{input:?} gave tag {tag:?}");
    }
    assert!(!r.registry.is_empty() && !r.registry.contains('/'));
    assert!(!r.reference().is_empty());
    let _ = is_loopback_host(&r.registry);
    let _ = r.api_host();
    let printed = r.to_string();
    let again = ImageRef::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, r, "{input:?} printed as {printed:?}");
    assert_eq!(
        ImageRef::parse(&Location::store_name(&r))
            .ok()
            .map(|s| s.repository),
        Some(r.repository.clone())
    );
}

fn check_location(input: &str, bare_is_local: bool) {
    let Ok(location) = Location::parse_with_default(input, bare_is_local) else {
        return;
    };
    match &location {
        Location::Registry(r) | Location::Local(r) => {
            assert!(is_valid_repository_name(&r.repository))
        }
        Location::Oci { dir, .. } => assert!(!dir.as_os_str().is_empty()),
        Location::DockerArchive { file, .. } => assert!(!file.as_os_str().is_empty()),
    }
    // A location is printed in messages and by `berth images`; the printed
    // form must name the same thing (a bare reference means a registry).
    let printed = location.to_string();
    let again = Location::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, location, "{input:?} printed as {printed:?}");
}

fn check_route(path: &str) {
    let Ok(parsed) = route::parse(path) else {
        return;
    };
    if let Some(name) = parsed.name() {
        assert!(
            is_valid_repository_name(name),
            "{path:?} gave name {name:?}"
        );
    }
    let rebuilt = match &parsed {
        Route::Base => String::new(),
        Route::Catalog => "_catalog".into(),
        Route::Tags { name } => format!("{name}/tags/list"),
        Route::Manifest { name, reference } => format!("{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("{name}/blobs/{digest}"),
        Route::UploadStart { name } => format!("{name}/blobs/uploads/"),
        Route::Upload { name, id } => format!("{name}/blobs/uploads/{id}"),
        Route::Referrers { name, digest } => format!("{name}/referrers/{digest}"),
    };
    assert_eq!(
        route::parse(&rebuilt),
        Ok(parsed),
        "{path:?} rebuilt as {rebuilt:?}"
    );
}

/// One fuzz input (the body of `fuzz_targets/reference.rs`; also replayed by
/// `tests/fuzz_regressions.rs`).
pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    check_image_ref(input);
    check_location(input, false);
    check_location(input, true);
    check_route(input);
    // One grammar guards repository names and tags (storage paths, token
    // scopes, references): it must accept exactly what the spec's regexes do.
    assert_eq!(
        is_valid_repository_name(input),
        input.len() <= MAX_NAME_LEN && NAME_REGEX.is_match(input),
        "name grammar disagrees with the spec's regex on {input:?}"
    );
    assert_eq!(
        is_valid_tag(input),
        TAG_REGEX.is_match(input),
        "tag grammar disagrees with the spec's regex on {input:?}"
    );
}
