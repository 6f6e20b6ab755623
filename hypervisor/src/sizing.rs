//! VM size of a pod: configuration defaults, overhead and maxima, and the pod's CPU and
//! memory limits. The one implementation of the sizing rule, used by the shim (what
//! it boots) and by `kata-cc measure` (the vCPU count is part of an SEV-SNP launch
//! measurement).
//!
//! The rule, per resource, with `limit` the pod's limit (0 = none):
//!
//! ```text
//! vcpus      = min(max_vcpus,      limit ? max(default_vcpus,      overhead_vcpus      + ⌈quota/period⌉) : default_vcpus)
//! memory_mib = min(max_memory_mib, limit ? max(default_memory_mib, overhead_memory_mib + ⌈bytes/MiB⌉)  : default_memory_mib)
//! ```
//!
//! Where the limits come from ([`pod_limits`]): containerd's sandbox annotations
//! (`io.kubernetes.cri.sandbox-cpu-quota`/`-cpu-period`/`-memory`, set by its CRI plugin
//! from the kubelet's `LinuxPodSandboxConfig.resources`, since containerd 1.6.0), CRI-O's
//! (`pod-linux-resources.crio.io`, formerly `io.kubernetes.cri-o.PodLinuxResources`: the
//! same message as JSON), or, for a container that is its own pod (`ctr run`), its OCI
//! `linux.resources`. The kubelet's pod overhead (RuntimeClass `overhead`) is not read:
//! the overhead is the configuration's, so that an attester can compute the size from
//! the pod's limits and the configuration alone.

use std::collections::HashMap;

use serde::Deserialize;

const MIB: u64 = 1024 * 1024;
/// The CFS period the kubelet uses (`MilliCPUToQuota`), and so the one [`from_quantities`]
/// uses to express a CPU quantity as a quota.
pub const CFS_PERIOD_US: i64 = 100_000;
/// Longest sizing annotation value accepted.
pub const MAX_ANNOTATION_LEN: usize = 4096;
/// Hard upper bounds of the configuration's maxima (QEMU's q35 machine takes 288 vCPUs;
/// 1 TiB is beyond what a pod VM here can need).
pub const MAX_VCPUS_LIMIT: u32 = 255;
/// See [`MAX_VCPUS_LIMIT`].
pub const MAX_MEMORY_MIB_LIMIT: u64 = 1 << 20;

/// containerd: the pod's CPU quota (µs per period; 0 or negative: none).
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd: the pod's CPU period (µs).
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// containerd: the pod's CPU shares (a weight; not used for sizing).
pub const CRI_SANDBOX_CPU_SHARES: &str = "io.kubernetes.cri.sandbox-cpu-shares";
/// containerd: the pod's memory limit in bytes (0: none).
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI-O: the pod's `LinuxContainerResources` as JSON.
pub const CRIO_POD_RESOURCES: &str = "pod-linux-resources.crio.io";
/// CRI-O before its v2 annotation names: the same JSON.
pub const CRIO_POD_RESOURCES_V1: &str = "io.kubernetes.cri-o.PodLinuxResources";

/// Sizing configuration (the shim's `[hypervisor]` keys of the same names, except
/// `default_vcpus`/`default_memory_mib`, which are `vcpus`/`memory_mib` there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SizingConfig {
    /// vCPUs of a pod with no CPU limit, and the least any pod gets.
    #[serde(rename = "vcpus")]
    pub default_vcpus: u32,
    /// Memory of a pod with no memory limit, and the least any pod gets (MiB).
    #[serde(rename = "memory_mib")]
    pub default_memory_mib: u64,
    /// vCPUs added to a pod's CPU limit (the agent, the guest kernel).
    pub overhead_vcpus: u32,
    /// MiB added to a pod's memory limit (guest kernel, agent, page cache).
    pub overhead_memory_mib: u64,
    /// Upper bound for vCPUs.
    pub max_vcpus: u32,
    /// Upper bound for memory (MiB).
    pub max_memory_mib: u64,
}

impl Default for SizingConfig {
    fn default() -> Self {
        Self {
            default_vcpus: 1,
            default_memory_mib: 512,
            overhead_vcpus: 0,
            overhead_memory_mib: 256,
            max_vcpus: 8,
            max_memory_mib: 16384,
        }
    }
}

