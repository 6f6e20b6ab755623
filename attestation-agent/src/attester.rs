//! Evidence producers. SNP and TDX go through configfs-tsm
//! (`/sys/kernel/config/tsm/report`, root injectable for tests).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use kbs::TeeKind;

/// Default configfs-tsm report directory.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Why evidence cannot be produced.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// configfs-tsm I/O failed.
    #[error("configfs-tsm {op} {path}")]
    Tsm {
        /// What was done.
        op: &'static str,
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// configfs-tsm answered, but not as expected.
    #[error("configfs-tsm: {0}")]
    TsmProtocol(String),
    /// SNP certificate table (auxblob) malformed.
    #[error("SNP certificate table: {0}")]
    CertTable(String),
    /// The simulated producer failed.
    #[cfg(feature = "sim")]
    #[error("simulated evidence")]
    Sim(#[source] kbs::sim::SimError),
}

/// Produces TEE evidence whose report data is the given 64 bytes.
pub trait Attester: Send + Sync {
    /// The TEE this attester reports from.
    fn tee(&self) -> TeeKind;
    /// Evidence in the KBS's format for this TEE.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, AttesterError>;
}

/// One configfs-tsm report request.
#[derive(Debug)]
pub struct TsmReport {
    root: PathBuf,
    fixed_entry: Option<String>,
    counter: AtomicU64,
}

/// A configfs-tsm answer.
#[derive(Debug, Clone)]
pub struct TsmOutput {
    /// `provider` (e.g. `sev_guest`, `tdx_guest`).
    pub provider: String,
    /// `outblob`: SNP report / TDX quote.
    pub outblob: Vec<u8>,
    /// `auxblob` (SNP certificate table), if any.
    pub auxblob: Option<Vec<u8>>,
}

impl TsmReport {
    /// Requests under `root` (normally [`TSM_REPORT_ROOT`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            fixed_entry: None,
            counter: AtomicU64::new(0),
        }
    }

    /// Uses (and creates if missing) the entry `name` instead of a unique one (tests
    /// with a fake tree whose "kernel" files are written in advance).
    pub fn with_fixed_entry(mut self, name: &str) -> Self {
        self.fixed_entry = Some(name.to_owned());
        self
    }

    fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, AttesterError> {
        match std::fs::read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AttesterError::Tsm {
                op: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes `inblob`, reads `outblob`, `auxblob`, `provider`; checks `generation`
    /// did not move under us; removes the entry (best effort).
    pub fn request(&self, inblob: &[u8; 64]) -> Result<TsmOutput, AttesterError> {
        let name = match &self.fixed_entry {
            Some(n) => n.clone(),
            None => format!(
                "kata-cc-aa-{}-{}",
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let entry = self.root.join(name);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| AttesterError::Tsm { op, path, source }
        };
        if let Err(e) = std::fs::create_dir(&entry) {
            if !(self.fixed_entry.is_some() && e.kind() == std::io::ErrorKind::AlreadyExists) {
                return Err(io("mkdir", &entry)(e));
            }
        }
        let result = (|| {
            let inb = entry.join("inblob");
            std::fs::write(&inb, inblob).map_err(io("write", &inb))?;
            let gen_path = entry.join("generation");
            let gen_before = Self::read_opt(&gen_path)?;
            let outb = entry.join("outblob");
            let outblob = std::fs::read(&outb).map_err(io("read", &outb))?;
            let auxblob = Self::read_opt(&entry.join("auxblob"))?.filter(|a| !a.is_empty());
            let provider = Self::read_opt(&entry.join("provider"))?
                .map(|p| String::from_utf8_lossy(&p).trim().to_owned())
                .unwrap_or_default();
            if Self::read_opt(&gen_path)? != gen_before {
                return Err(AttesterError::TsmProtocol(
                    "report entry written concurrently (generation changed)".into(),
                ));
            }
            if outblob.is_empty() {
                return Err(AttesterError::TsmProtocol("empty outblob".into()));
            }
            Ok(TsmOutput {
                provider,
                outblob,
                auxblob,
            })
        })();
        if self.fixed_entry.is_none() {
            // configfs removes the attribute files with the directory.
            let _ = std::fs::remove_dir(&entry);
        }
        result
    }
}

/// SEV-SNP through configfs-tsm (`provider` `sev_guest`).
#[derive(Debug)]
pub struct SnpAttester {
    tsm: TsmReport,
}

impl Default for SnpAttester {
    fn default() -> Self {
        Self::new()
    }
}

const GUID_VCEK: [u8; 16] = guid(
    0x63da758d,
    0xe664,
    0x4564,
    [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd],
);
const GUID_VLEK: [u8; 16] = guid(
    0xa8074bc2,
    0xa25a,
    0x483e,
    [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1],
);
const GUID_ASK: [u8; 16] = guid(
    0x4ab7b379,
    0xbbac,
    0x4fe4,
    [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82],
);
const GUID_ARK: [u8; 16] = guid(
    0xc0b406a4,
    0xa803,
    0x4952,
    [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae],
);

/// A GUID in its little-endian (firmware table) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Parses the SNP extended-report certificate table into `(cert_type, DER)` pairs.
pub(crate) fn parse_cert_table(t: &[u8]) -> Result<Vec<(&'static str, Vec<u8>)>, AttesterError> {
    let mut out = Vec::new();
    let mut i = 0usize;
    loop {
        let e = t
            .get(i..i + 24)
            .ok_or_else(|| AttesterError::CertTable("no terminating entry".into()))?;
        let mut g = [0u8; 16];
        g.copy_from_slice(&e[..16]);
        let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
        let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
        if g == [0; 16] {
            return Ok(out);
        }
        let data = off
            .checked_add(len)
            .and_then(|end| t.get(off..end))
            .ok_or_else(|| {
                AttesterError::CertTable(format!("entry {} out of bounds", out.len()))
            })?;
        let kind = match g {
            GUID_VCEK => "VCEK",
            GUID_VLEK => "VLEK",
            GUID_ASK => "ASK",
            GUID_ARK => "ARK",
            _ => "OTHER",
        };
        if kind != "OTHER" {
            out.push((kind, data.to_vec()));
        }
        i += 24;
    }
}

impl SnpAttester {
    /// Uses [`TSM_REPORT_ROOT`].
    pub fn new() -> Self {
        Self::with_tsm(TsmReport::new(TSM_REPORT_ROOT))
    }

    /// Uses another configfs-tsm tree.
    pub fn with_tsm(tsm: TsmReport) -> Self {
        Self { tsm }
    }
}

impl Attester for SnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, AttesterError> {
        let out = self.tsm.request(report_data)?;
        if out.provider != "sev_guest" {
            return Err(AttesterError::TsmProtocol(format!(
                "provider {:?}, expected sev_guest",
                out.provider
            )));
        }
        let certs = match &out.auxblob {
            Some(t) => serde_json::Value::Array(
                parse_cert_table(t)?
                    .into_iter()
                    .map(|(k, d)| serde_json::json!({"cert_type": k, "data": B64.encode(d)}))
                    .collect(),
            ),
            None => serde_json::Value::Null,
        };
        Ok(serde_json::json!({
            "attestation_report": B64.encode(&out.outblob),
            "cert_chain": certs,
        }))
    }
}

/// Intel TDX through configfs-tsm (`provider` `tdx_guest`).
#[derive(Debug)]
pub struct TdxAttester {
    tsm: TsmReport,
}

impl Default for TdxAttester {
    fn default() -> Self {
        Self::new()
    }
}

impl TdxAttester {
    /// Uses [`TSM_REPORT_ROOT`].
    pub fn new() -> Self {
        Self::with_tsm(TsmReport::new(TSM_REPORT_ROOT))
    }

    /// Uses another configfs-tsm tree.
    pub fn with_tsm(tsm: TsmReport) -> Self {
        Self { tsm }
    }
}

impl Attester for TdxAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, AttesterError> {
        let out = self.tsm.request(report_data)?;
        if out.provider != "tdx_guest" {
            return Err(AttesterError::TsmProtocol(format!(
                "provider {:?}, expected tdx_guest",
                out.provider
            )));
        }
        Ok(serde_json::json!({"quote": B64.encode(&out.outblob), "cc_eventlog": null}))
    }
}

