//! Running as PID 1 inside the VM: leave the initramfs `rootfs` for a tmpfs root, mount
//! the kernel filesystems, set up cgroups, load the vsock modules shipped in the
//! initramfs, bring up `lo`, power off on fatal errors, and reap orphans.
//!
//! Boot sequence (see [`switch_root_if_needed`] and [`setup_guest`]):
//! 1. The kernel runs `/init` on its initial `rootfs` mount. `pivot_root(2)` refuses that
//!    mount (`EINVAL`), and youki pivot_roots into every container's rootfs, so the agent
//!    copies the initramfs into a fresh tmpfs, moves the tmpfs over `/`, chroots into it
//!    and executes `/init` again (what `switch_root` does).
//! 2. The second run sees a tmpfs root and mounts `/proc`, `/sys`, `/dev`, cgroup2, loads
//!    the modules of [`MODULES_LIST`], brings up `lo` and serves the agent API.
//!
//! Orphaned processes are re-parented to PID 1. The agent's own children (the
//! per-container runners, re-executions of the agent binary) are waited by tokio, so
//! the reaper scans `/proc` for zombie children of ours and leaves those alone.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
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
    /// Reading `/proc/self/mountinfo` failed or it has no root mount.
    #[error("find the root mount in /proc/self/mountinfo")]
    MountInfo(#[source] std::io::Error),
    /// Copying the initramfs into the new root failed.
    #[error("copy {path} into the tmpfs root")]
    Copy {
        /// The file being copied.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of moving the tmpfs over `/` failed.
    #[error("switch root: {step}")]
    SwitchRoot {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The root is still the initial rootfs after the switch (would loop forever).
    #[error("the root is still the kernel's initial rootfs after switching root")]
    StillOnRootfs,
    /// Executing the agent again from the new root failed.
    #[error("execute {path} from the new root")]
    Exec {
        /// The executable.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Preparing the containers' cgroup parent failed.
    #[error("prepare the containers' cgroup {path}")]
    Cgroup {
        /// The cgroup directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Bringing up the loopback interface failed.
    #[error("bring up the loopback interface")]
    Loopback(#[source] Errno),
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
    /// Mount only over an empty (or absent) directory: the root is already a tmpfs, and
    /// a mount would hide content baked into the image (the test rootfs lives below
    /// `/run/kata-containers`).
    only_if_empty: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

const KERNEL_MOUNTS: &[KernelMount] = &[
    KernelMount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: None, only_if_empty: false },
    KernelMount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: None, only_if_empty: false },
    KernelMount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: Some("mode=0755"), only_if_empty: false },
    KernelMount { source: "devpts", target: "/dev/pts", fstype: "devpts", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC), data: Some("newinstance,ptmxmode=0666,mode=0620"), only_if_empty: false },
    KernelMount { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID_NODEV_NOEXEC, data: Some("mode=1777"), only_if_empty: false },
    KernelMount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=0755"), only_if_empty: true },
    KernelMount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: Some("mode=1777"), only_if_empty: true },
    KernelMount { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC, data: Some("nsdelegate"), only_if_empty: false },
];

fn dir_has_entries(dir: &str) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// Mounts /proc, /sys, /dev (+pts, shm), /run and /tmp (unless they hold baked-in
/// content) and the unified cgroup hierarchy, points /dev/ptmx at the new devpts
/// instance and enables the cgroup v2 controllers for children of the root cgroup.
/// Already-mounted targets (`EBUSY`) are left as they are.
pub fn mount_kernel_filesystems() -> Result<(), InitError> {
    for m in KERNEL_MOUNTS {
        if m.only_if_empty && dir_has_entries(m.target) {
            tracing::info!("{} holds image content: kept as a directory of the root tmpfs", m.target);
            continue;
        }
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
    // `a` is left unwaited on purpose: the reaper under test must collect it.
    #[allow(clippy::zombie_processes)]
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

/// `PATH` of PID 1 (the kernel starts init without one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Set in the environment of the second run of `/init`, after the switch to the tmpfs
/// root: finding the initial rootfs again then is an error, not a reason to loop.
pub const SWITCHED_ROOT_ENV: &str = "KATA_CC_SWITCHED_ROOT";

/// Where the tmpfs root is assembled before it is moved over `/`.
const NEW_ROOT: &str = "/newroot";

/// Top-level directories of the initramfs recreated empty in the tmpfs root: the kernel
/// filesystems' mount points. (The new root itself is not copied at all.)
const NOT_COPIED: &[&str] = &["proc", "sys", "dev"];

/// The filesystem type of the mount at `/` in a `/proc/<pid>/mountinfo` text (the last
/// one, if several are stacked).
pub fn root_fstype(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mount_point = mount.split_whitespace().nth(4)?;
            (mount_point == "/").then(|| fs.split_whitespace().next()).flatten()
        })
        .next_back()
}

/// If `/` is the kernel's initial `rootfs` (where `pivot_root` fails), copies its content
/// into a new tmpfs, moves that over `/`, chroots into it and executes `/init` again with
/// [`SWITCHED_ROOT_ENV`] set: on success this does not return. Returns `Ok(())` when the
/// root already is a real filesystem. Must run before any thread is started.
pub fn switch_root_if_needed() -> Result<(), InitError> {
    std::fs::create_dir_all("/proc").map_err(|source| InitError::Mkdir { path: "/proc".into(), source })?;
    let mounted_proc = match mount(Some("proc"), "/proc", Some("proc"), NOSUID_NODEV_NOEXEC, None::<&str>) {
        Ok(()) => true,
        Err(Errno::EBUSY) => false,
        Err(source) => return Err(InitError::Mount { fstype: "proc", target: "/proc", source }),
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(InitError::MountInfo)?;
    let fstype = root_fstype(&mountinfo)
        .ok_or_else(|| InitError::MountInfo(std::io::Error::other("no mount at /")))?
        .to_string();
    if fstype != "rootfs" {
        return Ok(());
    }
    if std::env::var_os(SWITCHED_ROOT_ENV).is_some() {
        return Err(InitError::StillOnRootfs);
    }
    if mounted_proc {
        umount2("/proc", MntFlags::MNT_DETACH).map_err(|source| InitError::SwitchRoot { step: "unmount /proc", source })?;
    }
    std::fs::create_dir_all(NEW_ROOT).map_err(|source| InitError::Mkdir { path: NEW_ROOT.into(), source })?;
    mount(Some("rootfs"), NEW_ROOT, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(|source| InitError::Mount { fstype: "tmpfs", target: NEW_ROOT, source })?;
    let root_dev = std::fs::symlink_metadata("/")
        .map_err(|source| InitError::Copy { path: "/".into(), source })?
        .dev();
    copy_tree(Path::new("/"), Path::new(NEW_ROOT), root_dev, true)?;
    // Free the initramfs copy's memory (best effort; like switch_root, stay on its device).
    remove_tree_contents(Path::new("/"), root_dev, true);

    let step = |step: &'static str| move |source| InitError::SwitchRoot { step, source };
    nix::unistd::chdir(NEW_ROOT).map_err(step("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(step("move the new root over /"))?;
    nix::unistd::chroot(".").map_err(step("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(step("chdir to /"))?;

    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/init").args(args).env(SWITCHED_ROOT_ENV, "1").exec();
    Err(InitError::Exec { path: "/init".into(), source: err })
}

/// Copies the tree below `src` into `dst`, keeping types, modes, owners and symlinks.
/// Directories on another device than `dev` (mount points) and, at the top level, the
/// names in [`NOT_COPIED`] are recreated empty; [`NEW_ROOT`] is skipped.
fn copy_tree(src: &Path, dst: &Path, dev: u64, top: bool) -> Result<(), InitError> {
    let err = |p: &Path| {
        let path = p.display().to_string();
        move |source| InitError::Copy { path, source }
    };
    for entry in std::fs::read_dir(src).map_err(err(src))? {
        let entry = entry.map_err(err(src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from).map_err(err(&from))?;
        let ft = meta.file_type();
        if top && from == Path::new(NEW_ROOT) {
            continue;
        }
        let skip_content = top && NOT_COPIED.iter().any(|n| entry.file_name() == *n);
        if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(err(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(err(&to))?;
        } else if ft.is_dir() {
            match std::fs::create_dir(&to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(&to)(e)),
            }
            if !skip_content && meta.dev() == dev {
                copy_tree(&from, &to, dev, false)?;
            }
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err(&to))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(err(&from))?;
        } else {
            use nix::sys::stat::{Mode, SFlag};
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            if kind == SFlag::S_IFSOCK {
                continue;
            }
            nix::sys::stat::mknod(&to, kind, Mode::from_bits_truncate(meta.mode() & 0o7777), meta.rdev())
                .map_err(|e| err(&to)(e.into()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err(&to))?;
        }
        std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(err(&to))?;
    }
    Ok(())
}

/// Removes everything below `dir` that lives on device `dev` (not crossing mount
/// points); at the top level, [`NEW_ROOT`] is kept. Best effort.
fn remove_tree_contents(dir: &Path, dev: u64, top: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if top && path == Path::new(NEW_ROOT) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_contents(&path, dev, false);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// File in the initramfs listing kernel modules that may fail to load, one path per
/// line: the TEE guest drivers (`sev-guest`, `tdx-guest`), which refuse to load with
/// `ENODEV` outside their TEE, and `qemu_fw_cfg`.
pub const OPTIONAL_MODULES_LIST: &str = "/etc/kata-cc/modules.optional";

/// Loads the modules named in `list`, best effort: a module that does not load is
/// logged (as absent hardware for `ENODEV`/`ENXIO`) and skipped.
pub fn load_optional_modules(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else { return };
    for p in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match load_modules(&[Path::new(p)]) {
            Ok(()) => tracing::debug!("loaded {p}"),
            Err(InitError::Module { source: Errno::ENODEV | Errno::ENXIO, .. }) => {
                tracing::debug!("{p}: no such device here")
            }
            Err(e) => tracing::warn!("optional module {p} not loaded: {}", crate::error::chain(&e)),
        }
    }
}

/// Where configfs is mounted (configfs-tsm lives below it).
pub const CONFIGFS_ROOT: &str = "/sys/kernel/config";

/// Mounts configfs (best effort: a kernel without it has no configfs-tsm either).
pub fn mount_configfs() {
    match mount(Some("configfs"), CONFIGFS_ROOT, Some("configfs"), NOSUID_NODEV_NOEXEC, None::<&str>) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(e) => tracing::debug!("configfs not mounted on {CONFIGFS_ROOT}: {e}"),
    }
}

/// PID 1 set-up after the switch to the tmpfs root: kernel filesystems, console on
/// stdio, kernel modules (required, then optional), configfs, the containers' cgroup
/// parent, `lo`.
pub fn setup_guest(cgroup_parent: &str) -> Result<(), InitError> {
    mount_kernel_filesystems()?;
    ensure_console();
    load_modules_from_list(Path::new(MODULES_LIST))?;
    load_optional_modules(Path::new(OPTIONAL_MODULES_LIST));
    mount_configfs();
    prepare_cgroup_parent(Path::new(CGROUP_ROOT), cgroup_parent)?;
    bring_up_loopback()?;
    Ok(())
}

/// Mount point of the unified cgroup hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Creates the containers' cgroup parent (e.g. `/kata-cc`) below a cgroup v2 `root` and
/// enables every controller for its children at each level, so that libcgroups can put
/// each container in `<parent>/<id>` with all controllers. The agent itself stays in the
/// root cgroup (exempt from the no-internal-process rule). Nothing to do on cgroup v1.
pub fn prepare_cgroup_parent(root: &Path, parent: &str) -> Result<(), InitError> {
    if !root.join("cgroup.controllers").exists() {
        return Ok(());
    }
    enable_cgroup_controllers(root);
    let mut dir = root.to_path_buf();
    for part in Path::new(parent).components().filter(|c| matches!(c, std::path::Component::Normal(_))) {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(InitError::Cgroup { path: dir.display().to_string(), source }),
        }
        enable_cgroup_controllers(&dir);
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    tracing::info!("cgroup v2: controllers for containers below {}: {}", dir.display(), enabled.trim());
    Ok(())
}

/// Brings up the loopback interface (`ip link set lo up`).
pub fn bring_up_loopback() -> Result<(), InitError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(InitError::Loopback)?;
    // SAFETY: `ifreq` is a C struct of a byte array and a union of plain integers and
    // arrays, for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: the fd is an open socket; SIOCGIFFLAGS reads the NUL-terminated name of
    // the `ifreq` we own and writes its flags member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(InitError::Loopback(Errno::last()));
    }
    // SAFETY: SIOCGIFFLAGS initialised the `ifru_flags` member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: the fd is an open socket; SIOCSIFFLAGS only reads the `ifreq` we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(InitError::Loopback(Errno::last()));
    }
    Ok(())
}

/// Makes sure fds 0, 1 and 2 are open, on `/dev/console` if the kernel could not open
/// one for init (best effort: without a console there is nowhere to complain).
pub fn ensure_console() {
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    for fd in 0..=2 {
        if fcntl(fd, FcntlArg::F_GETFD) != Err(Errno::EBADF) {
            continue;
        }
        let Ok(console) = open("/dev/console", OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        else {
            return;
        };
        if console != fd {
            let _ = nix::unistd::dup2(console, fd);
            let _ = nix::unistd::close(console);
        } else {
            // open() returned the missing fd itself: keep it, but across exec too.
            let _ = fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()));
        }
    }
}

/// Syncs and powers the VM off. PID 1 must never exit (the kernel would panic), so this
/// is how a fatal error or a shutdown ends. Aborts (kernel panic) if the power-off
/// itself is refused.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::abort()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod pid1_tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn finds_the_root_fstype() {
        let initial = "1 1 0:2 / / rw - rootfs rootfs rw,size=250000k\n\
                       15 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n";
        assert_eq!(root_fstype(initial), Some("rootfs"));
        let switched = "22 1 0:21 / / rw,relatime shared:1 - tmpfs rootfs rw,mode=755\n\
                        23 22 0:22 / /proc rw - proc proc rw\n";
        assert_eq!(root_fstype(switched), Some("tmpfs"));
        assert_eq!(root_fstype("23 22 0:22 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn copies_a_tree_with_modes_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("usr/bin")).unwrap();
        std::fs::write(s.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(s.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("usr/bin/tool", s.join("init")).unwrap();
        std::fs::create_dir(s.join("tmp")).unwrap();
        std::fs::set_permissions(s.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::create_dir_all(s.join("proc/self")).unwrap();
        let dev = std::fs::symlink_metadata(s).unwrap().dev();
        copy_tree(s, dst.path(), dev, true).unwrap();
        let d = dst.path();
        assert_eq!(std::fs::read(d.join("usr/bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::metadata(d.join("usr/bin/tool")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read_link(d.join("init")).unwrap(), PathBuf::from("usr/bin/tool"));
        assert_eq!(std::fs::metadata(d.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        // Kernel filesystem mount points are recreated empty.
        assert!(d.join("proc").is_dir());
        assert!(!d.join("proc/self").exists());
        remove_tree_contents(s, dev, false);
        assert_eq!(std::fs::read_dir(s).unwrap().count(), 0);
    }

    #[test]
    fn cgroup_parent_is_created_on_a_v2_layout() {
        // A fake v2 root: plain files stand in for the cgroup interface files.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "").unwrap();
        prepare_cgroup_parent(root.path(), "/kata-cc/pods").unwrap();
        assert!(root.path().join("kata-cc/pods").is_dir());
        // v1 (no cgroup.controllers): nothing is created.
        let v1 = tempfile::tempdir().unwrap();
        prepare_cgroup_parent(v1.path(), "/kata-cc").unwrap();
        assert!(!v1.path().join("kata-cc").exists());
    }
}

/// Kernel parameter naming a registry the guest reaches over plain HTTP
/// (`kata_cc.insecure_registry=HOST:PORT`, repeatable). The shim sets it from its
/// configuration; the agent honours it only in a VM without a TEE, where the host is
/// trusted with the pod anyway (a TEE pod takes this from measured initdata).
pub const INSECURE_REGISTRY_PARAM: &str = "kata_cc.insecure_registry";

/// The [`INSECURE_REGISTRY_PARAM`] values of a kernel command line.
pub fn cmdline_insecure_registries(cmdline: &str) -> Vec<String> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(INSECURE_REGISTRY_PARAM)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod cmdline_tests {
    use super::*;

    #[test]
    fn insecure_registries_from_the_kernel_cmdline() {
        let c = "console=ttyS0 kata_cc.insecure_registry=10.88.0.1:5000 quiet kata_cc.insecure_registry=r:1 kata_cc.insecure_registry= kata_cc.insecure_registryX=y";
        assert_eq!(cmdline_insecure_registries(c), ["10.88.0.1:5000", "r:1"]);
        assert!(cmdline_insecure_registries("console=ttyS0").is_empty());
    }
}
