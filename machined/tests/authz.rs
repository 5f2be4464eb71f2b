//! The authorization table enforced end to end: every RPC for every role against a real
//! dev-mode machined, the data the implemented RPCs return, and bearer tokens.

mod common;

use basalt_proto::machine::v1 as pb;
use basaltctl::token::TokenKey;
use common::{Fixture, audit, call, code, now};
use machined::api::authz::{RULES, Role};
use tonic::Code;

#[tokio::test]
async fn every_rpc_is_allowed_or_denied_per_table_for_every_role() {
    let fx = Fixture::new();
    let node = fx.start_configured("matrix");
    let identities = [
        ("admin", Some(Role::Admin)),
        ("operator", Some(Role::Operator)),
        ("reader", Some(Role::Reader)),
        ("nobody", None),
    ];
    let mut checked = 0;
    for (name, role) in identities {
        let mut c = fx.connect(&node, name, None).await.unwrap();
        for rule in RULES {
            let allowed = role.is_some_and(|r| rule.roles.contains(&r));
            let got = code(&call(&mut c, rule.rpc, &fx.config_yaml).await);
            if allowed {
                assert!(
                    !matches!(got, Code::PermissionDenied | Code::Unauthenticated),
                    "{name} must be allowed {}: got {got:?}",
                    rule.rpc
                );
            } else {
                assert_eq!(
                    got,
                    Code::PermissionDenied,
                    "{name} must be denied {}",
                    rule.rpc
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * RULES.len());
    // Every RPC of the proto is implemented.
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    for rule in RULES {
        let got = code(&call(&mut admin, rule.rpc, &fx.config_yaml).await);
        assert_ne!(got, Code::Unimplemented, "{} is not implemented", rule.rpc);
    }
    // Reboot and Shutdown were recorded as host actions, not performed.
    let actions = std::fs::read_to_string(node.state.join("host-actions.jsonl")).unwrap();
    assert!(actions.contains(r#""action":"reboot""#), "{actions}");
    assert!(actions.contains(r#""action":"shutdown""#), "{actions}");
}

#[tokio::test]
async fn implemented_rpcs_answer_with_real_data() {
    let fx = Fixture::new();
    let node = fx.start_configured("data");
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    let v = c
        .machine
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.machine_id.as_str(), v.maintenance, v.board.as_str()),
        ("node-1", false, "dev")
    );
    let b = c
        .machine
        .boot_status(pb::BootStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (b.booted, b.next_boot, b.committed),
        (pb::Slot::A as i32, pb::Slot::A as i32, true)
    );
    assert_eq!(b.slots.len(), 2);
    // A fresh image has only slot A: a rollback is refused, not faked.
    let r = c
        .machine
        .rollback(pb::RollbackRequest::default())
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::FailedPrecondition, "{r:?}");
    let s = c
        .machine
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.memory.unwrap().total_bytes > 0 && s.cpu.unwrap().count > 0);
    let p = c
        .machine
        .processes(pb::ProcessesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(p.processes.iter().any(|p| p.name.contains("machined")));
    let m = c
        .machine
        .mounts(pb::MountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(m.mounts.iter().any(|m| m.mount_point == "/"));
    c.machine.disks(pb::DisksRequest {}).await.unwrap();
    let g = c
        .machine
        .get_configuration(pb::GetConfigurationRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (g.data, g.version),
        (fx.config_yaml.clone().into_bytes(), 1)
    );
    // A dry run with a change shows a diff and stores nothing; private keys are redacted.
    let changed = fx
        .config_yaml
        .replace("hostname: node-1", "hostname: node-one");
    let d = c
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: changed.clone().into_bytes(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.diff.contains("+hostname: node-one"), "{}", d.diff);
    assert!(!d.diff.contains("PRIVATE KEY"), "{}", d.diff);
    assert_eq!(d.version, 0);
    // A real apply stores version 2.
    let a = c
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: changed.clone().into_bytes(),
            mode: pb::ApplyMode::NoReboot as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.version, 2, "{}", a.message);
    // An invalid configuration is refused with the field named.
    let bad = c
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: b"apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: n\nmachine: {id: n}\n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("machine") && bad.message().contains("line 4"),
        "{}",
        bad.message()
    );
    assert!(node.state.join("config/history/000002.yaml").exists());
}

#[tokio::test]
async fn bearer_tokens_are_checked_and_only_narrow() {
    let fx = Fixture::new();
    let node = fx.start_configured("tokens");
    let key = &fx.token_key;
    let sign = |aud: &str, scope: &str, exp: u64, jti: &str| {
        key.sign(
            "ci",
            &[aud.to_string()],
            &[scope.to_string()],
            (now(), exp),
            jti,
        )
    };
    let reboot_as = |cert: &'static str, t: String| {
        let fx = &fx;
        let node = &node;
        async move {
            let mut c = fx.connect(node, cert, Some(t)).await.unwrap();
            code(
                &c.machine
                    .reboot(pb::RebootRequest::default())
                    .await
                    .map(drop),
            )
        }
    };
    let reboot = |t: String| reboot_as("operator", t);
    // A valid operator token with an operator certificate may reboot.
    assert_eq!(
        reboot(sign("node-1", "role:operator", now() + 600, "ok-1")).await,
        Code::Ok
    );
    // A token never widens the certificate: a reader certificate with an operator token
    // may not reboot (the rights are the intersection).
    assert_eq!(
        reboot_as(
            "reader",
            sign("node-1", "role:operator", now() + 600, "widen")
        )
        .await,
        Code::PermissionDenied
    );
    // A key bound to the cluster accepts the cluster id as audience, and only it.
    let fleet = |aud: &str, jti: &str| {
        key.sign(
            "fleet",
            &[aud.to_string()],
            &["role:operator".to_string()],
            (now(), now() + 600),
            jti,
        )
    };
    assert_eq!(reboot(fleet("lab", "ok-2")).await, Code::Ok);
    assert_eq!(
        reboot(fleet("node-1", "fleet-machine")).await,
        Code::Unauthenticated
    );
    // An RPC scope grants that RPC only.
    let version_only = sign(
        "node-1",
        "rpc:/basalt.machine.v1.MachineService/Version",
        now() + 600,
        "v",
    );
    assert_eq!(reboot(version_only.clone()).await, Code::PermissionDenied);
    let mut c = fx
        .connect(&node, "reader", Some(version_only))
        .await
        .unwrap();
    c.machine.version(pb::VersionRequest {}).await.unwrap();
    // A token narrows an admin certificate.
    let mut c = fx
        .connect(
            &node,
            "admin",
            Some(sign("node-1", "role:reader", now() + 600, "narrow")),
        )
        .await
        .unwrap();
    let r = c
        .machine
        .reboot(pb::RebootRequest::default())
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::PermissionDenied);
    // Refused tokens: expired, wrong key, wrong audience, alg none, HS256, garbage.
    let expired = sign("node-1", "role:admin", now() - 3600, "old");
    let rogue = TokenKey::generate().unwrap();
    let wrong_key = rogue.sign(
        "ci",
        &["node-1".into()],
        &["role:admin".into()],
        (now(), now() + 600),
        "rogue",
    );
    let wrong_aud = sign("node-2", "role:admin", now() + 600, "aud");
    // Longer than the default maximum lifetime (a day).
    let two_days = sign("node-1", "role:admin", now() + 2 * 86_400, "long");
    let payload = format!(
        r#"{{"aud":"node-1","iat":{},"exp":{},"scope":"role:admin"}}"#,
        now(),
        now() + 600
    );
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!("{}.{}.", b64(r#"{"alg":"none","kid":"ci"}"#), b64(&payload));
    // HS256 keyed with the public key: the classic algorithm-confusion forgery.
    let hs_input = format!("{}.{}", b64(r#"{"alg":"HS256","kid":"ci"}"#), b64(&payload));
    let public = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(key.public_key_base64())
            .unwrap()
    };
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
        hs_input.as_bytes(),
    );
    let hs256 = format!("{hs_input}.{}", {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.as_ref())
    });
    for (what, token) in [
        ("expired", expired),
        ("wrong key", wrong_key),
        ("wrong audience", wrong_aud),
        ("too long", two_days),
        ("alg none", alg_none),
        ("HS256", hs256),
        ("garbage", "not-a-token".to_string()),
    ] {
        assert_eq!(
            reboot(token).await,
            Code::Unauthenticated,
            "{what} token must be refused"
        );
    }
    // The audit log names the token by its jti, and records refusals too.
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    let entries = audit(&mut admin, "/basalt.machine.v1.MachineService/Reboot").await;
    assert!(
        entries
            .iter()
            .any(|e| e.caller.as_ref().unwrap().token_id == "ok-1" && e.result == "OK")
    );
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e.result == "UNAUTHENTICATED")
        .collect();
    assert_eq!(refused.len(), 8, "{entries:#?}");
    assert!(
        refused
            .iter()
            .all(|e| e.caller.as_ref().unwrap().token_id.starts_with("sha256:"))
    );
    assert!(refused.iter().any(|e| e.reason.contains("expired")));
    assert!(refused.iter().any(|e| e.reason.contains("\"none\"")));
    assert!(
        refused
            .iter()
            .any(|e| e.reason.contains("api.tokenPolicy.maxLifetimeSeconds"))
    );

    // A revocation in the configuration refuses a token from the next call on.
    let kept = sign("node-1", "role:operator", now() + 600, "to-revoke");
    assert_eq!(reboot(kept.clone()).await, Code::Ok);
    let mut config = basalt_config::Config::from_yaml(&fx.config_yaml).unwrap();
    config.machine.api.token_policy = Some(basalt_config::schema::TokenPolicy {
        max_lifetime_seconds: None,
        revoked_ids: vec!["to-revoke".into()],
    });
    admin
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: config.to_yaml().unwrap().into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reboot(kept).await, Code::Unauthenticated);
    let entries = audit(&mut admin, "/basalt.machine.v1.MachineService/Reboot").await;
    assert!(
        entries
            .iter()
            .any(|e| e.reason.contains("token to-revoke is revoked")),
        "{entries:#?}"
    );
}

