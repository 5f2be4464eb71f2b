//! Authorization: the one table that says who may call which RPC.
//!
//! [`RULES`] maps every RPC, by its full gRPC method path, to the roles that may call it and
//! to whether a node in maintenance mode serves it. Anything not in the table is denied
//! (deny by default); a test checks the table against the compiled `.proto` descriptors, so
//! a new RPC cannot ship without a row.
//!
//! Roles are nested: `basalt:admin` may do everything `basalt:operator` may, which may do
//! everything `basalt:reader` may; the table spells the allowed roles out anyway so that
//! each row reads on its own.
//!
//! | role | for |
//! |---|---|
//! | `basalt:reader` | observing: versions, boot state, logs, stats, resources |
//! | `basalt:operator` | day-2 operations: reboot, services, rollback, audit |
//! | `basalt:admin` | configuration, reset, and reading the configuration (it holds keys) |
//!
//! Maintenance mode (no configuration yet, no client certificates): only the rows marked
//! `maintenance: true` are served, to anyone on the network: `Version` (to check the node
//! and its fingerprint) and `ApplyConfiguration` (to end maintenance mode). Nothing else:
//! logs, kernel messages, processes, events, resources and the audit log tell an
//! unauthenticated caller more about the machine than it needs to configure it.

use crate::api::token::Scope;
use tonic::Code;

/// A caller's role, from the Organization of its client certificate or a token scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `basalt:admin`.
    Admin,
    /// `basalt:operator`.
    Operator,
    /// `basalt:reader`.
    Reader,
}

impl Role {
    /// The role named by a certificate Organization, e.g. `basalt:admin`.
    pub fn from_organization(org: &str) -> Option<Role> {
        Role::from_name(org.strip_prefix("basalt:")?)
    }

    /// The role named `admin`, `operator` or `reader`.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    /// The Organization value naming this role, e.g. `basalt:admin`.
    pub fn organization(self) -> &'static str {
        match self {
            Role::Admin => "basalt:admin",
            Role::Operator => "basalt:operator",
            Role::Reader => "basalt:reader",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Full gRPC method path, e.g. `/basalt.machine.v1.MachineService/Version`.
    pub rpc: &'static str,
    /// The roles that may call it.
    pub roles: &'static [Role],
    /// Whether a node in maintenance mode serves it (to anyone).
    pub maintenance: bool,
}

const READERS: &[Role] = &[Role::Admin, Role::Operator, Role::Reader];
const OPERATORS: &[Role] = &[Role::Admin, Role::Operator];
const ADMINS: &[Role] = &[Role::Admin];

macro_rules! rules {
    ($($service:literal / $method:literal => $roles:expr, maintenance: $m:literal;)*) => {
        &[$(Rule { rpc: concat!("/", $service, "/", $method), roles: $roles, maintenance: $m },)*]
    };
}

/// The authorization table: every RPC of the API.
pub const RULES: &[Rule] = rules! {
    "basalt.machine.v1.MachineService" / "Version" => READERS, maintenance: true;
    "basalt.machine.v1.MachineService" / "ApplyConfiguration" => ADMINS, maintenance: true;
    "basalt.machine.v1.MachineService" / "GetConfiguration" => ADMINS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Reboot" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Shutdown" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Reset" => ADMINS, maintenance: false;
    "basalt.machine.v1.MachineService" / "BootStatus" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Rollback" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ServiceList" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ServiceStart" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ServiceStop" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ServiceRestart" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ImageList" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ImageRemove" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ImagePrune" => OPERATORS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ImageImport" => ADMINS, maintenance: false;
    "basalt.machine.v1.MachineService" / "ImageImportStatus" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Logs" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Dmesg" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Events" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Stats" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Processes" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Mounts" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Disks" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "Upgrade" => ADMINS, maintenance: false;
    "basalt.machine.v1.MachineService" / "UpgradeFromUrl" => ADMINS, maintenance: false;
    "basalt.machine.v1.MachineService" / "UpgradeStatus" => READERS, maintenance: false;
    "basalt.machine.v1.MachineService" / "UpgradePlan" => ADMINS, maintenance: false;
    "basalt.resource.v1.ResourceService" / "Get" => READERS, maintenance: false;
    "basalt.resource.v1.ResourceService" / "List" => READERS, maintenance: false;
    "basalt.resource.v1.ResourceService" / "Watch" => READERS, maintenance: false;
    "basalt.audit.v1.AuditService" / "Query" => OPERATORS, maintenance: false;
};

/// The row for `rpc`, if any.
pub fn rule(rpc: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.rpc == rpc)
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call may proceed.
    pub allowed: bool,
    /// The status code for a refusal (`Ok` when allowed).
    pub code: Code,
    /// What granted or refused it, for the audit log and the error message.
    pub reason: String,
}

