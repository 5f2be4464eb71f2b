//! Golden-file tests over `testdata/`.
//!
//! - `valid/<name>.yaml` must decode and validate without errors; its warnings are compared
//!   with `valid/<name>.warn`, and it must round-trip through the canonical YAML.
//! - `golden/full.canonical.yaml` and `golden/full.redacted.yaml` are the canonical and
//!   redacted renderings of `valid/full.yaml`.
//! - `invalid/<name>.yaml` must fail to decode or validate; the error text is compared with
//!   `invalid/<name>.err`.
//! - `patches/<name>.patch.yaml` is applied to `valid/full.yaml` with `patch_and_validate`; the
//!   dry-run diff is compared with `patches/<name>.diff`, or the error with `patches/<name>.err`.
//!
//! Run with `BLESS=1` to rewrite the expected files from the current output (then review the
//! changes before committing them).

use std::fs;
use std::path::{Path, PathBuf};

use basalt_config::{Config, Patch};

fn testdata(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(sub)
}

/// The inputs in a testdata folder with the given suffix, sorted.
fn inputs(sub: &str, suffix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let entries = fs::read_dir(testdata(sub)).unwrap_or_else(|e| panic!("testdata/{sub}: {e}"));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if let Some(name) = file.strip_suffix(suffix) {
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            out.push((name.to_owned(), text));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no *{suffix} in testdata/{sub}");
    out
}

/// Compares `actual` with the golden file, or rewrites it under `BLESS=1`. Returns a failure
/// description instead of panicking so that one run reports every mismatch.
fn golden(sub: &str, file: &str, actual: &str) -> Option<String> {
    let path = testdata(sub).join(file);
    if std::env::var_os("BLESS").is_some() {
        fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return None;
    }
    let expected = fs::read_to_string(&path).unwrap_or_default();
    (expected != actual).then(|| {
        format!("testdata/{sub}/{file} differs:\n--- expected\n{expected}\n--- actual\n{actual}")
    })
}

fn report(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn full() -> Config {
    let text = fs::read_to_string(testdata("valid").join("full.yaml")).expect("valid/full.yaml");
    Config::from_yaml(&text).expect("valid/full.yaml decodes")
}

#[test]
fn valid_configs_validate_and_round_trip() {
    let mut failures = Vec::new();
    for (name, text) in inputs("valid", ".yaml") {
        let config = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let validation = config.validate();
        assert!(validation.is_ok(), "{name}:\n{validation}");
        failures.extend(golden(
            "valid",
            &format!("{name}.warn"),
            &validation.to_string(),
        ));
        let canonical = config.to_yaml().expect("encodes");
        let again = Config::from_yaml(&canonical).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again, config, "{name}: decode(encode(config)) != config");
        assert_eq!(
            again.to_yaml().expect("encodes"),
            canonical,
            "{name}: unstable encoding"
        );
    }
    report(failures);
}

#[test]
fn full_config_renderings() {
    let config = full();
    let failures = [
        golden(
            "golden",
            "full.canonical.yaml",
            &config.to_yaml().expect("encodes"),
        ),
        golden(
            "golden",
            "full.redacted.yaml",
            &config.to_redacted_yaml().expect("encodes"),
        ),
    ];
    report(failures.into_iter().flatten().collect());
    let redacted = config.to_redacted_yaml().expect("encodes");
    assert!(!redacted.contains("BEGIN PRIVATE KEY"), "{redacted}");
    assert!(!redacted.contains("s3cr3t"), "{redacted}");
}

#[test]
fn invalid_configs_report_expected_errors() {
    let mut failures = Vec::new();
    for (name, text) in inputs("invalid", ".yaml") {
        let actual = match Config::from_yaml(&text) {
            Err(error) => format!("{error}\n"),
            Ok(config) => {
                let validation = config.validate();
                assert!(
                    !validation.is_ok(),
                    "{name}: expected errors, got:\n{validation}"
                );
                validation.to_string()
            }
        };
        failures.extend(golden("invalid", &format!("{name}.err"), &actual));
    }
    report(failures);
}

#[test]
fn many_problems_are_reported_at_once() {
    let text = fs::read_to_string(testdata("invalid").join("many-problems.yaml")).expect("file");
    let validation = Config::from_yaml(&text).expect("decodes").validate();
    assert!(validation.errors.len() >= 20, "{validation}");
}

#[test]
fn patches_apply_to_full_config() {
    let base = full();
    let mut failures = Vec::new();
    for (name, text) in inputs("patches", ".patch.yaml") {
        let outcome = Patch::parse(&text).and_then(|patch| base.patch_and_validate(&[patch]));
        match outcome {
            Ok((patched, _warnings)) => {
                failures.extend(golden(
                    "patches",
                    &format!("{name}.diff"),
                    &base.diff(&patched),
                ));
            }
            Err(error) => {
                let actual = format!("{}\n", error.to_string().trim_end());
                failures.extend(golden("patches", &format!("{name}.err"), &actual));
            }
        }
    }
    report(failures);
}
