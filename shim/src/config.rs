//! `/etc/kata-cc/configuration.toml`: what the shim needs to boot a pod VM.
//!
//! The path comes from the runtime options containerd passes (`ConfigPath`, CRI's
//! `runtimeoptions.v1.Options`), else `KATA_CC_CONFIG`, else [`DEFAULT_CONFIG`]. Unknown
//! keys are errors, so a typo does not silently fall back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hypervisor::sizing::SizingConfig;
use serde::Deserialize;

/// Where the configuration lives unless the runtime options or the environment say otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/kata-cc/configuration.toml";
/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "KATA_CC_CONFIG";
/// The pod annotation carrying initdata (Kata's name).
pub const INITDATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The VM.
    pub hypervisor: HypervisorConfig,
    /// TEE selection.
    #[serde(default)]
    pub tee: TeeConfig,
    /// Guest agent settings the host may choose.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The shim itself.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// `[hypervisor]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HypervisorConfig {
    /// QEMU binary; a bare name is looked up on PATH.
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    /// `vhost-device-vsock` binary; a bare name is looked up on PATH.
    #[serde(default = "default_vhost")]
    pub vhost_device_vsock: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs (the agent is its PID 1).
    pub initramfs: PathBuf,
    /// vCPUs of a pod without a CPU limit, and the least a pod VM gets
    /// (`hypervisor::sizing`).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Memory in MiB of a pod without a memory limit, and the least a pod VM gets.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// vCPUs added to a pod's CPU limit.
    #[serde(default = "default_overhead_vcpus")]
    pub overhead_vcpus: u32,
    /// MiB added to a pod's memory limit (guest kernel, agent, page cache).
    #[serde(default = "default_overhead_memory")]
    pub overhead_memory_mib: u64,
    /// Most vCPUs a pod VM gets, whatever its limits.
    #[serde(default = "default_max_vcpus")]
    pub max_vcpus: u32,
    /// Most memory (MiB) a pod VM gets, whatever its limits.
    #[serde(default = "default_max_memory")]
    pub max_memory_mib: u64,
    /// How long QEMU may take to come up and the agent to answer.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    /// Extra kernel parameters.
    #[serde(default)]
    pub kernel_params: String,
    /// Firmware (OVMF) for SNP / TDX guests.
    #[serde(default)]
    pub firmware: Option<PathBuf>,
}

/// Which TEE pods run in.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// A plain VM: isolation from the host kernel, no confidentiality.
    #[default]
    None,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// The simulated TEE (development and CI only; not confidential).
    Sim,
}

/// `[tee]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct TeeConfig {
    /// The TEE.
    #[serde(default)]
    pub kind: TeeKind,
    /// Must be true for `kind = "sim"`: simulated evidence is refused by default.
    #[serde(default)]
    pub allow_simulated: bool,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Registries (`host:port`) the guest reaches over plain HTTP. Passed on the kernel
    /// command line only when `tee.kind = "none"`: a TEE pod (the simulated one too)
    /// takes its registry settings from measured initdata.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Default timeout of an agent request.
    #[serde(default = "default_agent_timeout")]
    pub timeout_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self { insecure_registries: Vec::new(), timeout_secs: default_agent_timeout() }
    }
}

/// What a VM of a pod without a network namespace (plain `ctr run`) gets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StandaloneNetwork {
    /// No NIC: the guest cannot pull images, so only pods with a netns work.
    #[default]
    None,
    /// QEMU user-mode networking (NAT through the host; the guest can reach host-local
    /// services). Refused for TEE pods.
    User,
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Per-pod state (VM sockets, console log, what `delete` needs after a crash).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Pod annotations the shim acts on: exact names, or prefixes ending in `*`.
    /// Everything else is ignored.
    #[serde(default = "default_annotations")]
    pub enable_annotations: Vec<String>,
    /// Network of a VM whose pod has no network namespace.
    #[serde(default)]
    pub standalone_network: StandaloneNetwork,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            enable_annotations: default_annotations(),
            standalone_network: StandaloneNetwork::None,
        }
    }
}

