//! Rules for the `ServiceConfig` document: services (programs and containers) and
//! registries.

use std::collections::{BTreeMap, HashMap};

use super::Checker;
use super::rules;
use crate::image_ref::ImageReference;
use crate::schema::{
    MIN_MEMORY_BYTES, NetworkMode, PullPolicy, Registry, Service, ServiceConfig, parse_cpu,
    parse_memory,
};

const ROOT: &str = "ServiceConfig";

/// Service names machined uses for its own system services.
pub const RESERVED_SERVICE_NAMES: &[&str] = &["containerd"];

/// The Linux capabilities a container may be given (without the `CAP_` prefix).
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

pub(super) fn check(c: &mut Checker, s: &ServiceConfig) {
    if let Some(gc) = &s.image_gc
        && !(1..=100).contains(&gc.high_percent)
    {
        c.error(
            &format!("{ROOT}.imageGC.highPercent"),
            format!("{} is not a percentage from 1 to 100", gc.high_percent),
        );
    }
    let mut hosts = HashMap::new();
    for (i, registry) in s.registries.iter().enumerate() {
        check_registry(c, &format!("{ROOT}.registries[{i}]"), registry);
        if let Some(first) = hosts.insert(registry.host.as_str(), i) {
            c.error(
                &format!("{ROOT}.registries[{i}].host"),
                format!(
                    "registry `{}` is listed twice (also registries[{first}])",
                    registry.host
                ),
            );
        }
    }
    let mut names = HashMap::new();
    for (i, service) in s.services.iter().enumerate() {
        let root = format!("{ROOT}.services[{i}]");
        c.check(&format!("{root}.name"), rules::dns_label(&service.name));
        if let Some(first) = names.insert(service.name.as_str(), i) {
            c.error(
                &format!("{root}.name"),
                format!(
                    "service `{}` is listed twice (also services[{first}])",
                    service.name
                ),
            );
        }
        if RESERVED_SERVICE_NAMES.contains(&service.name.as_str()) {
            c.error(
                &format!("{root}.name"),
                format!(
                    "`{}` is the name of a system service of the node",
                    service.name
                ),
            );
        }
        match (&service.image, &service.command) {
            (Some(_), Some(_)) => c.error(&root, "set either image or command, not both"),
            (None, None) => c.error(&root, "set image or command"),
            (Some(image), None) => {
                c.check(
                    &format!("{root}.image"),
                    ImageReference::parse(image).map(drop),
                );
                check_container(c, &root, service);
            }
            (None, Some(command)) => {
                c.check(&format!("{root}.command"), rules::absolute_path(command));
                for field in container_only_fields(service) {
                    c.error(
                        &format!("{root}.{field}"),
                        "applies to containers only (set image, not command)",
                    );
                }
            }
        }
        for (j, arg) in service.args.iter().enumerate() {
            if arg.contains('\0') {
                c.error(&format!("{root}.args[{j}]"), "contains a NUL character");
            }
        }
        for (name, value) in &service.env {
            let path = format!("{root}.env.{name}");
            c.check(&path, rules::env_name(name));
            if value.contains('\0') {
                c.error(&path, "value contains a NUL character");
            }
        }
    }
    // Dependencies: existing, not self, not repeated, no cycles.
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, service) in s.services.iter().enumerate() {
        let mut seen = Vec::new();
        for (j, dep) in service.depends_on.iter().enumerate() {
            let path = format!("{ROOT}.services[{i}].dependsOn[{j}]");
            if dep == &service.name {
                c.error(&path, "a service cannot depend on itself");
            } else if !names.contains_key(dep.as_str()) {
                c.error(&path, format!("no service is named `{dep}`"));
            } else if seen.contains(&dep.as_str()) {
                c.warn(&path, format!("`{dep}` is listed twice"));
            } else {
                seen.push(dep.as_str());
            }
        }
        graph.entry(service.name.as_str()).or_default().extend(seen);
    }
    if let Some(cycle) = find_cycle(&graph) {
        c.error(
            &format!("{ROOT}.services"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
    }
}

fn check_registry(c: &mut Checker, root: &str, r: &Registry) {
    c.check(&format!("{root}.host"), rules::host_port(&r.host));
    if !r.ca.is_empty() {
        let parsed = crate::keys::parse_certificates(&r.ca).map_err(|e| e.to_string());
        c.check(&format!("{root}.ca"), parsed.map(drop));
    }
    match &r.auth {
        None if r.ca.is_empty() => c.error(
            root,
            format!(
                "registry `{}` sets neither `ca` nor `auth`: list a registry only to trust its CA or to give credentials",
                r.host
            ),
        ),
        None => {}
        Some(auth) => {
            if auth.username.is_empty() {
                c.error(&format!("{root}.auth.username"), "is empty");
            }
            if auth.password.expose().is_empty() {
                c.error(&format!("{root}.auth.password"), "is empty");
            }
        }
    }
}

/// The container-only fields `service` sets.
fn container_only_fields(s: &Service) -> Vec<&'static str> {
    [
        ("pullPolicy", s.pull_policy != PullPolicy::default()),
        ("network", s.network != NetworkMode::default()),
        ("volumes", !s.volumes.is_empty()),
        ("devices", !s.devices.is_empty()),
        ("readOnlyRootFilesystem", s.read_only_root_filesystem),
        ("memory", s.memory.is_some()),
        ("cpu", s.cpu.is_some()),
        ("capabilities", !s.capabilities.is_empty()),
        ("privileged", s.privileged),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| name)
    .collect()
}

