//! Bearer tokens for automation: JWS compact serialization (JWT) signed with EdDSA
//! (Ed25519), verified against keys trusted in the machine configuration.
//!
//! A client sends `authorization: Bearer <token>`. The token is accepted only when:
//!
//! - the header's `alg` is exactly `EdDSA` (so `none`, `HS256` and every other algorithm
//!   are refused before any key is looked at) and it has no `crit` parameter;
//! - its `kid` names a trusted key and the Ed25519 signature over `header.payload` verifies
//!   with that key (ring's verifier, which rejects non-canonical signatures);
//! - the claims have `exp` (required) not in the past, `nbf` (optional) not in the future,
//!   `iat` (required) not in the future (all with [`LEEWAY_SECS`] of clock skew), a
//!   lifetime (`exp - iat`) no longer than the configured maximum
//!   (`api.tokenPolicy.maxLifetimeSeconds`), an `aud` (string or list) naming this
//!   machine's id or its cluster id, and an id (`jti`, else the token's hash id) not in the
//!   configured revocation list (`api.tokenPolicy.revokedIds`);
//! - only then are the `scope` entries read (a space-separated string or a list):
//!   `role:admin|operator|reader` grants what that role may do, `rpc:/pkg.Service/Method`
//!   grants that one RPC. Unknown scope entries are ignored.
//!
//! Why not the `jsonwebtoken` crate: its pure-Rust backend brings RSA, P-256/384 and HMAC
//! implementations for algorithms a node must refuse anyway, and a general-purpose JWT
//! library makes "which algorithms are accepted" a configuration question. This module
//! accepts exactly one algorithm, is ~200 lines, and uses `ring`, already linked for TLS.
//!
//! Limits: tokens are checked against the node's clock, which before its first time sync
//! may be behind; revocation is by a list in the configuration, so it reaches a node with
//! the next configuration applied to it.

use crate::api::authz::Role;
use crate::settings::{TokenLimits, TrustedTokenKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or a part is not the JSON it should be.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA.
    #[error("token algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// The header has a `crit` parameter this verifier does not understand.
    #[error("token header has critical parameters {0:?}")]
    Critical(Vec<String>),
    /// No trusted key has the token's `kid`.
    #[error("token key id {0:?} is not trusted by this machine")]
    UnknownKey(String),
    /// The signature does not verify with the key named by `kid`.
    #[error("token signature does not verify with key {0:?}")]
    BadSignature(String),
    /// The token has no `exp` claim.
    #[error("token has no exp (expiry) claim")]
    MissingExpiry,
    /// The token expired.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The `exp` claim.
        exp: u64,
        /// The current time.
        now: u64,
    },
    /// The token is not valid yet.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: u64,
        /// The current time.
        now: u64,
    },
    /// The token has no `iat` claim.
    #[error("token has no iat (issued at) claim: its lifetime cannot be bounded")]
    MissingIssuedAt,
    /// The token says it was issued in the future.
    #[error("token issued at {iat}, after now ({now})")]
    IssuedInFuture {
        /// The `iat` claim.
        iat: u64,
        /// The current time.
        now: u64,
    },
    /// The token was issued for longer than the configured maximum.
    #[error(
        "token lifetime {lifetime} s is longer than the {max} s this node accepts (api.tokenPolicy.maxLifetimeSeconds)"
    )]
    TooLong {
        /// `exp - iat`.
        lifetime: u64,
        /// The maximum.
        max: u64,
    },
    /// The token's id is revoked in the configuration.
    #[error("token {0} is revoked (api.tokenPolicy.revokedIds)")]
    Revoked(String),
    /// The audience is not one this key's tokens may carry (the key's configured audience,
    /// or else this machine's or its cluster's id).
    #[error("token audience {got:?} is not accepted here (want one of {want:?})")]
    Audience {
        /// The token's audiences.
        got: Vec<String>,
        /// The accepted audiences.
        want: Vec<String>,
    },
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything the role may do (`role:operator`).
    Role(Role),
    /// One RPC by full method path (`rpc:/basalt.machine.v1.MachineService/Version`).
    Rpc(String),
}

