//! The Basalt machine configuration.
//!
//! This crate owns the config schema (multi-document YAML with `apiVersion` and `kind`),
//! its strict decoding (an unknown field is an error with line and column), validation that
//! reports every error and warning at once, and config patches. It is shared by `machined`
//! (which applies configs), `basaltctl` (which generates and patches them) and
//! `basalt-flash` (which validates a first-boot config before writing a card), so it must
//! stay free of daemon-only dependencies.
//!
//! # The format
//!
//! A config is one YAML text of up to four documents, at most one of each [`Kind`]:
//!
//! ```yaml
//! apiVersion: basalt.dev/v1alpha1
//! kind: MachineConfig          # required
//! hostname: edge-1
//! ---
//! apiVersion: basalt.dev/v1alpha1
//! kind: NetworkConfig          # optional, likewise UpdateConfig and ServiceConfig
//! interfaces:
//!   - name: eth0
//!     dhcp: true
//! ```
//!
//! The fields of each kind are documented on its type in [`schema`]; keys are camelCase.
//!
//! # The pipeline
//!
//! - [`Config::from_yaml`] decodes strictly ([`decode`]): the first structural error stops it,
//!   with the document number and the line and column in the whole text.
//! - [`Config::validate`] checks the values ([`validate`]) and returns every error and warning.
//! - [`Config::to_yaml`] writes the canonical text and [`Config::to_redacted_yaml`] the same
//!   with secrets hidden ([`encode`]).
//! - [`Config::apply_patches`] applies RFC 6902 JSON patches and strategic merge patches
//!   ([`patch`]); [`Config::diff`] renders a unified diff for dry runs ([`diff`]).
//!
//! ```
//! use basalt_config::Config;
//!
//! let config = Config::from_yaml(
//!     "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n",
//! )?;
//! let validation = config.validate();
//! assert!(validation.is_ok());
//! assert!(!validation.warnings.is_empty()); // no API certificates, no time servers
//! # Ok::<(), basalt_config::DecodeError>(())
//! ```

pub mod decode;
pub mod diff;
pub mod encode;
pub mod image_ref;
pub mod keys;
pub mod patch;
pub mod schema;
pub mod validate;

pub use decode::{DecodeError, Location};
pub use encode::{EncodeError, REDACTED};
pub use patch::{Patch, PatchError};
pub use schema::{API_VERSION, Config, Kind};
pub use validate::{Issue, Validation};
