//! Certificates for a Basalt machine API: a CA, a node server certificate and one client
//! certificate per role, generated with rcgen.
//!
//! Roles travel in the client certificate's Subject Organization (`basalt:admin`,
//! `basalt:operator`, `basalt:reader`), which machined maps to its authorization table.
//! Keys are ECDSA P-256. The CA is constrained to `keyCertSign`/`cRLSign`; server
//! certificates carry `serverAuth` and the node's IP/DNS names, client certificates
//! `clientAuth`.
//!
//! Limits: one server certificate carries the names of every node it is meant for; a
//! per-node certificate needs one `gen secrets` per node (with the same CA, not yet
//! supported: the CA key is not reloaded from disk).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The three roles, in the order their certificates are generated.
pub const ROLES: [&str; 3] = ["admin", "operator", "reader"];

/// A failed secrets operation.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// rcgen refused the parameters.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The output file exists and overwriting was not asked for.
    #[error("{0} exists (pass --force to overwrite)")]
    Exists(PathBuf),
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// A certificate authority held in memory.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> SecretsError + '_ {
    move |source| SecretsError::Generate {
        what: what.to_string(),
        source,
    }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn leaf(
    cn: &str,
    organizations: &[&str],
    sans: &[String],
    days: u32,
) -> Result<CertificateParams, SecretsError> {
    let mut params = CertificateParams::new(sans.to_vec()).map_err(gen_err(cn))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    Ok(params)
}

impl Ca {
    /// A new self-signed CA named `name`, valid for `days`.
    pub fn generate(name: &str, days: u32) -> Result<Self, SecretsError> {
        let key = KeyPair::generate().map_err(gen_err("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "basalt");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(gen_err("CA"))?;
        Ok(Self { issuer })
    }

    /// The CA certificate and key, PEM.
    pub fn pem(&self) -> CertAndKey {
        CertAndKey {
            cert_pem: self.issuer.pem(),
            key_pem: self.issuer.key().serialize_pem(),
        }
    }

    fn issue(&self, params: CertificateParams, what: &str) -> Result<CertAndKey, SecretsError> {
        let key = KeyPair::generate().map_err(gen_err(what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for the node names `sans` (IP addresses or DNS names).
    pub fn issue_server(&self, sans: &[String], days: u32) -> Result<CertAndKey, SecretsError> {
        let mut params = leaf("basalt node", &[], sans, days)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "server certificate")
    }

    /// A client certificate with Common Name `cn` and the given Organizations (roles are
    /// `basalt:admin`, `basalt:operator`, `basalt:reader`).
    pub fn issue_client(
        &self,
        cn: &str,
        organizations: &[&str],
        days: u32,
    ) -> Result<CertAndKey, SecretsError> {
        let mut params = leaf(cn, organizations, &[], days)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, &format!("client certificate {cn}"))
    }
}

/// Everything `basaltctl gen secrets` produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The CA.
    pub ca: CertAndKey,
    /// The node server certificate.
    pub server: CertAndKey,
    /// One client certificate per role, in [`ROLES`] order.
    pub clients: Vec<(String, CertAndKey)>,
}

impl Secrets {
    /// A new CA, a server certificate for `sans` and one client certificate per role.
    pub fn generate(sans: &[String], days: u32) -> Result<Self, SecretsError> {
        let ca = Ca::generate("basalt machine CA", days)?;
        let server = ca.issue_server(sans, days)?;
        let mut clients = Vec::new();
        for role in ROLES {
            let org = format!("basalt:{role}");
            clients.push((role.to_string(), ca.issue_client(role, &[&org], days)?));
        }
        Ok(Self {
            ca: ca.pem(),
            server,
            clients,
        })
    }

    /// The client certificate of `role`.
    pub fn client(&self, role: &str) -> Option<&CertAndKey> {
        self.clients.iter().find(|(r, _)| r == role).map(|(_, c)| c)
    }

    fn files(&self) -> Vec<(String, &str)> {
        let mut files = vec![
            ("ca.crt".to_string(), self.ca.cert_pem.as_str()),
            ("ca.key".to_string(), self.ca.key_pem.as_str()),
            ("server.crt".to_string(), self.server.cert_pem.as_str()),
            ("server.key".to_string(), self.server.key_pem.as_str()),
        ];
        for (role, ck) in &self.clients {
            files.push((format!("{role}.crt"), ck.cert_pem.as_str()));
            files.push((format!("{role}.key"), ck.key_pem.as_str()));
        }
        files
    }

    /// Writes every file into `dir` (keys with mode 0600); refuses to overwrite unless
    /// `force`. Returns the paths written.
    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, SecretsError> {
        std::fs::create_dir_all(dir).map_err(|source| SecretsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let files = self.files();
        if !force {
            for (name, _) in &files {
                let path = dir.join(name);
                if path.exists() {
                    return Err(SecretsError::Exists(path));
                }
            }
        }
        let mut written = Vec::new();
        for (name, content) in files {
            let path = dir.join(&name);
            write_file(&path, content.as_bytes(), name.ends_with(".key"))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Reads the files written by [`Secrets::write_dir`].
    pub fn read_dir(dir: &Path) -> Result<Self, SecretsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| SecretsError::Io { path, source })
        };
        let pair = |base: &str| -> Result<CertAndKey, SecretsError> {
            Ok(CertAndKey {
                cert_pem: read(&format!("{base}.crt"))?,
                key_pem: read(&format!("{base}.key"))?,
            })
        };
        let mut clients = Vec::new();
        for role in ROLES {
            clients.push((role.to_string(), pair(role)?));
        }
        Ok(Self {
            ca: pair("ca")?,
            server: pair("server")?,
            clients,
        })
    }
}

/// Writes `data` to `path`, mode 0600 when `private`, replacing an existing file.
pub fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_writes_and_reads_back() {
        let s = Secrets::generate(&["127.0.0.1".into(), "node1.local".into()], 30).unwrap();
        assert!(s.ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(s.client("operator").is_some());
        let dir = tempfile::tempdir().unwrap();
        let written = s.write_dir(dir.path(), false).unwrap();
        assert_eq!(written.len(), 10);
        assert!(matches!(
            s.write_dir(dir.path(), false),
            Err(SecretsError::Exists(_))
        ));
        assert_eq!(Secrets::read_dir(dir.path()).unwrap(), s);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