/// Simulated SNP (feature `sim`): real report layout signed by the simulated chain,
/// labelled simulated (sim CHIP_ID, `*-Sim` certificates). Never trust it.
#[cfg(feature = "sim")]
pub struct SimAttester {
    measurement: [u8; 48],
    host_data: [u8; 32],
    keys: kbs::sim::SimKeys,
    chain: kbs::sim::SimChain,
}

#[cfg(feature = "sim")]
impl std::fmt::Debug for SimAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAttester")
            .field("measurement", &kbs::HexBytes(self.measurement))
            .field("host_data", &kbs::HexBytes(self.host_data))
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "sim")]
impl SimAttester {
    /// A simulated guest with this launch measurement and HOST_DATA (built-in sim chain).
    pub fn new(measurement: [u8; 48], host_data: [u8; 32]) -> Result<Self, AttesterError> {
        Ok(Self {
            measurement,
            host_data,
            keys: kbs::sim::SimKeys::builtin().map_err(AttesterError::Sim)?,
            chain: kbs::sim::SimChain::builtin().map_err(AttesterError::Sim)?,
        })
    }
}

#[cfg(feature = "sim")]
impl Attester for SimAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, AttesterError> {
        let input = kbs::sim::SimReportInput::new(self.measurement, self.host_data, *report_data);
        Ok(kbs::sim::produce(&input, &self.keys, &self.chain))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fake_tree(provider: &str, out: &[u8], aux: Option<&[u8]>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let e = d.path().join("t");
        std::fs::create_dir(&e).unwrap();
        std::fs::write(e.join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(e.join("outblob"), out).unwrap();
        std::fs::write(e.join("generation"), "1\n").unwrap();
        if let Some(a) = aux {
            std::fs::write(e.join("auxblob"), a).unwrap();
        }
        d
    }

    fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let head = 24 * (entries.len() + 1);
        let mut t = Vec::new();
        let mut data = Vec::new();
        for (g, d) in entries {
            t.extend_from_slice(g);
            t.extend_from_slice(&((head + data.len()) as u32).to_le_bytes());
            t.extend_from_slice(&(d.len() as u32).to_le_bytes());
            data.extend_from_slice(d);
        }
        t.extend_from_slice(&[0; 24]);
        t.extend_from_slice(&data);
        t
    }

