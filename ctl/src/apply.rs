//! `basaltctl apply-config` and `basaltctl patch`: ApplyConfiguration with a file, or with
//! the node's current configuration (GetConfiguration) patched on the client.
//!
//! A patch is applied to the configuration the node runs, decoded and validated with
//! `basalt-config` before anything is sent, so a patch that breaks the configuration is
//! refused here with every problem listed; the node validates again before storing it.
//! Patching is read-modify-write: a configuration applied by somebody else between the read
//! and the apply is overwritten (the reply's diff shows what changed).

use std::fmt::Write as _;

use anyhow::Context;
use basalt_proto::machine::v1 as pb;
use serde_json::json;

use crate::reply::{Rendered, status_err};
use basaltctl::connect::Clients;

/// Apply mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Live when possible, else reboot.
    Auto,
    /// Live only.
    NoReboot,
    /// Store and reboot.
    Reboot,
    /// Store for the next boot.
    Staged,
    /// Live on trial with auto-revert.
    Try,
}

impl Mode {
    pub(crate) fn proto(self) -> pb::ApplyMode {
        match self {
            Mode::Auto => pb::ApplyMode::Auto,
            Mode::NoReboot => pb::ApplyMode::NoReboot,
            Mode::Reboot => pb::ApplyMode::Reboot,
            Mode::Staged => pb::ApplyMode::Staged,
            Mode::Try => pb::ApplyMode::Try,
        }
    }
}

/// Sends `data` with ApplyConfiguration and renders the reply.
pub async fn apply(
    c: &mut Clients,
    data: Vec<u8>,
    mode: Mode,
    dry_run: bool,
    try_timeout: u64,
) -> anyhow::Result<Rendered> {
    let req = pb::ApplyConfigurationRequest {
        data,
        mode: mode.proto() as i32,
        dry_run,
        try_timeout: Some(prost_types::Duration {
            seconds: try_timeout as i64,
            nanos: 0,
        }),
    };
    let r = c
        .machine
        .apply_configuration(req)
        .await
        .map_err(|s| status_err("ApplyConfiguration", s))?
        .into_inner();
    let mut text = r.message.clone();
    for w in &r.warnings {
        write!(text, "\nwarning: {w}")?;
    }
    if dry_run && !r.diff.is_empty() {
        write!(text, "\n{}", r.diff.trim_end())?;
    }
    let mode_name = pb::ApplyMode::try_from(r.mode)
        .map(|m| m.as_str_name())
        .unwrap_or("?");
    Ok(Rendered {
        text,
        json: json!({"message": r.message, "mode": mode_name, "warnings": r.warnings,
            "diff": r.diff, "version": r.version, "reboot": r.reboot}),
    })
}

/// Reads the node's configuration, applies `patches`, validates, and applies the result.
pub async fn patch(
    c: &mut Clients,
    patches: &[basalt_config::Patch],
    mode: Mode,
    dry_run: bool,
    try_timeout: u64,
) -> anyhow::Result<Rendered> {
    let current = c
        .machine
        .get_configuration(pb::GetConfigurationRequest {})
        .await
        .map_err(|s| status_err("GetConfiguration", s))?
        .into_inner();
    let data = patched(&current.data, patches)
        .with_context(|| format!("patching configuration version {}", current.version))?;
    apply(c, data, mode, dry_run, try_timeout).await
}

/// `current` with `patches` applied, validated, as canonical YAML.
fn patched(current: &[u8], patches: &[basalt_config::Patch]) -> anyhow::Result<Vec<u8>> {
    let text = std::str::from_utf8(current).context("the node's configuration is not UTF-8")?;
    let config =
        basalt_config::Config::from_yaml(text).context("decoding the node's configuration")?;
    let (config, _) = config.patch_and_validate(patches)?;
    Ok(config.to_yaml()?.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n";

    #[test]
    fn patches_the_current_configuration() {
        let p = basalt_config::Patch::parse(
            "- {op: add, path: /MachineConfig/sysctls, value: {vm.swappiness: \"5\"}}\n",
        )
        .unwrap();
        let out = patched(BASE.as_bytes(), &[p]).unwrap();
        let config = basalt_config::Config::from_yaml(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(config.machine.sysctls["vm.swappiness"], "5");
        assert_eq!(config.machine.hostname, "edge-1");
    }

    #[test]
    fn refuses_a_patch_that_breaks_the_configuration() {
        let p = basalt_config::Patch::parse(
            "- {op: replace, path: /MachineConfig/hostname, value: \"no spaces allowed\"}\n",
        )
        .unwrap();
        let err = format!("{:#}", patched(BASE.as_bytes(), &[p]).unwrap_err());
        assert!(err.contains("MachineConfig.hostname"), "{err}");
    }
}
