//! Key and certificate material found in configs: Ed25519 public keys and PEM blocks.
//!
//! These checks are syntactic: PEM framing and base64 are decoded and block types checked, but
//! no X.509 parsing or chain validation happens here (machined's TLS stack does that when it
//! loads the material). Public so that machined, basaltctl and the image tools read keys the
//! same way the validator does.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rustls_pki_types::pem::{self, PemObject, SectionKind};

/// Length of an Ed25519 public key.
pub const ED25519_KEY_LEN: usize = 32;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Base64 with the standard alphabet; padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why key or certificate material was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM framing or its base64 is broken.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The text has no PEM block of the expected type.
    #[error("no {expected} PEM block found")]
    Missing {
        /// What was looked for.
        expected: &'static str,
    },
    /// A PEM block of the wrong type is present.
    #[error("unexpected {found} PEM block (expected only {expected})")]
    Unexpected {
        /// The type of block found.
        found: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// More than one private key.
    #[error("more than one private key")]
    SeveralKeys,
    /// A raw key is not valid base64 (and not a PEM block either).
    #[error("neither a PEM PUBLIC KEY block nor valid base64 ({0})")]
    Base64(String),
    /// A key decoded to the wrong length.
    #[error("key is {0} bytes long; an Ed25519 public key is 32 bytes")]
    Length(usize),
    /// A PEM public key is of another algorithm.
    #[error("PEM public key is not an Ed25519 key")]
    NotEd25519,
}

fn section_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        _ => "unknown",
    }
}

fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey
    )
}

/// All PEM sections of the text, in order.
fn sections(text: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, KeyError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| KeyError::Pem(e.to_string()))
}

/// Parses one or more PEM `CERTIFICATE` blocks and returns their DER bytes. Any other block
/// (a private key pasted into a certificate field, say) is an error.
pub fn parse_certificates(text: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    const EXPECTED: &str = "CERTIFICATE";
    let mut out = Vec::new();
    for (kind, der) in sections(text)? {
        if kind != SectionKind::Certificate {
            return Err(KeyError::Unexpected {
                found: section_name(kind),
                expected: EXPECTED,
            });
        }
        out.push(der);
    }
    if out.is_empty() {
        return Err(KeyError::Missing { expected: EXPECTED });
    }
    Ok(out)
}

/// Checks that the text holds exactly one PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or
/// `EC PRIVATE KEY`) and nothing else. Encrypted keys are not supported.
pub fn check_private_key(text: &str) -> Result<(), KeyError> {
    const EXPECTED: &str = "a private key";
    let mut found = false;
    for (kind, _) in sections(text)? {
        if !is_private_key(kind) {
            return Err(KeyError::Unexpected {
                found: section_name(kind),
                expected: EXPECTED,
            });
        }
        if found {
            return Err(KeyError::SeveralKeys);
        }
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(KeyError::Missing { expected: EXPECTED })
    }
}

/// Parses an Ed25519 public key written as 32 bytes in base64 (padding optional) or as a PEM
/// `PUBLIC KEY` block (SubjectPublicKeyInfo, as written by `openssl pkey -pubout`).
pub fn parse_ed25519_public_key(text: &str) -> Result<[u8; ED25519_KEY_LEN], KeyError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let mut keys = Vec::new();
        for (kind, der) in sections(text)? {
            if kind != SectionKind::PublicKey {
                return Err(KeyError::Unexpected {
                    found: section_name(kind),
                    expected: "PUBLIC KEY",
                });
            }
            keys.push(der);
        }
        let der = match keys.as_slice() {
            [der] => der,
            [] => {
                return Err(KeyError::Missing {
                    expected: "PUBLIC KEY",
                });
            }
            _ => {
                return Err(KeyError::Unexpected {
                    found: "second PUBLIC KEY",
                    expected: "one PUBLIC KEY",
                });
            }
        };
        let raw = der
            .strip_prefix(ED25519_SPKI_PREFIX.as_slice())
            .ok_or(KeyError::NotEd25519)?;
        return raw.try_into().map_err(|_| KeyError::NotEd25519);
    }
    let raw = BASE64
        .decode(text)
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    let len = raw.len();
    raw.try_into().map_err(|_| KeyError::Length(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm ed25519 | openssl pkey -pubout` (RFC 8410 example key).
    pub(crate) const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    const ED25519_B64: &str = "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=";

    #[test]
    fn ed25519_key_forms_agree() {
        let from_pem = parse_ed25519_public_key(ED25519_PEM).expect("pem");
        let from_b64 = parse_ed25519_public_key(ED25519_B64).expect("base64");
        assert_eq!(from_pem, from_b64);
        let unpadded = ED25519_B64.trim_end_matches('=');
        assert_eq!(
            parse_ed25519_public_key(unpadded).expect("unpadded"),
            from_b64
        );
    }

    #[test]
    fn ed25519_key_errors() {
        assert_eq!(parse_ed25519_public_key("AAAA"), Err(KeyError::Length(3)));
        assert!(matches!(
            parse_ed25519_public_key("not base64!"),
            Err(KeyError::Base64(_))
        ));
        // An RSA-sized SPKI is not Ed25519.
        let rsa =
            "-----BEGIN PUBLIC KEY-----\nMA0GCSqGSIb3DQEBAQUAAwEA\n-----END PUBLIC KEY-----\n";
        assert_eq!(parse_ed25519_public_key(rsa), Err(KeyError::NotEd25519));
    }

    #[test]
    fn certificates_and_private_keys() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n";
        assert_eq!(parse_certificates(cert).map(|c| c.len()), Ok(1));
        assert_eq!(
            parse_certificates(&format!("{cert}{key}")),
            Err(KeyError::Unexpected {
                found: "PRIVATE KEY",
                expected: "CERTIFICATE"
            })
        );
        assert_eq!(
            parse_certificates("hello"),
            Err(KeyError::Missing {
                expected: "CERTIFICATE"
            })
        );
        assert_eq!(check_private_key(key), Ok(()));
        assert_eq!(
            check_private_key(&format!("{key}{key}")),
            Err(KeyError::SeveralKeys)
        );
        let broken = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(parse_certificates(broken), Err(KeyError::Pem(_))));
    }
}
