//! Our ES256 signing key: generated, read from PEM or from a key file made
//! once (atomically, mode 0600), and its libtrust key id.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use jsonwebtoken::EncodingKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};

use super::{Secret, TokenError};

/// Our ES256 (P-256) signing key.
pub struct SigningKey {
    pub(super) encoding: EncodingKey,
    /// Uncompressed SEC1 point, what the verifier needs.
    pub(super) public_point: Vec<u8>,
    public_pem: String,
    pub(super) kid: String,
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

/// The signature (third part) of a compact JWS as an ES256 signature, if
/// it is one.
pub(super) fn es256_signature(token: &str) -> Option<p256::ecdsa::Signature> {
    let encoded = token.rsplit('.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    p256::ecdsa::Signature::from_slice(&raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::Identity;
    use crate::token::test_support::*;
    use crate::token::TokenIssuer;

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
}
