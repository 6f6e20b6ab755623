//! Which TEE this VM runs in, and the attester for it.
//!
//! [`detect`] looks, in order, for:
//! 1. a TEE guest device: `/dev/sev-guest` (SEV-SNP) or `/dev/tdx_guest` (TDX);
//! 2. a configfs-tsm provider: a report entry under `/sys/kernel/config/tsm/report` whose
//!    `provider` is `sev_guest` or `tdx_guest` (any other provider is an error: a TEE
//!    kata-cc cannot attest);
//! 3. the simulated TEE's parameters in the QEMU fw_cfg file [`SIM_FW_CFG_NAME`] (the
//!    host sets it only when its configuration allows the simulated TEE).
//!
//! Hardware always wins: sim parameters next to a real TEE are ignored (and logged).
//! The simulated TEE becomes an attester only in agent builds with the `sim` feature; a
//! build without it logs that it ignores the parameters and runs as a VM without a TEE.
//! The simulated TEE is named "SIMULATED SEV-SNP, NOT A TEE" wherever it is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use attestation_agent::{Attester, AttesterError, SnpAttester, TdxAttester, TeeKind};
#[cfg(test)]
use attestation_agent::TsmReport;
use base64::Engine as _;

/// configfs-tsm's report directory (configfs mounted at `/sys/kernel/config`).
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// The fw_cfg file (name) the host puts the simulated TEE's parameters in.
pub const SIM_FW_CFG_NAME: &str = "opt/kata-cc/sim-tee";

/// Where the guest's TEE interfaces are (the real ones by default; tests use a tree).
#[derive(Debug, Clone)]
pub struct TeePaths {
    /// devtmpfs (`/dev`).
    pub dev: PathBuf,
    /// configfs-tsm report directory.
    pub tsm_report: PathBuf,
    /// sysfs fw_cfg entries by name (`/sys/firmware/qemu_fw_cfg/by_name`).
    pub fw_cfg_by_name: PathBuf,
}

impl Default for TeePaths {
    fn default() -> Self {
        Self {
            dev: PathBuf::from("/dev"),
            tsm_report: PathBuf::from(TSM_REPORT_ROOT),
            fw_cfg_by_name: PathBuf::from("/sys/firmware/qemu_fw_cfg/by_name"),
        }
    }
}

impl TeePaths {
    fn sim_params(&self) -> PathBuf {
        self.fw_cfg_by_name.join(SIM_FW_CFG_NAME).join("raw")
    }
}

/// Errors detecting the TEE or reading its launch data. Fatal for PID 1.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// Both a SEV-SNP and a TDX guest device exist.
    #[error("both /dev/sev-guest and /dev/tdx_guest exist")]
    TwoTees,
    /// configfs-tsm names a provider kata-cc cannot attest with.
    #[error("configfs-tsm provider {0:?} is not supported (sev_guest, tdx_guest)")]
    UnknownProvider(String),
    /// The simulated TEE's parameters do not parse.
    #[error("simulated TEE parameters in fw_cfg {SIM_FW_CFG_NAME}: {0}")]
    SimParams(String),
    /// Reading a file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The attester failed.
    #[error("{tee}: cannot obtain a report")]
    Evidence {
        /// The TEE's label.
        tee: &'static str,
        /// The cause.
        #[source]
        source: AttesterError,
    },
    /// The report does not parse.
    #[error("{tee}: the report does not parse: {why}")]
    Report {
        /// The TEE's label.
        tee: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The launch parameters of the simulated TEE, as the host hands them over:
/// `{"measurement":"<96 hex>","host_data":"<64 hex>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTeeParams {
    /// The launch measurement the simulated reports carry.
    pub measurement: [u8; 48],
    /// HOST_DATA of the simulated reports.
    pub host_data: [u8; 32],
}

fn hex_array<const N: usize>(v: &serde_json::Value, key: &str) -> Result<[u8; N], TeeError> {
    let s = v
        .get(key)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| TeeError::SimParams(format!("no string {key:?}")))?;
    let bad = || TeeError::SimParams(format!("{key:?} is not {} hex digits", 2 * N));
    if s.len() != 2 * N || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl SimTeeParams {
    /// Parses the fw_cfg content (at most 4 KiB; unknown keys are refused).
    pub fn parse(bytes: &[u8]) -> Result<Self, TeeError> {
        if bytes.len() > 4096 {
            return Err(TeeError::SimParams(format!("{} bytes, more than 4096", bytes.len())));
        }
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| TeeError::SimParams(format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| TeeError::SimParams("not a JSON object".into()))?;
        if let Some(k) = obj.keys().find(|k| !["measurement", "host_data"].contains(&k.as_str())) {
            return Err(TeeError::SimParams(format!("unknown key {k:?}")));
        }
        Ok(Self {
            measurement: hex_array(&v, "measurement")?,
            host_data: hex_array(&v, "host_data")?,
        })
    }
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// No TEE.
    None,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// The host configured the simulated TEE.
    Sim(SimTeeParams),
}

