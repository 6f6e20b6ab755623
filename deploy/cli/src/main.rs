//! `kata-cc`: the small host tool that ships beside the shim.
//!
//! `kata-cc check` prints what this host can run (KVM and whether it is usable, SEV-SNP,
//! TDX, QEMU, vsock, tun) and exits non-zero when it cannot run a pod at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hypervisor::probe::HostCapabilities;

/// kata-cc host tool.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Report what this host can run; exit 1 if it cannot run a pod.
    Check {
        /// QEMU binary to probe.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
    },
}

/// What is missing for running any pod (TEE or not) on this host.
fn blockers(h: &HostCapabilities) -> Vec<String> {
    let mut b = Vec::new();
    if let Err(e) = &h.qemu {
        b.push(format!("QEMU is not usable: {e}"));
    }
    if h.vhost_device_vsock.is_none() && !h.vhost_vsock_dev {
        b.push("no host<->guest channel: neither /dev/vhost-vsock nor vhost-device-vsock on PATH".into());
    }
    if !h.tun_dev {
        b.push("/dev/net/tun is missing: pods cannot be networked".into());
    }
    b
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Check { qemu } => {
            let h = HostCapabilities::probe(&qemu);
            print!("{}", h.report());
            let b = blockers(&h);
            if b.is_empty() {
                println!("this host can run kata-cc pods{}", if h.snp().is_ok() || h.tdx().is_ok() { "" } else { " (without a TEE: confidential pods need SEV-SNP or TDX)" });
                ExitCode::SUCCESS
            } else {
                for x in &b {
                    println!("cannot run pods: {x}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostCapabilities {
        HostCapabilities {
            kvm: Err("no /dev/kvm".into()),
            sev_snp_param: false,
            tdx_param: false,
            qemu: Err("not found".into()),
            vhost_device_vsock: None,
            vhost_vsock_dev: false,
            vhost_net_dev: false,
            tun_dev: false,
        }
    }

    #[test]
    fn names_every_blocker_and_none_when_ready() {
        let h = host();
        let b = blockers(&h);
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(b[0].contains("QEMU") && b[1].contains("vsock") && b[2].contains("tun"));
        let mut ok = h;
        ok.qemu = Ok(hypervisor::probe::QemuInfo {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: (10, 0, 2),
            sev_snp_guest: true,
            tdx_guest: false,
        });
        ok.vhost_device_vsock = Some("/usr/bin/vhost-device-vsock".into());
        ok.tun_dev = true;
        assert!(blockers(&ok).is_empty());
    }
}
