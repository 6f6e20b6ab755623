//! `aa.toml`: the attestation agent's configuration, as Confidential Containers writes it
//! into initdata (`[data] "aa.toml"`), plus kata-cc's own `[kata_cc]` table.
//!
//! ```toml
//! [token_configs.kbs]
//! url = "https://kbs.example:8080"      # the KBS (http:// or https://)
//! cert = """-----BEGIN CERTIFICATE-----
//! ...
//! -----END CERTIFICATE-----"""           # optional: the KBS's CA (https only)
//!
//! [kata_cc]                              # kata-cc only; CoCo ignores unknown tables
//! attestation_required = true            # default: true in a TEE, false without one
//! ```
//!
//! What is read, and how strictly:
//! * `token_configs.kbs.url` (string) and `token_configs.kbs.cert` (string; an empty
//!   string means none). Any other key in `[token_configs.kbs]` is an error: a typo
//!   there must not silently drop the CA and fall back to the system roots.
//! * `kata_cc.attestation_required` (bool). Other keys in `[kata_cc]` are errors, so a
//!   misspelt `attestation_required` cannot weaken the default.
//! * Everything else CoCo defines (`token_configs.coco_as`, `eventlog_config`, `log`, ...)
//!   is accepted and listed in [`AaConfig::ignored`] so the caller can say so.
//!
//! "Attestation required" ([`AaConfig::required`]): `attestation_required` when set,
//! otherwise `true` in a TEE (including the simulated one) and `false` without one. A VM
//! without a TEE whose initdata asks for attestation can never attest, so whatever
//! depends on attestation stays refused: that is the fail-closed outcome.
//!
//! ```
//! use attestation_agent::config::AaConfig;
//! let c = AaConfig::parse("[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n").unwrap();
//! assert_eq!(c.kbs.as_ref().map(|k| k.url.as_str()), Some("http://10.0.2.2:8080"));
//! assert!(c.required(true) && !c.required(false));
//! ```

use std::sync::Arc;

use crate::{Attester, KbsClient, RcarError};

/// The name of the entry in initdata's `[data]` table.
pub const INITDATA_KEY: &str = "aa.toml";

/// Why `aa.toml` is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML.
    #[error("aa.toml is not valid TOML")]
    Toml(#[source] toml::de::Error),
    /// A key has the wrong type or is not known in a table read strictly.
    #[error("aa.toml: `{key}` {why}")]
    Field {
        /// The dotted key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The KBS client cannot be built from the URL / certificate.
    #[error("aa.toml: [token_configs.kbs] is not usable")]
    Client(#[source] RcarError),
}

/// `[token_configs.kbs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsConfig {
    /// `url`: `http://host:port` or `https://host[:port]`.
    pub url: String,
    /// `cert`: PEM of the CA that issued the KBS's HTTPS certificate.
    pub cert: Option<String>,
}

/// A parsed `aa.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AaConfig {
    /// The KBS, if configured.
    pub kbs: Option<KbsConfig>,
    /// `[kata_cc] attestation_required`, if set.
    pub attestation_required: Option<bool>,
    /// Keys present but not used by kata-cc (dotted), for a log line.
    pub ignored: Vec<String>,
}

fn field(key: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        key: key.to_owned(),
        why: why.into(),
    }
}

fn table<'a>(v: &'a toml::Value, key: &str) -> Result<&'a toml::Table, ConfigError> {
    v.as_table().ok_or_else(|| field(key, "must be a table"))
}

