//! Signing bearer tokens for automation: Ed25519 keys and EdDSA JWTs (JWS compact).
//!
//! The node trusts a token key by its id (`kid`) and raw public key (base64) in the machine
//! configuration (`api.tokenKeys`). A token names its audience (machine id or cluster id),
//! expiry and scopes: `role:admin|operator|reader` or `rpc:/pkg.Service/Method`. A token
//! travels with a client certificate and narrows it: a call may do what both the
//! certificate's role and the token's scopes allow, never more.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

/// A failed token operation.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key could not be generated or read.
    #[error("token key: {0}")]
    Key(String),
}

/// An Ed25519 token signing key.
pub struct TokenKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A new random key.
    pub fn generate() -> Result<Self, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| TokenError::Key(e.to_string()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key from its PKCS#8 DER encoding.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| TokenError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self {
            pkcs8: der.to_vec(),
            pair,
        })
    }

    /// A key from PEM (`PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, TokenError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// The key as PEM (`PRIVATE KEY`, PKCS#8).
    pub fn to_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The raw 32-byte public key, base64: what `api.tokenKeys[].publicKey` holds.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// Signs `header` and `payload` (JSON texts) as a JWS compact token. Any header is
    /// signed as given, so tests can build tokens a node must refuse.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = self.pair.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// A token with key id `kid` for `audience`, granting `scopes`, valid from `iat` to `exp`
    /// (Unix seconds; a node refuses a lifetime beyond its `api.tokenPolicy`), with id `jti`.
    pub fn sign(
        &self,
        kid: &str,
        audience: &[String],
        scopes: &[String],
        (iat, exp): (u64, u64),
        jti: &str,
    ) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let payload = serde_json::json!({
            "aud": audience,
            "iat": iat,
            "exp": exp,
            "jti": jti,
            "scope": scopes.join(" "),
        });
        self.sign_raw(&header.to_string(), &payload.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_token_shape() {
        let k = TokenKey::generate().unwrap();
        let back = TokenKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(back.public_key_base64(), k.public_key_base64());
        let t = k.sign(
            "ci",
            &["node-1".into()],
            &["role:reader".into()],
            (40, 42),
            "j1",
        );
        assert_eq!(t.split('.').count(), 3);
        let payload = URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["scope"], "role:reader");
        assert_eq!((v["iat"].as_u64(), v["exp"].as_u64()), (Some(40), Some(42)));
        assert_eq!(STANDARD.decode(k.public_key_base64()).unwrap().len(), 32);
    }
}
