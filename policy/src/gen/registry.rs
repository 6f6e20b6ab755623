//! Image configs from a registry, with `oci-client`: a tag is resolved to the digest it
//! names now (the index's, for a multi-platform image: what the pod gets pinned to), then
//! the platform's manifest and its config are fetched by digest. Every manifest and the
//! config are checked against their digests here, whatever the client does.
//!
//! HTTPS, except for the registries listed as insecure (e.g. `127.0.0.1:5000`). Credentials:
//! per registry from `--registry-auth HOST=USER:PASSWORD`, else from a docker
//! `config.json` (`auths.<host>.auth`, base64 `user:password`), else anonymous; the client
//! does the Basic or Bearer-token exchange the registry asks for.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use super::image::{check_digest, ConfigBlob, ImageConfig, ImageError, ImageRef, Manifest, RemoteImages};

/// Media types asked for when fetching a manifest.
const ACCEPT: &[&str] = &[
    super::image::MT_OCI_INDEX,
    super::image::MT_DOCKER_LIST,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest config blob accepted.
const MAX_CONFIG: usize = 4 * 1024 * 1024;

/// Errors setting up registry access.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A `--registry-auth` value is not `HOST=USER:PASSWORD`.
    #[error("registry credentials for `{0}` are not HOST=USER:PASSWORD")]
    BadAuth(String),
    /// The docker config file could not be read or parsed.
    #[error("cannot use docker config {path}: {problem}")]
    DockerConfig {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The async runtime for the client could not be started.
    #[error("cannot start the registry client's runtime")]
    Runtime(#[source] std::io::Error),
}

/// How to reach registries.
#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials by registry host.
    pub auth: BTreeMap<String, (String, String)>,
}

impl RegistryOptions {
    /// Add credentials given as `HOST=USER:PASSWORD`.
    pub fn add_auth(&mut self, spec: &str) -> Result<(), RegistryError> {
        let bad = || RegistryError::BadAuth(spec.split('=').next().unwrap_or("").to_owned());
        let (host, creds) = spec.split_once('=').ok_or_else(bad)?;
        let (user, password) = creds.split_once(':').ok_or_else(bad)?;
        if host.is_empty() || user.is_empty() {
            return Err(bad());
        }
        self.auth.insert(host.to_owned(), (user.to_owned(), password.to_owned()));
        Ok(())
    }

    /// Add the credentials of a docker `config.json` (`auths.<host>.auth`), for registries
    /// that have none yet. Docker Hub's `https://index.docker.io/v1/` counts as `docker.io`.
    pub fn add_docker_config(&mut self, path: &Path) -> Result<(), RegistryError> {
        let err = |problem: String| RegistryError::DockerConfig { path: path.display().to_string(), problem };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let Some(auths) = json.get("auths").and_then(serde_json::Value::as_object) else { return Ok(()) };
        for (key, entry) in auths {
            let Some(b64) = entry.get("auth").and_then(serde_json::Value::as_str) else { continue };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| err(format!("auths.{key}.auth: {e}")))?;
            let raw = String::from_utf8(raw).map_err(|e| err(format!("auths.{key}.auth: {e}")))?;
            let (user, password) =
                raw.split_once(':').ok_or_else(|| err(format!("auths.{key}.auth is not user:password")))?;
            let host = key.trim_start_matches("https://").trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or(host);
            let host = if host == "index.docker.io" { "docker.io" } else { host };
            self.auth.entry(host.to_owned()).or_insert((user.to_owned(), password.to_owned()));
        }
        Ok(())
    }
}

