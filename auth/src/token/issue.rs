//! Signing tokens: [`TokenIssuer`] makes low-S ES256 JWTs with our key, and
//! [`IssuedToken`] is the token endpoint's answer.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Header};

use super::keys::{es256_signature, SigningKey};
use super::verify::{TokenVerifier, TrustedKey};
use super::{unix, AccessEntry, Audience, Claims, Secret, TokenError, DEFAULT_LIFETIME};
use crate::acl::Identity;
use crate::scope::Scope;

/// A token we issued, with what the endpoint's answer needs.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: Secret,
    pub expires_in: u64,
    /// Unix seconds.
    pub issued_at: u64,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &self.token)
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

impl IssuedToken {
    /// The token endpoint's JSON answer: `token` (Docker's name) and
    /// `access_token` (OAuth2's) carry the same token; `issued_at` is RFC 3339.
    pub fn response_json(&self) -> String {
        serde_json::json!({
            "token": self.token.expose(),
            "access_token": self.token.expose(),
            "expires_in": self.expires_in,
            "issued_at": rfc3339(self.issued_at),
        })
        .to_string()
    }
}

/// Issues tokens signed with our key.
#[derive(Debug)]
pub struct TokenIssuer {
    key: SigningKey,
    issuer: String,
    lifetime: Duration,
}

impl TokenIssuer {
    pub fn new(key: SigningKey, issuer: &str) -> TokenIssuer {
        TokenIssuer {
            key,
            issuer: issuer.into(),
            lifetime: DEFAULT_LIFETIME,
        }
    }