impl Scope {
    /// Parses one scope entry; `None` for an entry this version does not know.
    pub fn parse(entry: &str) -> Option<Scope> {
        if let Some(role) = entry.strip_prefix("role:") {
            return Role::from_name(role).map(Scope::Role);
        }
        entry
            .strip_prefix("rpc:")
            .filter(|p| p.starts_with('/'))
            .map(|p| Scope::Rpc(p.to_string()))
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Its id: `jti` when present, else a hash of the token.
    pub id: String,
    /// The key that signed it.
    pub key_id: String,
    /// Its `sub` claim, if any.
    pub subject: Option<String>,
    /// What it grants.
    pub scopes: Vec<Scope>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self, split: bool) -> Vec<String> {
        match self {
            OneOrMany::One(s) if split => s.split_whitespace().map(str::to_string).collect(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    aud: Option<OneOrMany>,
    scope: Option<OneOrMany>,
    jti: Option<String>,
    sub: Option<String>,
}

/// A short id for a token that is not (or not yet) verified: `sha256:` and 16 hex digits.
pub fn token_hash_id(token: &str) -> String {
    let hex = crate::api::tls::sha256_hex(token.as_bytes());
    format!("sha256:{}", &hex[..16])
}

fn part<T: serde::de::DeserializeOwned>(b64: &str, what: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("{what} is not valid JSON: {e}")))
}

/// Verifies tokens against a machine's trusted keys and audiences.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: Vec<TrustedTokenKey>,
    audiences: Vec<String>,
    limits: TokenLimits,
}

impl TokenVerifier {
    /// A verifier trusting `keys`, accepting tokens addressed to any of `audiences`, within
    /// `limits`.
    pub fn new(keys: Vec<TrustedTokenKey>, audiences: Vec<String>, limits: TokenLimits) -> Self {
        Self {
            keys,
            audiences,
            limits,
        }
    }