/// A node whose recorded time floor is ahead of its clock (a board without a battery-backed
/// clock, booted before its first time sync) refuses bearer tokens, saying why, and still
/// serves client certificates.
#[tokio::test]
async fn bearer_tokens_are_refused_while_the_clock_is_before_the_time_floor() {
    let fx = Fixture::new();
    let state = fx.state_dir("behind");
    let ten_years = 10 * 365 * 86_400;
    std::fs::write(
        state.join(machined::time_floor::FLOOR_FILE),
        format!("{}\n", now() + ten_years),
    )
    .unwrap();
    let node = fx.start_configured("behind");
    let token = fx.token_key.sign(
        "ci",
        &["node-1".to_string()],
        &["role:operator".to_string()],
        (now(), now() + 600),
        "early",
    );
    let mut c = fx.connect(&node, "operator", Some(token)).await.unwrap();
    let refused = c.machine.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("time floor"), "{refused:?}");
    let mut plain = fx.connect(&node, "operator", None).await.unwrap();
    plain.machine.version(pb::VersionRequest {}).await.unwrap();
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    let entries = audit(&mut admin, "/basalt.machine.v1.MachineService/Version").await;
    assert!(
        entries
            .iter()
            .any(|e| e.result == "UNAUTHENTICATED" && e.reason.contains("time floor")),
        "{entries:#?}"
    );
}