    /// Lifetime of issued tokens (at least one second).
    pub fn with_lifetime(mut self, lifetime: Duration) -> TokenIssuer {
        self.lifetime = lifetime.max(Duration::from_secs(1));
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Sign a token for `who`, valid for `audience` (the registry's service
    /// name), carrying `access` (what [`crate::acl::Acl::grant`] allowed).
    pub fn issue(
        &self,
        who: &Identity,
        audience: &str,
        access: &[Scope],
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        let now = unix(now);
        let lifetime = self.lifetime.as_secs();
        let mut jti = [0u8; 16];
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut jti)
            .map_err(|e| TokenError::Key(format!("no randomness for the token id: {e}")))?;
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: who.subject().to_string(),
            aud: Audience::One(audience.into()),
            exp: now.saturating_add(lifetime),
            nbf: Some(now),
            iat: Some(now),
            jti: Some(crate::hex(&jti)),
            access: access.iter().map(AccessEntry::from).collect(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|e| TokenError::Key(format!("signing failed: {e}")))?;
        Ok(IssuedToken {
            token: Secret(low_s(token)?),
            expires_in: lifetime,
            issued_at: now,
        })
    }

    /// A verifier that trusts this issuer's key, for `audience`.
    pub fn verifier(&self, audience: &str) -> TokenVerifier {
        let mut verifier = TokenVerifier::new(&self.issuer, audience);
        verifier.keys.push(TrustedKey {
            key: DecodingKey::from_ec_der(&self.key.public_point),
            algorithms: vec![Algorithm::ES256],
            kid: Some(self.key.kid.clone()),
            low_s_only: true,
        });
        verifier
    }
}

/// Rewrite a freshly signed ES256 token's signature into low-S form.
/// ECDSA signatures are malleable: (r, s) and (r, n - s) both verify, so
/// anyone could turn one of our tokens into a second, different string that
/// verifies too. p256 signs without normalising (only secp256k1 does), so
/// we do it here, and our verifier then refuses high-S outright: each token
/// we issue has exactly one accepted spelling.
pub(super) fn low_s(token: String) -> Result<String, TokenError> {
    let signature = es256_signature(&token)
        .ok_or_else(|| TokenError::Key("signing gave no ES256 signature".into()))?;
    let Some(normalised) = signature.normalize_s() else {
        return Ok(token); // already low-S
    };
    let input = token.rsplit_once('.').map_or("", |(input, _)| input);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(normalised.to_bytes());
    Ok(format!("{input}.{encoded}"))
}

/// Last second humantime can print (`9999-12-31T23:59:59Z`); later times
/// make its formatter fail, which `to_string` would turn into a panic.
const LAST_PRINTABLE_SECOND: u64 = 253_402_300_799;

/// RFC 3339 in UTC (`2026-01-02T03:04:05Z`) from Unix seconds; times past
/// year 9999 print as its last second.
pub fn rfc3339(secs: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(secs.min(LAST_PRINTABLE_SECOND));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::test_support::*;
    use crate::token::TokenVerifier;

    #[test]
    fn issues_tokens_in_docker_format() {
        let issuer = issuer();
        let access = scopes(&["repository:samalba/my-app:pull,push", "registry:catalog:*"]);
        let issued = issuer
            .issue(&Identity::user("alice"), AUD, &access, t0())
            .expect("issue");
        assert_eq!(issued.expires_in, 300);
        assert_eq!(issued.issued_at, 1_700_000_000);
        let token = issued.token.expose();
        let header = part(token, 0);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], issuer.key().kid());
        let claims = part(token, 1);
        assert_eq!(claims["iss"], ISS);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], AUD);
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["nbf"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_300u64);
        assert_eq!(claims["jti"].as_str().map(str::len), Some(32));
        assert_eq!(
            claims["access"],
            serde_json::json!([
                {"type": "repository", "name": "samalba/my-app", "actions": ["pull", "push"]},
                {"type": "registry", "name": "catalog", "actions": ["*"]},
            ])
        );
        // Two tokens never share an id.
        let again = issuer
            .issue(&Identity::user("alice"), AUD, &access, t0())
            .expect("issue");
        assert_ne!(part(again.token.expose(), 1)["jti"], claims["jti"]);
        // Anonymous tokens have an empty subject.
        let anon = issuer
            .issue(&Identity::Anonymous, AUD, &[], t0())
            .expect("issue");
        assert_eq!(part(anon.token.expose(), 1)["sub"], "");
        assert_eq!(
            part(anon.token.expose(), 1)["access"],
            serde_json::json!([])
        );
    }

    /// The same token with S replaced by n - S (equally valid ECDSA).
    fn flip_s(token: &str) -> String {
        let signature = es256_signature(token).expect("ES256 signature");
        let (r, s) = signature.split_scalars();
        let flipped =
            p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).expect("flip");
        let input = token.rsplit_once('.').expect("JWT").0;
        format!("{input}.{}", b64url(&flipped.to_bytes()))
    }

    #[test]
    fn issues_low_s_and_refuses_high_s_from_our_key() {
        let issuer = issuer();
        let verifier = issuer.verifier(AUD);
        // Trusting the same key as an external issuer's: both forms pass.
        let mut external = TokenVerifier::new(ISS, AUD);
        external
            .trust_pem(issuer.key().public_key_pem())
            .expect("trust");
        // p256 signs high-S about half the time: 32 tokens miss that with
        // odds of 2^-32 if issue() did not normalise.
        for _ in 0..32 {
            let issued = issuer
                .issue(&Identity::user("a"), AUD, &[], t0())
                .expect("issue");
            let token = issued.token.expose();
            let signature = es256_signature(token).expect("signature");
            assert!(signature.normalize_s().is_none(), "issued a high-S token");
            assert!(verifier.verify(token, t0()).is_ok());
            let flipped = flip_s(token);
            assert_eq!(verifier.verify(&flipped, t0()), Err(TokenError::HighS));
            assert!(external.verify(&flipped, t0()).is_ok());
            assert!(external.verify(token, t0()).is_ok());
        }
    }

    #[test]
    fn response_json_and_dates() {
        let issued = IssuedToken {
            token: Secret::new("t.o.k"),
            expires_in: 300,
            issued_at: 1_700_000_000,
        };
        let json: serde_json::Value = serde_json::from_str(&issued.response_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "token": "t.o.k", "access_token": "t.o.k",
                "expires_in": 300, "issued_at": "2023-11-14T22:13:20Z",
            })
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        // Far-future input is clamped, never a panic.
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
