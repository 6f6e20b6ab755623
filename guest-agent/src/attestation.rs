//! The pod's attestation set-up, decided once at boot from the TEE and the (bound)
//! initdata: the default policy, whether attestation is required before workloads run,
//! the RCAR client, and the workload endpoint.
//!
//! | TEE (incl. sim) | initdata `aa.toml`                | required | gate                                  | endpoint |
//! |-----------------|-----------------------------------|----------|---------------------------------------|----------|
//! | yes             | `[token_configs.kbs] url`         | yes      | attests on the first Create/Exec      | yes      |
//! | yes             | none                              | yes      | refuses: no KBS configured            | no       |
//! | yes             | `attestation_required = false`    | no       | none                                  | if a KBS |
//! | no              | anything, not required            | no       | none                                  | no       |
//! | no              | `attestation_required = true`     | yes      | refuses: no TEE to attest with        | no       |
//!
//! The policy when initdata carries none: `default-tee` in a TEE (no container can run),
//! allow-all without one.

use std::sync::Arc;

use attestation_agent::config::{AaConfig, ConfigError, INITDATA_KEY};
use attestation_agent::KbsClient;

use crate::api_server::WorkloadApi;
use crate::attest_gate::{AttestCheck, Kbs};
use crate::initdata::LoadedInitData;
use crate::tee::GuestTee;

/// The pod's attestation configuration.
pub struct PodAttestation {
    tee: Option<GuestTee>,
    config: AaConfig,
    required: bool,
    client: Option<Arc<KbsClient>>,
}

impl std::fmt::Debug for PodAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodAttestation")
            .field("tee", &self.tee)
            .field("required", &self.required)
            .field("kbs", &self.config.kbs.as_ref().map(|k| &k.url))
            .finish_non_exhaustive()
    }
}

/// The policy for a pod whose initdata has none.
pub fn default_policy(tee: bool) -> &'static str {
    if tee {
        policy::builtin::DEFAULT_TEE
    } else {
        policy::builtin::ALLOW_ALL
    }
}

impl PodAttestation {
    /// Reads `aa.toml` from the initdata (already bound to `tee` by the caller) and
    /// builds the RCAR client. A malformed `aa.toml` is an error (fatal at boot).
    pub fn new(tee: Option<GuestTee>, initdata: Option<&LoadedInitData>) -> Result<Self, ConfigError> {
        let config = match initdata.and_then(|d| d.init.data.get(INITDATA_KEY)) {
            Some(text) => AaConfig::parse(text)?,
            None => AaConfig::default(),
        };
        if !config.ignored.is_empty() {
            tracing::info!("aa.toml: not used by kata-cc: {}", config.ignored.join(", "));
        }
        let required = config.required(tee.is_some());
        let client = match &tee {
            Some(t) => config.kbs_client(Arc::clone(&t.attester))?.map(|c| {
                // The KBS checks the document against HOST_DATA / MRCONFIGID too.
                let c = match initdata {
                    Some(d) => c.with_init_data(String::from_utf8_lossy(&d.raw).into_owned()),
                    None => c,
                };
                Arc::new(c)
            }),
            None => None,
        };
        let me = Self { tee, config, required, client };
        me.log();
        Ok(me)
    }

    fn log(&self) {
        let tee = self.tee.as_ref().map_or("no TEE", GuestTee::label);
        let kbs = self.config.kbs.as_ref().map_or("none", |k| k.url.as_str());
        let required = if self.required { "required" } else { "not required" };
        tracing::info!("attestation: {tee}; KBS {kbs}; attestation {required} before CreateContainer/ExecProcess");
    }

