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
//! - [`busybox_httpd_image`]: an image whose entrypoint is busybox's `httpd` serving
//!   [`HTTPD_INDEX`].
//!
//! Everything here panics with a message naming what failed (and `scripts/setup-host` when a
//! host package or a board input is missing). Nothing writes into the source tree except
//! below `target/`.

use crate::{free_port, repo};
use basalt_image::inputs::{DebArchive, Extract, sha256_file};
use flate2::Compression;
use flate2::write::GzEncoder;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The modification time of every entry of the layers [`OciImage`] writes, and the
/// `created` time of its config (2023-11-14T22:13:20Z, the epoch the test images use).
pub const IMAGE_EPOCH: u64 = 1_700_000_000;

/// The Debian (and OCI/Go) name of an architecture: `amd64` or `arm64`; the kernel's names
/// `x86_64` and `aarch64` are accepted too.
pub fn debian_arch(arch: &str) -> &'static str {
    match arch {
        "amd64" | "x86_64" => "amd64",
        "arm64" | "aarch64" => "arm64",
        _ => panic!("unsupported architecture {arch:?} (amd64/x86_64 or arm64/aarch64)"),
    }
}

// --- pinned packages ---------------------------------------------------------------------

/// A pin of `scripts/inputs.lock`: the cached `.deb` and its sha256.
struct Pin {
    deb: PathBuf,
    sha256: String,
}

/// The pin of `package` for Debian architecture `arch`. The lock is read here (lines of
/// `package architecture version sha256 [suite]`), so that the optional suite column is
/// understood whatever the image crate's reader accepts.
fn pinned(package: &str, arch: &str) -> Pin {
    let root = repo();
    let lock_path = root.join("scripts/inputs.lock");
    let lock = fs::read_to_string(&lock_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", lock_path.display()));
    let cache = std::env::var_os("BASALT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("cache"))
        .join("debs");
    for line in lock.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ([p, a, version, sha256] | [p, a, version, sha256, _]) = fields[..] else {
            panic!("{}: malformed line {line:?}", lock_path.display());
        };
        if p == package && a == arch {
            return Pin {
                deb: cache.join(format!("{p}_{}_{a}.deb", version.replace(':', "%3a"))),
                sha256: sha256.to_string(),
            };
        }
    }
    panic!(
        "{package} ({arch}) is not pinned in {}",
        lock_path.display()
    )
}

/// Unpacks `files` (`(path in the package, name)`) of the pinned `package` for `arch` into
/// the folder `dest` (below `target/`) once: a finished folder carries the package's sha256
/// in `.deb-sha256` and appears by an atomic rename; test processes racing for it are
/// serialised by a file lock next to it, and a folder from another pin is replaced.
fn unpack_pinned(package: &str, arch: &str, files: &[(&str, &str)], dest: &Path) -> PathBuf {
    const STAMP: &str = ".deb-sha256";
    let pin = pinned(package, arch);
    let current = |dir: &Path| {
        fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s.trim() == pin.sha256)
            && files.iter().all(|(_, name)| dir.join(name).is_file())
    };
    if current(dest) {
        return dest.to_path_buf();
    }
    let parent = dest.parent().expect("the destination has a parent");
    fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    let dest_name = dest
        .file_name()
        .expect("named destination")
        .to_string_lossy();
    let lock_path = parent.join(format!("{dest_name}.lock"));
    let lock =
        File::create(&lock_path).unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    if current(dest) {
        return dest.to_path_buf();
    }
    assert!(
        pin.deb.is_file(),
        "{package} ({arch}) is missing: {} (run scripts/setup-host)",
        pin.deb.display()
    );
    let actual =
        sha256_file(&pin.deb).unwrap_or_else(|e| panic!("read {}: {e}", pin.deb.display()));
    assert_eq!(
        actual,
        pin.sha256,
        "{} does not match its pin in scripts/inputs.lock (run scripts/setup-host)",
        pin.deb.display()
    );
    // fixed names: the lock is held, and a run cut short leaves nothing that looks complete
    let tmp = parent.join(format!("{dest_name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).unwrap_or_else(|e| panic!("remove {}: {e}", tmp.display()));
    }
    let selections: Vec<Extract> = files
        .iter()
        .map(|(path, name)| Extract::file(*name, path, *name))
        .collect();
    DebArchive::open(&pin.deb)
        .and_then(|deb| deb.extract(&selections, &tmp))
        .unwrap_or_else(|e| panic!("unpack {}: {e}", pin.deb.display()));
    fs::write(tmp.join(STAMP), format!("{}\n", pin.sha256))
        .unwrap_or_else(|e| panic!("write the stamp in {}: {e}", tmp.display()));
    if dest.exists() {
        // another pin's files: move them aside first (a directory cannot replace a
        // non-empty one in a rename)
        let old = parent.join(format!("{dest_name}.old"));
        if old.exists() {
            fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("remove {}: {e}", old.display()));
        }
        fs::rename(dest, &old).unwrap_or_else(|e| panic!("move {} aside: {e}", dest.display()));
        fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("remove {}: {e}", old.display()));
    }
    fs::rename(&tmp, dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
    dest.to_path_buf()
}