/// A label for log lines.
pub fn label(kind: TeeKind) -> &'static str {
    match kind {
        TeeKind::Snp => "SEV-SNP",
        TeeKind::Tdx => "TDX",
        TeeKind::Sim => "sim (SIMULATED SEV-SNP, NOT A TEE)",
    }
}

/// The provider of a configfs-tsm report directory: makes an entry, reads `provider`,
/// removes the entry. `None` when there is no such directory or no provider.
fn tsm_provider(root: &Path) -> Option<String> {
    if !root.is_dir() {
        return None;
    }
    let entry = root.join(format!("kata-cc-probe-{}", std::process::id()));
    if std::fs::create_dir(&entry).is_err() {
        return None;
    }
    let provider = std::fs::read_to_string(entry.join("provider")).ok();
    let _ = std::fs::remove_dir(&entry);
    provider.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())
}

/// Finds the TEE (see the module docs for the order).
pub fn detect(paths: &TeePaths) -> Result<Detected, TeeError> {
    let snp = paths.dev.join("sev-guest").exists();
    let tdx = paths.dev.join("tdx_guest").exists();
    let hw = match (snp, tdx) {
        (true, true) => return Err(TeeError::TwoTees),
        (true, false) => Some(Detected::Snp),
        (false, true) => Some(Detected::Tdx),
        (false, false) => match tsm_provider(&paths.tsm_report).as_deref() {
            None => None,
            Some("sev_guest") => Some(Detected::Snp),
            Some("tdx_guest") => Some(Detected::Tdx),
            Some(other) => return Err(TeeError::UnknownProvider(other.to_owned())),
        },
    };
    let sim_path = paths.sim_params();
    let sim = match std::fs::read(&sim_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(TeeError::Io { path: sim_path, source }),
    };
    match (hw, sim) {
        (Some(hw), Some(_)) => {
            tracing::warn!("the host also configured the SIMULATED TEE: ignored, the hardware TEE is used");
            Ok(hw)
        }
        (Some(hw), None) => Ok(hw),
        (None, Some(b)) => Ok(Detected::Sim(SimTeeParams::parse(&b)?)),
        (None, None) => Ok(Detected::None),
    }
}

/// The TEE of this VM with its attester.
#[derive(Clone)]
pub struct GuestTee {
    /// Which TEE.
    pub kind: TeeKind,
    /// Its evidence producer.
    pub attester: Arc<dyn Attester>,
}

impl std::fmt::Debug for GuestTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestTee").field("kind", &label(self.kind)).finish_non_exhaustive()
    }
}

impl GuestTee {
    /// A TEE with this attester (tests).
    pub fn new(attester: Arc<dyn Attester>) -> Self {
        Self { kind: attester.tee(), attester }
    }

    /// Its label for log lines.
    pub fn label(&self) -> &'static str {
        label(self.kind)
    }

    /// The launch-time field that carries the initdata digest, read from a fresh report
    /// (report data all zero), parsed with the KBS's own parsers: SEV-SNP (and the
    /// simulated TEE) HOST_DATA, TDX MRCONFIGID.
    pub fn launch_field(&self) -> Result<LaunchField, TeeError> {
        let tee = self.label();
        let evidence = self
            .attester
            .evidence(&[0u8; 64])
            .map_err(|source| TeeError::Evidence { tee, source })?;
        let bad = |why: String| TeeError::Report { tee, why };
        let b64 = |key: &str| -> Result<Vec<u8>, TeeError> {
            let s = evidence
                .get(key)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| bad(format!("evidence without {key:?}")))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| bad(format!("{key}: {e}")))
        };
        match self.kind {
            TeeKind::Snp | TeeKind::Sim => {
                let raw = b64("attestation_report")?;
                let report = kbs::snp::report::Report::parse(&raw).map_err(|e| bad(e.to_string()))?;
                Ok(LaunchField::HostData(report.host_data))
            }
            TeeKind::Tdx => {
                let raw = b64("quote")?;
                let quote = dcap_qvl::quote::Quote::parse(&raw).map_err(|e| bad(format!("{e:#}")))?;
                let td = quote.report.as_td10().ok_or_else(|| bad("not a TD quote".into()))?;
                Ok(LaunchField::MrConfigId(td.mr_config_id))
            }
        }
    }
}

