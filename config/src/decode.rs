//! Strict decoding of a multi-document YAML config.
//!
//! Design:
//! - The text is split into documents with `yaml_serde::Deserializer::from_str`, whose marks
//!   come from one parser over the whole input, so every line and column reported here refers
//!   to the whole file, not to the document.
//! - Each document is read twice, from two lock-stepped document iterators: first its header
//!   (`apiVersion` and `kind`, other keys ignored), then its body, strictly, into the type of
//!   that kind. The body is read through a map adapter that skips the two header keys and hands
//!   every other key to the derived `Deserialize` of the kind, so that `deny_unknown_fields`,
//!   type errors and missing fields are all raised inside the YAML deserializer and carry the
//!   position of the offending key or value. (serde's `flatten` would lose positions and does
//!   not combine with `deny_unknown_fields`.)
//! - Empty documents (`---` with nothing after it) are skipped but still counted, so document
//!   numbers match what a reader counts in the file.
//!
//! Limits: the first error stops decoding (validation, not decoding, reports everything at
//! once); an error about a missing field points at the start of the mapping that lacks it.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, Visitor,
};

use crate::schema::{
    ApiConfig, Config, Kind, MachineConfig, NetworkConfig, ServiceConfig, UpdateConfig,
};

/// A position in the decoded text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Line number, 1-based, counted from the start of the whole text.
    pub line: usize,
    /// Column number (in characters), 1-based.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a config text could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A YAML syntax error, an unknown field, a wrong type, a missing field, an unknown `kind`
    /// or an unsupported `apiVersion`. The message starts with the field path inside the
    /// document when there is one (`interfaces[0].mtu: invalid type: ...`).
    #[error("{}: {message}", describe(*.index, *.kind, *.location))]
    Invalid {
        /// 0-based index of the document in the file (displayed 1-based).
        index: usize,
        /// Kind of the document, when its header could be read.
        kind: Option<Kind>,
        /// Where the problem is, when known.
        location: Option<Location>,
        /// What is wrong, including the field path.
        message: String,
    },
    /// Two documents have the same `kind`.
    #[error(
        "{}: duplicate kind {kind}: document {} is already a {kind} (at most one document of each kind)",
        describe(*.index, Some(*.kind), *.location), .first + 1
    )]
    DuplicateKind {
        /// 0-based index of the second document of that kind.
        index: usize,
        /// The repeated kind.
        kind: Kind,
        /// 0-based index of the first document of that kind.
        first: usize,
        /// Position of the second document's `kind` value.
        location: Option<Location>,
    },
    /// No document has `kind: MachineConfig`.
    #[error("no MachineConfig document: every config needs exactly one")]
    MissingMachineConfig,
}

impl DecodeError {
    /// Where the error is in the text, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            DecodeError::Invalid { location, .. } | DecodeError::DuplicateKind { location, .. } => {
                *location
            }
            DecodeError::MissingMachineConfig => None,
        }
    }

    /// 0-based index of the document at fault, when there is one.
    pub fn document_index(&self) -> Option<usize> {
        match self {
            DecodeError::Invalid { index, .. } | DecodeError::DuplicateKind { index, .. } => {
                Some(*index)
            }
            DecodeError::MissingMachineConfig => None,
        }
    }
}

fn describe(index: usize, kind: Option<Kind>, location: Option<Location>) -> String {
    let mut out = format!("document {}", index + 1);
    if let Some(kind) = kind {
        out.push_str(&format!(" ({kind})"));
    }
    if let Some(location) = location {
        out.push_str(&format!(" at {location}"));
    }
    out
}

/// Splits a YAML error into its location and its message without the " at line L column C"
/// suffix (the location is reported separately).
pub(crate) fn split_yaml_error(err: &yaml_serde::Error) -> (Option<Location>, String) {
    let location = err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    let mut message = err.to_string();
    if let Some(l) = location {
        let suffix = format!(" at line {} column {}", l.line, l.column);
        if let Some(start) = message.find(&suffix) {
            message.replace_range(start..start + suffix.len(), "");
        }
    }
    (location, message)
}