impl SizingConfig {
    /// Checks the configuration (the message names the key).
    pub fn validate(&self) -> Result<(), String> {
        if self.default_vcpus == 0 {
            return Err("hypervisor.vcpus must be >= 1".into());
        }
        if self.default_memory_mib < 128 {
            return Err("hypervisor.memory_mib must be >= 128".into());
        }
        if self.max_vcpus < self.default_vcpus || self.max_vcpus > MAX_VCPUS_LIMIT {
            return Err(format!(
                "hypervisor.max_vcpus = {} must be between hypervisor.vcpus ({}) and {MAX_VCPUS_LIMIT}",
                self.max_vcpus, self.default_vcpus
            ));
        }
        if self.max_memory_mib < self.default_memory_mib
            || self.max_memory_mib > MAX_MEMORY_MIB_LIMIT
        {
            return Err(format!(
                "hypervisor.max_memory_mib = {} must be between hypervisor.memory_mib ({}) and {MAX_MEMORY_MIB_LIMIT}",
                self.max_memory_mib, self.default_memory_mib
            ));
        }
        if self.overhead_vcpus > self.max_vcpus || self.overhead_memory_mib > self.max_memory_mib {
            return Err("hypervisor.overhead_vcpus / overhead_memory_mib exceed the maxima".into());
        }
        Ok(())
    }
}

/// CPU and memory limits (OCI `linux.resources` units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerLimits {
    /// `memory.limit` in bytes; `None` or non-positive = unlimited.
    pub memory_limit_bytes: Option<i64>,
    /// `cpu.quota` in µs per period; `None` or non-positive = unlimited.
    pub cpu_quota: Option<i64>,
    /// `cpu.period` in µs; `None` or 0 = no limit.
    pub cpu_period: Option<u64>,
}

impl ContainerLimits {
    /// The CPU limit in millicpus, rounded up (`None`: no limit).
    pub fn millicpus(&self) -> Option<u64> {
        match (self.cpu_quota, self.cpu_period) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                Some(q.unsigned_abs().saturating_mul(1000).div_ceil(p))
            }
            _ => None,
        }
    }

    /// The CPU limit in whole CPUs, rounded up (`None`: no limit).
    pub fn cpus(&self) -> Option<u64> {
        self.millicpus().map(|m| m.div_ceil(1000))
    }

    /// The memory limit in MiB, rounded up (`None`: no limit).
    pub fn memory_mib(&self) -> Option<u64> {
        self.memory_limit_bytes
            .filter(|&b| b > 0)
            .map(|b| b.unsigned_abs().div_ceil(MIB))
    }
}

/// The computed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Whether a maximum clipped the request.
    pub capped: bool,
}

/// Sizes a pod VM from the sum of `containers`' limits (one entry for a whole pod's
/// limits). A container without a limit adds nothing. Pure; overflow saturates.
pub fn size_vm(config: &SizingConfig, containers: &[ContainerLimits]) -> VmSize {
    let mem_mib = containers
        .iter()
        .filter_map(ContainerLimits::memory_mib)
        .fold(0u64, u64::saturating_add);
    let memory = if mem_mib == 0 {
        config.default_memory_mib
    } else {
        config
            .default_memory_mib
            .max(config.overhead_memory_mib.saturating_add(mem_mib))
    };
    // Σ quota/period in millicpus (rounded up per container): never undersizes.
    let millicpus: u64 = containers
        .iter()
        .filter_map(ContainerLimits::millicpus)
        .fold(0u64, u64::saturating_add);
    let vcpus = if millicpus == 0 {
        u64::from(config.default_vcpus)
    } else {
        u64::from(config.default_vcpus)
            .max(u64::from(config.overhead_vcpus).saturating_add(millicpus.div_ceil(1000)))
    };
    let capped = vcpus > u64::from(config.max_vcpus) || memory > config.max_memory_mib;
    VmSize {
        vcpus: u32::try_from(vcpus.min(u64::from(config.max_vcpus)))
            .unwrap_or(config.max_vcpus)
            .max(1),
        memory_mib: memory.min(config.max_memory_mib),
        capped,
    }
}

