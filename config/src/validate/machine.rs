//! Rules for the `MachineConfig` document.

use std::collections::HashMap;

use super::Checker;
use super::rules;
use crate::keys;
use crate::schema::{
    ApiConfig, File, MAX_REVOKED_TOKEN_IDS, MAX_TOKEN_MAX_LIFETIME_SECONDS, MachineConfig,
    RESERVED_FILE_PREFIXES as RESERVED_PREFIXES, TokenPolicy,
    WRITABLE_FILE_PREFIXES as WRITABLE_PREFIXES,
};

const ROOT: &str = "MachineConfig";

/// Kernel arguments that the image and bootloader set and a config may not override.
const RESERVED_KERNEL_ARGS: [&str; 5] = ["root", "init", "rootfstype", "ro", "rw"];

pub(super) fn check(c: &mut Checker, m: &MachineConfig) {
    if m.hostname.is_empty() {
        c.error(
            &format!("{ROOT}.hostname"),
            "the host name must not be empty",
        );
    } else {
        c.check(&format!("{ROOT}.hostname"), rules::hostname(&m.hostname));
    }
    if let Some(board) = &m.board {
        c.check(&format!("{ROOT}.board"), rules::dns_label(board));
    }
    if let Some(cluster) = &m.cluster {
        c.check(
            &format!("{ROOT}.cluster"),
            rules::word(cluster, 63, "cluster id"),
        );
    }
    check_api(c, &m.api);
    for (i, arg) in m.kernel_args.iter().enumerate() {
        let path = format!("{ROOT}.kernelArgs[{i}]");
        if c.check(&path, rules::token(arg)).is_none() {
            continue;
        }
        let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
        if RESERVED_KERNEL_ARGS.contains(&name) || name.starts_with("basalt.") {
            c.error(
                &path,
                format!("`{name}` is set by the image and bootloader and cannot be overridden"),
            );
        }
    }
    for (name, value) in &m.sysctls {
        let path = format!("{ROOT}.sysctls.{name}");
        c.check(&path, rules::sysctl_name(name));
        c.check(
            &path,
            rules::single_line(value).map_err(|e| format!("value {e}")),
        );
    }
    let mut modules = HashMap::new();
    for (i, module) in m.kernel_modules.iter().enumerate() {
        let path = format!("{ROOT}.kernelModules[{i}]");
        c.check(
            &format!("{path}.name"),
            rules::word(&module.name, 55, "module name"),
        );
        // modprobe treats `-` and `_` alike.
        if let Some(first) = modules.insert(module.name.replace('-', "_"), i) {
            c.error(
                &format!("{path}.name"),
                format!(
                    "module `{}` is listed twice (also kernelModules[{first}])",
                    module.name
                ),
            );
        }
        for (j, parameter) in module.parameters.iter().enumerate() {
            let path = format!("{path}.parameters[{j}]");
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            c.check(&path, rules::word(name, 64, "parameter name"));
            if value
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                c.error(&path, format!("value of `{name}` contains whitespace"));
            }
        }
    }
    let mut paths = HashMap::new();
    for (i, file) in m.files.iter().enumerate() {
        check_file(c, &format!("{ROOT}.files[{i}]"), file);
        if let Some(first) = paths.insert(file.path.as_str(), i) {
            c.error(
                &format!("{ROOT}.files[{i}].path"),
                format!("`{}` is listed twice (also files[{first}])", file.path),
            );
        }
    }
    if m.time_servers.is_empty() {
        c.warn(
            &format!("{ROOT}.timeServers"),
            "no time servers: the clock is not synchronised, which breaks certificate checks and maintenance windows",
        );
    }
    for (i, server) in m.time_servers.iter().enumerate() {
        c.check(
            &format!("{ROOT}.timeServers[{i}]"),
            rules::host_port(server),
        );
    }
}

