//! Image references: parsing and normalising `[registry/]repository[:tag][@digest]`.
//!
//! Normalisation follows Docker where it matters to users (`busybox` means
//! `busybox:latest`) but never invents a registry: a reference without one names an
//! image known locally only. The first path component is a registry when it contains
//! a `.` or a `:`, or is `localhost`, as in Docker.

use std::fmt;

use hangar_core::image::ImageError;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, empty when the reference names no registry.
    pub registry: String,
    pub repository: String,
    /// Empty only when a digest is given without a tag.
    pub tag: String,
    /// `sha256:<64 hex>` when pinned.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ImageError> {
        let invalid = || ImageError::InvalidReference(input.to_string());
        let s = input.trim();
        if s.is_empty() || s.len() > 512 {
            return Err(invalid());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_digest(d) {
                    return Err(invalid());
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is a `:` after the last `/`; an earlier `:` is a registry port.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], &rest[last_slash + i + 1..]),
            None => (rest, ""),
        };
        if !tag.is_empty() && !is_tag(tag) {
            return Err(invalid());
        }
        if rest.ends_with(':') {
            return Err(invalid());
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, repo)
            }
            _ => ("", name),
        };
        if !registry.is_empty() && !is_registry(registry) {
            return Err(invalid());
        }
        if !is_repository(repository) {
            return Err(invalid());
        }
        let tag = if tag.is_empty() && digest.is_none() {
            "latest"
        } else {
            tag
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
            digest,
        })
    }

    /// `registry/repository` (or just the repository without a registry).
    pub fn name(&self) -> String {
        if self.registry.is_empty() {
            self.repository.clone()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// Whether this reference can be pulled: it names a registry.
    pub fn is_remote(&self) -> bool {
        !self.registry.is_empty()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if !self.tag.is_empty() {
            write!(f, ":{}", self.tag)?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lower-case hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || s.starts_with('[') => (h, Some(p)),
        _ => (s, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return false;
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
}

/// Path components of lower-case alphanumerics joined by `.`, `_`, `__` or `-`s.
fn is_repository(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('/').all(|comp| {
            let b = comp.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker_without_inventing_a_registry() {
        assert_eq!(norm("busybox"), "busybox:latest");
        assert_eq!(norm("busybox:1.36"), "busybox:1.36");
        assert_eq!(norm("library/busybox"), "library/busybox:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("busybox@{d}")), format!("busybox@{d}"));
        assert_eq!(norm(&format!("busybox:1@{d}")), format!("busybox:1@{d}"));
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(norm("localhost/x:y"), "localhost/x:y");
    }

    #[test]
    fn finds_the_registry() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag, "v1");
        assert!(r.is_remote());
        let r = Reference::parse("ghcr.io/org/app").unwrap();
        assert_eq!(r.registry, "ghcr.io");
        let r = Reference::parse("team/app:v1").unwrap();
        assert_eq!(r.registry, "");
        assert!(!r.is_remote());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "UPPER",
            "a:",
            "a@sha256:12",
            "a/../b",
            "a b",
            "-a",
            "a:tag with space",
            "host:99999/a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