fn check_container(c: &mut Checker, root: &str, s: &Service) {
    let mut paths = HashMap::new();
    for (j, v) in s.volumes.iter().enumerate() {
        let path = format!("{root}.volumes[{j}]");
        c.check(
            &format!("{path}.name"),
            rules::dns_label(&v.name).map_err(|e| format!("volume name {e}")),
        );
        c.check(
            &format!("{path}.mountPath"),
            rules::absolute_path(&v.mount_path),
        );
        if let Some(first) = paths.insert(v.mount_path.as_str(), j) {
            c.error(
                &format!("{path}.mountPath"),
                format!(
                    "`{}` is mounted twice (also volumes[{first}])",
                    v.mount_path
                ),
            );
        }
    }
    for (j, d) in s.devices.iter().enumerate() {
        let path = format!("{root}.devices[{j}]");
        match rules::absolute_path(d) {
            Err(e) => c.error(&path, e),
            Ok(()) if !d.starts_with("/dev/") => {
                c.error(&path, format!("`{d}` is not a device node under /dev/"))
            }
            Ok(()) => {}
        }
    }
    if let Some(m) = &s.memory {
        let r = parse_memory(m).and_then(|bytes| {
            if bytes < MIN_MEMORY_BYTES {
                Err(format!(
                    "`{m}` is below the {} MiB a container needs to start",
                    MIN_MEMORY_BYTES >> 20
                ))
            } else {
                Ok(())
            }
        });
        c.check(&format!("{root}.memory"), r);
    }
    if let Some(cpu) = &s.cpu {
        c.check(&format!("{root}.cpu"), parse_cpu(cpu).map(drop));
    }
    for (j, cap) in s.capabilities.iter().enumerate() {
        let bare = cap.strip_prefix("CAP_").unwrap_or(cap);
        if !CAPABILITIES.contains(&bare) {
            c.error(
                &format!("{root}.capabilities[{j}]"),
                format!("`{cap}` is not a Linux capability (e.g. NET_ADMIN, SYS_TIME)"),
            );
        }
    }
    if s.privileged && !s.capabilities.is_empty() {
        c.warn(
            &format!("{root}.capabilities"),
            "not needed: a privileged container has every capability",
        );
    }
}

