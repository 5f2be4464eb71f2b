//! OCI image layouts written by our own code, byte-identical for the same inputs.

use super::packages::{IMAGE_EPOCH, busybox_static, debian_arch};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
/// An OCI image of one layer, built in memory and written as an OCI image layout by
/// [`OciImage::write`]. Parent directories of files and symlinks are added to the layer
/// (mode 0755); every entry is owned by 0:0 and has mtime [`IMAGE_EPOCH`], so the same
/// image gives the same bytes and digests.
#[derive(Debug, Clone)]
pub struct OciImage {
    arch: &'static str,
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// A manifest's media type.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An image index's media type.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// An image config's media type.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A gzip layer's media type.
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `path` in the image without leading or trailing slashes; panics on `.`/`..` parts.
fn image_path(path: &str) -> String {
    let p = path.trim_matches('/');
    assert!(
        !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
        "bad path in an image: {path:?}"
    );
    p.to_string()
}

impl OciImage {
    /// An empty image for `arch` (`amd64`/`arm64`, or `x86_64`/`aarch64`), os `linux`,
    /// working directory `/`.
    pub fn new(arch: &str) -> OciImage {
        OciImage {
            arch: debian_arch(arch),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            working_dir: "/".into(),
        }
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let path = image_path(path);
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .expect("a path")
            .1
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => panic!("{parent} is in the image as a file, not a directory"),
            }
        }
        if let Some(old) = self.entries.get(&path) {
            assert!(
                matches!((old, &entry), (Entry::Dir, Entry::Dir)),
                "{path} is in the image twice"
            );
        }
        self.entries.insert(path, entry);
    }

    /// Adds a file at `path` with `data` and permission bits `mode`.
    pub fn file_bytes(mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.insert(
            path,
            Entry::File {
                data: data.into(),
                mode: mode & 0o7777,
            },
        );
        self
    }

    /// Adds the host file `host` at `path` with permission bits `mode`.
    pub fn file(self, path: &str, host: &Path, mode: u32) -> Self {
        let data = fs::read(host).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
        self.file_bytes(path, data, mode)
    }

    /// Adds an (empty) directory.
    pub fn dir(mut self, path: &str) -> Self {
        self.insert(path, Entry::Dir);
        self
    }

    /// Adds a symlink at `path` pointing to `target` (kept as given).
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.insert(path, Entry::Symlink(target.to_string()));
        self
    }

    /// Sets `config.Entrypoint`.
    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `config.Cmd`.
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `config.Env` (`NAME=value` strings).
    pub fn env(mut self, vars: &[&str]) -> Self {
        self.env = vars.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `config.WorkingDir` (default `/`).
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = dir.to_string();
        self
    }

    /// The layer: an uncompressed tar of the entries in path order (parents first).
    fn layer_tar(&self) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(IMAGE_EPOCH);
            match entry {
                Entry::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{path}/"), std::io::empty())
                }
                Entry::File { data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, path, &data[..])
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target)
                }
            }
            .unwrap_or_else(|e| panic!("add {path} to the layer: {e}"));
        }
        tar.into_inner().expect("finish the layer tar")
    }

    /// Writes the image as an OCI image layout into `out` (created; files of an earlier
    /// layout there are replaced): `oci-layout`, `index.json` (one manifest, with its
    /// platform) and `blobs/sha256/` (the gzip layer, the config, the manifest). Returns
    /// `out`.
    pub fn write(&self, out: &Path) -> PathBuf {
        let blobs = out.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("create {}: {e}", blobs.display()));
        let tar = self.layer_tar();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&tar).expect("gzip the layer");
        let layer = write_blob(out, &gz.finish().expect("finish the gzip layer"));
        let created = "2023-11-14T22:13:20Z";
        let mut config = serde_json::Map::new();
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        config.insert("WorkingDir".into(), json!(self.working_dir));
        let image_config = json!({
            "created": created,
            "architecture": self.arch,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": created, "created_by": "basalt-tests OciImage" }],
        });
        let config_blob = write_blob(out, &serde_json::to_vec(&image_config).expect("JSON"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_blob.descriptor(MEDIA_CONFIG),
            "layers": [layer.descriptor(MEDIA_LAYER_GZIP)],
        });
        let manifest_blob = write_blob(out, &serde_json::to_vec(&manifest).expect("JSON"));
        let mut manifest_desc = manifest_blob.descriptor(MEDIA_MANIFEST);
        manifest_desc["platform"] = json!({ "architecture": self.arch, "os": "linux" });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [manifest_desc],
        });
        write_file(
            &out.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        write_file(
            &out.join("index.json"),
            &serde_json::to_vec(&index).expect("JSON"),
        );
        out.to_path_buf()
    }
}

