//! Config patches: RFC 6902 JSON Patch and strategic merge.
//!
//! Both kinds of patch operate on the *JSON view* of a config ([`Config::to_json`]): one object
//! whose members are the documents present, keyed by kind, without their `apiVersion` and
//! `kind` fields:
//!
//! ```json
//! {"MachineConfig": {"hostname": "edge-1", ...}, "NetworkConfig": {"interfaces": [...]}}
//! ```
//!
//! **JSON Patch** (RFC 6902), written in YAML or JSON as a list of operations. Paths start with
//! the kind: `/MachineConfig/hostname`, `/NetworkConfig/interfaces/0/mtu`,
//! `/MachineConfig/sysctls/vm.swappiness`. A whole document is added with
//! `{op: add, path: /UpdateConfig, value: {...}}` and removed with
//! `{op: remove, path: /NetworkConfig}`. A patch is atomic: if one operation fails, none applies.
//!
//! **Strategic merge**, written like a config: YAML documents with `apiVersion` and `kind`
//! carrying only the fields to change (a document of a kind the config lacks creates it).
//! Maps merge recursively (`null` removes a key); lists of named things merge by their key
//! ([`MERGE_KEYS`]: interfaces and services by `name`, VLANs by `id`, kernel modules by
//! `name`, files by `path`, token keys by `id`); other lists are replaced whole. `$patch: delete`
//! on a map, a keyed list item or a whole document removes it; `$patch: replace` replaces
//! instead of merging.
//!
//! [`Config::apply_patches`] applies the patches in order, then renders the result to YAML and
//! decodes it strictly, so a patch cannot produce a config that would not load;
//! [`Config::patch_and_validate`] also validates it. Positions in a [`PatchError::Result`]
//! refer to the canonical YAML of the patched config ([`Config::to_yaml`] of the result), not
//! to the patch.

mod merge;

pub use merge::MERGE_KEYS;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::decode::{self, DecodeError};
use crate::encode::EncodeError;
use crate::schema::{API_VERSION, Config, Kind};
use crate::validate::Validation;
use merge::{DIRECTIVE, MergeDocument};

/// A parsed patch, ready to apply with [`Config::apply_patches`].
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    inner: Inner,
}

#[derive(Debug, Clone, PartialEq)]
enum Inner {
    Json(json_patch::Patch),
    Merge(Vec<MergeDocument>),
}

/// Why a patch could not be parsed or applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch text does not parse (YAML syntax, malformed operation, bad document header).
    #[error("invalid patch: {0}")]
    Parse(DecodeError),
    /// The patch text is neither a list of JSON Patch operations nor config documents.
    #[error("invalid patch: {0}")]
    NotAPatch(String),
    /// A JSON Patch operation failed (a path that does not exist, a failed `test`).
    #[error("patch {}: {source}", .patch + 1)]
    Operation {
        /// 0-based index of the patch in the list applied.
        patch: usize,
        /// The failed operation.
        source: json_patch::PatchError,
    },
    /// A strategic merge could not be applied.
    #[error("patch {}: {path}: {message}", .patch + 1)]
    Merge {
        /// 0-based index of the patch in the list applied.
        patch: usize,
        /// Where in the JSON view (`NetworkConfig.interfaces[0]`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The patched JSON view is not a config (a top-level member that is not a kind, a
    /// document that is not an object).
    #[error("the patched config is not a config: {0}")]
    Shape(String),
    /// The patched config does not decode strictly (unknown field, wrong type, ...).
    #[error("the patched config does not decode: {0}")]
    Result(DecodeError),
    /// The config could not be encoded for patching.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The patched config decodes but fails validation (from [`Config::patch_and_validate`]).
    #[error("the patched config is invalid:\n{0}")]
    Invalid(Validation),
}

