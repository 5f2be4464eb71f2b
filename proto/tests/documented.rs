//! Every service, RPC, message, field, enum and enum value of the API carries a comment,
//! and the expected packages and services exist.

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use std::collections::HashSet;

// Field numbers inside descriptor.proto, used by `SourceCodeInfo` paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn walk_enum(
    e: &EnumDescriptorProto,
    path: Vec<i32>,
    name: String,
    out: &mut Vec<(Vec<i32>, String)>,
) {
    for (i, v) in e.value.iter().enumerate() {
        let mut p = path.clone();
        p.extend([ENUM_VALUE, i as i32]);
        out.push((p, format!("{name}.{}", v.name())));
    }
    out.push((path, name));
}

fn walk_message(
    m: &DescriptorProto,
    path: Vec<i32>,
    name: String,
    out: &mut Vec<(Vec<i32>, String)>,
) {
    for (i, f) in m.field.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_FIELD, i as i32]);
        out.push((p, format!("{name}.{}", f.name())));
    }
    for (i, nested) in m.nested_type.iter().enumerate() {
        // Map entries are synthesised by the compiler and cannot carry comments.
        if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let mut p = path.clone();
        p.extend([MESSAGE_NESTED, i as i32]);
        walk_message(nested, p, format!("{name}.{}", nested.name()), out);
    }
    for (i, e) in m.enum_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_ENUM, i as i32]);
        walk_enum(e, p, format!("{name}.{}", e.name()), out);
    }
    out.push((path, name));
}

#[test]
fn every_element_of_the_api_is_documented() {
    let set = FileDescriptorSet::decode(basalt_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut undocumented = Vec::new();
    let mut files = 0;
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("basalt."))
    {
        files += 1;
        let info = file.source_code_info.as_ref().expect("source info is kept");
        let documented: HashSet<&[i32]> = info
            .location
            .iter()
            .filter(|l| l.leading_comments().trim().len() > 2)
            .map(|l| l.path.as_slice())
            .collect();
        let mut elements = Vec::new();
        for (i, m) in file.message_type.iter().enumerate() {
            walk_message(
                m,
                vec![FILE_MESSAGE, i as i32],
                m.name().to_string(),
                &mut elements,
            );
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            walk_enum(
                e,
                vec![FILE_ENUM, i as i32],
                e.name().to_string(),
                &mut elements,
            );
        }
        for (i, s) in file.service.iter().enumerate() {
            for (j, m) in s.method.iter().enumerate() {
                elements.push((
                    vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32],
                    format!("{}.{}", s.name(), m.name()),
                ));
            }
            elements.push((vec![FILE_SERVICE, i as i32], s.name().to_string()));
        }
        for (path, name) in elements {
            if !documented.contains(path.as_slice()) {
                undocumented.push(format!("{}: {name}", file.name()));
            }
        }
    }
    assert_eq!(files, 3, "machine, resource and audit packages");
    assert!(
        undocumented.is_empty(),
        "undocumented:\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn rpc_paths_cover_the_three_services() {
    let paths = basalt_proto::all_rpc_paths();
    for expected in [
        "/basalt.machine.v1.MachineService/Version",
        "/basalt.machine.v1.MachineService/ApplyConfiguration",
        "/basalt.machine.v1.MachineService/Logs",
        "/basalt.resource.v1.ResourceService/Watch",
        "/basalt.audit.v1.AuditService/Query",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing from {paths:?}"
        );
    }
    let unique: HashSet<_> = paths.iter().collect();
    assert_eq!(unique.len(), paths.len(), "duplicate RPC paths");
}