impl AaConfig {
    /// Parses `aa.toml` (see the module docs for what is strict).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let doc: toml::Table = toml::from_str(text).map_err(ConfigError::Toml)?;
        let mut out = AaConfig::default();
        for (key, value) in &doc {
            match key.as_str() {
                "token_configs" => {
                    for (tk, tv) in table(value, "token_configs")? {
                        if tk == "kbs" {
                            out.kbs = Some(Self::parse_kbs(table(tv, "token_configs.kbs")?)?);
                        } else {
                            out.ignored.push(format!("token_configs.{tk}"));
                        }
                    }
                }
                "kata_cc" => {
                    for (kk, kv) in table(value, "kata_cc")? {
                        match kk.as_str() {
                            "attestation_required" => {
                                let b = kv.as_bool().ok_or_else(|| {
                                    field("kata_cc.attestation_required", "must be true or false")
                                })?;
                                out.attestation_required = Some(b);
                            }
                            other => {
                                return Err(field(
                                    &format!("kata_cc.{other}"),
                                    "is not a kata-cc setting (known: attestation_required)",
                                ))
                            }
                        }
                    }
                }
                other => out.ignored.push(other.to_owned()),
            }
        }
        Ok(out)
    }

    fn parse_kbs(t: &toml::Table) -> Result<KbsConfig, ConfigError> {
        let mut url = None;
        let mut cert = None;
        for (k, v) in t {
            let key = format!("token_configs.kbs.{k}");
            let s = v.as_str().ok_or_else(|| field(&key, "must be a string"))?;
            match k.as_str() {
                "url" => url = Some(s.trim().to_owned()),
                "cert" => cert = Some(s.to_owned()).filter(|c| !c.trim().is_empty()),
                _ => return Err(field(&key, "is not known (url, cert)")),
            }
        }
        let url = url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| field("token_configs.kbs.url", "is missing"))?;
        Ok(KbsConfig { url, cert })
    }

    /// Whether attestation must succeed before workloads run: `attestation_required`
    /// when set, otherwise whether the VM has a TEE (`tee_present`).
    pub fn required(&self, tee_present: bool) -> bool {
        self.attestation_required.unwrap_or(tee_present)
    }

    /// The RCAR client for the configured KBS with `attester` (`None` without
    /// `[token_configs.kbs]`). The CA certificate, when given, is the only trust anchor.
    pub fn kbs_client(
        &self,
        attester: Arc<dyn Attester>,
    ) -> Result<Option<KbsClient>, ConfigError> {
        let Some(k) = &self.kbs else { return Ok(None) };
        let client = KbsClient::new(&k.url, attester).map_err(ConfigError::Client)?;
        let client = match &k.cert {
            Some(pem) => client.with_ca_cert_pem(pem).map_err(ConfigError::Client)?,
            None => client,
        };
        Ok(Some(client))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn coco_document_parses_and_extra_tables_are_listed() {
        let text = r#"
[token_configs]
[token_configs.coco_as]
url = "http://127.0.0.1:8000"

[token_configs.kbs]
url = "https://10.0.2.2:8080/"
cert = """
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
"""

[eventlog_config]
init_pcr = 17
enable_eventlog = false
"#;
        let c = AaConfig::parse(text).unwrap();
        let k = c.kbs.unwrap();
        assert_eq!(k.url, "https://10.0.2.2:8080/");
        assert!(k.cert.unwrap().contains("BEGIN CERTIFICATE"));
        assert_eq!(c.attestation_required, None);
        assert_eq!(c.ignored, ["eventlog_config", "token_configs.coco_as"]);
    }

    #[test]
    fn required_defaults_follow_the_tee_and_the_setting_wins() {
        let none = AaConfig::parse("").unwrap();
        assert_eq!(none, AaConfig::default());
        assert!(none.required(true));
        assert!(!none.required(false));
        let yes = AaConfig::parse("[kata_cc]\nattestation_required = true\n").unwrap();
        assert!(yes.required(false) && yes.required(true));
        let no = AaConfig::parse("[kata_cc]\nattestation_required = false\n").unwrap();
        assert!(!no.required(true));
    }

    #[test]
    fn strict_tables_refuse_typos_and_wrong_types() {
        for (text, key) in [
            (
                "[kata_cc]\nattestation_requird = true\n",
                "kata_cc.attestation_requird",
            ),
            (
                "[kata_cc]\nattestation_required = \"yes\"\n",
                "kata_cc.attestation_required",
            ),
            ("kata_cc = 1\n", "kata_cc"),
            (
                "[token_configs.kbs]\nurl = \"http://a:1\"\ncerts = \"x\"\n",
                "token_configs.kbs.certs",
            ),
            ("[token_configs.kbs]\nurl = 7\n", "token_configs.kbs.url"),
            (
                "[token_configs.kbs]\ncert = \"x\"\n",
                "token_configs.kbs.url",
            ),
            (
                "[token_configs.kbs]\nurl = \"  \"\n",
                "token_configs.kbs.url",
            ),
            ("token_configs = \"kbs\"\n", "token_configs"),
        ] {
            match AaConfig::parse(text) {
                Err(ConfigError::Field { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(AaConfig::parse("[x"), Err(ConfigError::Toml(_))));
    }

    #[test]
    fn client_is_built_from_url_and_cert() {
        struct NoTee;
        impl Attester for NoTee {
            fn tee(&self) -> crate::TeeKind {
                crate::TeeKind::Snp
            }
            fn evidence(&self, _: &[u8; 64]) -> Result<serde_json::Value, crate::AttesterError> {
                Err(crate::AttesterError::TsmProtocol("none".into()))
            }
        }
        let a: Arc<dyn Attester> = Arc::new(NoTee);
        assert!(AaConfig::default().kbs_client(a.clone()).unwrap().is_none());
        let c =
            AaConfig::parse("[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\ncert = \"\"\n")
                .unwrap();
        assert!(c.kbs_client(a.clone()).unwrap().is_some());
        // Not a URL the client accepts.
        let c = AaConfig::parse("[token_configs.kbs]\nurl = \"ftp://x\"\n").unwrap();
        assert!(matches!(
            c.kbs_client(a.clone()),
            Err(ConfigError::Client(RcarError::Url(_)))
        ));
        // A CA certificate for plain HTTP protects nothing: refused.
        let c = AaConfig::parse(
            "[token_configs.kbs]\nurl = \"http://a:1\"\ncert = \"-----BEGIN CERTIFICATE-----\"\n",
        )
        .unwrap();
        assert!(matches!(c.kbs_client(a), Err(ConfigError::Client(_))));
    }
}