/// A folder with `containerd`, `containerd-shim-runc-v2` (which containerd finds on its
/// `PATH`) and `ctr` (a reference client for tests) from the pinned Debian 13 `containerd`
/// package for Debian architecture `arch` (`amd64` or `arm64`; `x86_64`/`aarch64` too):
/// `target/containerd/<arch>/bin`, unpacked once.
pub fn containerd_bin_dir(arch: &str) -> PathBuf {
    let arch = debian_arch(arch);
    unpack_pinned(
        "containerd",
        arch,
        &[
            ("usr/bin/containerd", "containerd"),
            ("usr/bin/containerd-shim-runc-v2", "containerd-shim-runc-v2"),
            ("usr/bin/ctr", "ctr"),
        ],
        &repo().join(format!("target/containerd/{arch}/bin")),
    )
}

/// A statically linked busybox for `arch`: on amd64 the host's `/bin/busybox` (package
/// `busybox-static`), on arm64 the one of the pinned `busybox-static` arm64 package,
/// unpacked once into `target/busybox/arm64/bin/busybox`.
pub fn busybox_static(arch: &str) -> PathBuf {
    match debian_arch(arch) {
        "amd64" => {
            let bb = PathBuf::from("/bin/busybox");
            let out = Command::new("file")
                .arg("-L")
                .arg(&bb)
                .output()
                .expect("run file(1)");
            let what = String::from_utf8_lossy(&out.stdout);
            assert!(
                bb.is_file() && what.contains("statically linked"),
                "/bin/busybox is missing or not static ({}): install busybox-static with scripts/setup-host",
                what.trim()
            );
            bb
        }
        _ => unpack_pinned(
            "busybox-static",
            "arm64",
            &[("bin/busybox", "busybox")],
            &repo().join("target/busybox/arm64/bin"),
        )
        .join("busybox"),
    }
}

// --- TLS ---------------------------------------------------------------------------------

/// The names a [`TestCa`] server certificate is valid for by default: the host's loopback,
/// the host as QEMU's user network shows it to a guest, and `localhost`.
pub const REGISTRY_NAMES: [&str; 3] = ["127.0.0.1", "10.0.2.2", "localhost"];

/// A throwaway certificate authority (ECDSA P-256, rcgen with `ring`).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("generate the test CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("test CA parameters");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "basalt test CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the test CA");
        TestCa { issuer }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (IP addresses or DNS names).
    pub fn server_cert(&self, names: &[&str]) -> ServerCert {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("server certificate names");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "basalt test registry");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

// --- registry ----------------------------------------------------------------------------

/// Debian's registry binary (package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running `docker-registry serve` on `127.0.0.1:<free port>`, storing below its folder;
/// killed and reaped when dropped (also when the test panics).
pub struct Registry {
    child: Child,
    addr: String,
    dir: PathBuf,
    ca_pem: Option<String>,
}