/// One dependency cycle, as the list of names with the first repeated at the end.
fn find_cycle<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Visiting,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, State>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match state.get(node) {
            Some(State::Done) => return None,
            Some(State::Visiting) => {
                let start = stack.iter().position(|n| *n == node)?;
                let mut cycle = stack[start..].to_vec();
                cycle.push(node);
                return Some(cycle);
            }
            None => {}
        }
        state.insert(node, State::Visiting);
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node, State::Done);
        None
    }
    let mut state = HashMap::new();
    for node in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::schema::{Config, MachineConfig, Service, ServiceConfig};

    fn service(name: &str, deps: &[&str]) -> Service {
        Service {
            name: name.into(),
            image: Some(format!("registry.example.com/{name}:1")),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Service::default()
        }
    }

    #[test]
    fn dependency_rules() {
        let mut bad = service("Bad", &["ghost", "Bad"]);
        bad.command = Some("bin/app".into());
        let services = ServiceConfig {
            services: vec![
                service("a", &["b"]),
                service("b", &["c"]),
                service("c", &["a"]),
                bad,
            ],
            ..ServiceConfig::default()
        };
        let machine = MachineConfig {
            hostname: "a".into(),
            time_servers: vec!["10.0.0.1".into()],
            ..MachineConfig::default()
        };
        let v = Config {
            services: Some(services),
            ..Config::new(machine)
        }
        .validate();
        let errors: Vec<String> = v.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "ServiceConfig.services[3].name: `Bad` must be 1 to 63 lowercase letters, digits and `-`, not starting or ending with `-`",
                "ServiceConfig.services[3]: set either image or command, not both",
                "ServiceConfig.services[3].dependsOn[0]: no service is named `ghost`",
                "ServiceConfig.services[3].dependsOn[1]: a service cannot depend on itself",
                "ServiceConfig.services: dependency cycle: a -> b -> c -> a",
            ]
        );
    }
}

#[cfg(test)]
mod container_tests {
    use crate::Config;

    const MACHINE: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: n1\ntimeServers: [10.0.0.1]\n";

    fn errors(services: &str) -> Vec<String> {
        let config = Config::from_yaml(&format!(
            "{MACHINE}---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n{services}"
        ))
        .unwrap();
        config
            .validate()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn container_fields_are_checked_and_named() {
        let e = errors(
            "registries:\n  - host: 'bad host'\n    ca: nope\n  - host: r.local:5000\n    ca: nope\n  \
             - host: bare.local\n  - host: auth.local\n    auth: {username: '', password: ''}\nservices:\n  \
             - name: web\n    image: Web:1\n    memory: 1Mi\n    cpu: lots\n    \
             volumes: [{name: ../x, mountPath: /data}, {name: b, mountPath: /data}]\n    \
             devices: [/etc/passwd]\n    capabilities: [FLY]\n  \
             - name: prog\n    command: /bin/x\n    memory: 64Mi\n  \
             - name: containerd\n    image: busybox\n",
        );
        let want = [
            "ServiceConfig.registries[0].host: `bad host` is neither a host name nor an IP address",
            "ServiceConfig.registries[0].ca:",
            "ServiceConfig.registries[1].ca:",
            "ServiceConfig.registries[2]: registry `bare.local` sets neither `ca` nor `auth`",
            "ServiceConfig.registries[3].auth.username: is empty",
            "ServiceConfig.registries[3].auth.password: is empty",
            "ServiceConfig.services[0].image: `Web:1` is not an image reference: repository component `Web`",
            "ServiceConfig.services[0].volumes[0].name: volume name `../x` must be",
            "ServiceConfig.services[0].volumes[1].mountPath: `/data` is mounted twice (also volumes[0])",
            "ServiceConfig.services[0].devices[0]: `/etc/passwd` is not a device node under /dev/",
            "ServiceConfig.services[0].memory: `1Mi` is below the 6 MiB a container needs to start",
            "ServiceConfig.services[0].cpu: `lots` is not a CPU quantity",
            "ServiceConfig.services[0].capabilities[0]: `FLY` is not a Linux capability",
            "ServiceConfig.services[1].memory: applies to containers only",
            "ServiceConfig.services[2].name: `containerd` is the name of a system service",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for w in want {
            assert!(
                e.iter().any(|x| x.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
        assert!(errors("services:\n  - name: web\n    image: r.local:5000/web:1\n    memory: 64Mi\n    cpu: 500m\n    devices: [/dev/i2c-1]\n    capabilities: [CAP_NET_ADMIN, SYS_TIME]\n    volumes: [{name: data, mountPath: /data, readOnly: true}]\n").is_empty());
    }

    #[test]
    fn the_image_gc_level_is_a_percentage() {
        assert_eq!(
            errors("imageGC:\n  highPercent: 0\n"),
            ["ServiceConfig.imageGC.highPercent: 0 is not a percentage from 1 to 100"]
        );
        assert!(errors("imageGC:\n  highPercent: 100\n").is_empty());
        let config = Config::from_yaml(&format!(
            "{MACHINE}---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n"
        ))
        .unwrap();
        assert_eq!(config.services.unwrap().image_gc_high_percent(), 85);
    }
}
