//! StatsContainer: the runner's cgroup figures in the wire format, plus the VM's
//! network counters (containers share the VM's network namespace).

use protocols::agent as pb;
use protocols::protobuf::MessageField;

use crate::runner::{BlkioEntry, ContainerStats, MemoryEntry};

fn memory_data(m: &MemoryEntry) -> pb::MemoryData {
    let mut d = pb::MemoryData::new();
    d.usage = m.usage;
    d.max_usage = m.max_usage;
    d.failcnt = m.failcnt;
    d.limit = m.limit;
    d
}

fn blkio(entries: &[BlkioEntry]) -> Vec<pb::BlkioStatsEntry> {
    entries
        .iter()
        .map(|e| {
            let mut b = pb::BlkioStatsEntry::new();
            b.major = e.major;
            b.minor = e.minor;
            b.op = e.op.clone();
            b.value = e.value;
            b
        })
        .collect()
}

/// Converts the runner's figures into `CgroupStats`.
pub fn cgroup_stats_to_grpc(s: &ContainerStats) -> pb::CgroupStats {
    let mut usage = pb::CpuUsage::new();
    usage.total_usage = s.cpu.total_usage;
    usage.percpu_usage = s.cpu.percpu_usage.clone();
    usage.usage_in_kernelmode = s.cpu.usage_in_kernelmode;
    usage.usage_in_usermode = s.cpu.usage_in_usermode;
    let mut throttling = pb::ThrottlingData::new();
    throttling.periods = s.cpu.periods;
    throttling.throttled_periods = s.cpu.throttled_periods;
    throttling.throttled_time = s.cpu.throttled_time;
    let mut cpu = pb::CpuStats::new();
    cpu.cpu_usage = MessageField::some(usage);
    cpu.throttling_data = MessageField::some(throttling);

    let mut mem = pb::MemoryStats::new();
    mem.cache = s.memory.cache;
    mem.usage = MessageField::some(memory_data(&s.memory.usage));
    mem.swap_usage = MessageField::some(memory_data(&s.memory.swap_usage));
    mem.kernel_usage = MessageField::some(memory_data(&s.memory.kernel_usage));
    mem.use_hierarchy = s.memory.use_hierarchy;
    mem.stats = s.memory.stats.clone();

    let mut pids = pb::PidsStats::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;

    let b = &s.blkio;
    let mut blk = pb::BlkioStats::new();
    blk.io_service_bytes_recursive = blkio(&b.io_service_bytes_recursive);
    blk.io_serviced_recursive = blkio(&b.io_serviced_recursive);
    blk.io_queued_recursive = blkio(&b.io_queued_recursive);
    blk.io_service_time_recursive = blkio(&b.io_service_time_recursive);
    blk.io_wait_time_recursive = blkio(&b.io_wait_time_recursive);
    blk.io_merged_recursive = blkio(&b.io_merged_recursive);
    blk.io_time_recursive = blkio(&b.io_time_recursive);
    blk.sectors_recursive = blkio(&b.sectors_recursive);

    let mut out = pb::CgroupStats::new();
    out.cpu_stats = MessageField::some(cpu);
    out.memory_stats = MessageField::some(mem);
    out.pids_stats = MessageField::some(pids);
    out.blkio_stats = MessageField::some(blk);
    out.hugetlb_stats = s
        .hugetlb
        .iter()
        .map(|(size, m)| {
            let mut h = pb::HugetlbStats::new();
            h.usage = m.usage;
            h.max_usage = m.max_usage;
            h.failcnt = m.failcnt;
            (size.clone(), h)
        })
        .collect();
    out
}

/// Per-interface counters from `/proc/net/dev` (loopback excluded); empty if unreadable.
pub fn network_stats() -> Vec<pb::NetworkStats> {
    std::fs::read_to_string("/proc/net/dev").map(|t| parse_net_dev(&t)).unwrap_or_default()
}

fn parse_net_dev(text: &str) -> Vec<pb::NetworkStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() < 12 {
                return None;
            }
            let mut n = pb::NetworkStats::new();
            n.name = name.to_string();
            (n.rx_bytes, n.rx_packets, n.rx_errors, n.rx_dropped) = (v[0], v[1], v[2], v[3]);
            (n.tx_bytes, n.tx_packets, n.tx_errors, n.tx_dropped) = (v[8], v[9], v[10], v[11]);
            Some(n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let t = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 20 1 2 0 0 0 0 3000 30 3 4 0 0 0 0\n garbage\n";
        let s = parse_net_dev(t);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].name.as_str(), s[0].rx_bytes, s[0].tx_packets, s[0].tx_dropped), ("eth0", 2000, 30, 4));
    }
}
