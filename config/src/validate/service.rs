//! Rules for the `ServiceConfig` document (reserved: validated, not run yet).

use std::collections::{BTreeMap, HashMap};

use super::Checker;
use super::rules;
use crate::schema::ServiceConfig;

const ROOT: &str = "ServiceConfig";

pub(super) fn check(c: &mut Checker, s: &ServiceConfig) {
    if !s.services.is_empty() {
        c.warn(
            &format!("{ROOT}.services"),
            "services are reserved: this release validates them but does not run them",
        );
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
        match (&service.image, &service.command) {
            (Some(_), Some(_)) => c.error(&root, "set either image or command, not both"),
            (None, None) => c.error(&root, "set image or command"),
            (Some(image), None) => {
                c.check(&format!("{root}.image"), rules::token(image));
            }
            (None, Some(command)) => {
                c.check(&format!("{root}.command"), rules::absolute_path(command));
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