    #[test]
    fn snp_via_fake_configfs() {
        let aux = table(&[(GUID_ASK, b"ask"), (GUID_VCEK, b"vcek-der")]);
        let d = fake_tree("sev_guest", &[7u8; 1184], Some(&aux));
        let a = SnpAttester::with_tsm(TsmReport::new(d.path()).with_fixed_entry("t"));
        let ev = a.evidence(&[0x42; 64]).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("t/inblob")).unwrap(),
            [0x42; 64]
        );
        assert_eq!(ev["attestation_report"], B64.encode([7u8; 1184]));
        assert_eq!(ev["cert_chain"][1]["cert_type"], "VCEK");
        assert_eq!(ev["cert_chain"][1]["data"], B64.encode(b"vcek-der"));
        assert_eq!(ev["cert_chain"][0]["cert_type"], "ASK");
    }

    #[test]
    fn snp_wrong_provider_and_bad_table() {
        let d = fake_tree("tdx_guest", &[1], None);
        let a = SnpAttester::with_tsm(TsmReport::new(d.path()).with_fixed_entry("t"));
        assert!(a
            .evidence(&[0; 64])
            .unwrap_err()
            .to_string()
            .contains("sev_guest"));
        let d = fake_tree("sev_guest", &[1], Some(&[1, 2, 3]));
        let a = SnpAttester::with_tsm(TsmReport::new(d.path()).with_fixed_entry("t"));
        assert!(matches!(
            a.evidence(&[0; 64]),
            Err(AttesterError::CertTable(_))
        ));
    }

    #[test]
    fn tdx_via_fake_configfs() {
        let d = fake_tree("tdx_guest", b"QUOTE", None);
        let a = TdxAttester::with_tsm(TsmReport::new(d.path()).with_fixed_entry("t"));
        let ev = a.evidence(&[1; 64]).unwrap();
        assert_eq!(
            ev,
            serde_json::json!({"quote": B64.encode(b"QUOTE"), "cc_eventlog": null})
        );
    }

    #[test]
    fn missing_root_names_the_path() {
        let a = TdxAttester::with_tsm(TsmReport::new("/nonexistent/tsm/report"));
        let e = a.evidence(&[1; 64]).unwrap_err();
        assert!(
            e.to_string().contains("mkdir /nonexistent/tsm/report"),
            "{e}"
        );
    }
}
