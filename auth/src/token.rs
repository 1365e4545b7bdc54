//! The built-in token service and everything around Bearer/Basic auth:
//!
//! - [`SigningKey`] / [`TokenIssuer`]: signed JWTs as distribution's "Token
//!   Authentication Implementation" defines them (`iss`, `sub`, `aud`, `exp`,
//!   `nbf`, `iat`, `jti`, `access: [{type, name, actions}]`), ES256 only.
//! - [`TokenVerifier`]: checks a token (signature, algorithm, `exp`/`nbf` with
//!   a small leeway, `aud`, `iss`) against our key or an external issuer's
//!   public keys (PEM keys or certificates, or a JWKS), and returns its access.
//! - [`TokenRequest`]: the token endpoint's query (`service`, repeated
//!   `scope`, `account`, `offline_token`, `client_id`), and [`TokenForm`] for
//!   the OAuth2 POST form; [`IssuedToken::response_json`] for the answer.
//! - [`bearer_challenge`] / [`basic_challenge`]: `WWW-Authenticate` values.
//! - [`parse_authorization`]: the `Authorization` header (Basic or Bearer).
//!
//! Why ES256 for what we sign: 64-byte signatures and fast, and the pure-Rust
//! RSA crate has a known timing side channel on private-key operations
//! (RUSTSEC-2023-0071) that does not affect verification — so we verify RS256
//! from external issuers but never sign with RSA.
//!
//! Time is always passed in (`now`), so every check is testable and pure.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};

use crate::acl::Identity;
use crate::scope::{Scope, ScopeError, MAX_SCOPES};

/// Tokens and `Authorization` headers longer than this are refused before any
/// parsing. Ours are well under 2 KiB; external issuers' rarely pass 4 KiB.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Default token lifetime: short, so a leaked token is soon useless; clients
/// ask for a new one on the next 401.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Clock skew tolerated on `exp`/`nbf`/`iat` between issuer and registry.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Longest query string or form body the token endpoint parses.
pub const MAX_QUERY_LEN: usize = 16 * 1024;
/// At most this many `access` entries in a token we verify (external issuers
/// may list more than one request's worth of scopes).
pub const MAX_ACCESS_ENTRIES: usize = 4 * MAX_SCOPES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    /// An ES256 signature of ours whose S is in the upper half: we only
    /// issue low-S signatures, so this is someone's rewrite of one.
    #[error("token signature is not in canonical (low-S) form")]
    HighS,
    /// RFC 7515 §4.1.11: a receiver must refuse a token whose `crit` names
    /// an extension it does not understand, and we understand none.
    #[error("token header names critical extensions (crit) this registry does not understand")]
    Critical,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issued for another service")]
    WrongAudience,
    #[error("token issued by an untrusted issuer")]
    WrongIssuer,
    #[error("token access claim is invalid: {0}")]
    BadAccess(ScopeError),
    #[error("signing key: {0}")]
    Key(String),
}

