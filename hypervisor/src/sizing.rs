//! VM size from configuration defaults and the pod's resource limits.
//!
//! Memory: `max(default, overhead + Σ memory limits)`, in MiB, rounded up.
//! vCPUs: `default + ⌈Σ quota/period⌉`. Both are capped by the configured maxima.
//! Containers without a limit add nothing (they share the default).

const MIB: u64 = 1024 * 1024;

/// Sizing configuration (from `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizingConfig {
    /// vCPUs of a pod with no CPU limits.
    pub default_vcpus: u32,
    /// Memory of a pod with no memory limits.
    pub default_memory_mib: u64,
    /// Added to the sum of the containers' memory limits (kernel, agent, page cache).
    pub memory_overhead_mib: u64,
    /// Upper bound for vCPUs.
    pub max_vcpus: u32,
    /// Upper bound for memory.
    pub max_memory_mib: u64,
}

impl Default for SizingConfig {
    fn default() -> Self {
        Self {
            default_vcpus: 1,
            default_memory_mib: 512,
            memory_overhead_mib: 256,
            max_vcpus: 16,
            max_memory_mib: 16384,
        }
    }
}

/// One container's limits (OCI `linux.resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerLimits {
    /// `memory.limit` in bytes; `None` or non-positive = unlimited.
    pub memory_limit_bytes: Option<i64>,
    /// `cpu.quota` in µs per period; `None` or non-positive = unlimited.
    pub cpu_quota: Option<i64>,
    /// `cpu.period` in µs; `None` or 0 = no limit.
    pub cpu_period: Option<u64>,
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

/// Sizes a pod VM. Pure; overflow saturates.
pub fn size_vm(config: &SizingConfig, containers: &[ContainerLimits]) -> VmSize {
    let mem_bytes: u64 = containers
        .iter()
        .filter_map(|c| c.memory_limit_bytes)
        .filter(|&b| b > 0)
        .fold(0u64, |acc, b| acc.saturating_add(b.unsigned_abs()));
    let mem_mib = mem_bytes.div_ceil(MIB);
    let memory = if mem_mib == 0 {
        config.default_memory_mib
    } else {
        config
            .default_memory_mib
            .max(config.memory_overhead_mib.saturating_add(mem_mib))
    };

    // Σ quota/period as an exact fraction would need a common denominator; summing
    // millicpus (rounded up per container) keeps it simple and never undersizes.
    let millicpus: u64 = containers
        .iter()
        .filter_map(|c| match (c.cpu_quota, c.cpu_period) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                Some(q.unsigned_abs().saturating_mul(1000).div_ceil(p))
            }
            _ => None,
        })
        .fold(0u64, u64::saturating_add);
    let extra_vcpus = u32::try_from(millicpus.div_ceil(1000)).unwrap_or(u32::MAX);
    let vcpus = config.default_vcpus.saturating_add(extra_vcpus);

    let capped = vcpus > config.max_vcpus || memory > config.max_memory_mib;
    VmSize {
        vcpus: vcpus.min(config.max_vcpus).max(1),
        memory_mib: memory.min(config.max_memory_mib),
        capped,
    }
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
        let cfg = SizingConfig::default();
        // 1 GiB + 512 MiB + 256 overhead; 1.5 + 0.25 cpus → 2 extra.
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
    fn small_limits_keep_the_default_memory() {
        let cfg = SizingConfig::default();
        assert_eq!(
            size_vm(&cfg, &[c(Some(64 << 20), None, None)]).memory_mib,
            512
        );
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
                vcpus: 16,
                memory_mib: 16384,
                capped: true
            }
        );
        let s = size_vm(&cfg, &[c(None, Some(1000), Some(0))]);
        assert_eq!(s.vcpus, 1);
    }
}
