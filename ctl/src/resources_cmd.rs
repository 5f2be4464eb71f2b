//! `basaltctl get TYPE [ID] [-w]`: the node's resources (ResourceService), one line per
//! resource (`ID  vVERSION  SPEC-as-JSON`), or with `-w` the initial listing then one line
//! per change (`created|updated|destroyed ID vVERSION SPEC`). TYPE is a short name
//! (`services`, `hostname`, `sysctls`, `modules`, `config`) or `NAMESPACE/Type`.

use anyhow::anyhow;
use basalt_proto::resource::v1 as rs;
use basaltctl::connect::Clients;
use serde_json::{Value, json};

use crate::follow::Line;

/// Short names of the published resource types: (name, namespace, type).
pub const TYPES: [(&str, &str, &str); 11] = [
    ("services", "services", "ServiceStatus"),
    ("hostname", "machine", "Hostname"),
    ("sysctls", "machine", "Sysctl"),
    ("modules", "machine", "KernelModule"),
    ("config", "config", "MachineConfig"),
    ("files", "machine", "File"),
    ("time", "time", "TimeStatus"),
    ("links", "network", "Link"),
    ("addresses", "network", "Address"),
    ("routes", "network", "Route"),
    ("resolvers", "network", "Resolver"),
];

/// `(namespace, type)` of a TYPE argument.
pub fn resolve(name: &str) -> anyhow::Result<(String, String)> {
    if let Some((ns, kind)) = name.split_once('/') {
        return Ok((ns.to_string(), kind.to_string()));
    }
    TYPES
        .iter()
        .find(|(short, _, _)| *short == name)
        .map(|(_, ns, kind)| (ns.to_string(), kind.to_string()))
        .ok_or_else(|| {
            let known: Vec<&str> = TYPES.iter().map(|t| t.0).collect();
            anyhow!(
                "unknown resource type {name:?}: use one of {} or NAMESPACE/Type",
                known.join(", ")
            )
        })
}

fn line(event: Option<&str>, r: &rs::Resource) -> Line {
    let meta = r.metadata.clone().unwrap_or_default();
    let spec: Value = serde_json::from_slice(&r.spec_json).unwrap_or(Value::Null);
    let text = format!("{:<24} v{:<4} {}", meta.id, meta.version, spec);
    Line {
        text: match event {
            Some(e) => format!("{e:<10} {text}"),
            None => text,
        },
        json: json!({"event": event, "namespace": meta.namespace, "type": meta.r#type,
            "id": meta.id, "version": meta.version, "owner": meta.owner, "spec": spec}),
    }
}

fn rpc_err(rpc: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{rpc}: {:?}: {}", s.code(), s.message())
}

/// Lists (or reads, or watches) resources on one node, passing each line to `emit`.
pub async fn get(
    c: &mut Clients,
    (namespace, kind): (String, String),
    id: Option<String>,
    watch: bool,
    emit: &mut (dyn FnMut(Line) + Send),
) -> anyhow::Result<()> {
    if watch {
        let mut s = c
            .resource
            .watch(rs::WatchRequest {
                namespace,
                r#type: kind,
                id: id.unwrap_or_default(),
            })
            .await
            .map_err(|s| rpc_err("Watch", s))?
            .into_inner();
        while let Some(e) = s.message().await.map_err(|s| rpc_err("Watch", s))? {
            let name = match rs::WatchEventType::try_from(e.r#type) {
                Ok(rs::WatchEventType::Existing) => "existing",
                Ok(rs::WatchEventType::Bootstrapped) => continue,
                Ok(rs::WatchEventType::Created) => "created",
                Ok(rs::WatchEventType::Updated) => "updated",
                Ok(rs::WatchEventType::Destroyed) => "destroyed",
                _ => "unknown",
            };
            if let Some(r) = &e.resource {
                emit(line(Some(name), r));
            }
        }
        return Ok(());
    }
    let resources = match id {
        Some(id) => c
            .resource
            .get(rs::GetRequest {
                namespace,
                r#type: kind,
                id,
            })
            .await
            .map_err(|s| rpc_err("Get", s))?
            .into_inner()
            .resource
            .into_iter()
            .collect(),
        None => {
            c.resource
                .list(rs::ListRequest {
                    namespace,
                    r#type: kind,
                })
                .await
                .map_err(|s| rpc_err("List", s))?
                .into_inner()
                .resources
        }
    };
    for r in &resources {
        emit(line(None, r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_namespaced_types() {
        assert_eq!(
            resolve("sysctls").unwrap(),
            ("machine".to_string(), "Sysctl".to_string())
        );
        assert_eq!(
            resolve("network/LinkStatus").unwrap(),
            ("network".to_string(), "LinkStatus".to_string())
        );
        let e = resolve("nope").unwrap_err().to_string();
        assert!(e.contains("services, hostname"), "{e}");
    }
}
