//! Checking tokens: [`TokenVerifier`] trusts our key or an external
//! issuer's (PEM keys, certificates, JWKS) and returns what a token grants.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::keys::es256_signature;
use super::{unix, Claims, TokenError, DEFAULT_LEEWAY, MAX_ACCESS_ENTRIES, MAX_TOKEN_LEN};
use crate::acl::Identity;
use crate::scope::{Scope, ScopeError};

/// Whether the token's header has a `crit` member (any value, even `null`
/// or `[]`: RFC 7515 forbids the empty list, and null is no list at all).
fn has_crit_header(token: &str) -> Result<bool, TokenError> {
    let encoded = token.split('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed("invalid base64".into()))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&raw)
        .map_err(|_| TokenError::Malformed("invalid JSON header".into()))?;
    Ok(header.contains_key("crit"))
}

pub(super) struct TrustedKey {
    pub(super) key: DecodingKey,
    /// Only these algorithms are tried with this key: a public key can never
    /// be used as an HMAC secret (the classic RS256→HS256 confusion attack).
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) kid: Option<String>,
    /// Our own key: only low-S signatures (what we issue) are accepted. An
    /// external issuer's keys accept both forms, because common signers (Go's
    /// crypto/ecdsa, OpenSSL) do not normalise, so about half of an external
    /// service's valid tokens are high-S; refusing them would refuse valid
    /// logins, and nothing here depends on a token having one spelling (the
    /// verified-token cache only saves work).
    pub(super) low_s_only: bool,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`: the user name, empty for anonymous.
    pub subject: String,
    pub access: Vec<Scope>,
    /// Unix seconds.
    pub expires_at: u64,
    pub id: Option<String>,
}

impl VerifiedToken {
    pub fn identity(&self) -> Identity {
        if self.subject.is_empty() {
            Identity::Anonymous
        } else {
            Identity::User(self.subject.clone())
        }
    }
}

/// Checks tokens from one issuer for one audience.
pub struct TokenVerifier {
    pub(super) keys: Vec<TrustedKey>,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier with no keys yet: add them with `trust_*`.
    pub fn new(issuer: &str, audience: &str) -> TokenVerifier {
        TokenVerifier {
            keys: Vec::new(),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY.as_secs(),
        }
    }

    pub fn with_leeway(mut self, leeway: Duration) -> TokenVerifier {
        self.leeway = leeway.as_secs();
        self
    }

    /// Trust every public key in a PEM bundle: `PUBLIC KEY` (SPKI, EC or RSA),
    /// `RSA PUBLIC KEY`, or `CERTIFICATE` (its key is trusted as is: no chain
    /// or expiry checks, as with distribution's `rootcertbundle`). Returns how
    /// many keys were added; a block that is no usable key is an error.
    pub fn trust_pem(&mut self, bundle: &str) -> Result<usize, TokenError> {
        let mut added = 0;
        for block in bundle.split("-----BEGIN ").skip(1) {
            let label = block.split("-----").next().unwrap_or_default();
            // Only public material: a private key here is a config mistake
            // (and a leak waiting to happen), not something to trust.
            if !matches!(label, "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE") {
                return Err(TokenError::Key(format!(
                    "PEM block {label:?} is not a public key or certificate"
                )));
            }
            let pem = format!("-----BEGIN {block}");
            let trusted = if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                ec_trusted(key, None)?
            } else if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                rsa_trusted(key, None)
            } else {
                return Err(TokenError::Key(format!(
                    "PEM block {label:?} holds no EC (P-256/P-384) or RSA public key"
                )));
            };
            self.keys.push(trusted);
            added += 1;
        }
        if added == 0 {
            return Err(TokenError::Key("no PEM block found".into()));
        }
        Ok(added)
    }

    /// Trust the keys of a JWKS document (`{"keys": [...]}`). Symmetric
    /// (`oct`) keys are refused: anyone who can read them could mint tokens.
    pub fn trust_jwks(&mut self, json: &str) -> Result<usize, TokenError> {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(json)
            .map_err(|e| TokenError::Key(format!("invalid JWKS: {e}")))?;
        let mut added = 0;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| TokenError::Key(format!("JWKS key {kid:?}: {e}")))?;
            let trusted = match key.family() {
                jsonwebtoken::AlgorithmFamily::Ec => ec_trusted(key, kid)?,
                jsonwebtoken::AlgorithmFamily::Rsa => rsa_trusted(key, kid),
                _ => {
                    return Err(TokenError::Key(format!(
                        "JWKS key {kid:?}: only EC and RSA public keys are accepted"
                    )))
                }
            };
            self.keys.push(trusted);
            added += 1;
        }
        Ok(added)
    }

    /// Check a token and return what it grants. `now` is the current time.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        // The header is read before the signature is checked only to pick
        // the key and refuse algorithms we never accept (`none`, `HS256`).
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_jwt_error(&e))?;
        if header.crit.is_some() || has_crit_header(token)? {
            return Err(TokenError::Critical);
        }
        let candidates: Vec<&TrustedKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(
                if self.keys.iter().any(|k| k.algorithms.contains(&header.alg)) {
                    TokenError::UnknownKey
                } else {
                    TokenError::Algorithm(format!("{:?}", header.alg))
                },
            );
        }
        let mut last = TokenError::BadSignature;
        let high_s = header.alg == Algorithm::ES256
            && es256_signature(token).is_some_and(|s| s.normalize_s().is_some());
        let claims = candidates.iter().find_map(|trusted| {
            if trusted.low_s_only && high_s {
                last = TokenError::HighS;
                return None;
            }
            let mut validation = Validation::new(header.alg);
            validation.algorithms = trusted.algorithms.clone();
            // Time, audience and issuer are checked below against `now`,
            // with our own error values; the library only checks signatures.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            match jsonwebtoken::decode::<Claims>(token, &trusted.key, &validation) {
                Ok(data) => Some(data.claims),
                Err(e) => {
                    last = map_jwt_error(&e);
                    None
                }
            }
        });
        let claims = claims.ok_or(last)?;
        self.check_claims(claims, unix(now))
    }

    fn check_claims(&self, claims: Claims, now: u64) -> Result<VerifiedToken, TokenError> {
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenError::WrongAudience);
        }
        if now > claims.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        let not_before = claims.nbf.into_iter().chain(claims.iat).max().unwrap_or(0);
        if not_before > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        if claims.access.len() > MAX_ACCESS_ENTRIES {
            return Err(TokenError::BadAccess(ScopeError::TooMany));
        }
        let access = claims
            .access
            .iter()
            .map(|entry| {
                let actions: Vec<&str> = entry.actions.iter().map(String::as_str).collect();
                Scope::from_parts(
                    &entry.resource_type,
                    entry.class.as_deref(),
                    &entry.name,
                    &actions,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(TokenError::BadAccess)?;
        Ok(VerifiedToken {
            subject: claims.sub,
            access: crate::scope::merge(access),
            expires_at: claims.exp,
            id: claims.jti,
        })
    }
}

fn ec_trusted(key: DecodingKey, kid: Option<String>) -> Result<TrustedKey, TokenError> {
    // The uncompressed point's size tells the curve: P-256 or P-384.
    let algorithm = match key.try_get_as_bytes().map(<[u8]>::len) {
        Ok(65) => Algorithm::ES256,
        Ok(97) => Algorithm::ES384,
        _ => return Err(TokenError::Key("EC key is not on P-256 or P-384".into())),
    };
    Ok(TrustedKey {
        key,
        algorithms: vec![algorithm],
        kid,
        low_s_only: false,
    })
}

fn rsa_trusted(key: DecodingKey, kid: Option<String>) -> TrustedKey {
    TrustedKey {
        key,
        algorithms: vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        kid,
        low_s_only: false,
    }
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::Algorithm("unsupported".into())
        }
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        // Base64, JSON and structure errors: say what kind, never echo input.
        ErrorKind::Json(_) => TokenError::Malformed("invalid JSON or claims".into()),
        ErrorKind::Base64(_) => TokenError::Malformed("invalid base64".into()),
        ErrorKind::Utf8(_) => TokenError::Malformed("invalid UTF-8".into()),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            TokenError::BadSignature
        }
        _ => TokenError::Malformed("not a JWT".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{to_scope_string, Actions};
    use crate::token::issue::low_s;
    use crate::token::test_support::*;
    use crate::token::{SigningKey, TokenIssuer};
    use jsonwebtoken::{EncodingKey, Header};

    #[test]
    fn verifies_its_own_tokens() {
        let issuer = issuer().with_lifetime(Duration::from_secs(60));
        let access = scopes(&["repository:a/b:pull,push", "repository(plugin):p:pull"]);
        let issued = issuer
            .issue(&Identity::user("bob"), AUD, &access, t0())
            .expect("issue");
        let verified = issuer
            .verifier(AUD)
            .verify(issued.token.expose(), t0())
            .expect("verify");
        assert_eq!(verified.subject, "bob");
        assert_eq!(verified.identity(), Identity::user("bob"));
        assert_eq!(verified.expires_at, 1_700_000_060);
        assert_eq!(to_scope_string(&verified.access), to_scope_string(&access));
        assert!(verified.id.is_some());
        let anon = issuer
            .issue(&Identity::Anonymous, AUD, &[], t0())
            .expect("issue");
        let verified = issuer
            .verifier(AUD)
            .verify(anon.token.expose(), t0())
            .expect("verify");
        assert_eq!(verified.identity(), Identity::Anonymous);
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let issuer = issuer();
        let verifier = issuer.verifier(AUD);
        let token = issuer
            .issue(&Identity::user("a"), AUD, &[], t0())
            .expect("issue");
        let token = token.token.expose();
        let at = |secs: i64| {
            let base = t0();
            if secs >= 0 {
                base + Duration::from_secs(secs as u64)
            } else {
                base - Duration::from_secs((-secs) as u64)
            }
        };
        assert!(verifier.verify(token, at(300)).is_ok());
        assert!(verifier.verify(token, at(330)).is_ok(), "within leeway");
        assert_eq!(verifier.verify(token, at(331)), Err(TokenError::Expired));
        assert!(
            verifier.verify(token, at(-30)).is_ok(),
            "clock skew within leeway"
        );
        assert_eq!(
            verifier.verify(token, at(-31)),
            Err(TokenError::NotYetValid)
        );
        let strict = issuer.verifier(AUD).with_leeway(Duration::ZERO);
        assert_eq!(strict.verify(token, at(301)), Err(TokenError::Expired));
        // A token issued with iat in the future (and no nbf) is not valid yet.
        let mut claims = claims_at(1_700_000_000 + 3600);
        claims.as_object_mut().map(|c| c.remove("nbf"));
        let raw = sign_raw(issuer.key(), &claims);
        assert_eq!(verifier.verify(&raw, t0()), Err(TokenError::NotYetValid));
        // exp is required.
        let mut claims = claims_at(1_700_000_000);
        claims.as_object_mut().map(|c| c.remove("exp"));
        let raw = sign_raw(issuer.key(), &claims);
        assert!(matches!(
            verifier.verify(&raw, t0()),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_audience_or_issuer() {
        let issuer = issuer();
        let token = issuer
            .issue(&Identity::user("a"), "other-registry", &[], t0())
            .expect("issue");
        assert_eq!(
            issuer.verifier(AUD).verify(token.token.expose(), t0()),
            Err(TokenError::WrongAudience)
        );
        let token = issuer
            .issue(&Identity::user("a"), AUD, &[], t0())
            .expect("issue");
        let mut verifier = TokenVerifier::new("someone-else", AUD);
        verifier
            .trust_pem(issuer.key().public_key_pem())
            .expect("trust");
        assert_eq!(
            verifier.verify(token.token.expose(), t0()),
            Err(TokenError::WrongIssuer)
        );
        // An audience list is accepted when it contains ours.
        let mut claims = claims_at(1_700_000_000);
        claims["aud"] = serde_json::json!(["x", AUD]);
        let raw = sign_raw(issuer.key(), &claims);
        assert!(issuer.verifier(AUD).verify(&raw, t0()).is_ok());
        claims["aud"] = serde_json::json!(["x", "y"]);
        let raw = sign_raw(issuer.key(), &claims);
        assert_eq!(
            issuer.verifier(AUD).verify(&raw, t0()),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn wrong_signature() {
        let ours = issuer();
        let theirs = issuer();
        let verifier = ours.verifier(AUD);
        let foreign = theirs
            .issue(&Identity::user("a"), AUD, &[], t0())
            .expect("issue");
        // Another key: its kid is unknown here.
        assert_eq!(
            verifier.verify(foreign.token.expose(), t0()),
            Err(TokenError::UnknownKey)
        );
        // Another key claiming our kid: the signature fails.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(ours.key().kid().to_string());
        let forged = low_s(
            jsonwebtoken::encode(&header, &claims_at(1_700_000_000), &theirs.key().encoding)
                .expect("sign"),
        )
        .expect("low-S");
        assert_eq!(
            verifier.verify(&forged, t0()),
            Err(TokenError::BadSignature)
        );
        // Our token with its claims swapped for more access: signature fails.
        let token = ours
            .issue(
                &Identity::user("a"),
                AUD,
                &scopes(&["repository:a:pull"]),
                t0(),
            )
            .expect("issue");
        let parts: Vec<&str> = token.token.expose().split('.').collect();
        let mut claims = part(token.token.expose(), 1);
        claims["access"][0]["actions"] = serde_json::json!(["pull", "push", "delete"]);
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64url(claims.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            verifier.verify(&tampered, t0()),
            Err(TokenError::BadSignature)
        );
        // Signature stripped.
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert!(verifier.verify(&stripped, t0()).is_err());
    }

    /// A token with this raw header JSON, signed (low-S) with the test key.
    fn sign_with_header(header: &str) -> String {
        use p256::ecdsa::signature::Signer;
        let secret = p256::SecretKey::from_sec1_pem(EC_SEC1_PRIVATE).expect("key");
        let signer = p256::ecdsa::SigningKey::from(&secret);
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims_at(1_700_000_000).to_string().as_bytes())
        );
        let signature: p256::ecdsa::Signature = signer.sign(input.as_bytes());
        let signature = signature.normalize_s().unwrap_or(signature);
        format!("{input}.{}", b64url(&signature.to_bytes()))
    }

    #[test]
    fn refuses_crit_headers() {
        let issuer = TokenIssuer::new(SigningKey::from_pem(EC_SEC1_PRIVATE).expect("key"), ISS);
        let ours = issuer.verifier(AUD);
        let mut external = TokenVerifier::new(ISS, AUD);
        external.trust_pem(EC_CERT).expect("trust");
        // Without crit the hand-made token passes: the refusals below are crit's.
        let plain = sign_with_header(r#"{"alg":"ES256","typ":"JWT"}"#);
        assert!(ours.verify(&plain, t0()).is_ok());
        assert!(external.verify(&plain, t0()).is_ok());
        for header in [
            r#"{"alg":"ES256","typ":"JWT","crit":["exp"],"exp":1}"#,
            r#"{"alg":"ES256","crit":["b64"],"b64":false}"#,
            r#"{"alg":"ES256","crit":[]}"#,
            r#"{"alg":"ES256","crit":null}"#,
        ] {
            let token = sign_with_header(header);
            assert_eq!(
                ours.verify(&token, t0()),
                Err(TokenError::Critical),
                "{header}"
            );
            assert_eq!(
                external.verify(&token, t0()),
                Err(TokenError::Critical),
                "{header}"
            );
        }
        // Through jsonwebtoken's own header type too.
        let mut header = Header::new(Algorithm::ES256);
        header.crit = Some(vec!["x-ext".into()]);
        let token = low_s(
            jsonwebtoken::encode(&header, &claims_at(1_700_000_000), &issuer.key().encoding)
                .expect("sign"),
        )
        .expect("low-S");
        assert_eq!(ours.verify(&token, t0()), Err(TokenError::Critical));
    }

    #[test]
    fn refuses_alg_none_and_hmac_confusion() {
        let issuer = issuer();
        let verifier = issuer.verifier(AUD);
        let claims = b64url(claims_at(1_700_000_000).to_string().as_bytes());
        for alg in ["none", "None", "NONE", ""] {
            let header = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
                assert!(verifier.verify(&token, t0()).is_err(), "{alg}");
            }
        }
        // HS256 keyed with our public key's PEM (the classic confusion).
        let key = EncodingKey::from_secret(issuer.key().public_key_pem().as_bytes());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(issuer.key().kid().to_string());
        let token = jsonwebtoken::encode(&header, &claims_at(1_700_000_000), &key).expect("sign");
        assert!(matches!(
            verifier.verify(&token, t0()),
            Err(TokenError::Algorithm(_))
        ));
        // ES384 header on our P-256 key.
        let header = b64url(br#"{"alg":"ES384","typ":"JWT"}"#);
        let token = format!("{header}.{claims}.AAAA");
        assert!(matches!(
            verifier.verify(&token, t0()),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn refuses_garbage_tokens() {
        let verifier = issuer().verifier(AUD);
        for bad in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "!!!.###.$$$",
            "eyJ.eyJ.x",
            "Bearer x",
            "eyJhbGciOiJFUzI1NiJ9..",
            "\u{0}.\u{0}.\u{0}",
            "é.é.é",
        ] {
            assert!(verifier.verify(bad, t0()).is_err(), "{bad:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verifier.verify(&huge, t0()), Err(TokenError::TooLong));
        // Errors never echo the token.
        let err = verifier
            .verify("eyJhbGciOiJFUzI1NiJ9.secret-part.x", t0())
            .expect_err("bad");
        assert!(!err.to_string().contains("secret-part"));
    }

    #[test]
    fn refuses_tokens_with_invalid_access() {
        let issuer = issuer();
        let verifier = issuer.verifier(AUD);
        for access in [
            serde_json::json!([{"type": "repository", "name": "../etc", "actions": ["pull"]}]),
            serde_json::json!([{"type": "repository", "name": "a", "actions": ["pull,push"]}]),
            serde_json::json!([{"type": "Repo", "name": "a", "actions": ["pull"]}]),
            serde_json::json!([{"type": "repository", "name": "a", "actions": "pull"}]),
            serde_json::json!([{"name": "a", "actions": ["pull"]}]),
            serde_json::json!("repository:a:pull"),
        ] {
            let mut claims = claims_at(1_700_000_000);
            claims["access"] = access.clone();
            let raw = sign_raw(issuer.key(), &claims);
            assert!(verifier.verify(&raw, t0()).is_err(), "{access}");
        }
        let many: Vec<serde_json::Value> = (0..=MAX_ACCESS_ENTRIES)
            .map(|i| serde_json::json!({"type": "x", "name": format!("{i}"), "actions": []}))
            .collect();
        let mut claims = claims_at(1_700_000_000);
        claims["access"] = serde_json::Value::Array(many);
        let raw = sign_raw(issuer.key(), &claims);
        assert_eq!(
            verifier.verify(&raw, t0()),
            Err(TokenError::BadAccess(ScopeError::TooMany))
        );
        // `*` on a repository reads as everything; unknown actions drop out.
        let mut claims = claims_at(1_700_000_000);
        claims["access"] = serde_json::json!([
            {"type": "repository", "name": "a", "actions": ["*"]},
            {"type": "repository", "name": "b", "actions": ["pull", "metadata-read"]},
            {"type": "repository", "name": "b", "actions": ["push"]},
        ]);
        let raw = sign_raw(issuer.key(), &claims);
        let verified = verifier.verify(&raw, t0()).expect("verify");
        assert_eq!(verified.access[0].actions, Actions::REPOSITORY_ALL);
        assert_eq!(
            to_scope_string(&verified.access[1..]),
            "repository:b:pull,push"
        );
    }

    #[test]
    fn trusts_external_rsa_issuer() {
        let mut verifier = TokenVerifier::new("corp-auth", AUD);
        assert_eq!(verifier.trust_pem(RSA_PUBLIC), Ok(1));
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key");
        let mut claims = claims_at(1_700_000_000);
        claims["iss"] = "corp-auth".into();
        for alg in [Algorithm::RS256, Algorithm::RS512] {
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign");
            let verified = verifier.verify(&token, t0()).expect("verify");
            assert_eq!(to_scope_string(&verified.access), "repository:a:pull");
        }
        // The RSA public key as an HMAC secret: refused.
        let hmac = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hmac).expect("sign");
        assert!(matches!(
            verifier.verify(&token, t0()),
            Err(TokenError::Algorithm(_))
        ));
        // Our ES256 tokens are not from this issuer's key.
        let ours = issuer();
        let token = sign_raw(ours.key(), &claims);
        assert!(matches!(
            verifier.verify(&token, t0()),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn trusts_a_certificate_and_sec1_keys() {
        let key = SigningKey::from_pem(EC_SEC1_PRIVATE).expect("sec1 key");
        let issuer = TokenIssuer::new(key, "corp-auth");
        let token = issuer
            .issue(&Identity::user("ci"), AUD, &[], t0())
            .expect("issue");
        let mut verifier = TokenVerifier::new("corp-auth", AUD);
        // A bundle: the certificate and an unrelated RSA key.
        let bundle = format!("{EC_CERT}\n{RSA_PUBLIC}");
        assert_eq!(verifier.trust_pem(&bundle), Ok(2));
        let verified = verifier.verify(token.token.expose(), t0()).expect("verify");
        assert_eq!(verified.subject, "ci");
    }

    #[test]
    fn trusts_a_jwks() {
        let issuer = issuer();
        let point = &issuer.key().public_point;
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "kid": issuer.key().kid(),
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        }]});
        let mut verifier = TokenVerifier::new(ISS, AUD);
        assert_eq!(verifier.trust_jwks(&jwks.to_string()), Ok(1));
        let token = issuer
            .issue(&Identity::user("a"), AUD, &[], t0())
            .expect("issue");
        assert!(verifier.verify(token.token.expose(), t0()).is_ok());
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#;
        assert!(TokenVerifier::new(ISS, AUD).trust_jwks(oct).is_err());
        assert!(TokenVerifier::new(ISS, AUD).trust_jwks("not json").is_err());
    }

    #[test]
    fn refuses_unusable_keys() {
        let mut verifier = TokenVerifier::new(ISS, AUD);
        assert!(verifier.trust_pem("").is_err());
        assert!(verifier.trust_pem("hello").is_err());
        assert!(
            verifier.trust_pem(RSA_PRIVATE).is_err(),
            "private keys are not trusted keys"
        );
        assert!(verifier
            .trust_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .is_err());
        assert!(
            SigningKey::from_pem(RSA_PRIVATE).is_err(),
            "we sign with P-256 only"
        );
        assert!(SigningKey::from_pem("garbage").is_err());
        assert!(SigningKey::from_pem(RSA_PUBLIC).is_err());
        // A verifier with no keys refuses everything.
        let token = issuer()
            .issue(&Identity::user("a"), AUD, &[], t0())
            .expect("issue");
        assert!(TokenVerifier::new(ISS, AUD)
            .verify(token.token.expose(), t0())
            .is_err());
    }
}