/// A sizing input that is not acceptable, or a container that does not fit its VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    /// A sizing annotation that does not parse.
    #[error("annotation {name} = {value:?}: {why}")]
    Annotation {
        /// The annotation.
        name: String,
        /// Its value (at most 64 characters of it).
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A resource quantity (`kata-cc measure --pod-cpu/--pod-memory`) that does not parse.
    #[error("{what} {value:?}: {why}")]
    Quantity {
        /// The option.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A container asks for more than its pod's VM has (no hotplug: docs/architecture.md).
    #[error(
        "container {container}: {field} = {value} does not fit in the pod VM ({limit}); size the pod for it \
         (pod limits, or hypervisor.vcpus / memory_mib / max_vcpus / max_memory_mib in the configuration)"
    )]
    DoesNotFit {
        /// The container id.
        container: String,
        /// The OCI field.
        field: &'static str,
        /// What the container asks.
        value: String,
        /// What the VM has.
        limit: String,
    },
}

fn bad(name: &str, value: &str, why: impl Into<String>) -> SizingError {
    SizingError::Annotation {
        name: name.into(),
        value: value.chars().take(64).collect(),
        why: why.into(),
    }
}

/// The annotation `name`, refused when longer than [`MAX_ANNOTATION_LEN`].
fn bounded_annotation<'a>(
    ann: &'a HashMap<String, String>,
    name: &str,
) -> Result<Option<&'a str>, SizingError> {
    match ann.get(name) {
        Some(v) if v.len() > MAX_ANNOTATION_LEN => Err(bad(
            name,
            v,
            format!("longer than {MAX_ANNOTATION_LEN} bytes"),
        )),
        v => Ok(v.map(String::as_str)),
    }
}

fn int_annotation(ann: &HashMap<String, String>, name: &str) -> Result<Option<i64>, SizingError> {
    let Some(v) = bounded_annotation(ann, name)? else {
        return Ok(None);
    };
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<i64>()
        .map(Some)
        .map_err(|e| bad(name, v, format!("not an integer ({e})")))
}

/// CRI's `LinuxContainerResources` as CRI-O serialises it (Go's protobuf JSON names).
#[derive(Debug, Default, Deserialize)]
struct CrioResources {
    #[serde(default)]
    cpu_period: i64,
    #[serde(default)]
    cpu_quota: i64,
    #[serde(default)]
    memory_limit_in_bytes: i64,
}

/// Which runtime's annotations sized the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsSource {
    /// `io.kubernetes.cri.sandbox-*` (containerd).
    Containerd,
    /// `pod-linux-resources.crio.io` (CRI-O).
    CriO,
}

/// The pod's limits from the sandbox spec's annotations: containerd's if any is present,
/// else CRI-O's; `None` when neither runtime passed any. Values that do not parse are
/// errors naming the annotation; absurd values are left to [`size_vm`]'s maxima.
pub fn pod_limits(
    ann: &HashMap<String, String>,
) -> Result<Option<(ContainerLimits, LimitsSource)>, SizingError> {
    let quota = int_annotation(ann, CRI_SANDBOX_CPU_QUOTA)?;
    let period = int_annotation(ann, CRI_SANDBOX_CPU_PERIOD)?;
    let memory = int_annotation(ann, CRI_SANDBOX_MEMORY)?;
    // Shares are a weight, not a size; checked only so that garbage is reported.
    let shares = int_annotation(ann, CRI_SANDBOX_CPU_SHARES)?;
    if quota.is_some() || period.is_some() || memory.is_some() || shares.is_some() {
        if let Some(p) = period.filter(|&p| p < 0) {
            return Err(bad(CRI_SANDBOX_CPU_PERIOD, &p.to_string(), "negative"));
        }
        let limits = ContainerLimits {
            memory_limit_bytes: memory,
            cpu_quota: quota,
            cpu_period: period.map(i64::unsigned_abs),
        };
        return Ok(Some((limits, LimitsSource::Containerd)));
    }
    for name in [CRIO_POD_RESOURCES, CRIO_POD_RESOURCES_V1] {
        let Some(v) = bounded_annotation(ann, name)? else {
            continue;
        };
        let r: CrioResources = serde_json::from_str(v).map_err(|e| {
            bad(
                name,
                v,
                format!("not CRI LinuxContainerResources JSON ({e})"),
            )
        })?;
        if r.cpu_period < 0 {
            return Err(bad(
                name,
                v,
                format!("cpu_period {} is negative", r.cpu_period),
            ));
        }
        let limits = ContainerLimits {
            memory_limit_bytes: Some(r.memory_limit_in_bytes),
            cpu_quota: Some(r.cpu_quota),
            cpu_period: Some(r.cpu_period.unsigned_abs()),
        };
        return Ok(Some((limits, LimitsSource::CriO)));
    }
    Ok(None)
}