impl Patch {
    /// Parses either kind of patch: a YAML or JSON list is a JSON Patch, anything else is read
    /// as a strategic merge patch.
    pub fn parse(text: &str) -> Result<Patch, PatchError> {
        let mut first = None;
        for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
            match Option::<Value>::deserialize(document) {
                Ok(Some(value)) => {
                    first = Some(value);
                    break;
                }
                Ok(None) => {}
                Err(err) => return Err(PatchError::Parse(decode::invalid(index, None, &err))),
            }
        }
        match first {
            Some(Value::Array(_)) => Patch::json_patch(text),
            Some(_) => Patch::strategic_merge(text),
            None => Err(PatchError::NotAPatch("the patch is empty".into())),
        }
    }

    /// Parses an RFC 6902 JSON Patch written in YAML or JSON (one document: a list of
    /// operations).
    pub fn json_patch(text: &str) -> Result<Patch, PatchError> {
        let operations: json_patch::Patch = yaml_serde::from_str(text)
            .map_err(|err| PatchError::Parse(decode::invalid(0, None, &err)))?;
        Ok(Patch::from_operations(operations))
    }

    /// Wraps JSON Patch operations built in code.
    pub fn from_operations(operations: json_patch::Patch) -> Patch {
        Patch {
            inner: Inner::Json(operations),
        }
    }

    /// Parses a strategic merge patch: one or more YAML documents, each with `apiVersion` and
    /// `kind`, carrying the fields to change.
    pub fn strategic_merge(text: &str) -> Result<Patch, PatchError> {
        let headers = yaml_serde::Deserializer::from_str(text);
        let bodies = yaml_serde::Deserializer::from_str(text);
        let mut documents = Vec::new();
        for (index, (header, body)) in headers.zip(bodies).enumerate() {
            let Some(kind) = decode::read_header(index, header).map_err(PatchError::Parse)? else {
                continue;
            };
            let body = Map::<String, Value>::deserialize(body)
                .map_err(|err| PatchError::Parse(decode::invalid(index, Some(kind), &err)))?;
            let body = body
                .into_iter()
                .filter(|(key, _)| key != "apiVersion" && key != "kind")
                .collect();
            documents.push(MergeDocument { kind, body });
        }
        if documents.is_empty() {
            return Err(PatchError::NotAPatch("the patch has no documents".into()));
        }
        Ok(Patch {
            inner: Inner::Merge(documents),
        })
    }

    /// Whether this is a JSON Patch (rather than a strategic merge patch).
    pub fn is_json_patch(&self) -> bool {
        matches!(self.inner, Inner::Json(_))
    }
}

impl Config {
    /// Applies the patches in order to the JSON view of this config, then decodes the result
    /// strictly. The result is not validated; see [`Config::patch_and_validate`].
    pub fn apply_patches(&self, patches: &[Patch]) -> Result<Config, PatchError> {
        let mut view = self.to_json()?;
        for (index, patch) in patches.iter().enumerate() {
            match &patch.inner {
                Inner::Json(operations) => {
                    json_patch::patch(&mut view, &operations.0).map_err(|source| {
                        PatchError::Operation {
                            patch: index,
                            source,
                        }
                    })?
                }
                Inner::Merge(documents) => {
                    let Value::Object(members) = &mut view else {
                        return Err(PatchError::Shape("the config is not an object".into()));
                    };
                    merge::apply(members, documents).map_err(|e| PatchError::Merge {
                        patch: index,
                        path: e.path,
                        message: e.message,
                    })?;
                }
            }
        }
        from_json(&view)
    }

    /// [`Config::apply_patches`], then [`Config::validate`]: the patched config and its
    /// validation (warnings only) if it has no errors, [`PatchError::Invalid`] otherwise.
    pub fn patch_and_validate(
        &self,
        patches: &[Patch],
    ) -> Result<(Config, Validation), PatchError> {
        let config = self.apply_patches(patches)?;
        let validation = config.validate();
        if validation.is_ok() {
            Ok((config, validation))
        } else {
            Err(PatchError::Invalid(validation))
        }
    }
}

