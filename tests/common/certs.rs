//! Test certificates made with openssl: a CA, and server or client certificates it signs.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{cmd, run_ok};

/// A test CA in `dir`: returns (certificate, key), PEM.
pub fn make_test_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let (ca, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let p = |p: &Path| p.display().to_string();
    run_ok(
        cmd(
            "openssl",
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=berth test CA",
            ]
            .map(String::from)
            .into_iter()
            .chain(["-keyout".into(), p(&key), "-out".into(), p(&ca)]),
        ),
        Duration::from_secs(120),
    );
    (ca, key)
}

/// A certificate named `name` signed by the CA: for the server 127.0.0.1
/// (`client == false`) or for a TLS client. Returns (certificate, key), PEM.
pub fn make_test_cert(
    dir: &Path,
    (ca, ca_key): (&Path, &Path),
    name: &str,
    client: bool,
) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    let usage = if client {
        "extendedKeyUsage = clientAuth\n"
    } else {
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n"
    };
    fs::write(
        &ext,
        format!(
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n{usage}"
        ),
    )
    .expect("write ext file");
    let p = |p: &Path| p.display().to_string();
    let subject = if client {
        format!("/CN={name}")
    } else {
        "/CN=127.0.0.1".to_string()
    };
    run_ok(
        cmd(
            "openssl",
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj"]
                .map(String::from)
                .into_iter()
                .chain([subject, "-keyout".into(), p(&key), "-out".into(), p(&csr)]),
        ),
        Duration::from_secs(120),
    );
    run_ok(
        cmd(
            "openssl",
            [
                "x509".to_string(),
                "-req".into(),
                "-in".into(),
                p(&csr),
                "-CA".into(),
                p(ca),
                "-CAkey".into(),
                p(ca_key),
                "-set_serial".into(),
                format!(
                    "{}",
                    std::process::id() as u64 * 1000
                        + COUNTER_CERTS.fetch_add(1, Ordering::Relaxed) as u64
                ),
                "-days".into(),
                "2".into(),
                "-extfile".into(),
                p(&ext),
                "-out".into(),
                p(&cert),
            ],
        ),
        Duration::from_secs(120),
    );
    (cert, key)
}

static COUNTER_CERTS: AtomicU32 = AtomicU32::new(1);
