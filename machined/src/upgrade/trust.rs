//! What the machine configuration says about updates: the trusted bundle signing keys and
//! the default number of boot tries, from its `UpdateConfig` document
//! (`basalt_config::schema::UpdateConfig`).
//!
//! It reads the configuration `basalt-config` decoded (strictly) when it was applied. No
//! `UpdateConfig`, or one without
//! `trustedSigningKeys`, means no bundle can be trusted: the engine refuses every upgrade.

use basalt_config::Config;
use basalt_config::schema::DEFAULT_TRIES;
use basalt_image::bundle::{VerifyingKey, parse_verifying_key};

/// Why the update settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A trusted key is not an Ed25519 public key.
    #[error("machine config: UpdateConfig.trustedSigningKeys[{index}]: {message}")]
    Key {
        /// Position in the list.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// The update trust settings of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateTrust {
    /// Keys a bundle must be signed by (one of them).
    pub keys: Vec<VerifyingKey>,
    /// Boot tries of a new slot when the request does not say.
    pub tries: u32,
}

impl Default for UpdateTrust {
    fn default() -> Self {
        UpdateTrust {
            keys: Vec::new(),
            tries: DEFAULT_TRIES,
        }
    }
}

impl UpdateTrust {
    /// The trust settings of a decoded configuration's `UpdateConfig` document.
    pub fn from_config(config: &Config) -> Result<UpdateTrust, TrustError> {
        let Some(update) = &config.update else {
            return Ok(UpdateTrust::default());
        };
        let keys = update
            .trusted_signing_keys
            .iter()
            .enumerate()
            .map(|(index, k)| {
                parse_verifying_key(k).map_err(|e| TrustError::Key {
                    index,
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UpdateTrust {
            keys,
            tries: update.tries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: n1\n";

    #[test]
    fn reads_keys_and_tries() {
        let key = basalt_image::bundle::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let b64 = basalt_image::bundle::verifying_key_base64(&key);
        let text = format!(
            "{MACHINE}---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: https://updates.invalid/\ntrustedSigningKeys:\n  - {b64}\ntries: 5\n"
        );
        let t = UpdateTrust::from_config(&Config::from_yaml(&text).unwrap()).unwrap();
        assert_eq!(t.keys, vec![key]);
        assert_eq!(t.tries, 5);
    }

    #[test]
    fn missing_document_means_no_keys() {
        let t = UpdateTrust::from_config(&Config::from_yaml(MACHINE).unwrap()).unwrap();
        assert!(t.keys.is_empty());
        assert_eq!(t.tries, DEFAULT_TRIES);
    }

    #[test]
    fn bad_key_is_named() {
        let text = format!(
            "{MACHINE}---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: x\ntrustedSigningKeys: [notakey]\n"
        );
        let e = UpdateTrust::from_config(&Config::from_yaml(&text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("trustedSigningKeys[0]"), "{e}");
    }
}
