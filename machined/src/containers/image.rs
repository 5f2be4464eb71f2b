//! Reading an image out of the content store: the manifest for the node's platform (from an
//! index, or the manifest itself), the image configuration (entry point, command,
//! environment, working directory, user) and the chain id of its layers, which names the
//! unpacked snapshot a container's root is prepared on. Pure functions over the JSON blobs.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Media types of an index (a multi-platform image).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A blob is not the JSON it should be.
    #[error("image {image}: {what} is not valid JSON: {message}")]
    Json {
        /// The image.
        image: String,
        /// Which blob.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// No manifest for the node's platform.
    #[error("image {image} has no variant for {platform} (it has: {available})")]
    NoPlatform {
        /// The image.
        image: String,
        /// The node's platform.
        platform: String,
        /// The platforms it has.
        available: String,
    },
    /// The image is for another platform.
    #[error("image {image} is built for {found}, this node is {platform}")]
    WrongPlatform {
        /// The image.
        image: String,
        /// Its os/architecture.
        found: String,
        /// The node's.
        platform: String,
    },
}

/// A content descriptor (media type, digest).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Its platform (index entries).
    #[serde(default)]
    pub platform: Option<PlatformJson>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlatformJson {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What a container takes from its image's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `os/architecture`.
    pub platform: String,
    /// Entry point.
    pub entrypoint: Vec<String>,
    /// Command (arguments of the entry point).
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory (empty: `/`).
    pub working_dir: String,
    /// User (`uid`, `uid:gid`, or a name).
    pub user: String,
    /// The chain id of the layers (the parent snapshot of a container's root).
    pub chain_id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConfigSection {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigJson {
    os: String,
    architecture: String,
    #[serde(default)]
    config: Option<ConfigSection>,
    rootfs: RootFs,
}

fn json<'a, T: Deserialize<'a>>(
    image: &str,
    what: &'static str,
    b: &'a [u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(b).map_err(|e| ImageError::Json {
        image: image.into(),
        what,
        message: e.to_string(),
    })
}

/// Whether a media type is an index.
pub fn is_index(media_type: &str) -> bool {
    INDEX_TYPES.contains(&media_type)
}

/// The manifest of an index for `arch` (Go's name: `amd64`, `arm64`) on Linux.
pub fn select_manifest(image: &str, index: &[u8], arch: &str) -> Result<Descriptor, ImageError> {
    let index: Index = json(image, "the index", index)?;
    let platforms = |m: &Descriptor| {
        m.platform
            .as_ref()
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .unwrap_or_else(|| "unknown".into())
    };
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .cloned()
        .ok_or_else(|| ImageError::NoPlatform {
            image: image.into(),
            platform: format!("linux/{arch}"),
            available: index
                .manifests
                .iter()
                .map(platforms)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The config descriptor of a manifest.
pub fn manifest_config(image: &str, manifest: &[u8]) -> Result<Descriptor, ImageError> {
    Ok(json::<Manifest>(image, "the manifest", manifest)?.config)
}

/// The bytes a manifest refers to: its configuration and its (compressed) layers.
pub fn manifest_content_size(image: &str, manifest: &[u8]) -> Result<u64, ImageError> {
    let m: Manifest = json(image, "the manifest", manifest)?;
    Ok(m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size)
}

/// Reads an image configuration and checks it is for `linux/arch`.
pub fn image_config(image: &str, config: &[u8], arch: &str) -> Result<ImageConfig, ImageError> {
    let c: ConfigJson = json(image, "the image configuration", config)?;
    let found = format!("{}/{}", c.os, c.architecture);
    if c.os != "linux" || c.architecture != arch {
        return Err(ImageError::WrongPlatform {
            image: image.into(),
            found,
            platform: format!("linux/{arch}"),
        });
    }
    let s = c.config.unwrap_or_default();
    Ok(ImageConfig {
        platform: found,
        entrypoint: s.entrypoint.unwrap_or_default(),
        cmd: s.cmd.unwrap_or_default(),
        env: s.env.unwrap_or_default(),
        working_dir: s.working_dir.unwrap_or_default(),
        user: s.user.unwrap_or_default(),
        chain_id: chain_id(&c.rootfs.diff_ids),
    })
}

/// The OCI chain id of a list of layer diff ids: the first diff id, then
/// `sha256(parent + " " + diff_id)` for each next one.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut ids = diff_ids.iter();
    let Some(first) = ids.next() else {
        return String::new();
    };
    ids.fold(first.clone(), |parent, diff| {
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{parent} {diff}")))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_oci_definition() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let ab = format!(
            "sha256:{}",
            hex::encode(Sha256::digest("sha256:aaaa sha256:bbbb"))
        );
        assert_eq!(chain_id(&[a, b]), ab);
        assert_eq!(chain_id(&[]), "");
    }

    #[test]
    fn platform_is_selected_and_checked() {
        let index = br#"{"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1","platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2","platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;
        assert_eq!(
            select_manifest("i", index, "arm64").unwrap().digest,
            "sha256:2"
        );
        let e = select_manifest("i", index, "riscv64")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "image i has no variant for linux/riscv64 (it has: linux/amd64, linux/arm64)"
        );
        let config = br#"{"os":"linux","architecture":"arm64","config":{"Entrypoint":["/bin/httpd"],"Cmd":["-f"],"Env":["PATH=/bin"],"WorkingDir":"/www"},"rootfs":{"type":"layers","diff_ids":["sha256:aaaa"]}}"#;
        let c = image_config("i", config, "arm64").unwrap();
        assert_eq!(
            (c.entrypoint, c.cmd, c.chain_id),
            (
                vec!["/bin/httpd".to_string()],
                vec!["-f".to_string()],
                "sha256:aaaa".to_string()
            )
        );
        let e = image_config("i", config, "amd64").unwrap_err().to_string();
        assert_eq!(
            e,
            "image i is built for linux/arm64, this node is linux/amd64"
        );
        assert!(
            image_config("i", b"{", "amd64")
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
    }
}
