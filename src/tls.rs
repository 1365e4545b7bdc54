//! HTTPS for `berth serve`: rustls with a certificate that is re-read when
//! its files change (a renewed certificate needs no restart), optional client
//! certificates (mTLS). The handshakes themselves run in the connection loop
//! (`serve_loop`), each in its connection's task and within its header timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; clients without one
    /// are refused at the handshake.
    pub client_ca: Option<PathBuf>,
}

/// The server's certificate, swapped in place when the files change.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn load_certified_key(settings: &TlsSettings) -> Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&settings.cert)
        .with_context(|| format!("cannot read TLS certificate {}", settings.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in {}", settings.cert.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no certificate (expected PEM 'BEGIN CERTIFICATE')",
            settings.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key).with_context(|| {
        format!(
            "cannot read a private key from {} (PEM: PKCS#8, PKCS#1 or SEC1)",
            settings.key.display()
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("unusable private key in {}", settings.key.display()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().with_context(|| {
        format!(
            "the key in {} does not belong to the certificate in {}",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    Ok(certified)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Build the acceptor, and start the task that reloads the certificate.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(ReloadingCert {
        current: RwLock::new(Arc::new(load_certified_key(settings)?)),
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read client CA bundle {}", ca.display()))?
            {
                let cert = cert.with_context(|| format!("invalid PEM in {}", ca.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("unusable CA certificate in {}", ca.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no CA certificate", ca.display());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload_on_change(settings.clone(), resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn reload_on_change(settings: TlsSettings, resolver: Arc<ReloadingCert>) {
    let stamp = |s: &TlsSettings| (modified(&s.cert), modified(&s.key));
    let mut seen = stamp(&settings);
    let mut ticks = tokio::time::interval(RELOAD_CHECK);
    loop {
        ticks.tick().await;
        let now = stamp(&settings);
        if now == seen {
            continue;
        }
        // Renewal tools write the key and the certificate one after the
        // other: a pair that does not match yet is retried on the next tick.
        match load_certified_key(&settings) {
            Ok(key) => {
                *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                seen = now;
                tracing::info!(cert = %settings.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate changed but cannot be used yet; still serving the previous one");
            }
        }
    }
}