    /// Whether attestation must succeed before workloads run.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The policy to use when initdata has none.
    pub fn default_policy(&self) -> &'static str {
        default_policy(self.tee.is_some())
    }

    /// The attest-before-run check, when attestation is required.
    pub fn check(&self) -> Option<Arc<AttestCheck>> {
        if !self.required {
            return None;
        }
        Some(Arc::new(match (&self.tee, &self.client) {
            (Some(t), Some(c)) => AttestCheck::new(Arc::clone(c) as Arc<dyn Kbs>, t.label()),
            (Some(_), None) => AttestCheck::unavailable(
                "no KBS is configured: the initdata has no aa.toml with [token_configs.kbs] url",
            ),
            (None, _) => AttestCheck::unavailable(
                "this VM has no TEE to attest with, and the initdata's aa.toml sets [kata_cc] attestation_required = true",
            ),
        }))
    }

    /// The pod's RCAR client (a TEE and a KBS configured), shared by the gate, the
    /// workload endpoint and whatever else needs KBS resources (image decryption keys).
    pub fn kbs_client(&self) -> Option<Arc<KbsClient>> {
        self.client.clone()
    }

    /// The workload endpoint, when attestation is configured (a TEE and a KBS).
    pub fn workload_api(&self) -> Option<WorkloadApi> {
        match (&self.tee, &self.client) {
            (Some(t), Some(c)) => Some(WorkloadApi::new(Arc::clone(c) as Arc<dyn Kbs>, Arc::clone(&t.attester))),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::gate::{Check as _, Endpoint};
    use attestation_agent::{Attester, AttesterError, TeeKind};
    use protocols::initdata::{self, InitData};

    struct NoEvidence;
    impl Attester for NoEvidence {
        fn tee(&self) -> TeeKind {
            TeeKind::Snp
        }
        fn evidence(&self, _: &[u8; 64]) -> Result<serde_json::Value, AttesterError> {
            Err(AttesterError::TsmProtocol("no report".into()))
        }
    }

    fn loaded(aa: Option<&str>) -> LoadedInitData {
        let mut init = InitData::with_policy(initdata::Algorithm::Sha256, "package agent_policy\n");
        if let Some(a) = aa {
            init.data.insert("aa.toml".into(), a.into());
        }
        let raw = init.to_toml().into_bytes();
        let digest = initdata::digest(init.algorithm, &raw);
        LoadedInitData { device: "/dev/vdb".into(), init, raw, digest }
    }

    fn tee() -> Option<GuestTee> {
        Some(GuestTee::new(Arc::new(NoEvidence)))
    }

    async fn refusal(p: &PodAttestation) -> Option<String> {
        let c = p.check()?;
        Some(c.check(Endpoint::CreateContainer, &protocols::agent::CreateContainerRequest::new()).await.unwrap_err().reason)
    }

    #[tokio::test]
    async fn the_table_of_the_module_docs() {
        let kbs = "[token_configs.kbs]\nurl = \"http://127.0.0.1:9\"\n";
        // TEE + KBS: required, gate and endpoint; the attempt's failure is reported.
        let p = PodAttestation::new(tee(), Some(&loaded(Some(kbs)))).unwrap();
        assert!(p.required() && p.workload_api().is_some() && p.kbs_client().is_some());
        assert_eq!(p.default_policy(), policy::builtin::DEFAULT_TEE);
        let why = refusal(&p).await.unwrap();
        assert!(why.starts_with("attestation required: auth: cannot connect to the KBS"), "{why}");

        // TEE without aa.toml (or without initdata): required, refused, no endpoint.
        for d in [Some(loaded(None)), None] {
            let p = PodAttestation::new(tee(), d.as_ref()).unwrap();
            assert!(p.required() && p.workload_api().is_none());
            assert!(refusal(&p).await.unwrap().contains("no KBS is configured"));
        }

        // TEE, explicitly not required.
        let off = format!("{kbs}[kata_cc]\nattestation_required = false\n");
        let p = PodAttestation::new(tee(), Some(&loaded(Some(&off)))).unwrap();
        assert!(!p.required() && p.check().is_none() && p.workload_api().is_some());

        // No TEE: not required, allow-all default, no endpoint even with a KBS.
        let p = PodAttestation::new(None, Some(&loaded(Some(kbs)))).unwrap();
        assert!(!p.required() && p.check().is_none() && p.workload_api().is_none());
        assert_eq!(p.default_policy(), policy::builtin::ALLOW_ALL);

        // No TEE but required: fails closed.
        let on = format!("{kbs}[kata_cc]\nattestation_required = true\n");
        let p = PodAttestation::new(None, Some(&loaded(Some(&on)))).unwrap();
        assert!(refusal(&p).await.unwrap().contains("no TEE to attest with"));
    }

    #[test]
    fn malformed_aa_toml_is_an_error() {
        assert!(PodAttestation::new(tee(), Some(&loaded(Some("[token_configs.kbs]\nurl = 1\n")))).is_err());
        assert!(PodAttestation::new(tee(), Some(&loaded(Some("[token_configs.kbs]\nurl = \"gopher://x\"\n")))).is_err());
        // Without a TEE no client is built, but the document must still parse.
        assert!(PodAttestation::new(None, Some(&loaded(Some("[kata_cc]\nx = 1\n")))).is_err());
    }
}