impl Decision {
    fn allow(reason: String) -> Self {
        Self {
            allowed: true,
            code: Code::Ok,
            reason,
        }
    }

    /// A refusal with `code`.
    pub fn deny(code: Code, reason: String) -> Self {
        Self {
            allowed: false,
            code,
            reason,
        }
    }
}

fn unknown(rpc: &str) -> Decision {
    Decision::deny(
        Code::PermissionDenied,
        format!("{rpc} is not in the authorization table: denied by default"),
    )
}

/// Decides a call on a node in maintenance mode.
pub fn decide_maintenance(rpc: &str) -> Decision {
    match rule(rpc) {
        None => unknown(rpc),
        Some(r) if r.maintenance => Decision::allow("maintenance mode".into()),
        Some(_) => Decision::deny(
            Code::PermissionDenied,
            format!(
                "{rpc} is not allowed in maintenance mode (the node has no configuration yet; \
                 only read-only calls and ApplyConfiguration are)"
            ),
        ),
    }
}

/// Decides a call made with a client certificate carrying `roles`.
pub fn decide_roles(rpc: &str, subject: &str, roles: &[Role]) -> Decision {
    let Some(rule) = rule(rpc) else {
        return unknown(rpc);
    };
    if let Some(role) = roles.iter().find(|r| rule.roles.contains(r)) {
        return Decision::allow(format!("role {}", role.organization()));
    }
    let held = if roles.is_empty() {
        "no basalt role".to_string()
    } else {
        roles
            .iter()
            .map(|r| r.organization())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Decision::deny(
        Code::PermissionDenied,
        format!("certificate {subject:?} ({held}) may not call {rpc}"),
    )
}

/// Decides a call made over a client certificate (`subject`, `roles`) with a verified bearer
/// token (`token_id`, `scopes`): the rights of the call are the certificate's roles
/// intersected with the token's scopes. A token narrows what the certificate may do and
/// never widens it: a reader certificate carrying an operator token may still only read.
pub fn decide_certificate_and_token(
    rpc: &str,
    (subject, roles): (&str, &[Role]),
    (token_id, scopes): (&str, &[Scope]),
) -> Decision {
    let by_certificate = decide_roles(rpc, subject, roles);
    if !by_certificate.allowed {
        return Decision::deny(
            by_certificate.code,
            format!("{} (a token cannot add rights)", by_certificate.reason),
        );
    }
    let by_token = decide_scopes(rpc, token_id, scopes);
    if !by_token.allowed {
        return by_token;
    }
    Decision::allow(format!("{} and {}", by_certificate.reason, by_token.reason))
}

/// Decides what the scopes of a verified bearer token allow (one side of
/// [`decide_certificate_and_token`]).
pub fn decide_scopes(rpc: &str, token_id: &str, scopes: &[Scope]) -> Decision {
    let Some(rule) = rule(rpc) else {
        return unknown(rpc);
    };
    for scope in scopes {
        match scope {
            Scope::Role(role) if rule.roles.contains(role) => {
                return Decision::allow(format!("token scope role:{}", role_name(*role)));
            }
            Scope::Rpc(path) if path == rpc => {
                return Decision::allow(format!("token scope rpc:{rpc}"));
            }
            _ => {}
        }
    }
    Decision::deny(
        Code::PermissionDenied,
        format!("token {token_id:?} has no scope allowing {rpc}"),
    )
}

fn role_name(role: Role) -> &'static str {
    role.organization().trim_start_matches("basalt:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The table and the API must list the same RPCs: a new RPC without a row fails here.
    #[test]
    fn table_covers_every_rpc_of_the_proto() {
        let api: BTreeSet<String> = basalt_proto::all_rpc_paths().into_iter().collect();
        let table: BTreeSet<String> = RULES.iter().map(|r| r.rpc.to_string()).collect();
        let missing: Vec<_> = api.difference(&table).collect();
        let stale: Vec<_> = table.difference(&api).collect();
        assert!(
            missing.is_empty(),
            "RPCs missing from the authorization table: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "table rows for RPCs not in the API: {stale:?}"
        );
        assert_eq!(table.len(), RULES.len(), "duplicate rows");
        assert!(api.len() >= 20, "descriptor parsed: {api:?}");
    }

    #[test]
    fn roles_are_nested() {
        for rule in RULES {
            assert!(
                rule.roles.contains(&Role::Admin),
                "{}: admin may do everything",
                rule.rpc
            );
            if rule.roles.contains(&Role::Reader) {
                assert!(rule.roles.contains(&Role::Operator), "{}", rule.rpc);
            }
        }
    }

    #[test]
    fn maintenance_serves_version_and_apply_only() {
        let m = "/basalt.machine.v1.MachineService/";
        assert!(decide_maintenance(&format!("{m}Version")).allowed);
        assert!(decide_maintenance(&format!("{m}ApplyConfiguration")).allowed);
        assert!(!decide_maintenance("/x.Y/Z").allowed);
        let served: Vec<&str> = RULES
            .iter()
            .map(|r| r.rpc)
            .filter(|rpc| decide_maintenance(rpc).allowed)
            .collect();
        assert_eq!(
            served,
            [
                "/basalt.machine.v1.MachineService/Version",
                "/basalt.machine.v1.MachineService/ApplyConfiguration"
            ]
        );
    }

    #[test]
    fn certificate_roles_and_token_scopes() {
        let reboot = "/basalt.machine.v1.MachineService/Reboot";
        assert!(decide_roles(reboot, "CN=a", &[Role::Operator]).allowed);
        let d = decide_roles(reboot, "CN=r", &[Role::Reader]);
        assert_eq!((d.allowed, d.code), (false, Code::PermissionDenied));
        assert!(!decide_roles(reboot, "CN=none", &[]).allowed);
        assert!(!decide_roles("/unknown/Rpc", "CN=a", &[Role::Admin]).allowed);
        assert!(decide_scopes(reboot, "t", &[Scope::Role(Role::Operator)]).allowed);
        // a token narrows and never widens the certificate's roles
        let operator_token = [Scope::Role(Role::Operator)];
        let d =
            decide_certificate_and_token(reboot, ("CN=r", &[Role::Reader]), ("t", &operator_token));
        assert_eq!((d.allowed, d.code), (false, Code::PermissionDenied));
        assert!(d.reason.contains("cannot add rights"), "{}", d.reason);
        let reader_token = [Scope::Role(Role::Reader)];
        let d =
            decide_certificate_and_token(reboot, ("CN=a", &[Role::Admin]), ("t", &reader_token));
        assert!(!d.allowed);
        let d =
            decide_certificate_and_token(reboot, ("CN=a", &[Role::Admin]), ("t", &operator_token));
        assert!(d.allowed, "{}", d.reason);
        let reset = "/basalt.machine.v1.MachineService/Reset";
        assert!(
            !decide_certificate_and_token(reset, ("CN=a", &[Role::Admin]), ("t", &operator_token))
                .allowed
        );
        assert!(decide_scopes(reboot, "t", &[Scope::Rpc(reboot.into())]).allowed);
        let version = "/basalt.machine.v1.MachineService/Version";
        assert!(!decide_scopes(reboot, "t", &[Scope::Rpc(version.into())]).allowed);
        assert!(!decide_scopes(reboot, "t", &[Scope::Role(Role::Reader)]).allowed);
    }
}
