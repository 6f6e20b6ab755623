//! Docker references as containers/image compares them, and `signedIdentity` rules.

use oci_client::Reference;
use serde_json::Value;

use super::{invalid, SignatureError};

/// A normalized docker reference: `name` is `host/path` (`docker.io/library/busybox`),
/// with the tag and digest as written (no default tag added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DockerRef {
    pub(super) name: String,
    pub(super) tag: Option<String>,
    pub(super) digest: Option<String>,
}

impl DockerRef {
    /// Parse and normalize like `reference.ParseNormalizedNamed` (Docker Hub short
    /// names expand); unlike the registry client, a missing tag stays missing.
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        let r = Reference::try_from(s).map_err(|e| e.to_string())?;
        let without_digest = s.split('@').next().unwrap_or(s);
        let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
        let explicit_tag = last.contains(':');
        Ok(DockerRef {
            name: format!("{}/{}", r.registry(), r.repository()),
            tag: if explicit_tag {
                r.tag().map(str::to_owned)
            } else {
                None
            },
            digest: r.digest().map(str::to_owned),
        })
    }

    /// The image being pulled (its tag defaults to `latest` as the registry client
    /// resolves it).
    pub(super) fn from_reference(r: &Reference) -> Self {
        DockerRef {
            name: format!("{}/{}", r.registry(), r.repository()),
            tag: r.tag().map(str::to_owned),
            digest: r.digest().map(str::to_owned),
        }
    }

    pub(super) fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    pub(super) fn string(&self) -> String {
        let mut s = self.name.clone();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// Policy scopes above the exact reference, most specific first: the repository,
    /// its parent namespaces, the host, then `*.domain` wildcards.
    pub(super) fn namespaces(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut name = self.name.as_str();
        loop {
            out.push(name.to_owned());
            match name.rfind('/') {
                Some(i) => name = &name[..i],
                None => break,
            }
        }
        // `name` is now the host; wildcards never carry a port.
        let mut domain = name.split(':').next().unwrap_or(name);
        while let Some(i) = domain.find('.') {
            domain = &domain[i + 1..];
            out.push(format!("*.{domain}"));
        }
        out
    }
}

/// `signedIdentity`: how a signature's `docker-reference` must relate to the image.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignedIdentity {
    /// The default: for an image pulled by tag, the signed reference must be exactly it;
    /// by digest, the same repository.
    MatchRepoDigestOrExact,
    /// The same repository, any tag or digest.
    MatchRepository,
    /// Exactly the image reference (both must carry a tag or digest).
    MatchExact,
    /// The signed reference must be exactly this one, whatever the image is called.
    ExactReference(String),
    /// The signed reference must be in this repository.
    ExactRepository(String),
    /// The image reference with `prefix` replaced by `signed_prefix`, then
    /// `MatchRepoDigestOrExact` (for mirrors).
    RemapIdentity {
        /// Prefix of the pulled image's reference.
        prefix: String,
        /// What the signature calls that prefix.
        signed_prefix: String,
    },
}

impl SignedIdentity {
    pub(super) fn parse(where_: &str, v: &Value) -> Result<Self, SignatureError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(format!("{where_}: signedIdentity must be an object")))?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{where_}: signedIdentity without a `type`")))?;
        let field = |name: &str| -> Result<String, SignatureError> {
            obj.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{where_}: signedIdentity {ty} needs `{name}`")))
        };
        let only = |allowed: &[&str]| {
            super::only_fields(&format!("{where_}.signedIdentity"), obj, allowed)
        };
        match ty {
            "matchRepoDigestOrExact" => {
                only(&["type"])?;
                Ok(SignedIdentity::MatchRepoDigestOrExact)
            }
            "matchRepository" => {
                only(&["type"])?;
                Ok(SignedIdentity::MatchRepository)
            }
            "matchExact" => {
                only(&["type"])?;
                Ok(SignedIdentity::MatchExact)
            }
            "exactReference" => {
                only(&["type", "dockerReference"])?;
                let r = field("dockerReference")?;
                let parsed = DockerRef::parse(&r)
                    .map_err(|e| invalid(format!("{where_}: dockerReference {r:?}: {e}")))?;
                if parsed.is_name_only() {
                    return Err(invalid(format!(
                        "{where_}: dockerReference {r:?} needs a tag or digest"
                    )));
                }
                Ok(SignedIdentity::ExactReference(parsed.string()))
            }
            "exactRepository" => {
                only(&["type", "dockerRepository"])?;
                let r = field("dockerRepository")?;
                let parsed = DockerRef::parse(&r)
                    .map_err(|e| invalid(format!("{where_}: dockerRepository {r:?}: {e}")))?;
                if !parsed.is_name_only() {
                    return Err(invalid(format!(
                        "{where_}: dockerRepository {r:?} must be a repository, without tag or digest"
                    )));
                }
                Ok(SignedIdentity::ExactRepository(parsed.name))
            }
            "remapIdentity" => {
                only(&["type", "prefix", "signedPrefix"])?;
                let prefix = field("prefix")?;
                let signed_prefix = field("signedPrefix")?;
                for p in [&prefix, &signed_prefix] {
                    super::validate_docker_scope(p)?;
                    if p.is_empty() || p.starts_with("*.") {
                        return Err(invalid(format!(
                            "{where_}: remapIdentity prefix {p:?} must be a host or repository"
                        )));
                    }
                }
                Ok(SignedIdentity::RemapIdentity {
                    prefix,
                    signed_prefix,
                })
            }
            other => Err(SignatureError::Unsupported(format!(
                "{where_}: signedIdentity type {other:?}"
            ))),
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            SignedIdentity::MatchRepoDigestOrExact => "matchRepoDigestOrExact",
            SignedIdentity::MatchRepository => "matchRepository",
            SignedIdentity::MatchExact => "matchExact",
            SignedIdentity::ExactReference(_) => "exactReference",
            SignedIdentity::ExactRepository(_) => "exactRepository",
            SignedIdentity::RemapIdentity { .. } => "remapIdentity",
        }
    }

    /// Whether a signature claiming `signed` is acceptable for `image`.
    pub(super) fn accepts(&self, image: &DockerRef, signed: &DockerRef) -> bool {
        match self {
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(image, signed),
            SignedIdentity::MatchRepository => image.name == signed.name,
            SignedIdentity::MatchExact => {
                !image.is_name_only() && !signed.is_name_only() && image.string() == signed.string()
            }
            SignedIdentity::ExactReference(r) => !signed.is_name_only() && signed.string() == *r,
            SignedIdentity::ExactRepository(r) => signed.name == *r,
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let s = image.string();
                let remapped = match s.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with([':', '/', '@']) => {
                        match DockerRef::parse(&format!("{signed_prefix}{rest}")) {
                            Ok(r) => r,
                            Err(_) => return false,
                        }
                    }
                    _ => image.clone(),
                };
                repo_digest_or_exact(&remapped, signed)
            }
        }
    }
}

fn repo_digest_or_exact(image: &DockerRef, signed: &DockerRef) -> bool {
    if signed.is_name_only() {
        return false;
    }
    if image.tag.is_some() {
        image.string() == signed.string()
    } else if image.digest.is_some() {
        image.name == signed.name
    } else {
        false
    }
}
