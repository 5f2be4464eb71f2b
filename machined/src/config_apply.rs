//! Applying a decoded configuration to the running machine: the part of an apply that
//! touches the host and the API, shared by ApplyConfiguration, the revert of an unconfirmed
//! TRY and machined's start.
//!
//! What is applied live: the hostname, sysctls (in name order), kernel modules with their
//! parameters (in list order) and `files` (in list order, see [`crate::host_files`])
//! through [`HostActions`], and the API's TLS material and trusted token keys. A
//! host action that fails does not stop the others; it becomes a warning naming the item,
//! because a missing module must not leave the node with its old API certificates. Kernel
//! arguments take effect at the next boot; network settings are applied at start by
//! [`crate::network`].
//!
//! Time servers are used by the time-sync controller ([`crate::time_sync`]), which reads
//! the stored configuration itself. A value changed behind machined's back is corrected by
//! [`crate::reconcile`]. Limits: parameters of a module that is already loaded are not
//! changed (the kernel takes parameters only at load time).

use basalt_config::Config;
use basalt_config::schema::{DEFAULT_FILE_MODE, FileOp};

use crate::api::ApiControl;
use crate::host::HostActions;
use crate::node::NodeError;
use crate::settings::{ApiSettings, parse_config};

/// What applying a configuration live did.
#[derive(Debug, Default)]
pub struct LiveOutcome {
    /// Items that could not be applied, each naming the item.
    pub warnings: Vec<String>,
    /// Whether the API's TLS settings changed (its listener was restarted).
    pub api_restarted: bool,
    /// The API could not switch to the new settings (it keeps the old ones).
    pub api_error: Option<NodeError>,
}

/// Applies the machine settings (hostname, sysctls, modules); returns a warning per item
/// that failed.
pub fn apply_machine(host: &dyn HostActions, config: &Config) -> Vec<String> {
    let machine = &config.machine;
    let mut warnings = Vec::new();
    if !machine.hostname.is_empty()
        && let Err(e) = host.set_hostname(&machine.hostname)
    {
        warnings.push(format!("MachineConfig.hostname: {e}"));
    }
    for (key, value) in &machine.sysctls {
        if let Err(e) = host.set_sysctl(key, value) {
            warnings.push(format!("MachineConfig.sysctls.{key}: {e}"));
        }
    }
    for (i, module) in machine.kernel_modules.iter().enumerate() {
        if let Err(e) = host.load_module(&module.name, &module.parameters) {
            warnings.push(format!(
                "MachineConfig.kernelModules[{i}] ({}): {e}",
                module.name
            ));
        }
    }
    for (i, file) in machine.files.iter().enumerate() {
        if let Err(e) = host.write_file(
            &file.path,
            &file.content,
            file_mode(file),
            file.op == FileOp::Append,
        ) {
            warnings.push(format!("MachineConfig.files[{i}] ({}): {e}", file.path));
        }
    }
    warnings
}

/// The permission bits a configured file gets.
pub fn file_mode(file: &basalt_config::schema::File) -> u32 {
    file.mode.unwrap_or(DEFAULT_FILE_MODE).0
}

/// Applies a validated configuration live: machine settings, then the API.
pub fn apply_live(
    host: &dyn HostActions,
    api: &ApiControl,
    config: &Config,
    settings: &ApiSettings,
) -> LiveOutcome {
    let mut outcome = LiveOutcome {
        warnings: apply_machine(host, config),
        ..LiveOutcome::default()
    };
    match api.switch_to_secure(settings) {
        Ok(restarted) => outcome.api_restarted = restarted,
        Err(e) => outcome.api_error = Some(NodeError::InvalidConfig(e.to_string())),
    }
    outcome
}

/// Decodes and applies a stored configuration (one that was valid when it was stored);
/// returns it decoded.
pub fn apply_stored(
    host: &dyn HostActions,
    api: &ApiControl,
    data: &[u8],
) -> Result<Config, NodeError> {
    let (config, mut warnings) = parse_config(data)?;
    let settings = ApiSettings::from_config(&config, &mut warnings)?;
    let outcome = apply_live(host, api, &config, &settings);
    outcome.api_error.map_or(Ok(config), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{DevHost, HostAction};

    #[test]
    fn machine_settings_become_host_actions_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let host = DevHost::new(dir.path());
        let config = Config::from_yaml(
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n\
             sysctls:\n  vm.swappiness: \"10\"\n  net.ipv4.ip_forward: \"1\"\n\
             kernelModules:\n  - name: br_netfilter\n  - name: dummy\n    parameters: [numdummies=2]\n\
             files:\n  - path: /etc/app/a.conf\n    content: \"x=1\\n\"\n    mode: \"0600\"\n",
        )
        .unwrap();
        let warnings = apply_machine(&host, &config);
        let actions: Vec<HostAction> = host.recorded().into_iter().map(|r| r.action).collect();
        assert_eq!(
            actions,
            vec![
                HostAction::SetHostname {
                    hostname: "edge-1".into()
                },
                HostAction::SetSysctl {
                    key: "net.ipv4.ip_forward".into(),
                    value: "1".into()
                },
                HostAction::SetSysctl {
                    key: "vm.swappiness".into(),
                    value: "10".into()
                },
                HostAction::LoadModule {
                    name: "br_netfilter".into(),
                    parameters: vec![],
                },
                HostAction::LoadModule {
                    name: "dummy".into(),
                    parameters: vec!["numdummies=2".into()],
                },
                HostAction::WriteFile {
                    path: "/etc/app/a.conf".into(),
                    mode: 0o600,
                    append: false,
                    content: "x=1\n".into(),
                },
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            std::fs::read_to_string(host.dev_root().join("etc/app/a.conf")).unwrap(),
            "x=1\n"
        );
    }
}
