//! An image archive as `docker save` and `skopeo copy ... oci-archive:` write it, read before
//! an import: a tar of an OCI image layout (`index.json` and `blobs/sha256/...`) or of
//! Docker's older format (`manifest.json` naming each image's configuration and layers).
//!
//! [`inspect`] names the images the archive holds and checks that every one of them has a
//! variant for the node's platform, so that an archive built for another board is refused
//! whole, with the image and its platform named, before containerd stores any of it. The
//! archive is read in two passes over the file: one to find where each member lies, one to
//! read the few JSON members it needs (index, manifests, configurations); layers are never
//! read.

use super::image::{self, ImageError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The largest JSON member read into memory.
const MAX_JSON_MEMBER: u64 = 4 << 20;
/// The most members an archive may have (bounds the index of members in memory).
const MAX_MEMBERS: usize = 65_536;
/// containerd's annotation of an image's full name in an OCI index.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation of an image's reference (a tag or a full name).
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an archive cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file could not be read.
    #[error("image archive {path}: {source}")]
    Io {
        /// The archive.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Neither layout's entry point is in the archive.
    #[error(
        "image archive {path} holds neither index.json nor manifest.json: not an OCI or Docker image archive"
    )]
    NotAnImageArchive {
        /// The archive.
        path: PathBuf,
    },
    /// A member the index or a manifest names is missing.
    #[error("image archive {path}: {member} is missing (named by {named_by})")]
    Missing {
        /// The archive.
        path: PathBuf,
        /// The member.
        member: String,
        /// What names it.
        named_by: String,
    },
    /// Two members have the same name: which one counts would differ between readers.
    #[error("image archive {path}: {member} is in the archive twice")]
    Duplicate {
        /// The archive.
        path: PathBuf,
        /// The member.
        member: String,
    },
    /// Too many members.
    #[error("image archive {path} has more than {MAX_MEMBERS} members")]
    TooManyMembers {
        /// The archive.
        path: PathBuf,
    },
    /// A blob does not hash to the digest it is named by.
    #[error("image archive {path}: {member} does not match its digest")]
    Corrupt {
        /// The archive.
        path: PathBuf,
        /// The member.
        member: String,
    },
    /// A JSON member is too large.
    #[error("image archive {path}: {member} is larger than {MAX_JSON_MEMBER} bytes")]
    TooLarge {
        /// The archive.
        path: PathBuf,
        /// The member.
        member: String,
    },
    /// A JSON member is not what it should be.
    #[error("image archive {path}: {member} is not valid: {message}")]
    Json {
        /// The archive.
        path: PathBuf,
        /// The member.
        member: String,
        /// The parser's message.
        message: String,
    },
    /// The archive names no image.
    #[error("image archive {path} holds no image")]
    Empty {
        /// The archive.
        path: PathBuf,
    },
    /// An image is not for the node's platform.
    #[error("image archive {path}: {source}")]
    Image {
        /// The archive.
        path: PathBuf,
        /// The image and its platform.
        source: ImageError,
    },
}

/// One image of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// The name the archive gives it (a full reference, or only a tag); empty when it has
    /// none.
    pub name: String,
    /// The digest of its top-level manifest or index (OCI layout; empty in Docker's format).
    pub digest: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
}

/// Where each regular file of the tar lies: its data's offset and length.
struct Members {
    path: PathBuf,
    file: File,
    at: BTreeMap<String, (u64, u64)>,
}

