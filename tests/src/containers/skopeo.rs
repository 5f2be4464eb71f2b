//! `skopeo` between a layout, a registry and an `oci-archive` file.

use super::registry::Registry;
use serde_json::Value;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
/// `skopeo` with `args`; panics with its output when it fails. Returns its stdout.
fn skopeo(args: &[OsString]) -> String {
    // --insecure-policy: accept any image without reading the host's
    // /etc/containers/policy.json (test images are unsigned)
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run skopeo (package skopeo, scripts/setup-host): {e}"));
    assert!(
        out.status.success(),
        "skopeo {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// skopeo's name of the layout at `layout`.
fn oci_source(layout: &Path) -> OsString {
    let s = layout.display().to_string();
    assert!(
        !s.contains(':'),
        "skopeo cannot name a layout whose path has a ':': {s}"
    );
    format!("oci:{s}").into()
}

/// skopeo's TLS options for `registry`: `cert_flag` (`--dest-cert-dir`, `--cert-dir`) with
/// its CA folder, or `verify_flag=false` (`--dest-tls-verify`, `--tls-verify`) without TLS.
fn tls_args(registry: &Registry, cert_flag: &str, verify_flag: &str) -> Vec<OsString> {
    match registry.cert_dir() {
        Some(dir) => vec![cert_flag.into(), dir.into()],
        None => vec![format!("{verify_flag}=false").into()],
    }
}

/// Pushes the layout at `layout` to `dest` (`127.0.0.1:PORT/name:tag`, see
/// [`Registry::reference`]) on `registry` with `skopeo copy`, trusting the registry's CA
/// (or, without TLS, over plain HTTP), logging in when it wants credentials.
pub fn push(layout: &Path, dest: &str, registry: &Registry) {
    let mut args: Vec<OsString> = vec!["copy".into(), "--quiet".into()];
    args.extend(tls_args(registry, "--dest-cert-dir", "--dest-tls-verify"));
    if let Some((user, password)) = registry.login() {
        args.push(format!("--dest-creds={user}:{password}").into());
    }
    args.push(oci_source(layout));
    args.push(format!("docker://{dest}").into());
    skopeo(&args);
}

/// `skopeo inspect` of `reference` (`127.0.0.1:PORT/name:tag`) on `registry`: its JSON
/// (`Architecture`, `Os`, `Layers`, `Digest`, `Env`, ...).
pub fn inspect(reference: &str, registry: &Registry) -> Value {
    let mut args: Vec<OsString> = vec!["inspect".into()];
    args.extend(tls_args(registry, "--cert-dir", "--tls-verify"));
    args.push(format!("docker://{reference}").into());
    let out = skopeo(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo inspect output: {e}:\n{out}"))
}

/// Writes the layout at `layout` as an `oci-archive` (a tar of the layout, the format of
/// `ctr images import` and of image files given to a node) to `out_file`, tagged `tag`.
pub fn oci_archive(layout: &Path, out_file: &Path, tag: &str) {
    skopeo(&[
        "copy".into(),
        "--quiet".into(),
        oci_source(layout),
        format!("oci-archive:{}:{tag}", out_file.display()).into(),
    ]);
}