/// The hardware-reported field that binds initdata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchField {
    /// SEV-SNP HOST_DATA.
    HostData([u8; 32]),
    /// TDX MRCONFIGID.
    MrConfigId([u8; 48]),
}

impl LaunchField {
    /// The field's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HostData(_) => "HOST_DATA",
            Self::MrConfigId(_) => "MRCONFIGID",
        }
    }

    /// The field's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::HostData(b) => b,
            Self::MrConfigId(b) => b,
        }
    }

    /// Whether the host left it all zero.
    pub fn is_zero(&self) -> bool {
        self.bytes().iter().all(|b| *b == 0)
    }

    /// `digest` fitted to this field (truncated or zero-padded).
    pub fn fit(&self, digest: &[u8]) -> Vec<u8> {
        match self {
            Self::HostData(_) => protocols::initdata::host_data(digest).to_vec(),
            Self::MrConfigId(_) => protocols::initdata::mrconfigid(digest).to_vec(),
        }
    }
}

/// The attester for what [`detect`] found; `None` without a TEE, and for the simulated
/// TEE in a build without the `sim` feature (logged).
pub fn attester(found: Detected) -> Result<Option<GuestTee>, TeeError> {
    let attester: Arc<dyn Attester> = match found {
        Detected::None => return Ok(None),
        Detected::Snp => Arc::new(SnpAttester::new()),
        Detected::Tdx => Arc::new(TdxAttester::new()),
        Detected::Sim(p) => return sim_attester(p),
    };
    Ok(Some(GuestTee::new(attester)))
}

#[cfg(feature = "sim")]
fn sim_attester(p: SimTeeParams) -> Result<Option<GuestTee>, TeeError> {
    let a = attestation_agent::SimAttester::new(p.measurement, p.host_data)
        .map_err(|source| TeeError::Evidence { tee: label(TeeKind::Sim), source })?;
    tracing::warn!(
        "TEE: {}: launch measurement {}, HOST_DATA {} (from the host: a SHA-384 of what it booted, not a TEE measurement)",
        label(TeeKind::Sim),
        crate::initdata::hex(&p.measurement),
        crate::initdata::hex(&p.host_data)
    );
    Ok(Some(GuestTee::new(Arc::new(a))))
}