fn check_api(c: &mut Checker, api: &ApiConfig) {
    let root = format!("{ROOT}.api");
    c.check(
        &format!("{root}.listenAddress"),
        rules::ip(&api.listen_address),
    );
    if api.port == 0 {
        c.error(&format!("{root}.port"), "port 0 is not a listening port");
    }
    match (&api.ca, &api.certificate, &api.key) {
        (None, None, None) => c.warn(
            &root,
            "no ca, certificate and key: the node stays in maintenance mode (self-signed certificate, read-only API plus ApplyConfiguration)",
        ),
        (ca, certificate, key) => {
            let need = "is required with the other API TLS settings (ca, certificate, key)";
            match ca {
                Some(ca) => {
                    let r = keys::parse_certificates(ca).map_err(|e| e.to_string());
                    c.check(&format!("{root}.ca"), r);
                }
                None => c.error(&format!("{root}.ca"), format!("the client CA {need}")),
            }
            match certificate {
                Some(cert) => {
                    let r = keys::parse_certificates(cert).map_err(|e| e.to_string());
                    c.check(&format!("{root}.certificate"), r);
                }
                None => c.error(&format!("{root}.certificate"), format!("the server certificate {need}")),
            }
            match key {
                Some(key) => {
                    let r = keys::check_private_key(key.expose()).map_err(|e| e.to_string());
                    c.check(&format!("{root}.key"), r);
                }
                None => c.error(&format!("{root}.key"), format!("the server key {need}")),
            }
        }
    }
    let mut ids = HashMap::new();
    for (i, token_key) in api.trusted_token_keys.iter().enumerate() {
        let path = format!("{root}.trustedTokenKeys[{i}]");
        c.check(
            &format!("{path}.id"),
            rules::word(&token_key.id, 64, "key id"),
        );
        if let Some(first) = ids.insert(token_key.id.as_str(), i) {
            c.error(
                &format!("{path}.id"),
                format!(
                    "key id `{}` is used twice (also trustedTokenKeys[{first}])",
                    token_key.id
                ),
            );
        }
        let r = keys::parse_ed25519_public_key(&token_key.public_key).map_err(|e| e.to_string());
        c.check(&format!("{path}.publicKey"), r);
        c.check(
            &format!("{path}.audience"),
            rules::token(&token_key.audience),
        );
    }
    if let Some(policy) = &api.token_policy {
        check_token_policy(c, &format!("{root}.tokenPolicy"), policy);
    }
}

fn check_token_policy(c: &mut Checker, root: &str, policy: &TokenPolicy) {
    if let Some(max) = policy.max_lifetime_seconds
        && !(60..=MAX_TOKEN_MAX_LIFETIME_SECONDS).contains(&max)
    {
        c.error(
            &format!("{root}.maxLifetimeSeconds"),
            format!(
                "{max} is outside 60 to {MAX_TOKEN_MAX_LIFETIME_SECONDS} (one minute to one year)"
            ),
        );
    }
    if policy.revoked_ids.len() > MAX_REVOKED_TOKEN_IDS {
        c.error(
            &format!("{root}.revokedIds"),
            format!(
                "{} ids, at most {MAX_REVOKED_TOKEN_IDS}",
                policy.revoked_ids.len()
            ),
        );
    }
    for (i, id) in policy.revoked_ids.iter().enumerate() {
        if id.trim().is_empty() || id.len() > 256 {
            c.error(
                &format!("{root}.revokedIds[{i}]"),
                "a token id is 1 to 256 characters, not blank",
            );
        }
    }
}

