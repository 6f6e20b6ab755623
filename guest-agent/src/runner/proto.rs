//! The message protocol between the agent and a runner helper.
//!
//! One `SOCK_SEQPACKET` unix socketpair per container: every datagram is one JSON message;
//! file descriptors ride along as `SCM_RIGHTS` ancillary data. The agent sends
//! [`RequestMsg`]; the helper answers each with a [`HelperMsg::Reply`] carrying the same
//! `seq`, and pushes [`HelperMsg::Exited`] / [`HelperMsg::Oom`] events unprompted.
//!
//! Descriptor conventions:
//! - `Create` / `Exec` without a terminal carry exactly three fds: the container-side
//!   stdin (read end), stdout and stderr (write ends), in that order.
//! - The `Created` / `Execed` reply of a process with a terminal carries one fd: the pty
//!   master.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Largest message either side accepts (a process spec with a big environment fits).
pub(crate) const MAX_MSG: usize = 256 * 1024;
/// Most descriptors one message may carry.
pub(crate) const MAX_FDS: usize = 4;

/// A request from the agent, tagged with a sequence number echoed in the reply.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestMsg {
    pub seq: u64,
    pub req: Request,
}

/// What the agent asks the helper to do.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Create the container (libcontainer create); first request of every helper.
    Create {
        id: String,
        bundle: PathBuf,
        state_root: PathBuf,
    },
    /// Start the created container's init process.
    Start,
    /// Execute a new process in the running container.
    Exec {
        exec_id: String,
        process: Box<oci_spec::runtime::Process>,
    },
    /// Send a signal to the init (`exec_id` None) or to an exec'd process.
    Signal {
        exec_id: Option<String>,
        signal: i32,
        all: bool,
    },
    /// Freeze the container's cgroup.
    Pause,
    /// Thaw the container's cgroup.
    Resume,
    /// Read the container's cgroup statistics.
    Stats,
    /// Apply new cgroup resource limits.
    Update {
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// List the pids in the container's cgroup.
    Pids,
    /// Kill everything, delete the container and exit.
    Destroy,
}

/// A message from the helper.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HelperMsg {
    /// The answer to the request with the same `seq`.
    Reply {
        seq: u64,
        result: Result<Reply, HelperFailure>,
    },
    /// A process of the container exited (`exec_id` None: the init process).
    Exited {
        exec_id: Option<String>,
        status: i32,
    },
    /// The container's memory cgroup reported an OOM kill.
    Oom,
}

/// Successful answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The container was created; its init process has this (host) pid.
    Created { pid: i32 },
    /// The process was executed with this (host) pid.
    Execed { pid: i32 },
    /// The request was carried out.
    Done,
    /// Cgroup statistics.
    Stats(Box<ContainerStats>),
    /// Pids in the container's cgroup.
    Pids(Vec<i32>),
}

/// What kind of failure the helper reported; lets the agent pick a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The request or the spec was malformed or unsupported.
    InvalidArgument,
    /// The container or process is not in a state that allows the operation.
    InvalidState,
    /// The named process does not exist.
    NotFound,
    /// The container or process already exists.
    AlreadyExists,
    /// The spec asks for something this environment does not permit.
    PermissionDenied,
    /// Anything else (kernel, cgroup, libcontainer internals).
    Internal,
}

/// A failure inside the helper, carried back over the socket.
///
/// `message` holds the whole cause chain of the helper-side error (libcontainer's error and
/// its sources), joined with `": "`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct HelperFailure {
    /// Classification of the failure.
    pub kind: FailureKind,
    /// The rendered cause chain.
    pub message: String,
}

/// Cgroup statistics of one container (cgroup v1 or v2), shaped after Kata's `CgroupStats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU accounting.
    pub cpu: CpuStats,
    /// Memory accounting.
    pub memory: MemoryStats,
    /// Number of tasks.
    pub pids: PidsStats,
    /// Block I/O accounting (may be empty).
    pub blkio: BlkioStats,
    /// Hugetlb usage per page size (may be empty).
    pub hugetlb: HashMap<String, MemoryEntry>,
}

/// CPU usage, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Total CPU time consumed.
    pub total_usage: u64,
    /// Per-CPU total CPU time.
    pub percpu_usage: Vec<u64>,
    /// Time spent in kernel mode.
    pub usage_in_kernelmode: u64,
    /// Time spent in user mode.
    pub usage_in_usermode: u64,
    /// Number of CFS periods with throttling active.
    pub throttled_periods: u64,
    /// Number of CFS periods.
    pub periods: u64,
    /// Total throttled time.
    pub throttled_time: u64,
}

