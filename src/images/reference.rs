//! Image references normalised as Docker does: `busybox:1.35` is
//! `docker.io/library/busybox:1.35`, a missing tag is `latest`, and a first component with a
//! dot, a colon or `localhost` is a registry.

/// A normalised reference: registry, repository path and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    /// Parses and normalises `text`; digests (`@sha256:...`) are kept as the tag.
    pub fn parse(text: &str) -> anyhow::Result<Reference> {
        let text = text.trim();
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_ascii_uppercase() && !text.contains('@')) {
            anyhow::bail!("{text:?} is not an image reference (lowercase name[:tag], e.g. busybox:1.36)");
        }
        let (name, tag) = match text.split_once('@') {
            Some((n, digest)) => (n, format!("@{digest}")),
            None => match text.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t.to_string()),
                _ => (text, "latest".to_string()),
            },
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        if repository.is_empty() || tag.is_empty() {
            anyhow::bail!("{text:?} is not an image reference (lowercase name[:tag], e.g. busybox:1.36)");
        }
        Ok(Reference { registry, repository, tag })
    }

    /// `registry/repository`, as `image ls` prints it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tag.starts_with('@') {
            write!(f, "{}{}", self.name(), self.tag)
        } else {
            write!(f, "{}:{}", self.name(), self.tag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = |s: &str| Reference::parse(s).unwrap().to_string();
        assert_eq!(r("busybox:1.35"), "docker.io/library/busybox:1.35");
        assert_eq!(r("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(r("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(r("127.0.0.1:5000/web"), "127.0.0.1:5000/web:latest");
        assert_eq!(r("localhost/app:v1"), "localhost/app:v1");
        assert_eq!(r("ghcr.io/org/app:1.2"), "ghcr.io/org/app:1.2");
        assert_eq!(r("busybox@sha256:abc"), "docker.io/library/busybox@sha256:abc");
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("Busybox").is_err());
    }
}