pub(crate) fn invalid(index: usize, kind: Option<Kind>, err: &yaml_serde::Error) -> DecodeError {
    let (location, message) = split_yaml_error(err);
    DecodeError::Invalid {
        index,
        kind,
        location,
        message,
    }
}

impl Config {
    /// Decodes a multi-document YAML config strictly (see the [module docs](crate::decode)).
    ///
    /// This checks structure only; call [`Config::validate`] for the values.
    pub fn from_yaml(text: &str) -> Result<Config, DecodeError> {
        let mut first_of_kind: HashMap<Kind, usize> = HashMap::new();
        let mut machine = None;
        let mut network = None;
        let mut update = None;
        let mut services = None;
        let headers = yaml_serde::Deserializer::from_str(text);
        let bodies = yaml_serde::Deserializer::from_str(text);
        for (index, (header, body)) in headers.zip(bodies).enumerate() {
            let Some(kind) = read_header(index, header)? else {
                continue;
            };
            if let Some(&first) = first_of_kind.get(&kind) {
                return Err(duplicate_kind(text, index, kind, first));
            }
            first_of_kind.insert(kind, index);
            match kind {
                Kind::MachineConfig => {
                    machine = Some(read_body::<MachineConfig>(index, kind, body)?)
                }
                Kind::NetworkConfig => {
                    network = Some(read_body::<NetworkConfig>(index, kind, body)?)
                }
                Kind::UpdateConfig => update = Some(read_body::<UpdateConfig>(index, kind, body)?),
                Kind::ServiceConfig => {
                    services = Some(read_body::<ServiceConfig>(index, kind, body)?)
                }
            }
        }
        let machine = machine.ok_or(DecodeError::MissingMachineConfig)?;
        Ok(Config {
            machine,
            network,
            update,
            services,
        })
    }
}

/// The identity and API section of a `MachineConfig`: everything else is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineIdentity {
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    api: ApiConfig,
}

impl Config {
    /// Decodes only the `MachineConfig`'s `hostname`, `cluster` and `api` (strictly) and
    /// ignores every other field and document: a config with just those, for a node whose
    /// stored configuration no longer decodes as a whole (a damaged field, a schema a newer
    /// release changed) but whose API must stay locked to its own CA.
    pub fn identity_from_yaml(text: &str) -> Result<Config, DecodeError> {
        let headers = yaml_serde::Deserializer::from_str(text);
        let bodies = yaml_serde::Deserializer::from_str(text);
        for (index, (header, body)) in headers.zip(bodies).enumerate() {
            // A YAML error ends the stream (the parser would yield it again and again).
            if read_header(index, header)? != Some(Kind::MachineConfig) {
                continue;
            }
            let id = MachineIdentity::deserialize(body)
                .map_err(|e| invalid(index, Some(Kind::MachineConfig), &e))?;
            let mut config = Config::default();
            config.machine.hostname = id.hostname;
            config.machine.cluster = id.cluster;
            config.machine.api = id.api;
            return Ok(config);
        }
        Err(DecodeError::MissingMachineConfig)
    }
}

impl FromStr for Config {
    type Err = DecodeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Config::from_yaml(text)
    }
}

/// The header of every document. Other keys are ignored here and checked by the body pass.
#[derive(Deserialize)]
#[serde(expecting = "a config document: a mapping with `apiVersion` and `kind`")]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: ApiVersion,
    kind: Kind,
}

#[derive(Deserialize)]
enum ApiVersion {
    #[serde(rename = "basalt.dev/v1alpha1")]
    V1Alpha1,
}

/// Reads the header of document `index`; `None` for an empty document.
pub(crate) fn read_header(
    index: usize,
    document: yaml_serde::Deserializer<'_>,
) -> Result<Option<Kind>, DecodeError> {
    match Option::<Header>::deserialize(document) {
        Ok(header) => Ok(header.map(|h| {
            let ApiVersion::V1Alpha1 = h.api_version;
            h.kind
        })),
        Err(err) => Err(invalid(index, None, &err)),
    }
}

