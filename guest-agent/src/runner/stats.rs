//! Conversion of libcgroups statistics into the runner's [`ContainerStats`].

use libcgroups::stats::{BlkioDeviceStat, MemoryData, Stats};

use super::proto::{
    BlkioEntry, BlkioStats, ContainerStats, CpuStats, MemoryEntry, MemoryStats, PidsStats,
};

/// Units libcgroups reports CPU times in, by cgroup version.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CpuUnits {
    /// v1: `cpuacct.usage` and throttling in ns, `cpuacct.stat` user/system in clock ticks
    /// of this many ns.
    V1 { tick_ns: u64 },
    /// v2: everything in microseconds.
    V2,
}

impl CpuUnits {
    /// The units of the running system's cgroup setup.
    pub(crate) fn detect() -> Self {
        match libcgroups::common::get_cgroup_setup() {
            Ok(libcgroups::common::CgroupSetup::Unified) => Self::V2,
            _ => {
                // SAFETY: sysconf takes an integer name and has no other effect.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
                let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
                Self::V1 {
                    tick_ns: 1_000_000_000 / hz,
                }
            }
        }
    }
}

/// Maps libcgroups' v1/v2 statistics to ours (CPU times in nanoseconds).
pub(crate) fn convert_stats(mut s: Stats, units: CpuUnits) -> ContainerStats {
    let u = &mut s.cpu.usage;
    match units {
        CpuUnits::V1 { tick_ns } => {
            u.usage_user = u.usage_user.saturating_mul(tick_ns);
            u.usage_kernel = u.usage_kernel.saturating_mul(tick_ns);
        }
        CpuUnits::V2 => {
            u.usage_total = u.usage_total.saturating_mul(1000);
            u.usage_user = u.usage_user.saturating_mul(1000);
            u.usage_kernel = u.usage_kernel.saturating_mul(1000);
            s.cpu.throttling.throttled_time = s.cpu.throttling.throttled_time.saturating_mul(1000);
        }
    }
    let mem = |d: &MemoryData| MemoryEntry {
        usage: d.usage,
        max_usage: d.max_usage,
        failcnt: d.fail_count,
        limit: d.limit,
    };
    let blk = |v: &[BlkioDeviceStat]| {
        v.iter()
            .map(|e| BlkioEntry {
                major: e.major,
                minor: e.minor,
                op: e.op_type.clone().unwrap_or_default(),
                value: e.value,
            })
            .collect::<Vec<_>>()
    };
    ContainerStats {
        cpu: CpuStats {
            total_usage: s.cpu.usage.usage_total,
            percpu_usage: s.cpu.usage.per_core_usage_total.clone(),
            usage_in_kernelmode: s.cpu.usage.usage_kernel,
            usage_in_usermode: s.cpu.usage.usage_user,
            throttled_periods: s.cpu.throttling.throttled_periods,
            periods: s.cpu.throttling.periods,
            throttled_time: s.cpu.throttling.throttled_time,
        },
        memory: MemoryStats {
            cache: s.memory.cache,
            usage: mem(&s.memory.memory),
            swap_usage: mem(&s.memory.memswap),
            kernel_usage: mem(&s.memory.kernel),
            use_hierarchy: s.memory.hierarchy,
            stats: s.memory.stats.clone(),
        },
        pids: PidsStats {
            current: s.pids.current,
            limit: s.pids.limit,
        },
        blkio: BlkioStats {
            io_service_bytes_recursive: blk(&s.blkio.service_bytes),
            io_serviced_recursive: blk(&s.blkio.serviced),
            io_queued_recursive: blk(&s.blkio.queued),
            io_service_time_recursive: blk(&s.blkio.service_time),
            io_wait_time_recursive: blk(&s.blkio.wait_time),
            io_merged_recursive: blk(&s.blkio.merged),
            io_time_recursive: blk(&s.blkio.time),
            sectors_recursive: blk(&s.blkio.sectors),
        },
        hugetlb: s
            .hugetlb
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    MemoryEntry {
                        usage: v.usage,
                        max_usage: v.max_usage,
                        failcnt: v.fail_count,
                        limit: 0,
                    },
                )
            })
            .collect(),
    }
}
