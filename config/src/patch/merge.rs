//! Strategic merge over the JSON view of a config.
//!
//! Maps merge recursively; a `null` value removes the key. Lists listed in [`MERGE_KEYS`] merge
//! item by item on their key field (new items are appended, existing ones merged in place);
//! every other list is replaced whole. `$patch: delete` on a map value, a keyed list item or a
//! whole document removes it; `$patch: replace` on a map or list item replaces it instead of
//! merging; a list item that is only `{$patch: replace}` makes a keyed list be replaced whole.
//! Deleting what is not there is a no-op, so applying a patch twice gives the same result.

use serde_json::{Map, Value};

use crate::schema::Kind;

/// Lists merged by key, as `(path, key field)`; the path is the document kind, then field
/// names (list items add nothing). Other lists are replaced whole.
pub const MERGE_KEYS: [(&str, &str); 6] = [
    ("MachineConfig.api.trustedTokenKeys", "id"),
    ("MachineConfig.kernelModules", "name"),
    ("MachineConfig.files", "path"),
    ("NetworkConfig.interfaces", "name"),
    ("NetworkConfig.interfaces.vlans", "id"),
    ("ServiceConfig.services", "name"),
];

/// The key that marks a directive.
pub(crate) const DIRECTIVE: &str = "$patch";

/// One document of a strategic merge patch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MergeDocument {
    /// The document it applies to.
    pub kind: Kind,
    /// Its fields, header removed; may carry directives.
    pub body: Map<String, Value>,
}

/// A merge failure: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MergeError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Delete,
    Replace,
}

fn directive(map: &Map<String, Value>, path: &str) -> Result<Option<Directive>, MergeError> {
    match map.get(DIRECTIVE) {
        None => Ok(None),
        Some(Value::String(s)) if s == "delete" => Ok(Some(Directive::Delete)),
        Some(Value::String(s)) if s == "replace" => Ok(Some(Directive::Replace)),
        Some(other) => Err(MergeError {
            path: path.to_owned(),
            message: format!("unknown directive `$patch: {other}` (expected delete or replace)"),
        }),
    }
}