fn read_body<T>(
    index: usize,
    kind: Kind,
    document: yaml_serde::Deserializer<'_>,
) -> Result<T, DecodeError>
where
    T: for<'de> Deserialize<'de>,
{
    Body::<T>::deserialize(document)
        .map(|body| body.0)
        .map_err(|err| invalid(index, Some(kind), &err))
}

/// Builds the duplicate-kind error, locating the second document's `kind` value by decoding it
/// again with a type that always fails on that value (the YAML deserializer then attaches the
/// value's position to the error).
fn duplicate_kind(text: &str, index: usize, kind: Kind, first: usize) -> DecodeError {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "kind")]
        _kind: FailHere,
    }
    struct FailHere;
    impl<'de> Deserialize<'de> for FailHere {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_str(FailHere)
        }
    }
    impl Visitor<'_> for FailHere {
        type Value = FailHere;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a kind")
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<FailHere, E> {
            Err(E::custom("here"))
        }
    }
    let location = yaml_serde::Deserializer::from_str(text)
        .nth(index)
        .and_then(|document| Probe::deserialize(document).err())
        .and_then(|err| split_yaml_error(&err).0);
    DecodeError::DuplicateKind {
        index,
        kind,
        first,
        location,
    }
}

/// A document body: the fields of `T` next to `apiVersion` and `kind`, which are skipped.
struct Body<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Body<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BodyVisitor(PhantomData))
    }
}

struct BodyVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for BodyVisitor<T> {
    type Value = Body<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a config document (a mapping)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body<T>, A::Error> {
        T::deserialize(MapAccessDeserializer::new(SkipHeader(map))).map(Body)
    }
}