fn check_file(c: &mut Checker, root: &str, file: &File) {
    let path = format!("{root}.path");
    if c.check(&path, rules::absolute_path(&file.path)).is_some() {
        if !WRITABLE_PREFIXES.iter().any(|p| file.path.starts_with(p)) {
            c.error(
                &path,
                format!(
                    "`{}` is on the read-only system image; files may only be written under {}",
                    file.path,
                    WRITABLE_PREFIXES.join(" and ")
                ),
            );
        } else if let Some(p) = RESERVED_PREFIXES
            .iter()
            .find(|p| file.path.starts_with(*p) || file.path == p.trim_end_matches('/'))
        {
            c.error(
                &path,
                format!("`{}` is under {p}, which belongs to machined", file.path),
            );
        }
    }
    if let Some(mode) = file.mode {
        let mode_path = format!("{root}.mode");
        if mode.0 > 0o7777 {
            c.error(
                &mode_path,
                format!("mode {:o} (octal) is above 7777", mode.0),
            );
        } else if mode.0 & 0o7000 != 0 {
            let decimal = mode.0.to_string();
            if decimal.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                c.warn(
                    &mode_path,
                    format!(
                        "mode {mode} sets setuid/setgid/sticky bits; if you meant octal {decimal}, write \"0{decimal}\" (a bare {decimal} is decimal)"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::schema::{
        Config, FileMode, KernelModule, MachineConfig, Secret, TokenKey, TokenPolicy,
    };
    use crate::validate::Validation;

    fn validate(m: MachineConfig) -> Validation {
        Config::new(m).validate()
    }

    fn base() -> MachineConfig {
        MachineConfig {
            hostname: "edge-1".into(),
            time_servers: vec!["pool.ntp.org".into()],
            ..MachineConfig::default()
        }
    }

    fn error_paths(v: &Validation) -> Vec<&str> {
        v.errors.iter().map(|i| i.path.as_str()).collect()
    }

    #[test]
    fn partial_tls_settings_are_errors() {
        let mut m = base();
        m.api.key = Some(Secret::new(
            "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n",
        ));
        let v = validate(m);
        assert_eq!(
            error_paths(&v),
            ["MachineConfig.api.ca", "MachineConfig.api.certificate"]
        );
    }

    #[test]
    fn token_policy_bounds() {
        let mut m = base();
        m.api.token_policy = Some(TokenPolicy {
            max_lifetime_seconds: Some(10),
            revoked_ids: vec!["ci-1".into(), " ".into()],
        });
        let v = validate(m.clone());
        assert_eq!(
            error_paths(&v),
            [
                "MachineConfig.api.tokenPolicy.maxLifetimeSeconds",
                "MachineConfig.api.tokenPolicy.revokedIds[1]"
            ]
        );
        m.api.token_policy = Some(TokenPolicy {
            max_lifetime_seconds: Some(3600),
            revoked_ids: vec!["ci-1".into()],
        });
        assert!(validate(m.clone()).errors.is_empty());
        assert_eq!(m.api.token_max_lifetime_seconds(), 3600);
        m.api.token_policy = None;
        assert_eq!(m.api.token_max_lifetime_seconds(), 86_400);
    }

    #[test]
    fn token_keys() {
        let mut m = base();
        let key = TokenKey {
            id: "ci".into(),
            public_key: "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=".into(),
            audience: "basalt".into(),
        };
        m.api.trusted_token_keys = vec![
            key.clone(),
            TokenKey {
                public_key: "AAAA".into(),
                ..key
            },
        ];
        let v = validate(m);
        assert_eq!(
            error_paths(&v),
            [
                "MachineConfig.api.trustedTokenKeys[1].id",
                "MachineConfig.api.trustedTokenKeys[1].publicKey"
            ]
        );
        assert!(v.errors[1].message.contains("3 bytes long"), "{v}");
    }

    #[test]
    fn files_modules_and_kernel_args() {
        let mut m = base();
        m.kernel_args = vec!["console=ttyS0".into(), "init=/bin/sh".into(), "a b".into()];
        m.kernel_modules = vec![
            KernelModule {
                name: "br_netfilter".into(),
                parameters: vec!["x=1 2".into()],
            },
            KernelModule {
                name: "br-netfilter".into(),
                parameters: vec![],
            },
        ];
        m.files = vec![
            crate::schema::File {
                path: "/var/lib/basalt/state".into(),
                ..Default::default()
            },
            crate::schema::File {
                path: "/etc/app.conf".into(),
                mode: Some(FileMode(644)),
                ..Default::default()
            },
            crate::schema::File {
                path: "/etc/app.conf".into(),
                ..Default::default()
            },
        ];
        let v = validate(m);
        assert_eq!(
            error_paths(&v),
            [
                "MachineConfig.kernelArgs[1]",
                "MachineConfig.kernelArgs[2]",
                "MachineConfig.kernelModules[0].parameters[0]",
                "MachineConfig.kernelModules[1].name",
                "MachineConfig.files[0].path",
                "MachineConfig.files[2].path",
            ],
            "{v}"
        );
        assert_eq!(v.warnings.len(), 2, "{v}");
        assert!(v.warnings[1].message.contains("write \"0644\""), "{v}");
    }
}
