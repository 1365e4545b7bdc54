//! The client over HTTPS: Debian's `docker-registry` serving TLS with a certificate from a
//! test CA made here with `openssl`. Without the CA the client refuses the registry and says
//! how to fix it; with `--ca-file` it works; `--insecure HOST:PORT` skips the check, as
//! Docker's insecure-registries does.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A CA and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key).
fn make_certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (ca, ca_key) = make_test_ca(dir);
    let (cert, key) = make_test_cert(dir, (&ca, &ca_key), "server", false);
    (ca, cert, key)
}

#[test]
fn https_registry_with_a_private_ca() {
    if !require_tool("openssl") || !require_tool("docker-registry") {
        return;
    }
    let cli = BerthCli::new();
    let certs = cli.path("certs");
    std::fs::create_dir_all(&certs).expect("create certs dir");
    let (ca, cert, key) = make_certificates(&certs);
    let server = Server::start_distribution_tls(&cert, &key);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let reference = format!("{}/secure/app:1", server.host());
    let rootfs_arg = rootfs.display().to_string();

    // Unknown CA: refused, with a message that names the fix.
    let refused = run_fail(
        cli.cmd(["import", rootfs_arg.as_str(), reference.as_str()]),
        TIMEOUT,
    );
    assert!(
        refused.stderr.contains("TLS") && refused.stderr.contains("--ca-file"),
        "expected a TLS error naming --ca-file: {}",
        refused.describe()
    );
    assert_eq!(
        refused.stderr.trim().lines().count(),
        1,
        "one-line error: {}",
        refused.describe()
    );

    // With the CA: works, over HTTPS (the server speaks nothing else).
    let ca_arg = ca.display().to_string();
    let pushed = run_ok(
        cli.cmd([
            "import",
            "--ca-file",
            ca_arg.as_str(),
            "--json",
            rootfs_arg.as_str(),
            reference.as_str(),
        ]),
        TIMEOUT,
    );
    let pushed = parse_json(&pushed, "import --json");
    let digest = pushed["digest"]
        .as_str()
        .expect("digest in import --json")
        .to_string();
    let layout = cli.path("layout");
    let dest = format!("oci:{}:v1", layout.display());
    let pulled = run_ok(
        cli.cmd([
            "pull",
            "--ca-file",
            ca_arg.as_str(),
            "--json",
            reference.as_str(),
            dest.as_str(),
        ]),
        TIMEOUT,
    );
    assert_eq!(
        parse_json(&pulled, "pull --json")["digest"],
        digest.as_str()
    );

    // Marked insecure: the certificate is not checked (Docker's insecure-registries rule).
    let host = server.host();
    let inspected = run_ok(
        cli.cmd([
            "inspect",
            "--insecure",
            host.as_str(),
            "--json",
            reference.as_str(),
        ]),
        TIMEOUT,
    );
    assert_eq!(
        parse_json(&inspected, "inspect --json")["digest"],
        digest.as_str()
    );
    drop(server);
}