/// Seconds since the Unix epoch (0 for times before it).
fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A value that must never reach logs: `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---------------------------------------------------------------------------
// Claims

/// One `access` entry of a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessEntry {
    #[serde(rename = "type")]
    resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class: Option<String>,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl From<&Scope> for AccessEntry {
    fn from(scope: &Scope) -> AccessEntry {
        AccessEntry {
            resource_type: scope.resource_type.clone(),
            class: scope.class.clone(),
            name: scope.name.clone(),
            actions: scope
                .actions
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// `aud` may be one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(list) => list.iter().any(|a| a == audience),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    sub: String,
    aud: Audience,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default)]
    access: Vec<AccessEntry>,
}

// ---------------------------------------------------------------------------
// Signing

/// Our ES256 (P-256) signing key.
pub struct SigningKey {
    encoding: EncodingKey,
    /// Uncompressed SEC1 point, what the verifier needs.
    public_point: Vec<u8>,
    public_pem: String,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    fn from_secret(secret: &p256::SecretKey) -> Result<SigningKey, TokenError> {
        let key_err = |e: &dyn fmt::Display| TokenError::Key(e.to_string());
        let der = secret.to_pkcs8_der().map_err(|e| key_err(&e))?;
        let public = secret.public_key();
        let spki = public.to_public_key_der().map_err(|e| key_err(&e))?;
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| key_err(&e))?;
        Ok(SigningKey {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            public_point: public.to_sec1_bytes().into_vec(),
            public_pem,
            kid: libtrust_key_id(spki.as_bytes()),
        })
    }

    /// A new random key and its PKCS#8 PEM (to persist with mode 0600).
    pub fn generate() -> Result<(SigningKey, Secret), TokenError> {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok((SigningKey::from_secret(&secret)?, Secret::new(pem.as_str())))
    }

    /// A P-256 private key in PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    /// writes) or SEC1 (`BEGIN EC PRIVATE KEY`, `openssl ecparam -genkey`).
    pub fn from_pem(pem: &str) -> Result<SigningKey, TokenError> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
            .map_err(|_| {
                TokenError::Key(
                    "not a P-256 private key in PEM (PKCS#8 or SEC1); RSA and other curves are not used for signing".into(),
                )
            })?;
        SigningKey::from_secret(&secret)
    }

    /// Read the key at `path`, or create one there (mode 0600) if there is
    /// none. An existing file that is not a valid key is an error, never
    /// overwritten. Two processes racing to create it both end up with the
    /// same key: the file appears atomically (hard link of a complete temp
    /// file) and the loser reads the winner's.
    ///
    /// Replicas behind one load balancer must share this file (or be given the
    /// same PEM): a token signed by one replica's key fails on the others.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, TokenError> {
        let io = |what: &str, e: std::io::Error| {
            TokenError::Key(format!("{what} {}: {e}", path.display()))
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => return SigningKey::from_pem(&pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading", e)),
        }
        let (key, pem) = SigningKey::generate()?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut suffix = [0u8; 8];
        let _ = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut suffix);
        let temp = dir.join(format!(".berth-key-{}.tmp", crate::hex(&suffix)));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&temp).and_then(|mut file| {
            file.write_all(pem.expose().as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io("writing a key next to", e));
        }
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = std::fs::read_to_string(path).map_err(|e| io("reading", e))?;
                SigningKey::from_pem(&pem)
            }
            Err(e) => Err(io("creating", e)),
        }
    }

    /// The public key (SPKI PEM), for an external registry to trust.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// The key id in the JWT header: libtrust's fingerprint format, which
    /// CNCF distribution computes for the keys it trusts.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// libtrust key id: SHA-256 of the DER public key, first 240 bits, base32,
/// in 12 groups of 4 joined by `:`.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(spki_der);
    let encoded = base32(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32 without padding (the input here is a multiple of 5 bytes).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u64, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

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

/// The signature (third part) of a compact JWS as an ES256 signature, if
/// it is one.
fn es256_signature(token: &str) -> Option<p256::ecdsa::Signature> {
    let encoded = token.rsplit('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    p256::ecdsa::Signature::from_slice(&raw).ok()
}

/// Rewrite a freshly signed ES256 token's signature into low-S form.
/// ECDSA signatures are malleable: (r, s) and (r, n - s) both verify, so
/// anyone could turn one of our tokens into a second, different string that
/// verifies too. p256 signs without normalising (only secp256k1 does), so
/// we do it here, and our verifier then refuses high-S outright: each token
/// we issue has exactly one accepted spelling.
fn low_s(token: String) -> Result<String, TokenError> {
    let signature = es256_signature(&token)
        .ok_or_else(|| TokenError::Key("signing gave no ES256 signature".into()))?;
    let Some(normalised) = signature.normalize_s() else {
        return Ok(token); // already low-S
    };
    let input = token.rsplit_once('.').map_or("", |(input, _)| input);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(normalised.to_bytes());
    Ok(format!("{input}.{encoded}"))
}

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

// ---------------------------------------------------------------------------
// Verification

struct TrustedKey {
    key: DecodingKey,
    /// Only these algorithms are tried with this key: a public key can never
    /// be used as an HMAC secret (the classic RS256→HS256 confusion attack).
    algorithms: Vec<Algorithm>,
    kid: Option<String>,
    /// Our own key: only low-S signatures (what we issue) are accepted. An
    /// external issuer's keys accept both forms, because common signers (Go's
    /// crypto/ecdsa, OpenSSL) do not normalise, so about half of an external
    /// service's valid tokens are high-S; refusing them would refuse valid
    /// logins, and nothing here depends on a token having one spelling (the
    /// verified-token cache only saves work).
    low_s_only: bool,
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
    keys: Vec<TrustedKey>,
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

/// RFC 3339 in UTC (`2026-01-02T03:04:05Z`) from Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar),
    // counting 400-year eras that start on March 1st.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// The token endpoint's request

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request too long")]
    TooLong,
    #[error("invalid percent-encoding or UTF-8 in {0:?}")]
    Encoding(String),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("{0}")]
    Invalid(String),
}

/// Split `a=1&b=2` into decoded pairs (`+` is a space, as in forms).
fn form_pairs(input: &str) -> Result<Vec<(String, String)>, RequestError> {
    if input.len() > MAX_QUERY_LEN {
        return Err(RequestError::TooLong);
    }
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value).map_err(|_| RequestError::Encoding(key.clone()))?;
            Ok((key, value))
        })
        .collect()
}

fn percent_decode(input: &str) -> Result<String, RequestError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| RequestError::Encoding(String::new()))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RequestError::Encoding(String::new()))
}

/// Names we put in tokens and logs: no control characters, bounded.
fn check_name(what: &str, value: &str) -> Result<(), RequestError> {
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(RequestError::Invalid(format!(
            "{what} is too long or contains control characters"
        )));
    }
    Ok(())
}

/// `GET /token?service=...&scope=...&scope=...&account=...&offline_token=true&client_id=...`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<Scope>,
    /// The user the client says it is; must match the Basic credentials
    /// when both are given (distribution's token servers check that too).
    pub account: Option<String>,
    /// The client wants a refresh token too (`docker login`). We do not issue
    /// refresh tokens yet, so clients keep using the password.
    pub offline_token: bool,
    pub client_id: Option<String>,
}

impl TokenRequest {
    /// Parse the query string (without `?`). Repeated `scope` accumulate,
    /// and each may hold several space-separated scopes; for other keys the
    /// first value counts. Unknown keys are ignored.
    pub fn parse_query(query: &str) -> Result<TokenRequest, RequestError> {
        let mut request = TokenRequest::default();
        let mut scope_values = Vec::new();
        for (key, value) in form_pairs(query)? {
            match key.as_str() {
                "scope" => scope_values.push(value),
                "service" if request.service.is_none() => {
                    check_name("service", &value)?;
                    request.service = Some(value);
                }
                "account" if request.account.is_none() => {
                    check_name("account", &value)?;
                    request.account = Some(value);
                }
                "client_id" if request.client_id.is_none() => {
                    check_name("client_id", &value)?;
                    request.client_id = Some(value);
                }
                "offline_token" => request.offline_token = value == "true",
                _ => {}
            }
        }
        request.scopes = crate::scope::parse_scopes(&scope_values)?;
        Ok(request)
    }
}

/// `POST /token` (OAuth2 form, `application/x-www-form-urlencoded`), as
/// clients with an identity token or `--password-stdin` OAuth flows send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenForm {
    pub grant_type: String,
    pub service: Option<String>,
    pub client_id: Option<String>,
    /// `access_type=offline`: a refresh token is wanted.
    pub offline: bool,
    pub scopes: Vec<Scope>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub refresh_token: Option<Secret>,
}

impl TokenForm {
    pub fn parse(body: &str) -> Result<TokenForm, RequestError> {
        let mut form = TokenForm::default();
        let mut scope_values = Vec::new();
        for (key, value) in form_pairs(body)? {
            match key.as_str() {
                "grant_type" if form.grant_type.is_empty() => form.grant_type = value,
                "service" if form.service.is_none() => {
                    check_name("service", &value)?;
                    form.service = Some(value);
                }
                "client_id" if form.client_id.is_none() => {
                    check_name("client_id", &value)?;
                    form.client_id = Some(value);
                }
                "access_type" => form.offline = value == "offline",
                "scope" => scope_values.push(value),
                "username" if form.username.is_none() => {
                    check_name("username", &value)?;
                    form.username = Some(value);
                }
                "password" if form.password.is_none() => form.password = Some(Secret(value)),
                "refresh_token" if form.refresh_token.is_none() => {
                    form.refresh_token = Some(Secret(value))
                }
                _ => {}
            }
        }
        match form.grant_type.as_str() {
            "password" if form.username.is_some() && form.password.is_some() => {}
            "password" => {
                return Err(RequestError::Invalid(
                    "grant_type=password needs username and password".into(),
                ))
            }
            "refresh_token" if form.refresh_token.is_some() => {}
            "refresh_token" => {
                return Err(RequestError::Invalid(
                    "grant_type=refresh_token needs refresh_token".into(),
                ))
            }
            other => {
                return Err(RequestError::Invalid(format!(
                    "unsupported grant_type {:?}",
                    other.chars().take(32).collect::<String>()
                )))
            }
        }
        form.scopes = crate::scope::parse_scopes(&scope_values)?;
        Ok(form)
    }
}

// ---------------------------------------------------------------------------
// Challenges and the Authorization header

/// A quoted-string for a header parameter: `"` and `\` escaped; control
/// characters (CR/LF would split the header) dropped.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `Bearer realm="...",service="...",scope="..."` and, when a valid token
/// lacked what the request needs, `error="insufficient_scope"` (RFC 6750).
/// Several scopes go space-separated in one `scope`, as distribution does.
pub fn bearer_challenge(
    realm: &str,
    service: &str,
    scopes: &[Scope],
    insufficient_scope: bool,
) -> String {
    let mut value = format!("Bearer realm={},service={}", quoted(realm), quoted(service));
    if !scopes.is_empty() {
        value.push_str(",scope=");
        value.push_str(&quoted(&crate::scope::to_scope_string(scopes)));
    }
    if insufficient_scope {
        value.push_str(",error=\"insufficient_scope\"");
    }
    value
}

