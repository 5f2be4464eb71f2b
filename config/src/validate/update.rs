//! Rules for the `UpdateConfig` document.

use std::collections::HashSet;

use super::Checker;
use super::rules;
use crate::keys;
use crate::schema::{UpdateConfig, UpdatePolicy};

const ROOT: &str = "UpdateConfig";
/// Longest maintenance window: a week.
const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;

pub(super) fn check(c: &mut Checker, u: &UpdateConfig) {
    let channel = format!("{ROOT}.channel");
    if u.channel.is_empty() {
        c.error(&channel, "the update channel URL must not be empty");
    } else {
        c.check(&channel, rules::http_url(&u.channel));
    }
    if let Some(window) = &u.window {
        let root = format!("{ROOT}.window");
        if u.policy == UpdatePolicy::Manual {
            c.warn(
                &root,
                "the window only applies with policy `auto`; it is ignored",
            );
        }
        if window.days.is_empty() {
            c.error(&format!("{root}.days"), "list at least one day");
        }
        let mut days = HashSet::new();
        for (i, day) in window.days.iter().enumerate() {
            if !days.insert(day) {
                c.warn(
                    &format!("{root}.days[{i}]"),
                    format!("{day:?} is listed twice"),
                );
            }
        }
        c.check(&format!("{root}.start"), rules::time_of_day(&window.start));
        let duration = format!("{root}.duration");
        if let Some(minutes) = c.check(&duration, rules::duration_minutes(&window.duration))
            && (minutes == 0 || minutes > MAX_WINDOW_MINUTES)
        {
            c.error(
                &duration,
                format!("`{}` is not between 1m and 168h", window.duration),
            );
        }
    }
    let keys_path = format!("{ROOT}.trustedSigningKeys");
    if u.trusted_signing_keys.is_empty() {
        c.error(
            &keys_path,
            "at least one Ed25519 key is needed to verify update bundles",
        );
    }
    let mut seen = HashSet::new();
    for (i, key) in u.trusted_signing_keys.iter().enumerate() {
        let path = format!("{keys_path}[{i}]");
        let r = keys::parse_ed25519_public_key(key).map_err(|e| e.to_string());
        if let Some(raw) = c.check(&path, r)
            && !seen.insert(raw)
        {
            c.warn(&path, "this key is listed twice");
        }
    }
    if !(1..=9).contains(&u.tries) {
        c.error(
            &format!("{ROOT}.tries"),
            format!("{} tries is outside 1..=9", u.tries),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::schema::{Config, MachineConfig, MaintenanceWindow, UpdateConfig, Weekday};

    #[test]
    fn window_rules() {
        let update = UpdateConfig {
            channel: "https://updates.example.com/stable".into(),
            window: Some(MaintenanceWindow {
                days: vec![Weekday::Sat, Weekday::Sat],
                start: "25:00".into(),
                duration: "200h".into(),
            }),
            trusted_signing_keys: vec![
                "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=".into(),
                "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE".into(),
            ],
            ..UpdateConfig::default()
        };
        let machine = MachineConfig {
            hostname: "a".into(),
            time_servers: vec!["10.0.0.1".into()],
            ..MachineConfig::default()
        };
        let v = Config {
            update: Some(update),
            ..Config::new(machine)
        }
        .validate();
        let errors: Vec<&str> = v.errors.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            errors,
            ["UpdateConfig.window.start", "UpdateConfig.window.duration"]
        );
        let warnings: Vec<&str> = v.warnings.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            warnings,
            [
                "MachineConfig.api",
                "UpdateConfig.window",
                "UpdateConfig.window.days[1]",
                "UpdateConfig.trustedSigningKeys[1]"
            ]
        );
    }
}
