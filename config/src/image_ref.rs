//! OCI image references (`[registry/]repository[:tag][@digest]`), parsed as the Docker
//! distribution reference grammar does, and normalized the way containerd and Docker do:
//! a reference without a registry host is on `docker.io`, a one-component repository there
//! is under `library/`, and a reference without tag or digest means `:latest`.

/// The registry assumed when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Registry host (`host` or `host:port`).
    pub registry: String,
    /// Repository path within the registry (`library/nginx`, `team/app`).
    pub repository: String,
    /// Tag, when given (`latest` is implied when neither tag nor digest is).
    pub tag: Option<String>,
    /// Digest (`sha256:<64 hex>`), when given.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{s}` is not an image reference: {why}");
        if s.is_empty() || s.len() > 4096 {
            return Err(bad("empty or too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("a digest is sha256:<64 hex digits>"))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad("a digest is sha256:<64 lowercase hex digits>"));
            }
        }
        // A tag follows the last `:` after the last `/` (a `:` before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad("a tag is 1 to 128 letters, digits, `_`, `.`, `-`"));
            }
        }
        let mut components: Vec<&str> = name.split('/').collect();
        let registry = if components.len() > 1
            && (components[0].contains(['.', ':']) || components[0] == "localhost")
        {
            let host = components.remove(0);
            let ok = host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
            if !ok {
                return Err(bad(
                    "the registry host has characters a host name cannot have",
                ));
            }
            host.to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        for c in &components {
            let ok = !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(&format!(
                    "repository component `{c}` must be lowercase letters and digits, separated by `.`, `_` or `-`"
                )));
            }
        }
        let mut repository = components.join("/");
        if registry == DEFAULT_REGISTRY && components.len() == 1 {
            repository = format!("library/{repository}");
        }
        Ok(Self {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// The fully qualified reference (`docker.io/library/nginx:latest`): the image's name
    /// in the node's image store.
    pub fn normalized(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        match (&self.tag, &self.digest) {
            (None, None) => out.push_str(":latest"),
            (Some(t), _) => {
                out.push(':');
                out.push_str(t);
            }
            (None, Some(_)) => {}
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let n = |s: &str| ImageReference::parse(s).unwrap().normalized();
        assert_eq!(n("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(n("team/app:1.2"), "docker.io/team/app:1.2");
        assert_eq!(n("10.0.2.2:5000/httpd:1"), "10.0.2.2:5000/httpd:1");
        assert_eq!(n("localhost/a/b"), "localhost/a/b:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("r.example.com/x@{d}")),
            format!("r.example.com/x@{d}")
        );
        let r = ImageReference::parse("127.0.0.1:5000/web:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "web")
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let e = |s: &str| ImageReference::parse(s).unwrap_err();
        assert!(
            e("Nginx:1").contains("component `Nginx`"),
            "{}",
            e("Nginx:1")
        );
        assert!(e("nginx:").contains("a tag is"));
        assert!(e("nginx@sha256:12").contains("digest"));
        assert!(e("a//b").contains("component ``"));
        assert!(e("").contains("empty"));
    }
}