/// `Basic realm="..."`, for registries that take htpasswd logins directly.
pub fn basic_challenge(realm: &str) -> String {
    format!("Basic realm={}", quoted(realm))
}

/// What an `Authorization` header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error("Authorization header too long")]
    TooLong,
    #[error("unsupported Authorization scheme (use Basic or Bearer)")]
    Scheme,
    #[error("Basic credentials are not valid base64 of user:password")]
    Basic,
    #[error("empty Bearer token")]
    Bearer,
}

/// Parse an `Authorization` header value. The scheme is case-insensitive.
/// Basic is base64 of `user:password` (the password may contain `:`; the
/// user may not). Nothing from the header is echoed in errors.
pub fn parse_authorization(value: &str) -> Result<Credentials, AuthHeaderError> {
    if value.len() > MAX_TOKEN_LEN {
        return Err(AuthHeaderError::TooLong);
    }
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(AuthHeaderError::Scheme)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine
            .decode(rest)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
            .map_err(|_| AuthHeaderError::Basic)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthHeaderError::Basic)?;
        let (user, password) = text.split_once(':').ok_or(AuthHeaderError::Basic)?;
        if user.is_empty() || user.chars().any(char::is_control) {
            return Err(AuthHeaderError::Basic);
        }
        Ok(Credentials::Basic {
            user: user.to_string(),
            password: Secret(password.to_string()),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(AuthHeaderError::Bearer);
        }
        Ok(Credentials::Bearer(Secret(rest.to_string())))
    } else {
        Err(AuthHeaderError::Scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{parse_scopes, to_scope_string, Actions};

    const RSA_PRIVATE: &str = include_str!("../testdata/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../testdata/rsa-public.pem");
    const EC_SEC1_PRIVATE: &str = include_str!("../testdata/ec-sec1-private.pem");
    const EC_CERT: &str = include_str!("../testdata/ec-cert.pem");

    const ISS: &str = "berth-token";
    const AUD: &str = "registry.example.com";

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn issuer() -> TokenIssuer {
        let (key, _) = SigningKey::generate().expect("key");
        TokenIssuer::new(key, ISS)
    }

    fn scopes(s: &[&str]) -> Vec<Scope> {
        parse_scopes(s).expect("scopes")
    }

    fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn part(token: &str, index: usize) -> serde_json::Value {
        let part = token.split('.').nth(index).expect("part");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("b64");
        serde_json::from_slice(&bytes).expect("json")
    }

    /// Sign arbitrary claims with a key, for tokens our issuer would never make.
    fn sign_raw(key: &SigningKey, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid().to_string());
        low_s(jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")).expect("low-S")
    }

    fn claims_at(now: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": ISS, "sub": "alice", "aud": AUD,
            "exp": now + 300, "nbf": now, "iat": now,
            "access": [{"type": "repository", "name": "a", "actions": ["pull"]}],
        })
    }

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

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.key");
        let first = SigningKey::load_or_generate(&path).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = SigningKey::load_or_generate(&path).expect("load");
        assert_eq!(first.kid(), second.kid());
        // Only the key file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        // A broken key file is an error and is never replaced.
        std::fs::write(&path, "not a key").expect("write");
        assert!(SigningKey::load_or_generate(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not a key");
        assert!(SigningKey::load_or_generate(&dir.path().join("missing/dir/key")).is_err());
    }

    #[test]
    fn key_ids_and_secrets_stay_hidden() {
        let (key, pem) = SigningKey::generate().expect("key");
        assert!(pem.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(
            SigningKey::from_pem(pem.expose()).expect("reload").kid(),
            key.kid()
        );
        // libtrust format: 12 groups of 4 base32 characters.
        let groups: Vec<&str> = key.kid().split(':').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 4
            && g.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))));
        assert!(!format!("{key:?}").contains("PRIVATE"));
        assert_eq!(format!("{pem:?}"), "<redacted>");
        assert_eq!(format!("{pem}"), "<redacted>");
        let issued = TokenIssuer::new(key, ISS)
            .issue(&Identity::Anonymous, AUD, &[], t0())
            .expect("issue");
        assert!(!format!("{issued:?}").contains(issued.token.expose()));
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
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
    }

    #[test]
    fn parses_token_queries() {
        let q = "account=alice&client_id=docker&offline_token=true&service=registry.example.com\
                 &scope=repository%3Asamalba%2Fmy-app%3Apull%2Cpush&scope=repository:b:pull+registry:catalog:*";
        let request = TokenRequest::parse_query(q).expect("parse");
        assert_eq!(request.account.as_deref(), Some("alice"));
        assert_eq!(request.client_id.as_deref(), Some("docker"));
        assert_eq!(request.service.as_deref(), Some("registry.example.com"));
        assert!(request.offline_token);
        assert_eq!(
            to_scope_string(&request.scopes),
            "repository:samalba/my-app:pull,push repository:b:pull registry:catalog:*"
        );
        let request =
            TokenRequest::parse_query("service=a&service=b&offline_token=1&x=y").expect("parse");
        assert_eq!(request.service.as_deref(), Some("a"), "first value counts");
        assert!(!request.offline_token);
        assert_eq!(
            TokenRequest::parse_query("").expect("empty"),
            TokenRequest::default()
        );
        for bad in [
            "scope=repository:../x:pull",
            "scope=%zz",
            "scope=%e9",
            "scope=%",
            "scope=%4",
            "account=al%0Aice",
            "service=%00",
        ] {
            assert!(TokenRequest::parse_query(bad).is_err(), "{bad}");
        }
        let many = (0..40)
            .map(|i| format!("scope=repository:r{i}:pull"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            TokenRequest::parse_query(&many),
            Err(RequestError::Scope(ScopeError::TooMany))
        );
        let huge = format!("scope={}", "a".repeat(MAX_QUERY_LEN));
        assert_eq!(TokenRequest::parse_query(&huge), Err(RequestError::TooLong));
    }

    #[test]
    fn parses_oauth_forms() {
        let form = TokenForm::parse(
            "grant_type=password&username=alice&password=p%40ss%3Aword&service=reg&client_id=podman&access_type=offline&scope=repository%3Aa%3Apull+repository%3Ab%3Apush",
        )
        .expect("form");
        assert_eq!(form.username.as_deref(), Some("alice"));
        assert_eq!(
            form.password.as_ref().map(Secret::expose),
            Some("p@ss:word")
        );
        assert!(form.offline);
        assert_eq!(
            to_scope_string(&form.scopes),
            "repository:a:pull repository:b:push"
        );
        assert!(!format!("{form:?}").contains("p@ss"), "password redacted");
        let form = TokenForm::parse("grant_type=refresh_token&refresh_token=r1&service=reg")
            .expect("form");
        assert_eq!(form.refresh_token.as_ref().map(Secret::expose), Some("r1"));
        assert!(!format!("{form:?}").contains("r1"));
        for bad in [
            "grant_type=password&username=a",
            "grant_type=refresh_token",
            "grant_type=client_credentials",
            "",
            "grant_type=password&username=a&password=b&scope=bad",
        ] {
            assert!(TokenForm::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_challenges() {
        let scopes = scopes(&["repository:team/app:pull,push", "repository:src:pull"]);
        assert_eq!(
            bearer_challenge(
                "https://reg.example.com/token",
                "reg.example.com",
                &scopes,
                false
            ),
            r#"Bearer realm="https://reg.example.com/token",service="reg.example.com",scope="repository:team/app:pull,push repository:src:pull""#
        );
        assert_eq!(
            bearer_challenge("https://r/token", "r", &scopes[..1], true),
            r#"Bearer realm="https://r/token",service="r",scope="repository:team/app:pull,push",error="insufficient_scope""#
        );
        assert_eq!(
            bearer_challenge("https://r/token", "r", &[], false),
            r#"Bearer realm="https://r/token",service="r""#
        );
        // Quotes escaped; CR/LF can never split the header.
        let nasty = bearer_challenge("a\"b\\c\r\nSet-Cookie: x", "s", &[], false);
        assert_eq!(nasty, r#"Bearer realm="a\"b\\cSet-Cookie: x",service="s""#);
        assert!(!nasty.contains('\n') && !nasty.contains('\r'));
        assert_eq!(basic_challenge("Berth"), r#"Basic realm="Berth""#);
    }

    #[test]
    fn parses_authorization_headers() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let basic = |user: &str, password: &str| Credentials::Basic {
            user: user.into(),
            password: Secret::new(password),
        };
        assert_eq!(
            parse_authorization(&format!("Basic {}", b64("alice:wonder"))),
            Ok(basic("alice", "wonder"))
        );
        assert_eq!(
            parse_authorization(&format!("basic  {} ", b64("a:b:c"))),
            Ok(basic("a", "b:c"))
        );
        assert_eq!(
            parse_authorization(&format!("BASIC {}", b64("a:"))),
            Ok(basic("a", ""))
        );
        let unpadded = b64("alice:wonderland!").trim_end_matches('=').to_string();
        assert_eq!(
            parse_authorization(&format!("Basic {unpadded}")),
            Ok(basic("alice", "wonderland!"))
        );
        assert_eq!(
            parse_authorization("Bearer abc.def.ghi"),
            Ok(Credentials::Bearer(Secret::new("abc.def.ghi")))
        );
        for (bad, err) in [
            (format!("Basic {}", b64("no-colon")), AuthHeaderError::Basic),
            (format!("Basic {}", b64(":pw")), AuthHeaderError::Basic),
            (format!("Basic {}", b64("a\nb:pw")), AuthHeaderError::Basic),
            ("Basic !!!notbase64".to_string(), AuthHeaderError::Basic),
            (
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode([0xff, b':', 0xfe])
                ),
                AuthHeaderError::Basic,
            ),
            ("Basic".to_string(), AuthHeaderError::Scheme),
            ("Bearer ".to_string(), AuthHeaderError::Scheme),
            ("Bearer a b".to_string(), AuthHeaderError::Bearer),
            ("Digest username=x".to_string(), AuthHeaderError::Scheme),
            ("".to_string(), AuthHeaderError::Scheme),
            (
                format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN)),
                AuthHeaderError::TooLong,
            ),
        ] {
            assert_eq!(parse_authorization(&bad), Err(err), "{bad:?}");
        }
        let shown = format!(
            "{:?}",
            parse_authorization(&format!("Basic {}", b64("u:hunter2")))
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", parse_authorization("Bearer s3cr3t"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
