//! Turning the `[auth]`, `[access]` and `[limits]` settings into the
//! registry's access control.

use anyhow::{bail, Context, Result};
use berth_auth::acl::{Acl, AclConfig, RuleConfig};
use berth_auth::ratelimit::RateLimit;
use berth_auth::token::{SigningKey, TokenIssuer, TokenVerifier};
use berth_registry::access::{Access, AccessOptions, Scheme};

use crate::config::{AuthScheme, LimitSettings, Settings};

const DEFAULT_SERVICE: &str = "berth";
const DEFAULT_ISSUER: &str = "berth-token-service";

/// Access control for `berth serve`, or `None` when auth is off.
pub fn build(settings: &Settings) -> Result<Option<Access>> {
    let auth = &settings.auth;
    if !auth.enabled() {
        if !settings.access.rules.is_empty() {
            bail!(
                "[access] rules need logins: set --htpasswd (or auth.htpasswd / auth.trust_keys)"
            );
        }
        return Ok(None);
    }
    let service = auth
        .service
        .clone()
        .unwrap_or_else(|| DEFAULT_SERVICE.to_string());
    let scheme = match (auth.scheme.unwrap_or(AuthScheme::Token), &auth.trust_keys) {
        (AuthScheme::Basic, Some(_)) => {
            bail!("auth.trust_keys (an external token service) needs the token scheme, not basic")
        }
        (AuthScheme::Basic, None) => Scheme::Basic,
        (AuthScheme::Token, Some(keys)) => {
            let issuer = auth.issuer.as_deref().context(
                "auth.trust_keys needs auth.issuer: the `iss` of the external token service",
            )?;
            let text = std::fs::read_to_string(keys)
                .with_context(|| format!("cannot read auth.trust_keys {}", keys.display()))?;
            let mut verifier = TokenVerifier::new(issuer, &service);
            let trusted = if text.trim_start().starts_with('{') {
                verifier.trust_jwks(&text)
            } else {
                verifier.trust_pem(&text)
            }
            .with_context(|| format!("no usable key in {}", keys.display()))?;
            tracing::info!(keys = trusted, issuer, "trusting an external token service");
            Scheme::Token {
                issuer: None,
                verifier: Box::new(verifier),
            }
        }
        (AuthScheme::Token, None) => {
            let key = match &auth.token_key {
                Some(path) => SigningKey::load_or_generate(path)
                    .with_context(|| format!("token signing key {}", path.display()))?,
                None => {
                    tracing::warn!("no auth.token_key: tokens are signed with a key made at start, so they stop working after a restart and on other replicas");
                    SigningKey::generate()
                        .map(|(key, _pem)| key)
                        .context("cannot make a token signing key")?
                }
            };
            let lifetime = auth
                .token_lifetime
                .as_deref()
                .map(humantime::parse_duration)
                .transpose()
                .context("invalid auth.token_lifetime (use e.g. \"5m\")")?;
            let mut issuer =
                TokenIssuer::new(key, auth.issuer.as_deref().unwrap_or(DEFAULT_ISSUER));
            if let Some(lifetime) = lifetime {
                issuer = issuer.with_lifetime(lifetime);
            }
            let verifier = issuer.verifier(&service);
            Scheme::Token {
                issuer: Some(Box::new(issuer)),
                verifier: Box::new(verifier),
            }
        }
    };
    let rules = if settings.access.rules.is_empty() {
        // What an htpasswd-only registry does: logged in means allowed.
        Acl::from_config(&AclConfig {
            groups: Default::default(),
            rules: vec![RuleConfig {
                who: "authenticated".into(),
                repositories: vec!["**".into()],
                actions: vec!["*".into()],
            }],
        })
    } else {
        Acl::from_config(&settings.access)
    }
    .context("invalid [access] rules")?;
    let access = Access::new(AccessOptions {
        scheme,
        htpasswd: auth.htpasswd.clone(),
        rules,
        realm: auth.realm.clone(),
        service,
        tls: settings.tls.is_some(),
        login_failures_before_backoff: auth.login_failures_before_backoff,
    })
    .map_err(anyhow::Error::msg)?;
    Ok(Some(access))
}

/// The per-client rate limit, when one is set.
pub fn rate_limit(limits: &LimitSettings) -> Result<Option<RateLimit>> {
    let Some(rate) = limits.rate else {
        return Ok(None);
    };
    if !(rate.is_finite() && rate > 0.0) {
        bail!("the rate limit must be a positive number of requests per second, not {rate}");
    }
    let burst = limits
        .burst
        .unwrap_or_else(|| ((rate * 4.0).ceil() as u32).max(100));
    Ok(Some(RateLimit {
        rate,
        burst,
        ..RateLimit::default()
    }))
}
