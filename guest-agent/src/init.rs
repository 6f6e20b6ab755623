//! Running as PID 1 inside the VM: mount the kernel filesystems, set up cgroups, load
//! the vsock modules shipped in the initramfs, and reap orphans.
//!
//! Orphaned processes are re-parented to PID 1. The agent's own children (the
//! per-container runners, re-executions of the agent binary) are waited by tokio, so
//! the reaper scans `/proc` for zombie children of ours and leaves those alone.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// Errors while setting up the guest as PID 1.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Creating a mount point failed.
    #[error("create {path}")]
    Mkdir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Loading a kernel module failed.
    #[error("load kernel module {path}")]
    Module {
        /// The module file.
        path: String,
        /// The cause.
        #[source]
        source: Errno,
    },
}

struct KernelMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

const KERNEL_MOUNTS: &[KernelMount] = &[
    KernelMount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: None },
    KernelMount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: None },
    KernelMount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: Some("mode=0755") },
    KernelMount { source: "devpts", target: "/dev/pts", fstype: "devpts", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC), data: Some("newinstance,ptmxmode=0666,mode=0620") },
    KernelMount { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID_NODEV_NOEXEC, data: Some("mode=1777") },
    KernelMount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=0755") },
    KernelMount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=1777") },
    KernelMount { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC, data: Some("nsdelegate") },
];

/// Mounts /proc, /sys, /dev (+pts, shm), /run, /tmp and the unified cgroup hierarchy,
/// and enables the cgroup v2 controllers for the containers' subtree. Already-mounted
/// targets (`EBUSY`) are left as they are.
pub fn mount_kernel_filesystems() -> Result<(), InitError> {
    for m in KERNEL_MOUNTS {
        std::fs::create_dir_all(m.target)
            .map_err(|source| InitError::Mkdir { path: m.target.to_string(), source })?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => return Err(InitError::Mount { fstype: m.fstype, target: m.target, source }),
        }
    }
    // /dev/ptmx must point at the new devpts instance.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    Ok(())
}

/// Turns on every available controller for children of `root` (best effort: a
/// controller the kernel lacks is simply absent from the list).
fn enable_cgroup_controllers(root: &Path) {
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else { return };
    let wanted: Vec<String> = available.split_whitespace().map(|c| format!("+{c}")).collect();
    for c in wanted {
        if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), &c) {
            tracing::warn!("cannot enable cgroup controller {c}: {e}");
        }
    }
}

/// Loads kernel modules (uncompressed `.ko` files) in order; a module that is already
/// loaded (`EEXIST`) is fine.
pub fn load_modules(paths: &[&Path]) -> Result<(), InitError> {
    for p in paths {
        let image = std::fs::read(p).map_err(|e| InitError::Module {
            path: p.display().to_string(),
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        match nix::kmod::init_module(&image, c"") {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => return Err(InitError::Module { path: p.display().to_string(), source }),
        }
    }
    Ok(())
}

/// Reaps zombie children of this process except those whose command name is
/// `own_comm`: those are the agent's own runners, which tokio waits for. Returns how
/// many it collected.
pub fn reap_orphans(own_comm: &str) -> usize {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut reaped = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        let mut it = stat[close + 1..].split_whitespace();
        let (Some(state), Some(ppid)) = (it.next(), it.next().and_then(|p| p.parse::<i32>().ok())) else { continue };
        if state == "Z" && ppid == me && comm != own_comm && waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok() {
            reaped += 1;
        }
    }
    reaped
}

/// The command name of this process (as in `/proc/self/stat`).
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Spawns a task that reaps orphaned zombies on every SIGCHLD (PID 1 only).
pub fn spawn_reaper() -> std::io::Result<()> {
    let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let comm = own_comm();
    tokio::spawn(async move {
        while sig.recv().await.is_some() {
            let comm = comm.clone();
            let _ = tokio::task::spawn_blocking(move || reap_orphans(&comm)).await;
        }
    });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reaps_unknown_zombie_but_not_our_own_kind() {
        let a = std::process::Command::new("true").spawn().unwrap();
        let mut b = std::process::Command::new("sleep").arg("0").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let n = reap_orphans("sleep");
        assert!(n >= 1);
        assert!(!Path::new(&format!("/proc/{}", a.id())).exists());
        // The known child is still ours to wait for.
        assert!(b.wait().unwrap().success());
    }
}

/// File in the initramfs listing kernel modules to load at boot, one path per line.
pub const MODULES_LIST: &str = "/etc/kata-cc/modules.load";

/// Loads the modules named in `list` (absent file: nothing to load).
pub fn load_modules_from_list(list: &Path) -> Result<(), InitError> {
    let Ok(text) = std::fs::read_to_string(list) else { return Ok(()) };
    let paths: Vec<&Path> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(Path::new).collect();
    load_modules(&paths)
}