impl Members {
    fn open(path: &Path) -> Result<Members, ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut at = BTreeMap::new();
        let mut tar = tar::Archive::new(&file);
        // Raw entries: extension records (long names, PAX headers) are skipped like any
        // other member instead of being read into memory whatever size they claim; the
        // members an image archive needs have short names.
        let entries = tar.entries().map_err(io)?.raw(true);
        for entry in entries {
            let entry = entry.map_err(io)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_string();
            if at.len() >= MAX_MEMBERS {
                return Err(ArchiveError::TooManyMembers {
                    path: path.to_path_buf(),
                });
            }
            if at
                .insert(name.clone(), (entry.raw_file_position(), entry.size()))
                .is_some()
            {
                return Err(ArchiveError::Duplicate {
                    path: path.to_path_buf(),
                    member: name,
                });
            }
        }
        Ok(Members {
            path: path.to_path_buf(),
            file,
            at,
        })
    }

    fn has(&self, member: &str) -> bool {
        self.at.contains_key(member)
    }

    fn read(&mut self, member: &str, named_by: &str) -> Result<Vec<u8>, ArchiveError> {
        let Some(&(offset, len)) = self.at.get(member) else {
            return Err(ArchiveError::Missing {
                path: self.path.clone(),
                member: member.into(),
                named_by: named_by.into(),
            });
        };
        if len > MAX_JSON_MEMBER {
            return Err(ArchiveError::TooLarge {
                path: self.path.clone(),
                member: member.into(),
            });
        }
        let io = |source| ArchiveError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&self.file).take(len).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    }

    /// A blob of an OCI layout, checked against its digest (the digest containerd files it
    /// under: what is inspected is what is imported).
    fn read_blob(&mut self, digest: &str, named_by: &str) -> Result<Vec<u8>, ArchiveError> {
        let member = blob_member(digest);
        let bytes = self.read(&member, named_by)?;
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex::encode(Sha256::digest(&bytes)) != hex {
            return Err(ArchiveError::Corrupt {
                path: self.path.clone(),
                member,
            });
        }
        Ok(bytes)
    }

    fn json<T: for<'a> Deserialize<'a>>(
        &mut self,
        member: &str,
        named_by: &str,
    ) -> Result<T, ArchiveError> {
        let bytes = self.read(member, named_by)?;
        serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Json {
            path: self.path.clone(),
            member: member.into(),
            message: e.to_string(),
        })
    }

    fn platform_error(&self, source: ImageError) -> ArchiveError {
        ArchiveError::Image {
            path: self.path.clone(),
            source,
        }
    }
}

/// The member of a blob in an OCI layout.
fn blob_member(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// The images of the archive at `path`, each checked to have a variant for `linux/arch`
/// (Go's architecture names: `amd64`, `arm64`).
pub fn inspect(path: &Path, arch: &str) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let mut members = Members::open(path)?;
    let images = if members.has("index.json") {
        inspect_oci(&mut members, arch)?
    } else if members.has("manifest.json") {
        inspect_docker(&mut members, arch)?
    } else {
        return Err(ArchiveError::NotAnImageArchive {
            path: path.to_path_buf(),
        });
    };
    if images.is_empty() {
        return Err(ArchiveError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(images)
}

fn inspect_oci(members: &mut Members, arch: &str) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let index: OciIndex = members.json("index.json", "the archive")?;
    let mut images = Vec::with_capacity(index.manifests.len());
    for entry in index.manifests {
        let name = entry
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| entry.annotations.get(OCI_REF_NAME))
            .cloned()
            .unwrap_or_default();
        let shown = if name.is_empty() {
            entry.digest.clone()
        } else {
            name.clone()
        };
        let mut manifest_digest = entry.digest.clone();
        if image::is_index(&entry.media_type) {
            let nested = members.read_blob(&entry.digest, "index.json")?;
            manifest_digest = image::select_manifest(&shown, &nested, arch)
                .map_err(|e| members.platform_error(e))?
                .digest;
        }
        let manifest = members.read_blob(&manifest_digest, &shown)?;
        let config =
            image::manifest_config(&shown, &manifest).map_err(|e| members.platform_error(e))?;
        let config = members.read_blob(&config.digest, &manifest_digest)?;
        image::image_config(&shown, &config, arch).map_err(|e| members.platform_error(e))?;
        images.push(ArchiveImage {
            name,
            digest: entry.digest,
        });
    }
    Ok(images)
}