/// Map access that hides the `apiVersion` and `kind` entries from the wrapped map.
struct SkipHeader<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipHeader<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut seed = Some(seed);
        loop {
            match self.0.next_key_seed(KeyFilter { seed: &mut seed })? {
                None => return Ok(None),
                Some(Some(key)) => return Ok(Some(key)),
                Some(None) => {
                    self.0.next_value::<IgnoredAny>()?;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// Reads a key as a string; header keys give `None`, any other key is handed to the wrapped
/// seed from inside the YAML deserializer's visit, so errors keep the key's position.
struct KeyFilter<'s, K> {
    seed: &'s mut Option<K>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeyFilter<'_, K> {
    type Value = Option<K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyFilter<'_, K> {
    type Value = Option<K::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if key == "apiVersion" || key == "kind" {
            return Ok(None);
        }
        let seed = self
            .seed
            .take()
            .ok_or_else(|| E::custom("internal error: field name read twice"))?;
        seed.deserialize(IntoDeserializer::<E>::into_deserializer(key))
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str =
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n";

    fn err(text: &str) -> DecodeError {
        Config::from_yaml(text).expect_err("must fail")
    }

    #[test]
    fn identity_ignores_what_the_whole_decode_refuses() {
        let text = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n\
            cluster: lab\nfutureField: 1\napi:\n  ca: CA\n---\napiVersion: basalt.dev/v1alpha1\n\
            kind: NetworkConfig\nbogus: []\n";
        assert!(Config::from_yaml(text).is_err());
        let config = Config::identity_from_yaml(text).expect("identity decodes");
        assert_eq!(config.machine.hostname, "edge-1");
        assert_eq!(config.machine.cluster.as_deref(), Some("lab"));
        assert_eq!(config.machine.api.ca.as_deref(), Some("CA"));
        assert!(config.network.is_none());
        // the API section itself stays strict
        let typo = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\napi:\n  caa: x\n";
        assert!(Config::identity_from_yaml(typo).is_err());
        assert!(Config::identity_from_yaml("").is_err());
        assert!(Config::identity_from_yaml("apiVersion: [\n").is_err());
    }

    #[test]
    fn decodes_minimal_config() {
        let config = Config::from_yaml(MACHINE).expect("decodes");
        assert_eq!(config.machine.hostname, "edge-1");
        assert!(config.network.is_none());
    }

    #[test]
    fn unknown_field_in_second_document_has_whole_file_position() {
        let text = format!(
            "{MACHINE}---\napiVersion: basalt.dev/v1alpha1\nkind: NetworkConfig\ninterfaces:\n  - name: eth0\n    mtuu: 1500\n"
        );
        let e = err(&text);
        assert_eq!(e.document_index(), Some(1));
        assert_eq!(e.location(), Some(Location { line: 9, column: 5 }));
        let shown = e.to_string();
        assert!(
            shown.starts_with("document 2 (NetworkConfig) at line 9, column 5: interfaces[0]: unknown field `mtuu`"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_top_level_field() {
        let e = err(&format!("{MACHINE}hostnmae: x\n"));
        assert_eq!(e.location(), Some(Location { line: 4, column: 1 }));
        assert!(e.to_string().contains("unknown field `hostnmae`"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let e = err(&format!("{MACHINE}api:\n  port: fifty\n"));
        assert_eq!(e.location(), Some(Location { line: 5, column: 9 }));
        assert!(
            e.to_string()
                .contains("api.port: invalid type: string \"fifty\""),
            "{e}"
        );
    }

    #[test]
    fn missing_machine_config() {
        let text = "apiVersion: basalt.dev/v1alpha1\nkind: NetworkConfig\n";
        assert_eq!(err(text), DecodeError::MissingMachineConfig);
        assert_eq!(err(""), DecodeError::MissingMachineConfig);
    }

    #[test]
    fn duplicate_kind_points_at_second_kind() {
        let text = format!("{MACHINE}---\n{MACHINE}");
        let e = err(&text);
        assert_eq!(
            e,
            DecodeError::DuplicateKind {
                index: 1,
                kind: Kind::MachineConfig,
                first: 0,
                location: Some(Location { line: 6, column: 7 }),
            }
        );
        assert!(
            e.to_string()
                .contains("document 1 is already a MachineConfig"),
            "{e}"
        );
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let e = err("apiVersion: basalt.dev/v1alpha1\nkind: DiskConfig\n");
        assert_eq!(e.location(), Some(Location { line: 2, column: 7 }));
        assert!(
            e.to_string().contains("kind: unknown variant `DiskConfig`"),
            "{e}"
        );
        let e = err("apiVersion: v1\nkind: MachineConfig\nhostname: a\n");
        assert_eq!(
            e.location(),
            Some(Location {
                line: 1,
                column: 13
            })
        );
        assert!(
            e.to_string().contains("expected `basalt.dev/v1alpha1`"),
            "{e}"
        );
        let e = err("kind: MachineConfig\nhostname: a\n");
        assert!(e.to_string().contains("missing field `apiVersion`"), "{e}");
    }

    #[test]
    fn missing_required_field() {
        let e = err("apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\n");
        assert!(e.to_string().contains("missing field `hostname`"), "{e}");
        assert_eq!(e.document_index(), Some(0));
    }

    #[test]
    fn empty_documents_are_skipped_but_counted() {
        let text = format!(
            "---\n{MACHINE}---\n# nothing\n---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchanel: x\n"
        );
        let e = err(&text);
        assert_eq!(e.document_index(), Some(2));
        assert_eq!(
            e.location(),
            Some(Location {
                line: 10,
                column: 1
            })
        );
        let ok = Config::from_yaml(&format!("---\n{MACHINE}---\n")).expect("decodes");
        assert_eq!(ok.machine.hostname, "edge-1");
    }

    #[test]
    fn syntax_error_is_located() {
        let e = err(&format!("{MACHINE}kernelArgs: [a, b\n"));
        assert!(e.location().is_some(), "{e}");
        assert_eq!(e.document_index(), Some(0));
    }

    #[test]
    fn non_mapping_document() {
        let e = err("- a\n- b\n");
        assert!(e.to_string().contains("expected a config document"), "{e}");
    }
}