/// Usage figures of one memory counter, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// Current usage.
    pub usage: u64,
    /// Peak usage.
    pub max_usage: u64,
    /// Number of times the limit was hit.
    pub failcnt: u64,
    /// The limit.
    pub limit: u64,
}

/// Memory accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Page cache.
    pub cache: u64,
    /// Memory (user + kernel on v2).
    pub usage: MemoryEntry,
    /// Memory + swap (v1) or swap (v2).
    pub swap_usage: MemoryEntry,
    /// Kernel memory.
    pub kernel_usage: MemoryEntry,
    /// Whether the hierarchy is used (v1 `memory.use_hierarchy`; always true on v2).
    pub use_hierarchy: bool,
    /// The raw `memory.stat` counters.
    pub stats: HashMap<String, u64>,
}

/// Task counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Tasks now in the cgroup.
    pub current: u64,
    /// The pids limit (0: unlimited).
    pub limit: u64,
}

/// One block I/O counter for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioEntry {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Operation (`Read`, `Write`, `Sync`, `Async`, `Total`...), empty if none.
    pub op: String,
    /// The value.
    pub value: u64,
}

/// Block I/O accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioStats {
    /// Bytes transferred.
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Number of I/O operations.
    pub io_serviced_recursive: Vec<BlkioEntry>,
    /// Queued operations.
    pub io_queued_recursive: Vec<BlkioEntry>,
    /// Time spent servicing operations.
    pub io_service_time_recursive: Vec<BlkioEntry>,
    /// Time spent waiting.
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    /// Merged operations.
    pub io_merged_recursive: Vec<BlkioEntry>,
    /// Device time.
    pub io_time_recursive: Vec<BlkioEntry>,
    /// Sectors transferred.
    pub sectors_recursive: Vec<BlkioEntry>,
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("failed to encode message")]
    Encode(#[source] serde_json::Error),
    #[error("failed to decode message")]
    Decode(#[source] serde_json::Error),
    #[error("socket i/o failed")]
    Io(#[source] std::io::Error),
    #[error("message of {0} bytes exceeds the limit or was truncated")]
    TooLarge(usize),
    #[error("message carried too many file descriptors")]
    TooManyFds,
}

/// Sends one message with optional descriptors. Never raises SIGPIPE.
///
/// On a non-blocking socket a full buffer surfaces as `FrameError::Io` of kind
/// `WouldBlock`.
pub(crate) fn send_msg<T: Serialize>(
    fd: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(msg).map_err(FrameError::Encode)?;
    send_bytes(fd, &bytes, fds)
}

/// Sends pre-encoded bytes (see [`send_msg`]).
pub(crate) fn send_bytes(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    if bytes.len() > MAX_MSG {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    loop {
        match socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    }
}

/// Receives one message. `Ok(None)` means the peer closed the socket.
///
/// Received descriptors are close-on-exec.
pub(crate) fn recv_msg<T: serde::de::DeserializeOwned>(
    fd: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>, FrameError> {
    match recv_raw(fd)? {
        None => Ok(None),
        Some((bytes, fds)) => {
            let msg = serde_json::from_slice(&bytes).map_err(FrameError::Decode)?;
            Ok(Some((msg, fds)))
        }
    }
}

/// An undecoded message and the descriptors that came with it.
pub(crate) type RawMsg = (Vec<u8>, Vec<OwnedFd>);

/// Receives one message without decoding it. `Ok(None)` means the peer closed the socket.
pub(crate) fn recv_raw(fd: BorrowedFd<'_>) -> Result<Option<RawMsg>, FrameError> {
    let mut buf = vec![0u8; MAX_MSG];
    let (len, fds) = loop {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for r in raw {
                                // SAFETY: the kernel just installed `r` in our fd table
                                // for this message; nothing else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                            }
                        }
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS {
                    return Err(FrameError::TooManyFds);
                }
                if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    return Err(FrameError::TooLarge(msg.bytes));
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn roundtrip_with_fds() {
        let (a, b) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let msg = RequestMsg {
            seq: 7,
            req: Request::Signal {
                exec_id: Some("x".into()),
                signal: 15,
                all: false,
            },
        };
        send_msg(a.as_fd(), &msg, &[r.as_fd(), w.as_fd()]).unwrap();
        let (got, fds): (RequestMsg, _) = recv_msg(b.as_fd()).unwrap().unwrap();
        assert_eq!(got.seq, 7);
        assert_eq!(fds.len(), 2);
        drop(a);
        assert!(recv_msg::<RequestMsg>(b.as_fd()).unwrap().is_none());
    }
}