#[cfg(not(feature = "sim"))]
fn sim_attester(_: SimTeeParams) -> Result<Option<GuestTee>, TeeError> {
    tracing::warn!(
        "the host configured the SIMULATED TEE, but this agent is built without it (feature `sim`): running without a TEE"
    );
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> TeePaths {
        TeePaths {
            dev: root.join("dev"),
            tsm_report: root.join("tsm/report"),
            fw_cfg_by_name: root.join("fw_cfg/by_name"),
        }
    }

    fn sim_json(m: u8, h: u8) -> String {
        format!(r#"{{"measurement":"{}","host_data":"{}"}}"#, format!("{m:02x}").repeat(48), format!("{h:02x}").repeat(32))
    }

    fn write_sim(root: &Path, content: &str) {
        let d = root.join("fw_cfg/by_name").join(SIM_FW_CFG_NAME);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("raw"), content).unwrap();
    }

    #[test]
    fn nothing_means_no_tee() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(detect(&paths(t.path())).unwrap(), Detected::None);
        assert!(attester(Detected::None).unwrap().is_none());
    }

    #[test]
    fn devices_are_found_and_hardware_beats_sim() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        std::fs::write(t.path().join("dev/sev-guest"), "").unwrap();
        assert_eq!(detect(&paths(t.path())).unwrap(), Detected::Snp);
        write_sim(t.path(), &sim_json(1, 2));
        assert_eq!(detect(&paths(t.path())).unwrap(), Detected::Snp);
        std::fs::write(t.path().join("dev/tdx_guest"), "").unwrap();
        assert!(matches!(detect(&paths(t.path())), Err(TeeError::TwoTees)));
        std::fs::remove_file(t.path().join("dev/sev-guest")).unwrap();
        assert_eq!(detect(&paths(t.path())).unwrap(), Detected::Tdx);
    }

    #[test]
    fn sim_parameters_are_parsed_strictly() {
        let t = tempfile::tempdir().unwrap();
        write_sim(t.path(), &sim_json(0x4d, 0x48));
        assert_eq!(
            detect(&paths(t.path())).unwrap(),
            Detected::Sim(SimTeeParams { measurement: [0x4d; 48], host_data: [0x48; 32] })
        );
        for bad in [
            "",
            "[]",
            r#"{"measurement":"00"}"#,
            &sim_json(1, 2).replace("\"host_data\"", "\"hostdata\""),
            &sim_json(1, 2).replace('}', ",\"x\":1}"),
            &sim_json(1, 2).replace("01", "zz"),
            &"x".repeat(5000),
        ] {
            assert!(matches!(SimTeeParams::parse(bad.as_bytes()), Err(TeeError::SimParams(_))), "{bad:?}");
        }
        // Multi-byte characters in a hex field are refused, not sliced through.
        let wide = sim_json(1, 2).replace(&"02".repeat(32), &"é".repeat(32));
        assert!(SimTeeParams::parse(wide.as_bytes()).is_err());
    }

    #[test]
    fn tsm_without_provider_is_no_tee_and_the_probe_is_removed() {
        // A plain directory stands in for configfs-tsm with no provider registered (the
        // `tsm` module loaded on a VM without a TEE): the probe entry has no `provider`.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tsm/report");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(detect(&paths(t.path())).unwrap(), Detected::None);
        assert_eq!(tsm_provider(&root), None);
        assert!(std::fs::read_dir(&root).unwrap().next().is_none(), "probe entry left behind");
        assert_eq!(tsm_provider(&t.path().join("absent")), None);
    }

    #[cfg(feature = "sim")]
    #[test]
    fn sim_attester_reports_the_host_data_it_was_given() {
        let found = Detected::Sim(SimTeeParams { measurement: [0x4d; 48], host_data: [0x48; 32] });
        let tee = attester(found).unwrap().unwrap();
        assert_eq!(tee.kind, TeeKind::Sim);
        assert!(tee.label().contains("SIMULATED"));
        let f = tee.launch_field().unwrap();
        assert_eq!(f, LaunchField::HostData([0x48; 32]));
        assert_eq!(f.name(), "HOST_DATA");
        assert!(!f.is_zero());
    }

    #[cfg(not(feature = "sim"))]
    #[test]
    fn sim_is_ignored_without_the_feature() {
        let found = Detected::Sim(SimTeeParams { measurement: [0x4d; 48], host_data: [0x48; 32] });
        assert!(attester(found).unwrap().is_none());
    }

    #[test]
    fn launch_field_from_snp_and_tdx_reports_via_configfs() {
        // An SNP report with HOST_DATA at 0xC0 through a fake configfs-tsm entry.
        let t = tempfile::tempdir().unwrap();
        let mut report = vec![0u8; kbs::snp::report::REPORT_LEN];
        report[0] = 2; // version
        report[0xC0..0xE0].copy_from_slice(&[0x5a; 32]);
        let e = t.path().join("probe");
        std::fs::create_dir_all(&e).unwrap();
        std::fs::write(e.join("provider"), "sev_guest\n").unwrap();
        std::fs::write(e.join("outblob"), &report).unwrap();
        let snp = GuestTee::new(Arc::new(SnpAttester::with_tsm(TsmReport::new(t.path()).with_fixed_entry("probe"))));
        assert_eq!(snp.launch_field().unwrap(), LaunchField::HostData([0x5a; 32]));

        // A quote that does not parse is an error naming the TEE, not a panic.
        std::fs::write(e.join("provider"), "tdx_guest\n").unwrap();
        std::fs::write(e.join("outblob"), b"not a quote").unwrap();
        let tdx = GuestTee::new(Arc::new(TdxAttester::with_tsm(TsmReport::new(t.path()).with_fixed_entry("probe"))));
        let err = tdx.launch_field().unwrap_err();
        assert!(matches!(err, TeeError::Report { tee: "TDX", .. }), "{err}");

        let f = LaunchField::MrConfigId([0; 48]);
        assert!(f.is_zero());
        assert_eq!(f.fit(&[1, 2]), [[1u8, 2].as_slice(), &[0; 46]].concat());
        assert_eq!(LaunchField::HostData([0; 32]).fit(&[9; 48]), vec![9; 32]);
    }
}