/// Decodes a JSON view strictly, by rendering it as canonical-order YAML documents.
fn from_json(view: &Value) -> Result<Config, PatchError> {
    let Value::Object(members) = view else {
        return Err(PatchError::Shape(
            "the config must be an object keyed by kind".into(),
        ));
    };
    for name in members.keys() {
        if Kind::from_name(name).is_none() {
            return Err(PatchError::Shape(format!(
                "`{name}` is not a document kind (expected one of {})",
                Kind::ALL.map(Kind::as_str).join(", ")
            )));
        }
    }
    let mut text = String::new();
    for kind in Kind::ALL {
        let Some(body) = members.get(kind.as_str()) else {
            continue;
        };
        let Value::Object(fields) = body else {
            return Err(PatchError::Shape(format!(
                "the {kind} document must be an object"
            )));
        };
        if let Some(key) = ["apiVersion", "kind", DIRECTIVE]
            .into_iter()
            .find(|k| fields.contains_key(*k))
        {
            return Err(PatchError::Shape(format!(
                "the {kind} document must not contain `{key}`"
            )));
        }
        let mut document = yaml_serde::Mapping::new();
        document.insert("apiVersion".into(), API_VERSION.into());
        document.insert("kind".into(), kind.as_str().into());
        let fields =
            yaml_serde::to_value(fields).map_err(|source| EncodeError::Yaml { kind, source })?;
        if let yaml_serde::Value::Mapping(fields) = fields {
            document.extend(fields);
        }
        if !text.is_empty() {
            text.push_str("---\n");
        }
        text.push_str(
            &yaml_serde::to_string(&document)
                .map_err(|source| EncodeError::Yaml { kind, source })?,
        );
    }
    Config::from_yaml(&text).map_err(PatchError::Result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Interface, MachineConfig, NetworkConfig};

    fn base() -> Config {
        Config {
            network: Some(NetworkConfig {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    dhcp: true,
                    ..Interface::default()
                }],
                ..NetworkConfig::default()
            }),
            ..Config::new(MachineConfig {
                hostname: "edge-1".into(),
                time_servers: vec!["pool.ntp.org".into()],
                ..MachineConfig::default()
            })
        }
    }

    #[test]
    fn json_patch_addresses_documents_by_kind() {
        let patch = Patch::parse(
            "- {op: replace, path: /MachineConfig/hostname, value: edge-2}\n\
             - {op: add, path: /NetworkConfig/interfaces/0/mtu, value: 9000}\n\
             - {op: add, path: /MachineConfig/sysctls, value: {vm.swappiness: 10}}\n\
             - {op: add, path: /UpdateConfig, value: {channel: 'https://u.example.com/'}}\n",
        )
        .expect("parses");
        assert!(patch.is_json_patch());
        let out = base().apply_patches(&[patch]).expect("applies");
        assert_eq!(out.machine.hostname, "edge-2");
        assert_eq!(out.machine.sysctls["vm.swappiness"], "10");
        assert_eq!(
            out.network.as_ref().map(|n| n.interfaces[0].mtu),
            Some(Some(9000))
        );
        assert_eq!(
            out.update.map(|u| u.channel).as_deref(),
            Some("https://u.example.com/")
        );
    }

    #[test]
    fn json_patch_failures() {
        let bad_path =
            Patch::json_patch("[{\"op\": \"remove\", \"path\": \"/NetworkConfig/interfaces/3\"}]")
                .expect("parses");
        let err = base().apply_patches(&[bad_path]).expect_err("fails");
        assert!(
            matches!(err, PatchError::Operation { patch: 0, .. }),
            "{err}"
        );
        let unknown_field =
            Patch::json_patch("- {op: add, path: /MachineConfig/colour, value: red}\n")
                .expect("parses");
        let err = base().apply_patches(&[unknown_field]).expect_err("strict");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let unknown_kind =
            Patch::json_patch("- {op: add, path: /DiskConfig, value: {}}\n").expect("parses");
        let err = base().apply_patches(&[unknown_kind]).expect_err("shape");
        assert!(matches!(err, PatchError::Shape(_)), "{err}");
        let err = Patch::json_patch("- {op: frobnicate, path: /x}\n").expect_err("bad op");
        assert!(
            err.to_string()
                .starts_with("invalid patch: document 1 at line 1"),
            "{err}"
        );
    }

    #[test]
    fn strategic_merge_patch() {
        let patch = Patch::parse(
            "apiVersion: basalt.dev/v1alpha1\nkind: NetworkConfig\ninterfaces:\n  - name: eth0\n    mtu: 1400\n  - name: eth1\n    dhcp: true\n\
             ---\napiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nkernelModules:\n  - name: wireguard\n",
        )
        .expect("parses");
        assert!(!patch.is_json_patch());
        let out = base()
            .apply_patches(std::slice::from_ref(&patch))
            .expect("applies");
        let network = out.network.clone().expect("network");
        assert_eq!(network.interfaces.len(), 2);
        assert!(network.interfaces[0].dhcp);
        assert_eq!(network.interfaces[0].mtu, Some(1400));
        assert_eq!(out.machine.kernel_modules[0].name, "wireguard");
        // Applying twice changes nothing more.
        assert_eq!(out.apply_patches(&[patch]).expect("applies"), out);
    }

    #[test]
    fn patches_apply_in_order_and_validate() {
        let add = Patch::parse(
            "- {op: add, path: /NetworkConfig/interfaces/-, value: {name: eth1, mtu: 20}}\n",
        )
        .expect("parses");
        let err = base()
            .patch_and_validate(std::slice::from_ref(&add))
            .expect_err("invalid");
        let PatchError::Invalid(validation) = err else {
            panic!("{err}")
        };
        assert_eq!(validation.errors[0].path, "NetworkConfig.interfaces[1].mtu");
        let fix = Patch::parse(
            "apiVersion: basalt.dev/v1alpha1\nkind: NetworkConfig\ninterfaces:\n  - name: eth1\n    mtu: 1500\n    dhcp: true\n",
        )
        .expect("parses");
        let (config, validation) = base().patch_and_validate(&[add, fix]).expect("valid");
        assert!(
            validation
                .warnings
                .iter()
                .all(|w| w.path == "MachineConfig.api"),
            "{validation}"
        );
        assert_eq!(
            config.network.map(|n| n.interfaces[1].mtu),
            Some(Some(1500))
        );
    }

    #[test]
    fn strategic_merge_header_errors_are_located() {
        let err = Patch::strategic_merge("apiVersion: basalt.dev/v1alpha1\nkind: Nope\n")
            .expect_err("bad kind");
        assert!(err.to_string().contains("line 2, column 7"), "{err}");
        let err = Patch::parse("").expect_err("empty");
        assert!(matches!(err, PatchError::NotAPatch(_)), "{err}");
    }

    #[test]
    fn deleting_machine_config_is_refused() {
        let patch = Patch::parse("- {op: remove, path: /MachineConfig}\n").expect("parses");
        let err = base()
            .apply_patches(&[patch])
            .expect_err("needs MachineConfig");
        assert!(
            matches!(err, PatchError::Result(DecodeError::MissingMachineConfig)),
            "{err}"
        );
    }
}