/// Applies the documents, in order, to the view (an object keyed by kind).
pub(crate) fn apply(
    view: &mut Map<String, Value>,
    docs: &[MergeDocument],
) -> Result<(), MergeError> {
    for doc in docs {
        let kind = doc.kind.as_str();
        match directive(&doc.body, kind)? {
            Some(Directive::Delete) => {
                view.remove(kind);
            }
            Some(Directive::Replace) => {
                let body = strip(&Value::Object(doc.body.clone()), kind)?;
                view.insert(
                    kind.to_owned(),
                    body.unwrap_or_else(|| Value::Object(Map::new())),
                );
            }
            None => {
                let target = view
                    .entry(kind.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                merge_map(target, &doc.body, &[kind], kind)?;
            }
        }
    }
    Ok(())
}

/// A copy of a patch value to insert as is: directives removed, `$patch: delete` items dropped.
/// `None` when the value itself is a delete.
fn strip(value: &Value, path: &str) -> Result<Option<Value>, MergeError> {
    Ok(match value {
        Value::Object(map) => {
            if directive(map, path)? == Some(Directive::Delete) {
                return Ok(None);
            }
            let mut out = Map::new();
            for (key, child) in map {
                if key != DIRECTIVE
                    && let Some(child) = strip(child, &format!("{path}.{key}"))?
                {
                    out.insert(key.clone(), child);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if is_replace_marker(item) {
                    continue;
                }
                if let Some(item) = strip(item, &format!("{path}[{i}]"))? {
                    out.push(item);
                }
            }
            Some(Value::Array(out))
        }
        scalar => Some(scalar.clone()),
    })
}

/// `{$patch: replace}` alone, as a list item: replace the whole keyed list.
fn is_replace_marker(item: &Value) -> bool {
    matches!(item, Value::Object(map) if map.len() == 1
        && map.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
}

fn merge_key(schema: &[&str]) -> Option<&'static str> {
    let dotted = schema.join(".");
    MERGE_KEYS
        .iter()
        .find(|(path, _)| *path == dotted)
        .map(|(_, key)| *key)
}

fn merge_value(
    target: &mut Value,
    patch: &Value,
    schema: &[&str],
    path: &str,
) -> Result<(), MergeError> {
    match patch {
        Value::Object(map) => merge_map(target, map, schema, path),
        Value::Array(items) => match (merge_key(schema), target) {
            (Some(key), Value::Array(list)) if !items.iter().any(is_replace_marker) => {
                merge_list(list, items, key, schema, path)
            }
            (_, target) => {
                *target = strip(patch, path)?.unwrap_or(Value::Null);
                Ok(())
            }
        },
        scalar => {
            *target = scalar.clone();
            Ok(())
        }
    }
}

fn merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    schema: &[&str],
    path: &str,
) -> Result<(), MergeError> {
    if directive(patch, path)? == Some(Directive::Replace) || !target.is_object() {
        *target = strip(&Value::Object(patch.clone()), path)?.unwrap_or(Value::Null);
        return Ok(());
    }
    let Value::Object(map) = target else {
        return Ok(());
    };
    for (key, value) in patch {
        if key == DIRECTIVE {
            continue;
        }
        let child_path = format!("{path}.{key}");
        let delete = match value {
            Value::Null => true,
            Value::Object(o) => directive(o, &child_path)? == Some(Directive::Delete),
            _ => false,
        };
        if delete {
            map.remove(key);
            continue;
        }
        match map.get_mut(key) {
            Some(existing) => {
                let mut child_schema = schema.to_vec();
                child_schema.push(key);
                merge_value(existing, value, &child_schema, &child_path)?;
            }
            None => {
                if let Some(value) = strip(value, &child_path)? {
                    map.insert(key.clone(), value);
                }
            }
        }
    }
    Ok(())
}

fn merge_list(
    target: &mut Vec<Value>,
    patch: &[Value],
    key: &str,
    schema: &[&str],
    path: &str,
) -> Result<(), MergeError> {
    for (i, item) in patch.iter().enumerate() {
        let Value::Object(fields) = item else {
            return Err(MergeError {
                path: format!("{path}[{i}]"),
                message: format!("items of this list are mappings merged by `{key}`"),
            });
        };
        let Some(id) = fields.get(key) else {
            return Err(MergeError {
                path: format!("{path}[{i}]"),
                message: format!("item has no `{key}`, the field this list merges by"),
            });
        };
        let item_path = format!("{path}[{key}={id}]");
        let position = target.iter().position(|t| t.get(key) == Some(id));
        match (directive(fields, &item_path)?, position) {
            (Some(Directive::Delete), Some(at)) => {
                target.remove(at);
            }
            (Some(Directive::Delete), None) => {}
            (_, Some(at)) => merge_value(&mut target[at], item, schema, &item_path)?,
            (_, None) => {
                if let Some(item) = strip(item, &item_path)? {
                    target.push(item);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(view: Value, kind: Kind, body: Value) -> Result<Value, MergeError> {
        let Value::Object(mut view) = view else {
            panic!("view")
        };
        let Value::Object(body) = body else {
            panic!("body")
        };
        apply(&mut view, &[MergeDocument { kind, body }])?;
        Ok(Value::Object(view))
    }

    #[test]
    fn keyed_lists_merge_and_plain_lists_replace() {
        let view = json!({"NetworkConfig": {"interfaces": [
            {"name": "eth0", "dhcp": true, "addresses": ["10.0.0.2/24"],
             "vlans": [{"id": 10, "dhcp": true}, {"id": 20, "dhcp": true}]},
            {"name": "eth1", "dhcp": true}
        ], "nameservers": ["1.1.1.1"]}});
        let patch = json!({"interfaces": [
            {"name": "eth0", "addresses": ["10.0.0.3/24"], "vlans": [{"id": 20, "mtu": 1400}, {"id": 30}]},
            {"name": "eth1", "$patch": "delete"},
            {"name": "eth2", "dhcp": true}
        ], "nameservers": ["9.9.9.9"]});
        let out = run(view, Kind::NetworkConfig, patch).expect("merges");
        assert_eq!(
            out,
            json!({"NetworkConfig": {"interfaces": [
                {"name": "eth0", "dhcp": true, "addresses": ["10.0.0.3/24"],
                 "vlans": [{"id": 10, "dhcp": true}, {"id": 20, "dhcp": true, "mtu": 1400}, {"id": 30}]},
                {"name": "eth2", "dhcp": true}
            ], "nameservers": ["9.9.9.9"]}})
        );
    }

    #[test]
    fn maps_merge_and_null_or_delete_removes() {
        let view = json!({"MachineConfig": {"hostname": "a", "sysctls": {"vm.x": "1", "vm.y": "2"},
                          "api": {"port": 50000, "ca": "x"}}});
        let patch = json!({"hostname": "b", "sysctls": {"vm.x": null, "vm.z": "3"},
                           "api": {"ca": {"$patch": "delete"}}});
        let out = run(view, Kind::MachineConfig, patch).expect("merges");
        assert_eq!(
            out,
            json!({"MachineConfig": {"hostname": "b", "sysctls": {"vm.y": "2", "vm.z": "3"},
                   "api": {"port": 50000}}})
        );
    }

    #[test]
    fn documents_are_created_replaced_and_deleted() {
        let view = json!({"MachineConfig": {"hostname": "a"}, "NetworkConfig": {"interfaces": []}});
        let out = run(view, Kind::UpdateConfig, json!({"channel": "https://u"})).expect("creates");
        assert_eq!(out["UpdateConfig"], json!({"channel": "https://u"}));
        let out = run(out, Kind::NetworkConfig, json!({"$patch": "delete"})).expect("deletes");
        assert!(out.get("NetworkConfig").is_none());
        let out = run(
            out,
            Kind::MachineConfig,
            json!({"$patch": "replace", "hostname": "z"}),
        )
        .expect("replaces");
        assert_eq!(out["MachineConfig"], json!({"hostname": "z"}));
    }

    #[test]
    fn replace_marker_replaces_keyed_list() {
        let view = json!({"MachineConfig": {"files": [{"path": "/etc/a"}, {"path": "/etc/b"}]}});
        let patch = json!({"files": [{"$patch": "replace"}, {"path": "/etc/c"}]});
        let out = run(view, Kind::MachineConfig, patch).expect("merges");
        assert_eq!(out["MachineConfig"]["files"], json!([{"path": "/etc/c"}]));
    }

    #[test]
    fn keyed_item_without_key_is_an_error() {
        let view = json!({"MachineConfig": {"kernelModules": [{"name": "a"}]}});
        let err = run(
            view,
            Kind::MachineConfig,
            json!({"kernelModules": [{"parameters": []}]}),
        )
        .expect_err("no key");
        assert_eq!(err.path, "MachineConfig.kernelModules[0]");
        assert!(err.message.contains("no `name`"), "{}", err.message);
        let view = json!({"MachineConfig": {}});
        let err = run(
            view,
            Kind::MachineConfig,
            json!({"api": {"$patch": "merge"}}),
        )
        .expect_err("bad directive");
        assert!(err.message.contains("unknown directive"), "{}", err.message);
    }
}
