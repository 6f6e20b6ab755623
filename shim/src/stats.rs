//! The agent's container statistics (cgroup v2 in the guest) as containerd's cgroup v1
//! `Metrics`, the type CRI's ContainerStats decodes for Linux shims.

use containerd_shim::protos::cgroups::metrics as m;
use containerd_shim::protos::protobuf::MessageField;
use protocols::agent as pb;

/// `Any.type_url` of the metrics.
pub const V1_METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

fn entry(d: &pb::MemoryData) -> m::MemoryEntry {
    m::MemoryEntry { limit: d.limit, usage: d.usage, max: d.max_usage, failcnt: d.failcnt, ..Default::default() }
}

/// Converts StatsContainer's answer.
pub fn to_v1_metrics(s: &pb::StatsContainerResponse) -> m::Metrics {
    let cg = s.cgroup_stats.get_or_default();
    let cpu = cg.cpu_stats.get_or_default().cpu_usage.get_or_default();
    let mem = cg.memory_stats.get_or_default();
    let stat = |k: &str| mem.stats.get(k).copied().unwrap_or(0);
    m::Metrics {
        cpu: MessageField::some(m::CPUStat {
            usage: MessageField::some(m::CPUUsage {
                total: cpu.total_usage,
                kernel: cpu.usage_in_kernelmode,
                user: cpu.usage_in_usermode,
                per_cpu: cpu.percpu_usage.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(m::MemoryStat {
            cache: mem.cache,
            rss: stat("anon"),
            total_inactive_file: stat("inactive_file"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            usage: MessageField::some(entry(mem.usage.get_or_default())),
            swap: MessageField::some(entry(mem.swap_usage.get_or_default())),
            kernel: MessageField::some(entry(mem.kernel_usage.get_or_default())),
            ..Default::default()
        }),
        pids: MessageField::some(m::PidsStat {
            current: cg.pids_stats.get_or_default().current,
            limit: cg.pids_stats.get_or_default().limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_cpu_and_working_set_inputs_are_carried() {
        let mut s = pb::StatsContainerResponse::new();
        let cg = s.cgroup_stats.mut_or_insert_default();
        cg.cpu_stats.mut_or_insert_default().cpu_usage.mut_or_insert_default().total_usage = 42;
        let mem = cg.memory_stats.mut_or_insert_default();
        mem.usage.mut_or_insert_default().usage = 1000;
        mem.stats.insert("inactive_file".into(), 300);
        cg.pids_stats.mut_or_insert_default().current = 3;
        let v = to_v1_metrics(&s);
        assert_eq!(v.cpu.usage.total, 42);
        assert_eq!(v.memory.usage.usage, 1000);
        assert_eq!(v.memory.total_inactive_file, 300);
        assert_eq!(v.pids.current, 3);
    }
}