fn inspect_docker(members: &mut Members, arch: &str) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let entries: Vec<DockerEntry> = members.json("manifest.json", "the archive")?;
    let mut images = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = entry.repo_tags.first().cloned().unwrap_or_default();
        let shown = if name.is_empty() {
            entry.config.clone()
        } else {
            name.clone()
        };
        // `<hex>.json` (older Docker) or `blobs/sha256/<hex>` (newer): named by its digest.
        let stem = entry
            .config
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        let config = if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = members.read(&entry.config, "manifest.json")?;
            if hex::encode(Sha256::digest(&bytes)) != stem {
                return Err(ArchiveError::Corrupt {
                    path: members.path.clone(),
                    member: entry.config,
                });
            }
            bytes
        } else {
            members.read(&entry.config, "manifest.json")?
        };
        image::image_config(&shown, &config, arch).map_err(|e| members.platform_error(e))?;
        images.push(ArchiveImage {
            name,
            digest: String::new(),
        });
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    fn config(arch: &str) -> Vec<u8> {
        format!(
            r#"{{"os":"linux","architecture":"{arch}","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        )
        .into_bytes()
    }

    fn tar_of(dir: &Path, members: &[(String, Vec<u8>)]) -> PathBuf {
        let path = dir.join("archive.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.finish().unwrap();
        path
    }

    fn oci_archive(dir: &Path, arch: &str, ref_name: &str, nested: bool) -> PathBuf {
        let cfg = config(arch);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            digest(&cfg),
            cfg.len()
        )
        .into_bytes();
        let mut members = vec![
            (blob_member(&digest(&cfg)), cfg.clone()),
            (blob_member(&digest(&manifest)), manifest.clone()),
        ];
        let mut top = (
            "application/vnd.oci.image.manifest.v1+json",
            digest(&manifest),
        );
        if nested {
            let index = format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#,
                digest(&manifest),
                manifest.len()
            )
            .into_bytes();
            top = ("application/vnd.oci.image.index.v1+json", digest(&index));
            members.push((blob_member(&digest(&index)), index));
        }
        let index_json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":1,"annotations":{{"{OCI_REF_NAME}":"{ref_name}"}}}}]}}"#,
            top.0, top.1
        );
        members.push(("index.json".into(), index_json.into_bytes()));
        tar_of(dir, &members)
    }

    #[test]
    fn oci_archives_are_named_and_checked_for_the_platform() {
        let dir = tempfile::tempdir().unwrap();
        for nested in [false, true] {
            let path = oci_archive(dir.path(), "arm64", "registry.example/web:1", nested);
            let images = inspect(&path, "arm64").unwrap();
            assert_eq!(images.len(), 1);
            assert_eq!(images[0].name, "registry.example/web:1");
            assert!(images[0].digest.starts_with("sha256:"));
            let e = inspect(&path, "amd64").unwrap_err().to_string();
            let want = if nested {
                "has no variant for linux/amd64 (it has: linux/arm64)"
            } else {
                "is built for linux/arm64, this node is linux/amd64"
            };
            assert!(
                e.contains("registry.example/web:1") && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = oci_archive(dir.path(), "arm64", "web:1", false);
        // The same archive with the configuration's content swapped for another platform's
        // under the same name: what containerd would store is not what was inspected.
        let mut members = Vec::new();
        let mut tar = tar::Archive::new(File::open(&good).unwrap());
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if data == config("arm64") {
                data = config("amd64");
            }
            members.push((name, data));
        }
        let forged_dir = tempfile::tempdir().unwrap();
        let forged = tar_of(forged_dir.path(), &members);
        let e = inspect(&forged, "amd64").unwrap_err().to_string();
        assert!(e.contains("does not match its digest"), "{e}");
    }

    #[test]
    fn docker_archives_are_named_by_their_tags() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = r#"[{"Config":"abc.json","RepoTags":["web:1"],"Layers":[]}]"#;
        let path = tar_of(
            dir.path(),
            &[
                ("abc.json".into(), config("amd64")),
                ("manifest.json".into(), manifest.as_bytes().to_vec()),
            ],
        );
        let images = inspect(&path, "amd64").unwrap();
        assert_eq!(images[0].name, "web:1");
        let e = inspect(&path, "arm64").unwrap_err().to_string();
        assert!(e.contains("image web:1 is built for linux/amd64"), "{e}");
    }

    #[test]
    fn what_is_not_an_image_archive_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = tar_of(dir.path(), &[("hello.txt".into(), b"hi".to_vec())]);
        let e = inspect(&path, "amd64").unwrap_err().to_string();
        assert!(
            e.contains("holds neither index.json nor manifest.json"),
            "{e}"
        );
        let path = tar_of(
            dir.path(),
            &[(
                "index.json".into(),
                br#"{"manifests":[{"digest":"sha256:00"}]}"#.to_vec(),
            )],
        );
        let e = inspect(&path, "amd64").unwrap_err().to_string();
        assert!(e.contains("blobs/sha256/00 is missing"), "{e}");
        let path = tar_of(
            dir.path(),
            &[("index.json".into(), br#"{"manifests":[]}"#.to_vec())],
        );
        let e = inspect(&path, "amd64").unwrap_err().to_string();
        assert!(e.contains("holds no image"), "{e}");
        let path = tar_of(
            dir.path(),
            &[
                ("index.json".into(), br#"{"manifests":[]}"#.to_vec()),
                ("./index.json".into(), br#"{"manifests":[]}"#.to_vec()),
            ],
        );
        let e = inspect(&path, "amd64").unwrap_err().to_string();
        assert!(e.contains("index.json is in the archive twice"), "{e}");
        let not_tar = dir.path().join("junk");
        std::fs::write(&not_tar, vec![7u8; 2000]).unwrap();
        assert!(inspect(&not_tar, "amd64").is_err());
    }
}