/// A registry client for [`super::ImageStore::with_remote`].
pub struct Registry {
    client: Client,
    runtime: tokio::runtime::Runtime,
    auth: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("auth_hosts", &self.auth.keys().collect::<Vec<_>>()).finish()
    }
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        // oci-client's reqwest is built without a bundled crypto provider (the workspace
        // uses ring everywhere): make ring the process default unless one is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(30)),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RegistryError::Runtime)?;
        Ok(Self { client: Client::new(config), runtime, auth: options.auth })
    }

    fn auth_for(&self, registry: &str) -> RegistryAuth {
        match self.auth.get(registry) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    async fn fetch(&self, r: &ImageRef, os: &str, arch: &str) -> Result<(String, ImageConfig), ImageError> {
        let name = r.tagged().unwrap_or_else(|| r.name());
        let failed = |e: &dyn std::error::Error| {
            let mut message = e.to_string();
            let mut cur = e.source();
            while let Some(s) = cur {
                message.push_str(": ");
                message.push_str(&s.to_string());
                cur = s.source();
            }
            ImageError::Registry { reference: name.clone(), message }
        };
        let auth = self.auth_for(&r.registry);
        let at = |digest: &str| Reference::with_digest(r.registry.clone(), r.repository.clone(), digest.to_owned());
        // The digest the reference names now: pinned, or what the tag points at.
        let pinned = match &r.digest {
            Some(d) => d.clone(),
            None => {
                let tag = r.tag.clone().unwrap_or_else(|| "latest".to_owned());
                let tagged = Reference::with_tag(r.registry.clone(), r.repository.clone(), tag);
                self.client.fetch_manifest_digest(&tagged, &auth).await.map_err(|e| failed(&e))?
            }
        };
        check_digest(&pinned)?;
        let mut digest = pinned.clone();
        let mut media_type = String::new();
        for _ in 0..2 {
            let (raw, _) = self.client.pull_manifest_raw(&at(&digest), &auth, ACCEPT).await.map_err(|e| failed(&e))?;
            verify(&name, "manifest", &digest, &raw)?;
            let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| failed(&e))?;
            if manifest.is_index(&media_type) {
                let entry = manifest.platform_entry(os, arch).ok_or_else(|| ImageError::NoPlatform {
                    reference: name.clone(),
                    platform: format!("{os}/{arch}"),
                })?;
                check_digest(&entry.digest)?;
                digest = entry.digest;
                media_type = entry.media_type;
                continue;
            }
            let config = manifest.config.ok_or_else(|| ImageError::Registry {
                reference: name.clone(),
                message: format!("manifest {digest} has no config"),
            })?;
            check_digest(&config.digest)?;
            let mut blob = Vec::new();
            self.client.pull_blob(&at(&digest), config.digest.as_str(), &mut blob).await.map_err(|e| failed(&e))?;
            if blob.len() > MAX_CONFIG {
                return Err(ImageError::Registry {
                    reference: name,
                    message: format!("config {} is over {MAX_CONFIG} bytes", config.digest),
                });
            }
            verify(&name, "config", &config.digest, &blob)?;
            let parsed: ConfigBlob = serde_json::from_slice(&blob).map_err(|e| failed(&e))?;
            return Ok((pinned, parsed.for_platform(os, arch, &name)?));
        }
        Err(ImageError::NoPlatform { reference: name, platform: format!("{os}/{arch} (nested index)") })
    }
}

fn verify(reference: &str, what: &'static str, digest: &str, content: &[u8]) -> Result<(), ImageError> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(content)));
    if actual == digest {
        Ok(())
    } else {
        Err(ImageError::RemoteDigestMismatch { reference: reference.to_owned(), what, digest: digest.to_owned() })
    }
}

impl RemoteImages for Registry {
    fn resolve(&self, reference: &ImageRef, os: &str, arch: &str) -> Result<(String, ImageConfig), ImageError> {
        self.runtime.block_on(self.fetch(reference, os, arch))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn credentials_from_flags_and_docker_config() {
        let mut o = RegistryOptions::default();
        o.add_auth("127.0.0.1:5000=alice:s3:cret").unwrap();
        assert_eq!(o.auth["127.0.0.1:5000"], ("alice".to_owned(), "s3:cret".to_owned()));
        assert!(o.add_auth("nohost").is_err());
        assert!(o.add_auth("host=nouser").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &path,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("bob:pw")},
                "127.0.0.1:5000": {"auth": b64("other:pw")},
                "ghcr.io": {}
            }})
            .to_string(),
        )
        .unwrap();
        o.add_docker_config(&path).unwrap();
        assert_eq!(o.auth["docker.io"], ("bob".to_owned(), "pw".to_owned()));
        // Flags win over the config file.
        assert_eq!(o.auth["127.0.0.1:5000"].0, "alice");
        assert!(!o.auth.contains_key("ghcr.io"));
        std::fs::write(&path, r#"{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}"#).unwrap();
        assert!(o.add_docker_config(&path).unwrap_err().to_string().contains("not user:password"));
    }
}
