//! OOM-kill notification for one container's memory cgroup.
//!
//! - cgroup v1: an eventfd registered on `memory.oom_control` through
//!   `cgroup.event_control`; the kernel signals it on every OOM of the cgroup (and once
//!   more when the cgroup is removed, which we recognise by the cgroup being gone).
//! - cgroup v2: inotify on `memory.events`; an event counts when its `oom_kill` counter
//!   grows.
//!
//! Both give one pollable descriptor, which the helper's loop watches.

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcgroups::common::CgroupSetup;
use libcgroups::v1::ControllerType;

/// Failures of the OOM monitor.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OomError {
    #[error("failed to detect the cgroup setup")]
    Setup(#[source] libcgroups::common::GetCgroupSetupError),
    #[error("no memory cgroup v1 hierarchy")]
    MountPoint(#[source] libcgroups::v1::util::V1MountPointError),
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the memory cgroup {0} is gone")]
    Gone(PathBuf),
}

/// Watches one memory cgroup for OOM kills.
pub(crate) enum OomMonitor {
    V1 {
        eventfd: OwnedFd,
        // Kept open: the registration lives as long as this descriptor.
        _control: File,
        dir: PathBuf,
    },
    V2 {
        inotify: OwnedFd,
        events: PathBuf,
        last: u64,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OomError {
    let path = path.to_owned();
    move |source| OomError::Io { op, path, source }
}

impl OomMonitor {
    /// Starts watching the memory cgroup at `cgroup_path` (as in the spec, absolute).
    pub(crate) fn new(cgroup_path: &Path) -> Result<Self, OomError> {
        let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
        match libcgroups::common::get_cgroup_setup().map_err(OomError::Setup)? {
            CgroupSetup::Legacy | CgroupSetup::Hybrid => {
                let mount =
                    libcgroups::v1::util::get_subsystem_mount_point(&ControllerType::Memory)
                        .map_err(OomError::MountPoint)?;
                let dir = mount.join(rel);
                let control_path = dir.join("memory.oom_control");
                let control = File::open(&control_path).map_err(io("open", &control_path))?;
                // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
                let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                if raw < 0 {
                    return Err(io("create an eventfd for", &dir)(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: `raw` is a fresh descriptor returned by eventfd; we own it alone.
                let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
                let reg = dir.join("cgroup.event_control");
                fs::write(
                    &reg,
                    format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd()),
                )
                .map_err(io("register with", &reg))?;
                Ok(Self::V1 {
                    eventfd,
                    _control: control,
                    dir,
                })
            }
            CgroupSetup::Unified => {
                let events = Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT)
                    .join(rel)
                    .join("memory.events");
                let last = read_oom_kill(&events)?;
                // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
                let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
                if raw < 0 {
                    return Err(io("create an inotify for", &events)(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: `raw` is a fresh descriptor returned by inotify_init1.
                let inotify = unsafe { OwnedFd::from_raw_fd(raw) };
                let cpath = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
                    .map_err(|e| io("name", &events)(std::io::Error::other(e)))?;
                // SAFETY: `cpath` is a valid NUL-terminated string that outlives the call.
                let wd = unsafe {
                    libc::inotify_add_watch(inotify.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY)
                };
                if wd < 0 {
                    return Err(io("watch", &events)(std::io::Error::last_os_error()));
                }
                Ok(Self::V2 {
                    inotify,
                    events,
                    last,
                })
            }
        }
    }

    /// The descriptor to poll for readability.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::V1 { eventfd, .. } => eventfd.as_fd(),
            Self::V2 { inotify, .. } => inotify.as_fd(),
        }
    }

    /// Called when [`Self::fd`] is readable: returns how many OOM kills happened since the
    /// last call. An error means the cgroup is gone and the monitor should be dropped.
    pub(crate) fn check(&mut self) -> Result<u64, OomError> {
        match self {
            Self::V1 { eventfd, dir, .. } => {
                let mut buf = [0u8; 8];
                // SAFETY: reads at most 8 bytes into the 8-byte buffer we own.
                let n =
                    unsafe { libc::read(eventfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n != 8 {
                    return Ok(0);
                }
                if !dir.join("cgroup.event_control").exists() {
                    return Err(OomError::Gone(dir.clone()));
                }
                Ok(u64::from_ne_bytes(buf).max(1))
            }
            Self::V2 {
                inotify,
                events,
                last,
            } => {
                let mut buf = [0u8; 4096];
                // Drain the queued inotify records; their content does not matter.
                // SAFETY: reads at most buf.len() bytes into the buffer we own.
                while unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
                    > 0
                {}
                let now = read_oom_kill(events)?;
                let new = now.saturating_sub(*last);
                *last = now;
                Ok(new)
            }
        }
    }
}

fn read_oom_kill(events: &Path) -> Result<u64, OomError> {
    let text = fs::read_to_string(events).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            OomError::Gone(events.to_owned())
        } else {
            io("read", events)(e)
        }
    })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}
