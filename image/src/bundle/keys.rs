//! Ed25519 keys: the signing key as a PKCS#8 PEM file (`openssl genpkey -algorithm
//! ed25519` writes the same kind), public keys as 32 raw bytes in base64 or as SPKI PEM.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{BundleError, Result};

fn key_error(file: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Key {
        file: file.to_string(),
        reason: reason.into(),
    }
}

/// Creates a new random signing key and writes it to `path` as a PKCS#8 PEM file
/// (`-----BEGIN PRIVATE KEY-----`, mode 0600, fsynced). Refuses to overwrite an existing
/// file. Returns the key; its public half is `key.verifying_key()`.
pub fn generate_signing_key(path: &Path) -> Result<SigningKey> {
    let file = path.display().to_string();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| key_error(&file, format!("no randomness for a new key: {e}")))?;
    let key = SigningKey::from_bytes(&secret);
    secret.fill(0);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| key_error(&file, format!("cannot encode the key as PKCS#8: {e}")))?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BundleError::io(&file, 0, e))?;
    out.write_all(pem.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| BundleError::io(&file, 0, e))?;
    Ok(key)
}

/// Reads a PKCS#8 PEM Ed25519 private key (v1 as OpenSSL writes it, or v2 with the public
/// key, which must then match).
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let file = path.display().to_string();
    let pem = fs::read_to_string(path).map_err(|e| BundleError::io(&file, 0, e))?;
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
        key_error(
            &file,
            format!("not a PKCS#8 PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----): {e}"),
        )
    })
}

/// Parses a public key: 32 raw bytes in base64, or an SPKI PEM block
/// (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes).
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey> {
    parse_verifying_key_named(text, "<public key>")
}

fn parse_verifying_key_named(text: &str, file: &str) -> Result<VerifyingKey> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| key_error(file, format!("not an SPKI PEM Ed25519 public key: {e}")));
    }
    let raw = STANDARD
        .decode(text)
        .map_err(|e| key_error(file, format!("public key is neither PEM nor base64: {e}")))?;
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        key_error(
            file,
            format!("base64 public key has {} bytes, expected 32", raw.len()),
        )
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| key_error(file, format!("not a valid Ed25519 public key: {e}")))
}

/// Reads a public key file in either form of [`parse_verifying_key`].
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let file = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| BundleError::io(&file, 0, e))?;
    parse_verifying_key_named(&text, &file)
}

/// The public key as base64 of its 32 raw bytes.
pub fn verifying_key_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// The public key as an SPKI PEM block.
pub fn verifying_key_pem(key: &VerifyingKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| key_error("<public key>", format!("cannot encode as SPKI PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_public_forms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("signing.pem");
        let key = generate_signing_key(&path).expect("generate");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        let mode = fs::metadata(&path).expect("meta");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert_eq!(
            load_signing_key(&path).expect("load").to_bytes(),
            key.to_bytes()
        );
        assert!(generate_signing_key(&path).is_err(), "must not overwrite");
        let public = key.verifying_key();
        let b64 = verifying_key_base64(&public);
        assert_eq!(parse_verifying_key(&b64).expect("base64"), public);
        let pem = verifying_key_pem(&public).expect("pem");
        assert_eq!(parse_verifying_key(&pem).expect("pem"), public);
        let err = parse_verifying_key("AAAA").expect_err("short");
        assert!(err.to_string().contains("expected 32"), "{err}");
    }
}
