//! What `berth serve` says when it starts: where the images are kept, the
//! URL to push to, whether logins are on, and warnings about an open server.

use std::net::SocketAddr;

use crate::config::Settings;

/// The storage as an absolute path (an `s3://` URL as it is).
fn absolute_storage(storage: &str) -> String {
    if storage.starts_with("s3://") {
        return storage.to_string();
    }
    std::path::absolute(storage)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| storage.to_string())
}

/// The address clients push to: a wildcard listener is reached on loopback
/// from this machine (other machines use its name or address).
fn push_host(local: SocketAddr) -> String {
    if local.ip().is_unspecified() {
        format!("127.0.0.1:{}", local.port())
    } else {
        local.to_string()
    }
}

pub fn announce(listener: &tokio::net::TcpListener, settings: &Settings) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = push_host(local);
    tracing::info!(
        addr = %local,
        storage = %absolute_storage(&settings.storage),
        url = %format!("{scheme}://{host}/v2/"),
        push_to = %format!("{host}/NAME:TAG"),
        https = settings.tls.is_some(),
        auth = %if settings.auth.enabled() { "on" } else { "off" },
        ui = %if settings.ui.enabled { format!("{scheme}://{host}/ui/") } else { "off".into() },
        "berth registry listening"
    );
    let loopback = local.ip().is_loopback();
    if !loopback && !settings.auth.enabled() {
        tracing::warn!(
            addr = %local,
            "no logins: anyone who can reach {local} may push, overwrite and delete images; add --htpasswd FILE, or listen on 127.0.0.1 (--addr 127.0.0.1:{})",
            local.port()
        );
    }
    if settings.auth.enabled() && settings.tls.is_none() && !loopback {
        tracing::warn!("logins are on but the server speaks plain HTTP on a non-loopback address: passwords and tokens cross the network in clear text; add --tls-cert/--tls-key or put a TLS proxy in front");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::normalise_addr;

    #[test]
    fn distribution_addr_form_means_every_address() {
        assert_eq!(normalise_addr(":5000"), "0.0.0.0:5000");
        assert_eq!(normalise_addr("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(push_host("0.0.0.0:5000".parse().unwrap()), "127.0.0.1:5000");
    }
}