/// Whether `container`'s own limits fit in a VM of `size`; the error names the field, the
/// value and the VM's size.
pub fn check_fits(
    size: &VmSize,
    container: &str,
    limits: &ContainerLimits,
) -> Result<(), SizingError> {
    if let Some(mib) = limits.memory_mib() {
        if mib > size.memory_mib {
            return Err(SizingError::DoesNotFit {
                container: container.into(),
                field: "linux.resources.memory.limit",
                value: format!("{mib} MiB"),
                limit: format!("{} MiB of memory", size.memory_mib),
            });
        }
    }
    if let Some(cpus) = limits.cpus() {
        if cpus > u64::from(size.vcpus) {
            return Err(SizingError::DoesNotFit {
                container: container.into(),
                field: "linux.resources.cpu.quota/period",
                value: format!(
                    "{} / {} µs ({cpus} CPUs)",
                    limits.cpu_quota.unwrap_or(0),
                    limits.cpu_period.unwrap_or(0)
                ),
                limit: format!("{} vCPUs", size.vcpus),
            });
        }
    }
    Ok(())
}

/// A Kubernetes CPU quantity (`3`, `1.5`, `500m`) in millicpus.
pub fn parse_cpu_quantity(s: &str) -> Result<u64, SizingError> {
    let err = |why: &str| SizingError::Quantity {
        what: "cpu",
        value: s.chars().take(64).collect(),
        why: why.into(),
    };
    let t = s.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m
            .parse::<u64>()
            .map_err(|_| err("expected <integer>m, <integer> or <decimal>"));
    }
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        || frac.len() > 3
    {
        return Err(err(
            "expected <integer>m, <integer> or <decimal> (at most 3 decimals)",
        ));
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err("too large"))?
    };
    let milli: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}")
            .parse()
            .map_err(|_| err("bad decimals"))?
    };
    whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(milli))
        .ok_or_else(|| err("too large"))
}

