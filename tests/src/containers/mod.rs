//! A kit for tests that run a real containerd against a real OCI registry.
//!
//! - [`containerd_bin_dir`]: `containerd`, `containerd-shim-runc-v2` and `ctr` from the
//!   pinned Debian 13 `containerd` package (`scripts/inputs.lock`, suite `trixie`), unpacked
//!   once into `target/containerd/<arch>/bin`;
//! - [`busybox_static`]: a static busybox for test images (the host's on amd64, the pinned
//!   arm64 package's otherwise);
//! - [`TestCa`]: a CA and server certificates for a registry that QEMU guests reach too
//!   (`127.0.0.1`, `10.0.2.2`, `localhost`);
//! - [`Registry`]: Debian's `docker-registry` (the CNCF distribution registry) on a free
//!   loopback port, with or without TLS, killed when dropped;
//! - [`OciImage`] / [`oci_layout`]: an OCI image layout written by our own code (one gzip
//!   layer, an image config, a manifest), byte-identical for the same inputs;
//! - [`push`], [`oci_archive`], [`inspect`]: `skopeo` between a layout, a registry and an
//!   `oci-archive` file;
//! - [`busybox_shell_image`]: an image that prints a line and sleeps.
//! - [`busybox_httpd_image`]: an image whose entrypoint is busybox's `httpd` serving
//!   [`HTTPD_INDEX`].
//!
//! Everything here panics with a message naming what failed (and `scripts/setup-host` when a
//! host package or a board input is missing). Nothing writes into the source tree except
//! below `target/`.
mod cleanup;
mod oci;
mod packages;
mod registry;
mod skopeo;

pub use cleanup::*;
pub use oci::*;
pub use packages::*;
pub use registry::*;
pub use skopeo::*;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::process::Command;

    /// The kit end to end on the host: an amd64 busybox httpd image pushed to a TLS
    /// registry reads back as one amd64 layer, and the pinned containerd runs.
    #[test]
    fn image_pushed_to_tls_registry_and_containerd_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = busybox_httpd_image(&tmp.path().join("layout"), "amd64", 8080);
        // deterministic: the same image gives the same manifest
        let again = busybox_httpd_image(&tmp.path().join("again"), "amd64", 8080);
        assert_eq!(manifest_digest(&layout), manifest_digest(&again));

        let registry = Registry::start(&tmp.path().join("registry"), true);
        assert!(registry.ca_pem().unwrap().contains("BEGIN CERTIFICATE"));
        let reference = registry.reference("web:1");
        push(&layout, &reference, &registry);
        let info = inspect(&reference, &registry);
        assert_eq!(info["Architecture"], "amd64", "{info:#}");
        assert_eq!(info["Os"], "linux", "{info:#}");
        assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info:#}");
        assert_eq!(
            info["Digest"],
            manifest_digest(&layout).as_str(),
            "{info:#}"
        );
        assert_eq!(
            info["Env"],
            json!(["PATH=/bin"]),
            "the image config as written: {info:#}"
        );

        let archive = tmp.path().join("web.tar");
        oci_archive(&layout, &archive, "web:1");
        assert!(fs::metadata(&archive).unwrap().len() > 100_000);

        let bin = containerd_bin_dir("amd64");
        for name in ["containerd", "containerd-shim-runc-v2", "ctr"] {
            assert!(bin.join(name).is_file(), "{name} in {}", bin.display());
        }
        let out = Command::new(bin.join("containerd"))
            .arg("--version")
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && version.contains("1.7.24"),
            "containerd --version: {version}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