impl Registry {
    /// Starts a registry with its configuration, storage (`storage/`) and log
    /// (`registry.log`) in `dir` (created). With `tls`, it serves HTTPS with a certificate
    /// for [`REGISTRY_NAMES`] from a new [`TestCa`], whose certificate is also written as
    /// `certs/ca.crt` (the layout skopeo's `--cert-dir` and containerd's `hosts.toml` read).
    /// Returns once `GET /v2/` answers 200; panics with the log when it does not within 30 s.
    pub fn start(dir: &Path, tls: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing (package docker-registry): run scripts/setup-host"
        );
        fs::create_dir_all(dir.join("storage"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: basalt-tests\n",
            dir.join("storage").display()
        );
        let ca_pem = tls.then(|| {
            let ca = TestCa::new();
            let server = ca.server_cert(&REGISTRY_NAMES);
            let certs = dir.join("certs");
            fs::create_dir_all(&certs).expect("create the registry's certs folder");
            fs::write(certs.join("ca.crt"), ca.cert_pem()).expect("write ca.crt");
            fs::write(dir.join("server.crt"), &server.cert_pem).expect("write server.crt");
            fs::write(dir.join("server.key"), &server.key_pem).expect("write server.key");
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            ));
            ca.cert_pem()
        });
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config).expect("write the registry's config.yml");
        let log_path = dir.join("registry.log");
        let log = File::create(&log_path).expect("create registry.log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY_BIN}: {e}"));
        let mut registry = Registry {
            child,
            addr,
            dir: dir.to_path_buf(),
            ca_pem,
        };
        registry.wait_ready(Duration::from_secs(30));
        registry
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        let url = format!("{}/v2/", self.url());
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("poll the registry") {
                panic!(
                    "docker-registry exited ({status}) before it answered:\n{}",
                    self.log()
                );
            }
            let mut curl = Command::new("curl");
            curl.args([
                "-sS",
                "--max-time",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ]);
            if let Some(certs) = self.cert_dir() {
                curl.arg("--cacert").arg(certs.join("ca.crt"));
            }
            let out = curl.arg(&url).output().expect("run curl");
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            if code == "200" {
                return;
            }
            last = format!(
                "HTTP {code} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not answer {url} within {timeout:?} (last: {last}):\n{}",
            self.log()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `https://127.0.0.1:PORT` (or `http://` without TLS).
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// `127.0.0.1:PORT/<name>`, e.g. `reference("web:1")`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// The certificate of the CA that signed its server certificate (with TLS).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A folder holding only `ca.crt` (with TLS): skopeo's `--cert-dir`/`--dest-cert-dir`.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.ca_pem.as_ref().map(|_| self.dir.join("certs"))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Leaves the registry running after this value is gone (for a script that stops it
    /// itself); returns its process id.
    pub fn detach(self) -> u32 {
        let pid = self.child.id();
        std::mem::forget(self);
        pid
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- OCI image layouts -------------------------------------------------------------------

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

// --- skopeo ------------------------------------------------------------------------------

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
/// (or, without TLS, over plain HTTP).
pub fn push(layout: &Path, dest: &str, registry: &Registry) {
    let mut args: Vec<OsString> = vec!["copy".into(), "--quiet".into()];
    args.extend(tls_args(registry, "--dest-cert-dir", "--dest-tls-verify"));
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

// --- cleanup -----------------------------------------------------------------------------

/// The processes whose command line names `dir` (a containerd and its shims started with
/// their socket and configuration below `dir`).
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            out.push((pid, text));
        }
    }
    out
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Stops everything a containerd rooted below `dir` left running, however its machined
/// ended: each shim's container (its init first: the kernel then ends the rest of the
/// container's pid namespace), the shims, containerd, and the container root file systems
/// the shims mounted below `dir`. For tests and benchmarks, in a `Drop` so that it also runs
/// when they fail.
pub fn kill_containerd_under(dir: &Path) {
    let kill = |pid: u32| {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    };
    let owners = processes_naming(dir);
    let shims: Vec<u32> = owners
        .iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim"))
        .map(|(pid, _)| *pid)
        .collect();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
            && parent_of(pid).is_some_and(|parent| shims.contains(&parent))
        {
            kill(pid);
        }
    }
    for (pid, _) in &owners {
        kill(*pid);
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&needle))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

/// Runs [`kill_containerd_under`] for its folder when dropped.
pub struct ContainerdCleanup(pub PathBuf);

impl Drop for ContainerdCleanup {
    fn drop(&mut self) {
        kill_containerd_under(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
