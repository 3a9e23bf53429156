//! Image references: `[host[:port]/]repo[:tag][@sha256:…]`, normalized as Docker does
//! (`alpine` is `docker.io/library/alpine`).

use std::fmt;

use crate::oci::Digest;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as named by the user (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/alpine`, `team/authd`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A string that is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid image reference {given:?}: {why} (expected host/repo:tag or host/repo@sha256:...)"
)]
pub struct BadReference {
    pub given: String,
    pub why: &'static str,
}

fn is_component(s: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
        && !s.contains("..")
        && !s.contains("___")
}

fn is_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-[]:".contains(&c));
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
}

impl Reference {
    /// Parses and normalizes a reference.
    pub fn parse(s: &str) -> Result<Reference, BadReference> {
        let bad = |why| BadReference {
            given: s.chars().take(200).collect(),
            why,
        };
        if s.is_empty() || s.len() > 512 || s.starts_with('-') || s.contains(char::is_whitespace) {
            return Err(bad("empty, too long, or with spaces"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest is not sha256:<64 hex>"))?,
                ),
            ),
            None => (s, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if !is_tag(t) {
                return Err(bad("the tag is not valid"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_host(first) {
                    return Err(bad("the registry host is not valid"));
                }
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.len() > 255 || !repository.split('/').all(is_component) {
            return Err(bad(
                "the repository path must be lowercase letters, digits and . _ - between slashes",
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to: Docker Hub's API lives on registry-1.docker.io.
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    /// What to ask the manifests endpoint for: the digest when pinned, else the tag (default `latest`).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `host/repo`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// This repository with another tag.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks an OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// A base reference that is neither a registry reference nor an OCI layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("base image {0:?} is not a valid reference: use host/repo:tag, host/repo@sha256:..., or oci:DIR:TAG")]
pub struct BadBase(pub String);

/// Where the base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    /// An OCI image layout on disk: `oci:DIR[:TAG]`.
    Layout {
        dir: std::path::PathBuf,
        tag: String,
    },
    /// A registry reference (`host/repo:tag` or `@sha256:…`), pulled by the registry module.
    Registry(Reference),
}

impl BaseRef {
    /// Parses a base reference.
    pub fn parse(s: &str) -> Result<BaseRef, BadBase> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => (dir, tag),
                _ => (rest, "latest"),
            };
            if dir.is_empty() || !is_tag(tag) {
                return Err(BadBase(s.to_string()));
            }
            return Ok(BaseRef::Layout {
                dir: std::path::PathBuf::from(dir),
                tag: tag.to_string(),
            });
        }
        Reference::parse(s)
            .map(BaseRef::Registry)
            .map_err(|_| BadBase(s.to_string()))
    }

    /// A name for the `org.opencontainers.image.base.name` annotation that does not depend on
    /// where the build runs: a layout is named by its directory's last component.
    pub fn display_name(&self) -> String {
        match self {
            BaseRef::Layout { dir, tag } => {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "layout".into());
                format!("oci:{name}:{tag}")
            }
            BaseRef::Registry(r) => r.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_docker_hub_names() {
        let r = Reference::parse("alpine:3.20").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/alpine", Some("3.20"))
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/alpine:3.20");
        let r = Reference::parse("docker.io/library/alpine:3.20").unwrap();
        assert_eq!(r.repository, "library/alpine");
    }

    #[test]
    fn parses_hosts_ports_and_digests() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let r = Reference::parse(&format!("127.0.0.1:5000/team/authd@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/authd");
        assert_eq!(r.reference(), d);
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.reference()),
            ("localhost", "latest".to_string())
        );
        assert_eq!(
            Reference::parse("registry.example.com/team/authd")
                .unwrap()
                .tag,
            None
        );
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "",
            "-x",
            "UPPER/case",
            "a b",
            "host/repo:bad tag",
            "host/repo@sha256:abc",
            "host//repo",
            "reg.io/a/../b",
            "x;id",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }
}