fn default_qemu() -> PathBuf {
    "qemu-system-x86_64".into()
}
fn default_vhost() -> PathBuf {
    "vhost-device-vsock".into()
}
fn default_vcpus() -> u32 {
    SizingConfig::default().default_vcpus
}
fn default_memory() -> u64 {
    SizingConfig::default().default_memory_mib
}
fn default_overhead_vcpus() -> u32 {
    SizingConfig::default().overhead_vcpus
}
fn default_overhead_memory() -> u64 {
    SizingConfig::default().overhead_memory_mib
}
fn default_max_vcpus() -> u32 {
    SizingConfig::default().max_vcpus
}
fn default_max_memory() -> u64 {
    SizingConfig::default().max_memory_mib
}
fn default_boot_timeout() -> u64 {
    60
}
fn default_agent_timeout() -> u64 {
    60
}
fn default_state_dir() -> PathBuf {
    "/run/kata-cc".into()
}
fn default_annotations() -> Vec<String> {
    vec![INITDATA_ANNOTATION.to_string()]
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text` (read from `path`, for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        let invalid = |what: String| ConfigError::Invalid { path: path.to_path_buf(), what };
        if c.tee.kind == TeeKind::Sim && !c.tee.allow_simulated {
            return Err(invalid(
                "tee.kind = \"sim\" is the simulated TEE (not confidential): set tee.allow_simulated = true to use it".into(),
            ));
        }
        c.sizing().validate().map_err(invalid)?;
        if c.hypervisor.boot_timeout_secs == 0 || c.agent.timeout_secs == 0 {
            return Err(invalid("timeouts must be > 0".into()));
        }
        for r in &c.agent.insecure_registries {
            if r.is_empty() || r.contains(|ch: char| ch.is_whitespace() || ch == '/' || ch == ',') {
                return Err(invalid(format!("agent.insecure_registries: {r:?} is not host[:port]")));
            }
        }
        if !c.runtime.state_dir.is_absolute() {
            return Err(invalid("runtime.state_dir must be absolute".into()));
        }
        Ok(c)
    }

    /// The pod VM sizing rule's configuration (`[hypervisor]` vcpus, memory_mib,
    /// overhead_*, max_*).
    pub fn sizing(&self) -> SizingConfig {
        let h = &self.hypervisor;
        SizingConfig {
            default_vcpus: h.vcpus,
            default_memory_mib: h.memory_mib,
            overhead_vcpus: h.overhead_vcpus,
            overhead_memory_mib: h.overhead_memory_mib,
            max_vcpus: h.max_vcpus,
            max_memory_mib: h.max_memory_mib,
        }
    }

    /// How long a VM may take to boot.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.hypervisor.boot_timeout_secs)
    }

    /// Whether the pod annotation `name` is on the allow-list.
    pub fn annotation_enabled(&self, name: &str) -> bool {
        self.runtime.enable_annotations.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => a == name,
        })
    }
}

/// The configuration path: runtime options' `ConfigPath`, else `KATA_CC_CONFIG`, else
/// [`DEFAULT_CONFIG`].
pub fn config_path(options_config_path: Option<&str>) -> PathBuf {
    if let Some(p) = options_config_path.filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CONFIG.into())
}

/// Extracts `config_path` from containerd's runtime options (an `Any` holding CRI's
/// `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`).
/// Options of another type (e.g. runc's) yield `None`.
pub fn options_config_path(any: &protobuf::well_known_types::any::Any) -> Option<String> {
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = protobuf::CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (2, 2) => return input.read_string().ok(),
            (_, 2) => {
                input.read_bytes().ok()?;
            }
            (_, 0) => {
                input.read_uint64().ok()?;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: &str = "[hypervisor]\nkernel = \"/k\"\ninitramfs = \"/i\"\n";

    #[test]
    fn defaults_are_closed() {
        let c = Config::parse(MIN, Path::new("c.toml")).unwrap();
        assert_eq!(c.tee.kind, TeeKind::None);
        assert!(!c.tee.allow_simulated);
        assert_eq!(c.runtime.standalone_network, StandaloneNetwork::None);
        assert!(c.annotation_enabled(INITDATA_ANNOTATION));
        assert!(!c.annotation_enabled("io.katacontainers.config.hypervisor.kernel"));
        assert!(c.agent.insecure_registries.is_empty());
    }

    #[test]
    fn sim_needs_explicit_consent_and_typos_are_errors() {
        let e = Config::parse(&format!("{MIN}[tee]\nkind = \"sim\"\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("allow_simulated"), "{e}");
        Config::parse(&format!("{MIN}[tee]\nkind = \"sim\"\nallow_simulated = true\n"), Path::new("c")).unwrap();
        let e = Config::parse(&format!("{MIN}[runtime]\nstate_dri = \"/x\"\n"), Path::new("c.toml")).unwrap_err();
        assert!(format!("{:?}", anyhow::Error::new(e)).contains("state_dri"));
        assert!(Config::parse("[hypervisor]\nkernel = \"/k\"\n", Path::new("c")).is_err());
        let bad = format!("{MIN}[agent]\ninsecure_registries = [\"a b\"]\n");
        assert!(Config::parse(&bad, Path::new("c")).is_err());
    }

    #[test]
    fn sizing_keys() {
        let c = Config::parse(MIN, Path::new("c")).unwrap();
        assert_eq!(c.sizing(), SizingConfig::default());
        let c = Config::parse(
            "[hypervisor]\nkernel=\"/k\"\ninitramfs=\"/i\"\nvcpus=2\nmemory_mib=1024\noverhead_vcpus=1\noverhead_memory_mib=128\nmax_vcpus=4\nmax_memory_mib=4096\n",
            Path::new("c"),
        )
        .unwrap();
        let s = c.sizing();
        assert_eq!((s.default_vcpus, s.default_memory_mib, s.overhead_vcpus, s.overhead_memory_mib, s.max_vcpus, s.max_memory_mib), (2, 1024, 1, 128, 4, 4096));
        let e = Config::parse(&format!("{MIN}max_vcpus = 0\n"), Path::new("c")).unwrap_err();
        assert!(e.to_string().contains("hypervisor.max_vcpus"), "{e}");
        let e = Config::parse(&format!("{MIN}vcpus = 0\n"), Path::new("c")).unwrap_err();
        assert!(e.to_string().contains("hypervisor.vcpus"), "{e}");
    }

    #[test]
    fn annotation_prefixes() {
        let c = Config::parse(&format!("{MIN}[runtime]\nenable_annotations = [\"io.katacontainers.*\"]\n"), Path::new("c")).unwrap();
        assert!(c.annotation_enabled("io.katacontainers.config.hypervisor.cc_init_data"));
        assert!(!c.annotation_enabled("io.kubernetes.cri.sandbox-id"));
    }

    #[test]
    fn config_path_from_cri_runtime_options() {
        // runtimeoptions.v1.Options { type_url: "x", config_path: "/etc/x.toml" }
        let mut v = vec![0x0a, 1, b'x', 0x12, 11];
        v.extend_from_slice(b"/etc/x.toml");
        let any = protobuf::well_known_types::any::Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: v,
            ..Default::default()
        };
        assert_eq!(options_config_path(&any).as_deref(), Some("/etc/x.toml"));
        let other = protobuf::well_known_types::any::Any { type_url: "containerd.runc.v1.Options".into(), ..Default::default() };
        assert_eq!(options_config_path(&other), None);
        assert_eq!(config_path(Some("/a")), PathBuf::from("/a"));
    }
}