/// A blob's digest (`sha256:<hex>`) and size.
struct Blob {
    digest: String,
    size: usize,
}

impl Blob {
    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.size })
    }
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn write_blob(layout: &Path, data: &[u8]) -> Blob {
    let hex = hex::encode(Sha256::digest(data));
    write_file(&layout.join("blobs/sha256").join(&hex), data);
    Blob {
        digest: format!("sha256:{hex}"),
        size: data.len(),
    }
}

/// Writes an OCI image layout into `out_dir` (see [`OciImage`]): for `arch`, the host
/// `files` (`(path in the image, host file, mode)`), `symlinks` (`(path, target)`), and
/// the config's `entrypoint`, `cmd` and `env`. Returns the layout's folder.
pub fn oci_layout(
    out_dir: &Path,
    arch: &str,
    files: &[(&str, &Path, u32)],
    symlinks: &[(&str, &str)],
    entrypoint: &[&str],
    cmd: &[&str],
    env: &[&str],
) -> PathBuf {
    let mut image = OciImage::new(arch);
    for (path, host, mode) in files {
        image = image.file(path, host, *mode);
    }
    for (path, target) in symlinks {
        image = image.symlink(path, target);
    }
    image
        .entrypoint(entrypoint)
        .cmd(cmd)
        .env(env)
        .write(out_dir)
}

/// The digest (`sha256:<hex>`) of the one manifest of the layout at `layout` — what a
/// registry serves it as after [`push`], for `name@digest` references.
pub fn manifest_digest(layout: &Path) -> String {
    let path = layout.join("index.json");
    let index: Value = serde_json::from_slice(
        &fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no manifest digest", path.display()))
        .to_string()
}

/// The text [`busybox_httpd_image`] serves as `/index.html`.
pub const HTTPD_INDEX: &str = "hello from a basalt test container\n";

/// Writes into `dir` the layout of an image for `arch` whose entrypoint is busybox's
/// `httpd` in the foreground on `port`, serving `/www` (`/www/index.html` is
/// [`HTTPD_INDEX`]): busybox ([`busybox_static`]) at `/bin/busybox`, `/bin/sh` and
/// `/bin/httpd` linking to it. Returns the layout's folder.
pub fn busybox_httpd_image(dir: &Path, arch: &str, port: u16) -> PathBuf {
    let port = port.to_string();
    OciImage::new(arch)
        .file("/bin/busybox", &busybox_static(arch), 0o755)
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/httpd", "busybox")
        .file_bytes("/www/index.html", HTTPD_INDEX, 0o644)
        .entrypoint(&["/bin/httpd", "-f", "-v", "-p", &port, "-h", "/www"])
        .env(&["PATH=/bin"])
        .write(dir)
}

/// Writes into `dir` the layout of an image for `arch` that prints `message` and sleeps:
/// busybox ([`busybox_static`]) at `/bin/busybox`, `/bin/sh` and `/bin/sleep` linking to
/// it, entry point `/bin/sh -c`. Returns the layout's folder.
pub fn busybox_shell_image(dir: &Path, arch: &str, message: &str) -> PathBuf {
    OciImage::new(arch)
        .file("/bin/busybox", &busybox_static(arch), 0o755)
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/sleep", "busybox")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&[&format!("echo {message}; exec sleep 300")])
        .env(&["PATH=/bin"])
        .write(dir)
}