    /// Checks `token` at time `now` (Unix seconds). See the module docs for the rules.
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "{} bytes, at most {MAX_TOKEN_BYTES} accepted",
                token.len()
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, claims_b64, sig_b64] = parts[..] else {
            return Err(TokenError::Malformed(format!(
                "{} parts, want 3 (header.payload.signature)",
                parts.len()
            )));
        };
        let header: Header = part(header_b64, "header")?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg));
        }
        if let Some(crit) = header.crit {
            return Err(TokenError::Critical(crit));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("header has no kid".into()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|e| TokenError::Malformed(format!("signature is not base64url: {e}")))?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.public_key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature(kid.clone()))?;
        // Only claims of a token whose signature verified are looked at.
        let claims: Claims = part(claims_b64, "payload")?;
        let exp = claims.exp.ok_or(TokenError::MissingExpiry)?;
        if now > exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired { exp, now });
        }
        if let Some(nbf) = claims.nbf
            && now.saturating_add(LEEWAY_SECS) < nbf
        {
            return Err(TokenError::NotYetValid { nbf, now });
        }
        let iat = claims.iat.ok_or(TokenError::MissingIssuedAt)?;
        if now.saturating_add(LEEWAY_SECS) < iat {
            return Err(TokenError::IssuedInFuture { iat, now });
        }
        let lifetime = exp.saturating_sub(iat);
        if lifetime > self.limits.max_lifetime_secs {
            return Err(TokenError::TooLong {
                lifetime,
                max: self.limits.max_lifetime_secs,
            });
        }
        let aud = claims.aud.map(|a| a.into_vec(false)).unwrap_or_default();
        // A key bound to an audience in the config accepts only that audience; otherwise the
        // machine's and cluster's ids.
        let want = match &key.audience {
            Some(audience) => std::slice::from_ref(audience),
            None => self.audiences.as_slice(),
        };
        if !aud.iter().any(|a| want.contains(a)) {
            return Err(TokenError::Audience {
                got: aud,
                want: want.to_vec(),
            });
        }
        let scopes = claims
            .scope
            .map(|s| s.into_vec(true))
            .unwrap_or_default()
            .iter()
            .filter_map(|s| Scope::parse(s))
            .collect();
        let hash_id = token_hash_id(token);
        let id = claims
            .jti
            .filter(|j| !j.is_empty())
            .unwrap_or_else(|| hash_id.clone());
        // Either id revokes it: the jti, or the hash id a refused call is audited with.
        for revoked in [&id, &hash_id] {
            if self.limits.revoked.contains(revoked) {
                return Err(TokenError::Revoked(revoked.clone()));
            }
        }
        Ok(VerifiedToken {
            id,
            key_id: kid,
            subject: claims.sub,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn sign(kp: &Ed25519KeyPair, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = kp.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn verifier() -> TokenVerifier {
        let public_key: [u8; 32] = key(1).public_key().as_ref().try_into().unwrap();
        TokenVerifier::new(
            vec![
                TrustedTokenKey {
                    id: "ci".into(),
                    public_key,
                    audience: None,
                },
                TrustedTokenKey {
                    id: "fleet".into(),
                    public_key,
                    audience: Some("fleet-7".into()),
                },
            ],
            vec!["node-1".into(), "lab".into()],
            TokenLimits {
                max_lifetime_secs: 3600,
                revoked: ["gone".to_string()].into(),
            },
        )
    }

    const HEADER: &str = r#"{"alg":"EdDSA","kid":"ci","typ":"JWT"}"#;

    fn claims(exp: u64, aud: &str) -> String {
        format!(
            r#"{{"exp":{exp},"iat":{},"aud":{aud},"jti":"t1","scope":"role:operator rpc:/a.B/C bogus"}}"#,
            NOW - 60
        )
    }

    #[test]
    fn valid_token_yields_scopes() {
        let t = sign(&key(1), HEADER, &claims(NOW + 60, r#""node-1""#));
        let v = verifier().verify(&t, NOW).unwrap();
        assert_eq!(v.id, "t1");
        assert_eq!(
            v.scopes,
            vec![Scope::Role(Role::Operator), Scope::Rpc("/a.B/C".into())]
        );
        // The cluster id is an accepted audience too, also inside a list.
        let t = sign(&key(1), HEADER, &claims(NOW + 60, r#"["other","lab"]"#));
        assert!(verifier().verify(&t, NOW).is_ok());
    }

    #[test]
    fn refusals() {
        let v = verifier();
        let good_claims = claims(NOW + 60, r#""node-1""#);
        let expired = sign(&key(1), HEADER, &claims(NOW - 3600, r#""node-1""#));
        assert!(matches!(
            v.verify(&expired, NOW),
            Err(TokenError::Expired { .. })
        ));
        let wrong_key = sign(&key(2), HEADER, &good_claims);
        assert!(matches!(
            v.verify(&wrong_key, NOW),
            Err(TokenError::BadSignature(_))
        ));
        let unknown_kid = sign(&key(1), r#"{"alg":"EdDSA","kid":"x"}"#, &good_claims);
        assert!(matches!(
            v.verify(&unknown_kid, NOW),
            Err(TokenError::UnknownKey(_))
        ));
        let wrong_aud = sign(&key(1), HEADER, &claims(NOW + 60, r#""node-2""#));
        assert!(matches!(
            v.verify(&wrong_aud, NOW),
            Err(TokenError::Audience { .. })
        ));
        // A key bound to an audience accepts only it, not the machine's id.
        let fleet = r#"{"alg":"EdDSA","kid":"fleet"}"#;
        let bound = sign(&key(1), fleet, &claims(NOW + 60, r#""fleet-7""#));
        assert!(v.verify(&bound, NOW).is_ok());
        let machine_aud = sign(&key(1), fleet, &claims(NOW + 60, r#""node-1""#));
        assert!(matches!(
            v.verify(&machine_aud, NOW),
            Err(TokenError::Audience { .. })
        ));
        let no_exp = sign(&key(1), HEADER, r#"{"aud":"node-1","scope":"role:admin"}"#);
        assert_eq!(v.verify(&no_exp, NOW), Err(TokenError::MissingExpiry));
        let crit = sign(
            &key(1),
            r#"{"alg":"EdDSA","kid":"ci","crit":["b64"]}"#,
            &good_claims,
        );
        assert!(matches!(v.verify(&crit, NOW), Err(TokenError::Critical(_))));
        let not_yet = sign(
            &key(1),
            HEADER,
            &format!(
                r#"{{"exp":{},"nbf":{},"iat":{},"aud":"node-1"}}"#,
                NOW + 3000,
                NOW + 2000,
                NOW - 10
            ),
        );
        assert!(matches!(
            v.verify(&not_yet, NOW),
            Err(TokenError::NotYetValid { .. })
        ));
    }

    #[test]
    fn issue_time_lifetime_and_revocation() {
        let v = verifier();
        let token = |iat: Option<u64>, exp: u64, jti: &str| {
            let iat = iat.map(|i| format!(r#""iat":{i},"#)).unwrap_or_default();
            sign(
                &key(1),
                HEADER,
                &format!(r#"{{"exp":{exp},{iat}"aud":"node-1","jti":"{jti}"}}"#),
            )
        };
        assert_eq!(
            v.verify(&token(None, NOW + 60, "a"), NOW),
            Err(TokenError::MissingIssuedAt)
        );
        assert_eq!(
            v.verify(&token(Some(NOW + 600), NOW + 900, "a"), NOW),
            Err(TokenError::IssuedInFuture {
                iat: NOW + 600,
                now: NOW
            })
        );
        assert!(v.verify(&token(Some(NOW + 20), NOW + 60, "a"), NOW).is_ok());
        assert!(
            v.verify(&token(Some(NOW - 100), NOW + 3500, "a"), NOW)
                .is_ok()
        );
        let e = v
            .verify(&token(Some(NOW - 100), NOW + 3501, "a"), NOW)
            .unwrap_err();
        assert_eq!(
            e,
            TokenError::TooLong {
                lifetime: 3601,
                max: 3600
            }
        );
        assert!(e.to_string().contains("api.tokenPolicy.maxLifetimeSeconds"));
        assert_eq!(
            v.verify(&token(Some(NOW - 10), NOW + 60, "gone"), NOW),
            Err(TokenError::Revoked("gone".into()))
        );
        // A token with a jti is revoked by its hash id too.
        let named = token(Some(NOW - 10), NOW + 60, "kept");
        let by_hash = TokenVerifier::new(
            v.keys.clone(),
            v.audiences.clone(),
            TokenLimits {
                max_lifetime_secs: 3600,
                revoked: [token_hash_id(&named)].into(),
            },
        );
        assert_eq!(
            by_hash.verify(&named, NOW),
            Err(TokenError::Revoked(token_hash_id(&named)))
        );
        // Without a jti the hash id the audit log shows is what a revocation names.
        let anonymous = sign(
            &key(1),
            HEADER,
            &format!(r#"{{"exp":{},"iat":{},"aud":"node-1"}}"#, NOW + 60, NOW),
        );
        let id = token_hash_id(&anonymous);
        assert_eq!(v.verify(&anonymous, NOW).unwrap().id, id);
        let revoking = TokenVerifier::new(
            v.keys.clone(),
            v.audiences.clone(),
            TokenLimits {
                max_lifetime_secs: 3600,
                revoked: [id.clone()].into(),
            },
        );
        assert_eq!(
            revoking.verify(&anonymous, NOW),
            Err(TokenError::Revoked(id))
        );
    }

    #[test]
    fn alg_none_and_hs256_are_refused_before_any_key_lookup() {
        let v = verifier();
        let claims = URL_SAFE_NO_PAD.encode(claims(NOW + 60, r#""node-1""#));
        for alg in ["none", "HS256", "RS256", "ES256", "eddsa"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"ci"}}"#));
            let token = format!("{header}.{claims}.");
            assert_eq!(
                v.verify(&token, NOW),
                Err(TokenError::Algorithm(alg.into()))
            );
        }
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let t = sign(&key(1), HEADER, &claims(NOW + 60, r#""node-1""#));
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[1] =
            URL_SAFE_NO_PAD.encode(claims(NOW + 60, r#""node-1""#).replace("operator", "admin"));
        let forged = parts.join(".");
        assert!(matches!(
            verifier().verify(&forged, NOW),
            Err(TokenError::BadSignature(_))
        ));
        assert!(matches!(
            verifier().verify("a.b", NOW),
            Err(TokenError::Malformed(_))
        ));
    }
}
