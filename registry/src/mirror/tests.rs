use super::*;

fn config(prefix: &str, upstream: &str) -> MirrorConfig {
    MirrorConfig {
        upstream: upstream.into(),
        prefix: prefix.into(),
        ..MirrorConfig::default()
    }
}

fn error(configs: &[MirrorConfig]) -> String {
    match Mirrors::from_config(configs) {
        Ok(_) => panic!("expected an error for {configs:?}"),
        Err(e) => e,
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("50GiB"), Ok(50 << 30));
    assert_eq!(parse_size("500MB"), Ok(500_000_000));
    assert_eq!(parse_size("1024"), Ok(1024));
    assert_eq!(parse_size(" 2 KiB "), Ok(2048));
    assert!(parse_size("5 parsecs")
        .unwrap_err()
        .contains("unknown size unit"));
    assert!(parse_size("GiB").is_err());
    assert!(parse_size("99999999999TiB")
        .unwrap_err()
        .contains("too large"));
}

#[test]
fn bad_config_names_the_key() {
    let e = error(&[config("docker.io", "ftp://x")]);
    assert!(e.starts_with("mirror[0].upstream"), "{e}");
    let e = error(&[config("docker.io", "https://h/v2/")]);
    assert!(
        e.contains("mirror[0].upstream") && e.contains("no path"),
        "{e}"
    );
    let e = error(&[config("Docker.IO", "https://h")]);
    assert!(e.starts_with("mirror[0].prefix"), "{e}");
    let e = error(&[config("", "https://h")]);
    assert!(e.starts_with("mirror[0].prefix"), "{e}");
    let mut c = config("d", "https://h");
    c.manifest_ttl = Some("five minutes".into());
    assert!(error(&[c]).starts_with("mirror[0].manifest_ttl"));
    let mut c = config("d", "https://h");
    c.max_size = Some("lots".into());
    assert!(error(&[c]).starts_with("mirror[0].max_size"));
    let mut c = config("d", "https://h");
    c.fallback = vec!["https://ok".into(), "nope".into()];
    assert!(error(&[c]).starts_with("mirror[0].fallback"));
    let mut c = config("d", "https://h");
    c.username = Some("u".into());
    assert!(error(&[c]).contains("both username and password"));
}

#[test]
fn mirrors_do_not_overlap() {
    let e = error(&[
        config("docker.io", "https://a"),
        config("docker.io/library", "https://b"),
    ]);
    assert!(
        e.contains("mirror[1].prefix") && e.contains("overlaps"),
        "{e}"
    );
    let mut a = config("a", "https://a");
    let mut b = config("b", "https://b");
    a.default = true;
    b.default = true;
    assert!(error(&[a.clone(), b.clone()]).contains("only one mirror"));
    a.default = false;
    b.default = false;
    a.namespace = Some("docker.io".into());
    b.namespace = Some("docker.io".into());
    assert!(error(&[a, b]).contains("mirror[1].namespace"));
    // Prefixes that merely share a beginning are distinct repositories.
    assert!(
        Mirrors::from_config(&[config("ghcr", "https://a"), config("ghcr2", "https://b")]).is_ok()
    );
}

#[test]
fn names_map_to_one_local_repository() {
    let mut hub = config("docker.io", "http://127.0.0.1:1");
    hub.namespace = Some("docker.io".into());
    let mut ghcr = config("ghcr", "http://127.0.0.1:2");
    ghcr.namespace = Some("ghcr.io".into());
    let mirrors = Mirrors::from_config(&[hub.clone(), ghcr.clone()]).expect("valid");
    // The prefix form is already the local name.
    assert_eq!(mirrors.rewrite("docker.io/library/alpine", None), None);
    let (m, up) = mirrors.find("docker.io/library/alpine").expect("mirrored");
    assert_eq!((m.prefix.as_str(), up), ("docker.io", "library/alpine"));
    assert!(
        mirrors.find("docker.io").is_none(),
        "the prefix alone names no upstream repository"
    );
    assert!(mirrors.find("docker.iox/a").is_none());
    // containerd's ?ns= picks the mirror by namespace.
    assert_eq!(
        mirrors
            .rewrite("library/alpine", Some("docker.io"))
            .as_deref(),
        Some("docker.io/library/alpine")
    );
    assert_eq!(
        mirrors.rewrite("owner/app", Some("ghcr.io")).as_deref(),
        Some("ghcr/owner/app")
    );
    assert_eq!(mirrors.rewrite("owner/app", Some("quay.io")), None);
    // Without a default mirror, unprefixed names are local repositories.
    assert_eq!(mirrors.rewrite("team/app", None), None);
    hub.default = true;
    let mirrors = Mirrors::from_config(&[hub, ghcr]).expect("valid");
    assert_eq!(
        mirrors.rewrite("library/alpine", None).as_deref(),
        Some("docker.io/library/alpine")
    );
    assert_eq!(mirrors.rewrite("ghcr/owner/app", None), None);
    // An unknown namespace is never sent to the default mirror.
    assert_eq!(mirrors.rewrite("owner/app", Some("quay.io")), None);
}

#[test]
fn docker_hub_upstream_uses_the_hub_name() {
    assert_eq!(
        upstream_host("m", "upstream", "https://registry-1.docker.io"),
        Ok(("docker.io".to_string(), false))
    );
    assert_eq!(
        upstream_host("m", "upstream", "http://127.0.0.1:5000/"),
        Ok(("127.0.0.1:5000".to_string(), true))
    );
    assert!(upstream_host("m", "upstream", "https://u:p@h").is_err());
}
