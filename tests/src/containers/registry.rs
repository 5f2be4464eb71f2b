//! A test CA and Debian's `docker-registry` on a free loopback port.

use crate::free_port;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
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

/// Debian's registry binary (package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running `docker-registry serve` on `127.0.0.1:<free port>`, storing below its folder;
/// killed and reaped when dropped (also when the test panics).
pub struct Registry {
    child: Child,
    addr: String,
    dir: PathBuf,
    ca_pem: Option<String>,
    login: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry with its configuration, storage (`storage/`) and log
    /// (`registry.log`) in `dir` (created). With `tls`, it serves HTTPS with a certificate
    /// for [`REGISTRY_NAMES`] from a new [`TestCa`], whose certificate is also written as
    /// `certs/ca.crt` (the layout skopeo's `--cert-dir` and containerd's `hosts.toml` read).
    /// Returns once `GET /v2/` answers 200; panics with the log when it does not within 30 s.
    pub fn start(dir: &Path, tls: bool) -> Registry {
        Self::start_inner(dir, tls, None)
    }

    /// Like [`Registry::start`] with TLS, but every request needs HTTP Basic credentials
    /// `user`/`password` (an htpasswd file with a bcrypt hash, the only kind docker-registry
    /// reads); `GET /v2/` without them answers 401.
    pub fn start_with_login(dir: &Path, user: &str, password: &str) -> Registry {
        Self::start_inner(dir, true, Some((user, password)))
    }

    fn start_inner(dir: &Path, tls: bool, login: Option<(&str, &str)>) -> Registry {
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
        if let Some((user, password)) = login {
            let hash = bcrypt::hash_with_salt(password, 4, *b"basalt-test-salt")
                .expect("bcrypt hash")
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.join("htpasswd");
            fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: basalt-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
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
            login: login.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let ready = if login.is_some() { "401" } else { "200" };
        registry.wait_ready(ready, Duration::from_secs(30));
        registry
    }

    fn wait_ready(&mut self, ready: &str, timeout: Duration) {
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
            if code == ready {
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

    /// The user name and password it wants (see [`Registry::start_with_login`]).
    pub fn login(&self) -> Option<(&str, &str)> {
        self.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
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