/// A Kubernetes memory quantity (`3Gi`, `512Mi`, `1G`, `1000k`, bytes) in bytes.
pub fn parse_memory_quantity(s: &str) -> Result<u64, SizingError> {
    let err = |why: &str| SizingError::Quantity {
        what: "memory",
        value: s.chars().take(64).collect(),
        why: why.into(),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| err("expected <integer>[Ki|Mi|Gi|Ti|k|M|G|T]"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(err("unknown unit (Ki, Mi, Gi, Ti, k, M, G, T)")),
    };
    n.checked_mul(mult).ok_or_else(|| err("too large"))
}

/// The limits a pod with `resources.limits` `cpu`/`memory` arrives with: the quota the
/// kubelet derives (`millicpus × 100000 / 1000` per 100 ms period), the memory in bytes.
pub fn from_quantities(
    cpu: Option<&str>,
    memory: Option<&str>,
) -> Result<ContainerLimits, SizingError> {
    let mut l = ContainerLimits::default();
    if let Some(c) = cpu {
        let milli = parse_cpu_quantity(c)?;
        let quota = milli.saturating_mul(CFS_PERIOD_US.unsigned_abs()) / 1000;
        l.cpu_quota = Some(i64::try_from(quota).unwrap_or(i64::MAX));
        l.cpu_period = Some(CFS_PERIOD_US.unsigned_abs());
    }
    if let Some(m) = memory {
        l.memory_limit_bytes = Some(i64::try_from(parse_memory_quantity(m)?).unwrap_or(i64::MAX));
    }
    Ok(l)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;

    fn c(mem: Option<i64>, quota: Option<i64>, period: Option<u64>) -> ContainerLimits {
        ContainerLimits {
            memory_limit_bytes: mem,
            cpu_quota: quota,
            cpu_period: period,
        }
    }

    fn ann(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_limits_gives_defaults() {
        let cfg = SizingConfig::default();
        assert_eq!(
            size_vm(&cfg, &[]),
            VmSize {
                vcpus: 1,
                memory_mib: 512,
                capped: false
            }
        );
        assert_eq!(
            size_vm(
                &cfg,
                &[c(None, None, None), c(Some(-1), Some(-1), Some(100_000))]
            )
            .memory_mib,
            512
        );
    }

    #[test]
    fn limits_raise_the_size() {
        let cfg = SizingConfig {
            overhead_vcpus: 1,
            ..SizingConfig::default()
        };
        // 1 GiB + 512 MiB + 256 overhead; 1.5 + 0.25 cpus → 2, + 1 overhead.
        let s = size_vm(
            &cfg,
            &[
                c(Some(GIB), Some(150_000), Some(100_000)),
                c(Some(GIB / 2), Some(25_000), Some(100_000)),
            ],
        );
        assert_eq!(
            s,
            VmSize {
                vcpus: 3,
                memory_mib: 1024 + 512 + 256,
                capped: false
            }
        );
    }

    #[test]
    fn small_limits_keep_the_defaults() {
        let cfg = SizingConfig {
            default_vcpus: 2,
            ..SizingConfig::default()
        };
        let s = size_vm(&cfg, &[c(Some(64 << 20), Some(50_000), Some(100_000))]);
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
        // Rounded up to whole MiB.
        assert_eq!(
            size_vm(&cfg, &[c(Some(GIB + 1), None, None)]).memory_mib,
            1024 + 1 + 256
        );
    }

    #[test]
    fn caps_and_overflow() {
        let cfg = SizingConfig::default();
        let s = size_vm(
            &cfg,
            &[
                c(Some(i64::MAX), Some(i64::MAX), Some(1)),
                c(Some(i64::MAX), Some(i64::MAX), Some(1)),
            ],
        );
        assert_eq!(
            s,
            VmSize {
                vcpus: 8,
                memory_mib: 16384,
                capped: true
            }
        );
        assert_eq!(size_vm(&cfg, &[c(None, Some(1000), Some(0))]).vcpus, 1);
    }

    #[test]
    fn containerd_annotations_three_cpus_three_gib() {
        let a = ann(&[
            (CRI_SANDBOX_CPU_PERIOD, "100000"),
            (CRI_SANDBOX_CPU_QUOTA, "300000"),
            (CRI_SANDBOX_CPU_SHARES, "3072"),
            (CRI_SANDBOX_MEMORY, "3221225472"),
        ]);
        let (l, src) = pod_limits(&a).unwrap().unwrap();
        assert_eq!(src, LimitsSource::Containerd);
        let s = size_vm(&SizingConfig::default(), &[l]);
        assert_eq!(
            s,
            VmSize {
                vcpus: 3,
                memory_mib: 3072 + 256,
                capped: false
            }
        );
        // What containerd sends for a pod without limits.
        let none = ann(&[
            (CRI_SANDBOX_CPU_PERIOD, "100000"),
            (CRI_SANDBOX_CPU_QUOTA, "0"),
            (CRI_SANDBOX_CPU_SHARES, "2"),
            (CRI_SANDBOX_MEMORY, "0"),
        ]);
        let (l, _) = pod_limits(&none).unwrap().unwrap();
        assert_eq!(
            size_vm(&SizingConfig::default(), &[l]),
            VmSize {
                vcpus: 1,
                memory_mib: 512,
                capped: false
            }
        );
        assert_eq!(pod_limits(&ann(&[("other", "x")])).unwrap(), None);
    }

    #[test]
    fn crio_annotation() {
        let json = r#"{"cpu_period":100000,"cpu_quota":300000,"cpu_shares":3072,"memory_limit_in_bytes":3221225472,"oom_score_adj":-998}"#;
        for key in [CRIO_POD_RESOURCES, CRIO_POD_RESOURCES_V1] {
            let (l, src) = pod_limits(&ann(&[(key, json)])).unwrap().unwrap();
            assert_eq!(src, LimitsSource::CriO);
            assert_eq!(
                size_vm(&SizingConfig::default(), &[l]),
                VmSize {
                    vcpus: 3,
                    memory_mib: 3328,
                    capped: false
                }
            );
        }
        // Go's JSON of an empty message.
        let (l, _) = pod_limits(&ann(&[(CRIO_POD_RESOURCES, "{}")]))
            .unwrap()
            .unwrap();
        assert_eq!(size_vm(&SizingConfig::default(), &[l]).vcpus, 1);
    }

    #[test]
    fn bad_annotations_name_the_annotation_and_value() {
        for (k, v) in [
            (CRI_SANDBOX_CPU_QUOTA, "3 cpus"),
            (CRI_SANDBOX_MEMORY, "3Gi"),
            (CRI_SANDBOX_CPU_PERIOD, "-5"),
            (CRI_SANDBOX_MEMORY, "99999999999999999999999"),
            (CRIO_POD_RESOURCES, "{\"cpu_quota\": \"x\"}"),
            (CRIO_POD_RESOURCES, "not json"),
        ] {
            let e = pod_limits(&ann(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(&v.replace('"', "\\\"")), "{e}");
        }
        let long = "1".repeat(MAX_ANNOTATION_LEN + 1);
        let e = pod_limits(&ann(&[(CRI_SANDBOX_MEMORY, &long)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than") && e.len() < 300, "{e}");
    }

    #[test]
    fn absurd_annotations_are_capped() {
        let a = ann(&[
            (CRI_SANDBOX_CPU_PERIOD, "1"),
            (CRI_SANDBOX_CPU_QUOTA, &i64::MAX.to_string()),
            (CRI_SANDBOX_MEMORY, &i64::MAX.to_string()),
        ]);
        let (l, _) = pod_limits(&a).unwrap().unwrap();
        assert_eq!(
            size_vm(&SizingConfig::default(), &[l]),
            VmSize {
                vcpus: 8,
                memory_mib: 16384,
                capped: true
            }
        );
    }

    #[test]
    fn quantities_match_what_the_kubelet_sends() {
        assert_eq!(parse_cpu_quantity("3").unwrap(), 3000);
        assert_eq!(parse_cpu_quantity("1.5").unwrap(), 1500);
        assert_eq!(parse_cpu_quantity("250m").unwrap(), 250);
        assert_eq!(parse_cpu_quantity(".5").unwrap(), 500);
        for bad in ["", "x", "1.2345", "-1", "1e3", "99999999999999999999"] {
            assert!(parse_cpu_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_memory_quantity("3Gi").unwrap(), 3 << 30);
        assert_eq!(parse_memory_quantity("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_memory_quantity("1G").unwrap(), 1_000_000_000);
        for bad in ["", "Gi", "3GB", "-1Gi", "99999999999Ti"] {
            assert!(parse_memory_quantity(bad).is_err(), "{bad}");
        }
        let l = from_quantities(Some("3"), Some("3Gi")).unwrap();
        assert_eq!(l, c(Some(3 * GIB), Some(300_000), Some(100_000)));
        assert_eq!(
            size_vm(&SizingConfig::default(), &[l]),
            VmSize {
                vcpus: 3,
                memory_mib: 3328,
                capped: false
            }
        );
    }

    #[test]
    fn containers_that_do_not_fit_are_named() {
        let size = VmSize {
            vcpus: 2,
            memory_mib: 1024,
            capped: false,
        };
        check_fits(&size, "c1", &c(Some(GIB), Some(200_000), Some(100_000))).unwrap();
        let e = check_fits(&size, "c1", &c(Some(2 * GIB), None, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c1") && e.contains("memory.limit = 2048 MiB") && e.contains("1024 MiB"),
            "{e}"
        );
        let e = check_fits(&size, "c2", &c(None, Some(250_000), Some(100_000)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cpu.quota/period") && e.contains("3 CPUs") && e.contains("2 vCPUs"),
            "{e}"
        );
    }

    #[test]
    fn config_validation() {
        SizingConfig::default().validate().unwrap();
        let e = SizingConfig {
            max_vcpus: 0,
            ..SizingConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("max_vcpus"), "{e}");
        let e = SizingConfig {
            max_memory_mib: 100,
            ..SizingConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("max_memory_mib"), "{e}");
        assert!(SizingConfig {
            max_vcpus: 1000,
            ..SizingConfig::default()
        }
        .validate()
        .is_err());
    }
}
