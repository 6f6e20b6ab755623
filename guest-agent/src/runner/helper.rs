//! The runner helper process: one per container, single-threaded.
//!
//! Started as `<agent exe> __runner` with the command socket on fd 3. It makes every
//! libcontainer call of its container, is the parent (and child subreaper) of every
//! process of the container, reaps them and reports their exits, and watches the memory
//! cgroup for OOM kills. Its loop polls the command socket, a `signalfd` for `SIGCHLD`
//! and the OOM notifier.
//!
//! `SIGCHLD` is blocked only while the loop sleeps in `poll`: libcontainer forks the
//! container processes while a request is served, and a blocked signal mask would be
//! inherited by the container's workload. Children that exit while the signal is unblocked
//! are still caught, because the loop reaps (`waitpid(-1, WNOHANG)`) before every sleep.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{
    AnyCgroupManager, AnyManagerError, CgroupConfig, CgroupManager, ControllerOpt,
    CreateCgroupSetupError, FreezerState,
};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxResources, LinuxSeccomp, PosixRlimitType,
    Process, Spec,
};

use super::oom::OomMonitor;
use super::proto::{
    self, ContainerStats, FailureKind, HelperFailure, HelperMsg, Reply, Request, RequestMsg,
};
use super::stats::{convert_stats, CpuUnits};

/// The argument that selects the helper in the agent binary (`<exe> __runner`).
pub const HELPER_ARG: &str = "__runner";
/// The descriptor on which the helper finds its command socket.
pub(crate) const HELPER_SOCKET_FD: RawFd = 3;
/// Environment variable holding a tracing filter for the helper's own log (stderr).
pub const HELPER_LOG_ENV: &str = "KATA_CC_RUNNER_LOG";
/// How long teardown waits for the init process to die after SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for libcontainer's init to hand over a pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Linux capability number of CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

/// Failures inside the helper. They travel to the agent as [`HelperFailure`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelperError {
    #[error("this helper already created container {0}")]
    AlreadyCreated(String),
    #[error("no container has been created by this helper")]
    NotCreated,
    #[error("failed to read the OCI spec {path}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("invalid spec for container {id}: {reason}")]
    InvalidSpec { id: String, reason: String },
    #[error("spec of container {id} needs a privilege this environment lacks: {reason}")]
    NotPermitted { id: String, reason: String },
    #[error("expected 3 stdio descriptors for a process without terminal, got {0}")]
    StdioFds(usize),
    #[error("failed to prepare the state root {path}")]
    StateRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("libcontainer failed to {op} container {id}")]
    Libcontainer {
        op: &'static str,
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("failed to open the cgroup of container {id}")]
    CgroupOpen {
        id: String,
        #[source]
        source: CreateCgroupSetupError,
    },
    #[error("cgroup operation '{op}' failed for container {id}")]
    Cgroup {
        op: &'static str,
        id: String,
        #[source]
        source: AnyManagerError,
    },
    #[error("console socket: failed to {op}")]
    Console {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    #[error("no process with exec id {exec_id} in container {id}")]
    UnknownExec { id: String, exec_id: String },
    #[error("exec id {exec_id} is already running in container {id}")]
    ExecExists { id: String, exec_id: String },
    #[error("invalid signal number {0}")]
    InvalidSignal(i32),
    #[error("failed to send signal {signal} to pid {pid}")]
    Kill {
        signal: i32,
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("failed to write the exec process spec {path}")]
    WriteProcess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: init process {pid} still alive {secs}s after SIGKILL")]
    StopTimeout { id: String, pid: i32, secs: u64 },
    #[error("failed to remove the state directory {path}")]
    RemoveState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HelperError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::AlreadyCreated(_) | Self::ExecExists { .. } => FailureKind::AlreadyExists,
            Self::NotCreated | Self::NotRunning { .. } => FailureKind::InvalidState,
            Self::ReadSpec { .. }
            | Self::InvalidSpec { .. }
            | Self::StdioFds(_)
            | Self::InvalidSignal(_) => FailureKind::InvalidArgument,
            Self::NotPermitted { .. } => FailureKind::PermissionDenied,
            Self::UnknownExec { .. } => FailureKind::NotFound,
            Self::Libcontainer { source, .. } => match source.as_ref() {
                LibcontainerError::IncorrectStatus(_) => FailureKind::InvalidState,
                LibcontainerError::Exist => FailureKind::AlreadyExists,
                LibcontainerError::NoDirectory => FailureKind::NotFound,
                LibcontainerError::InvalidID(_)
                | LibcontainerError::MissingSpec(_)
                | LibcontainerError::InvalidSpec(_)
                | LibcontainerError::InvalidInput(_)
                | LibcontainerError::Spec(_) => FailureKind::InvalidArgument,
                _ => FailureKind::Internal,
            },
            _ => FailureKind::Internal,
        }
    }

    /// Renders the error and its whole source chain for the agent.
    fn to_failure(&self) -> HelperFailure {
        let mut message = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            let s = e.to_string();
            // `#[error(transparent)]` layers repeat their inner message: print it once.
            if !message.ends_with(&s) {
                message.push_str(": ");
                message.push_str(&s);
            }
            cur = e.source();
        }
        HelperFailure {
            kind: self.kind(),
            message,
        }
    }
}

/// Entry point of the helper process (`<agent exe> __runner`).
///
/// Must be called before any other thread exists in the process (first thing in `main`).
/// The command socket is inherited on fd 3. Returns the process exit code.
pub fn helper_main() -> i32 {
    init_logging();
    // SAFETY: fd 3 is the command socket the agent installed with dup2 before exec; this
    // process has no other owner of it. We check it is a socket before using it.
    let sock = unsafe { OwnedFd::from_raw_fd(HELPER_SOCKET_FD) };
    if nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::SockType).is_err() {
        eprintln!("kata-cc runner: fd {HELPER_SOCKET_FD} is not the command socket");
        return 2;
    }
    match Helper::new(sock) {
        Ok(mut helper) => helper.run(),
        Err(e) => {
            eprintln!("kata-cc runner: setup failed: {}", e.to_failure().message);
            2
        }
    }
}

fn init_logging() {
    let Ok(filter) = std::env::var(HELPER_LOG_ENV) else {
        return;
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// A process of the container the helper is parent of.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    status: Option<i32>,
}

/// The container this helper owns.
struct Owned {
    id: String,
    state_root: PathBuf,
    root: PathBuf,
    cgroup_path: PathBuf,
    /// Devices rules of the original spec, re-applied on update (v1 rewrites them).
    devices: Option<Vec<oci_spec::runtime::LinuxDeviceCgroup>>,
    /// The seccomp profile the container was created with, loaded into every exec'd
    /// process too (libcontainer's tenant builder drops `linux.seccomp`).
    seccomp: Option<LinuxSeccomp>,
    /// Whether the container's process has no_new_privs; exec'd processes get the same.
    no_new_privs: bool,
    init: Proc,
}

enum Next {
    Continue,
    Exit,
}

struct Helper {
    sock: OwnedFd,
    sigfd: SignalFd,
    container: Option<Owned>,
    execs: HashMap<String, Proc>,
    oom: Option<OomMonitor>,
    counter: u64,
}

impl Helper {
    fn new(sock: OwnedFd) -> Result<Self, HelperError> {
        let sys = |op: &'static str| {
            move |e: Errno| HelperError::Console {
                op,
                source: std::io::Error::from(e),
            }
        };
        nix::fcntl::fcntl(
            sock.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(sys("set close-on-exec on the command socket"))?;
        // The agent may ignore signals or block them; container processes inherit both
        // the mask and ignored dispositions across exec, so start from a clean slate.
        // (Rust's runtime sets SIGPIPE to SIG_IGN; container shells need SIG_DFL.)
        for sig in [Signal::SIGPIPE, Signal::SIGCHLD] {
            // SAFETY: installing SIG_DFL runs no code of ours in signal context.
            unsafe { signal::signal(sig, SigHandler::SigDfl) }
                .map_err(sys("reset signal dispositions"))?;
        }
        signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(sys("clear the signal mask"))?;
        // Orphans of the container (without its own pid namespace) come to us, not to
        // the agent.
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag, no pointers.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(sys("become child subreaper")(Errno::last()));
        }
        // libcontainer changes directories and restores the previous one: it must exist.
        std::env::set_current_dir("/").map_err(|source| HelperError::Console {
            op: "chdir to /",
            source,
        })?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys("create the signalfd"))?;
        Ok(Self {
            sock,
            sigfd,
            container: None,
            execs: HashMap::new(),
            oom: None,
            counter: 0,
        })
    }

    fn run(&mut self) -> i32 {
        loop {
            let (sock_ready, oom_ready) = match self.sleep(PollTimeout::NONE) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    self.teardown_quietly();
                    return 1;
                }
            };
            if oom_ready {
                self.handle_oom();
            }
            if !sock_ready {
                continue;
            }
            match proto::recv_raw(self.sock.as_fd()) {
                Ok(Some((bytes, fds))) => match serde_json::from_slice::<RequestMsg>(&bytes) {
                    Ok(msg) => {
                        if let Next::Exit = self.handle(msg, fds) {
                            self.final_reap();
                            return 0;
                        }
                    }
                    Err(e) => self.reject_undecodable(&bytes, &e),
                },
                Ok(None) => {
                    // The agent is gone: leave nothing behind.
                    self.teardown_quietly();
                    return 0;
                }
                Err(proto::FrameError::Io(e)) => {
                    tracing::error!(error = %e, "command socket failed");
                    self.teardown_quietly();
                    return 1;
                }
                // Oversized or fd-laden junk: the sender (not the agent) is at fault; the
                // message is gone, keep serving.
                Err(e) => tracing::error!(error = %e, "dropped a bad message"),
            }
        }
    }

    /// Answers a request that does not decode (e.g. an agent of another version), so its
    /// sender does not wait forever.
    fn reject_undecodable(&self, bytes: &[u8], err: &serde_json::Error) {
        let seq = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
        tracing::error!(error = %err, ?seq, "undecodable request");
        if let Some(seq) = seq {
            let result = Err(HelperFailure {
                kind: FailureKind::InvalidArgument,
                message: format!("undecodable request: {err}"),
            });
            self.send(&HelperMsg::Reply { seq, result }, &[]);
        }
    }

    /// Reaps, then sleeps in poll with SIGCHLD blocked. Returns (socket ready, oom ready).
    fn sleep(&mut self, timeout: PollTimeout) -> Result<(bool, bool), Errno> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        self.reap();
        let res = {
            let mut fds = vec![
                PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(oom) = &self.oom {
                fds.push(PollFd::new(oom.fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {
                    let ready = |f: &PollFd<'_>| {
                        f.revents().is_some_and(|r| {
                            r.intersects(
                                PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                            )
                        })
                    };
                    let sock = ready(&fds[0]);
                    let oom = fds.get(2).is_some_and(ready);
                    Ok((sock, oom))
                }
                Err(e) => Err(e),
            }
        };
        // Drain the signalfd, then reap what it announced before unblocking.
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        self.reap();
        signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None)?;
        res
    }

    /// Collects every exited child; reports those that are container processes.
    fn reap(&mut self) {
        loop {
            let (pid, status) =
                match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "waitpid failed");
                        return;
                    }
                };
            let mut exited: Option<Option<String>> = None;
            if let Some(c) = &mut self.container {
                if c.init.pid == pid && c.init.status.is_none() {
                    c.init.status = Some(status);
                    exited = Some(None);
                }
            }
            if exited.is_none() {
                if let Some((id, p)) = self
                    .execs
                    .iter_mut()
                    .find(|(_, p)| p.pid == pid && p.status.is_none())
                {
                    p.status = Some(status);
                    exited = Some(Some(id.clone()));
                }
            }
            if let Some(exec_id) = exited {
                self.send(&HelperMsg::Exited { exec_id, status }, &[]);
            }
        }
    }

    fn send(&self, msg: &HelperMsg, fds: &[BorrowedFd<'_>]) {
        if let Err(e) = proto::send_msg(self.sock.as_fd(), msg, fds) {
            // The agent going away is noticed by the next recv; nothing else to do.
            tracing::warn!(error = %e, "failed to send to the agent");
        }
    }

    fn handle_oom(&mut self) {
        let Some(oom) = &mut self.oom else { return };
        match oom.check() {
            Ok(n) => {
                for _ in 0..n {
                    self.send(&HelperMsg::Oom, &[]);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "OOM monitor stopped");
                self.oom = None;
            }
        }
    }

    fn handle(&mut self, msg: RequestMsg, fds: Vec<OwnedFd>) -> Next {
        let seq = msg.seq;
        let mut next = Next::Continue;
        let mut out_fds: Vec<OwnedFd> = Vec::new();
        let result = match msg.req {
            Request::Create {
                id,
                bundle,
                state_root,
            } => {
                let r = self.create(&id, &bundle, &state_root, fds, &mut out_fds);
                if r.is_err() {
                    // A helper whose create failed has nothing more to do.
                    next = Next::Exit;
                }
                r
            }
            Request::Start => self.start(),
            Request::Exec { exec_id, process } => self.exec(&exec_id, &process, fds, &mut out_fds),
            Request::Signal {
                exec_id,
                signal,
                all,
            } => self.signal(exec_id.as_deref(), signal, all),
            Request::Pause => self.pause_resume(true),
            Request::Resume => self.pause_resume(false),
            Request::Stats => self.stats().map(|s| Reply::Stats(Box::new(s))),
            Request::Update { resources } => self.update(&resources),
            Request::Pids => self.pids().map(Reply::Pids),
            Request::Destroy => {
                next = Next::Exit;
                self.teardown().map(|()| Reply::Done)
            }
        };
        let result = result.map_err(|e| e.to_failure());
        let borrowed: Vec<BorrowedFd<'_>> = out_fds.iter().map(|f| f.as_fd()).collect();
        self.send(&HelperMsg::Reply { seq, result }, &borrowed);
        next
    }

    fn owned(&self) -> Result<&Owned, HelperError> {
        self.container.as_ref().ok_or(HelperError::NotCreated)
    }

    fn load(&self) -> Result<Container, HelperError> {
        let c = self.owned()?;
        Container::load(c.root.clone()).map_err(|source| HelperError::Libcontainer {
            op: "load",
            id: c.id.clone(),
            source: Box::new(source),
        })
    }

    fn cgroup(&self) -> Result<AnyCgroupManager, HelperError> {
        let c = self.owned()?;
        libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: c.cgroup_path.clone(),
            systemd_cgroup: false,
            container_name: c.id.clone(),
        })
        .map_err(|source| HelperError::CgroupOpen {
            id: c.id.clone(),
            source,
        })
    }

    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        state_root: &Path,
        fds: Vec<OwnedFd>,
        out_fds: &mut Vec<OwnedFd>,
    ) -> Result<Reply, HelperError> {
        if let Some(c) = &self.container {
            return Err(HelperError::AlreadyCreated(c.id.clone()));
        }
        let spec_path = bundle.join("config.json");
        let spec = Spec::load(&spec_path).map_err(|source| HelperError::ReadSpec {
            path: spec_path.clone(),
            source,
        })?;
        let invalid = |reason: String| HelperError::InvalidSpec {
            id: id.to_owned(),
            reason,
        };
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("no process".into()))?;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| invalid("no linux section".into()))?;
        check_privileges(id, process)?;
        let terminal = process.terminal().unwrap_or(false);
        let cgroup_path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id);
        let devices = linux.resources().as_ref().and_then(|r| r.devices().clone());
        let seccomp = linux.seccomp().clone();
        let no_new_privs = process.no_new_privileges() == Some(true);

        fs::create_dir_all(state_root).map_err(|source| HelperError::StateRoot {
            path: state_root.to_owned(),
            source,
        })?;
        let state_root = fs::canonicalize(state_root).map_err(|source| HelperError::StateRoot {
            path: state_root.to_owned(),
            source,
        })?;
        let root = state_root.join(id);

        let lc = |op: &'static str| {
            let id = id.to_owned();
            move |source| HelperError::Libcontainer {
                op,
                id,
                source: Box::new(source),
            }
        };
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .validate_id()
            .map_err(lc("validate the id of"))?
            .with_root_path(&state_root)
            .map_err(lc("set the state root of"))?;
        let console = if terminal {
            drop(fds);
            let console = self.console_listener(&state_root)?;
            builder = builder.with_console_socket(Some(console.path.clone()));
            Some(console)
        } else {
            builder = with_stdio(builder, fds)?;
            None
        };
        let built = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        let container = match built {
            Ok(c) => c,
            Err(source) => {
                // libcontainer removes the cgroup and the state dir; make sure no process
                // of ours survives and nothing is left in the state root either.
                kill_children();
                if root.exists() {
                    let _ = fs::remove_dir_all(&root);
                }
                return Err(lc("create")(source));
            }
        };
        let Some(pid) = container.pid() else {
            kill_children();
            let _ = Container::load(root.clone()).map(|mut c| c.delete(true));
            return Err(invalid("libcontainer reported no init pid".into()));
        };
        let pid = pid.as_raw();
        self.container = Some(Owned {
            id: id.to_owned(),
            state_root: state_root.clone(),
            root,
            cgroup_path: cgroup_path.clone(),
            devices,
            seccomp,
            no_new_privs,
            init: Proc { pid, status: None },
        });
        if let Some(console) = console {
            match console.receive_master() {
                Ok(master) => out_fds.push(master),
                Err(e) => {
                    self.teardown_quietly();
                    return Err(e);
                }
            }
        }
        match OomMonitor::new(&cgroup_path) {
            Ok(m) => self.oom = Some(m),
            Err(e) => tracing::warn!(error = %e, "no OOM notifications for container {id}"),
        }
        Ok(Reply::Created { pid })
    }

    fn console_listener(&mut self, state_root: &Path) -> Result<ConsoleListener, HelperError> {
        self.counter += 1;
        let path = state_root.join(format!(
            ".console-{}-{}.sock",
            std::process::id(),
            self.counter
        ));
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|source| HelperError::Console { op: "bind", source })?;
        Ok(ConsoleListener { path, listener })
    }

    fn start(&mut self) -> Result<Reply, HelperError> {
        let c = self.owned()?;
        if c.init.status.is_some() {
            return Err(HelperError::NotRunning { id: c.id.clone() });
        }
        let id = c.id.clone();
        self.load()?
            .start()
            .map_err(|source| HelperError::Libcontainer {
                op: "start",
                id,
                source: Box::new(source),
            })?;
        Ok(Reply::Done)
    }

    fn exec(
        &mut self,
        exec_id: &str,
        process: &Process,
        fds: Vec<OwnedFd>,
        out_fds: &mut Vec<OwnedFd>,
    ) -> Result<Reply, HelperError> {
        let c = self.owned()?;
        let id = c.id.clone();
        if c.init.status.is_some() {
            return Err(HelperError::NotRunning { id });
        }
        if self.execs.get(exec_id).is_some_and(|p| p.status.is_none()) {
            return Err(HelperError::ExecExists {
                id,
                exec_id: exec_id.to_owned(),
            });
        }
        check_privileges(&id, process)?;
        let state_root = c.state_root.clone();
        let root = c.root.clone();
        let (process, executor) = tenant_process(process, c.seccomp.as_ref(), c.no_new_privs);
        self.counter += 1;
        let process_path = root.join(format!(".exec-{}.json", self.counter));
        let json = serde_json::to_vec(&process).map_err(|e| HelperError::WriteProcess {
            path: process_path.clone(),
            source: e.into(),
        })?;
        fs::write(&process_path, json).map_err(|source| HelperError::WriteProcess {
            path: process_path.clone(),
            source,
        })?;
        let result = self.exec_inner(&id, &state_root, &process_path, &process, executor, fds);
        let _ = fs::remove_file(&process_path);
        let (pid, master) = result?;
        if let Some(m) = master {
            out_fds.push(m);
        }
        self.execs
            .insert(exec_id.to_owned(), Proc { pid, status: None });
        Ok(Reply::Execed { pid })
    }

    fn exec_inner(
        &mut self,
        id: &str,
        state_root: &Path,
        process_path: &Path,
        process: &Process,
        executor: Option<SeccompExecutor>,
        fds: Vec<OwnedFd>,
    ) -> Result<(i32, Option<OwnedFd>), HelperError> {
        let lc = |op: &'static str| {
            let id = id.to_owned();
            move |source| HelperError::Libcontainer {
                op,
                id,
                source: Box::new(source),
            }
        };
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(state_root)
            .map_err(lc("set the state root of"))?;
        let console = if process.terminal().unwrap_or(false) {
            drop(fds);
            let console = self.console_listener(state_root)?;
            builder = builder.with_console_socket(Some(console.path.clone()));
            Some(console)
        } else {
            builder = with_stdio(builder, fds)?;
            None
        };
        if let Some(executor) = executor {
            builder = builder.with_executor(executor);
        }
        let pid = builder
            .as_tenant()
            .with_process(Some(process_path))
            .with_detach(true)
            .build()
            .map_err(lc("exec into"))?
            .as_raw();
        let master = match console {
            Some(c) => match c.receive_master() {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(e);
                }
            },
            None => None,
        };
        Ok((pid, master))
    }

    fn signal(&mut self, exec_id: Option<&str>, sig: i32, all: bool) -> Result<Reply, HelperError> {
        if !(0..=libc::SIGRTMAX()).contains(&sig) {
            return Err(HelperError::InvalidSignal(sig));
        }
        let c = self.owned()?;
        let target = match exec_id {
            None => c.init,
            Some(e) => *self.execs.get(e).ok_or_else(|| HelperError::UnknownExec {
                id: c.id.clone(),
                exec_id: e.to_owned(),
            })?,
        };
        if all && exec_id.is_none() {
            self.kill_all(sig)?;
        }
        if target.status.is_some() {
            // Already exited and reaped: nothing left to signal.
            return Ok(Reply::Done);
        }
        let sig = if exec_id.is_none() && sig == libc::SIGTERM && init_drops(target.pid, sig) {
            // The stop signal would be dropped by the kernel (the container's init neither
            // handles nor ignores it yet, e.g. right after start, before `top` installed its
            // handler; or `sleep`): end the container now rather than after the grace
            // period, as Kata's agent does.
            tracing::debug!(
                pid = target.pid,
                "SIGTERM to an init without a handler: SIGKILL"
            );
            libc::SIGKILL
        } else {
            sig
        };
        kill(target.pid, sig)?;
        Ok(Reply::Done)
    }

    /// Signals every process in the container's cgroup (freezing it meanwhile, so that
    /// nothing forks past the signal).
    fn kill_all(&self, sig: i32) -> Result<(), HelperError> {
        let id = self.owned()?.id.clone();
        let cm = self.cgroup()?;
        let paused = self
            .load()
            .map(|c| c.status() == ContainerStatus::Paused)
            .unwrap_or(false);
        if !paused {
            let _ = cm.freeze(FreezerState::Frozen);
        }
        let pids = cm.get_all_pids().map_err(|source| HelperError::Cgroup {
            op: "list pids",
            id: id.clone(),
            source,
        });
        let mut result = Ok(());
        if let Ok(pids) = &pids {
            for pid in pids {
                if let Err(e) = kill(pid.as_raw(), sig) {
                    result = Err(e);
                }
            }
        }
        if !paused || sig == libc::SIGKILL {
            let _ = cm.freeze(FreezerState::Thawed);
        }
        pids?;
        result
    }

    fn pause_resume(&mut self, pause: bool) -> Result<Reply, HelperError> {
        let id = self.owned()?.id.clone();
        let mut c = self.load()?;
        let (op, r) = if pause {
            ("pause", c.pause())
        } else {
            ("resume", c.resume())
        };
        r.map_err(|source| HelperError::Libcontainer {
            op,
            id,
            source: Box::new(source),
        })?;
        Ok(Reply::Done)
    }

    fn stats(&self) -> Result<ContainerStats, HelperError> {
        let id = self.owned()?.id.clone();
        let stats = self
            .cgroup()?
            .stats()
            .map_err(|source| HelperError::Cgroup {
                op: "read stats",
                id,
                source,
            })?;
        Ok(convert_stats(stats, CpuUnits::detect()))
    }

    fn update(&self, resources: &LinuxResources) -> Result<Reply, HelperError> {
        let c = self.owned()?;
        let mut resources = resources.clone();
        if resources.devices().is_none() {
            resources.set_devices(c.devices.clone());
        }
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: resources
                .memory()
                .as_ref()
                .and_then(|m| m.disable_oom_killer())
                .unwrap_or(false),
            oom_score_adj: None,
            freezer_state: None,
        };
        self.cgroup()?
            .apply(&opt)
            .map_err(|source| HelperError::Cgroup {
                op: "update resources",
                id: c.id.clone(),
                source,
            })?;
        Ok(Reply::Done)
    }

    fn pids(&self) -> Result<Vec<i32>, HelperError> {
        let id = self.owned()?.id.clone();
        let pids = self
            .cgroup()?
            .get_all_pids()
            .map_err(|source| HelperError::Cgroup {
                op: "list pids",
                id,
                source,
            })?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// SIGKILLs everything, waits for the init to be reaped and deletes the container
    /// (cgroups and state dir).
    fn teardown(&mut self) -> Result<(), HelperError> {
        self.oom = None;
        let Some(c) = &self.container else {
            return Ok(());
        };
        let (id, root, init) = (c.id.clone(), c.root.clone(), c.init);
        let kill_result = self.kill_all(libc::SIGKILL);
        if init.status.is_none() {
            let _ = kill(init.pid, libc::SIGKILL);
        }
        for p in self.execs.values().filter(|p| p.status.is_none()) {
            let _ = kill(p.pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self
            .container
            .as_ref()
            .is_some_and(|c| c.init.status.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HelperError::StopTimeout {
                    id,
                    pid: init.pid,
                    secs: STOP_TIMEOUT.as_secs(),
                });
            }
            let ms = u16::try_from(left.as_millis().min(100)).unwrap_or(100);
            // Only SIGCHLD matters here; requests wait until teardown is done.
            let _ = self.sleep(PollTimeout::from(ms));
        }
        if root.exists() {
            let mut container =
                Container::load(root.clone()).map_err(|source| HelperError::Libcontainer {
                    op: "load",
                    id: id.clone(),
                    source: Box::new(source),
                })?;
            container
                .delete(true)
                .map_err(|source| HelperError::Libcontainer {
                    op: "delete",
                    id: id.clone(),
                    source: Box::new(source),
                })?;
        }
        if root.exists() {
            fs::remove_dir_all(&root).map_err(|source| HelperError::RemoveState {
                path: root.clone(),
                source,
            })?;
        }
        self.container = None;
        // A kill_all failure is only worth reporting if the container could not be
        // removed; it was, so the processes are gone.
        drop(kill_result);
        Ok(())
    }

    fn teardown_quietly(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(error = %e.to_failure().message, "teardown failed");
        }
        self.final_reap();
    }

    /// Kills and reaps whatever children are left (stray orphans we subreaped).
    fn final_reap(&mut self) {
        kill_children();
        self.reap();
    }
}

/// Sets the container-side stdio of a process without a terminal.
fn with_stdio(
    builder: ContainerBuilder,
    fds: Vec<OwnedFd>,
) -> Result<ContainerBuilder, HelperError> {
    let n = fds.len();
    let mut it = fds.into_iter();
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(i), Some(o), Some(e), None) => {
            Ok(builder.with_stdin(i).with_stdout(o).with_stderr(e))
        }
        _ => Err(HelperError::StdioFds(n)),
    }
}

/// Sends `sig` to `pid`; a process already gone is not an error.
/// Whether the kernel would drop `sig` sent to `pid`: it is the init (pid 1) of its pid
/// namespace, which receives no signal it has no handler for (SIGKILL and SIGSTOP from an
/// ancestor namespace aside), and it has no handler for `sig` and does not ignore it. A
/// process whose status cannot be read (gone) is not treated specially.
fn init_drops(pid: i32, sig: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| status_drops(&status, sig))
}

/// [`init_drops`] on the text of `/proc/<pid>/status`.
fn status_drops(status: &str, sig: i32) -> bool {
    let Some(bit) = u32::try_from(sig - 1)
        .ok()
        .and_then(|n| 1u64.checked_shl(n))
    else {
        return false;
    };
    let ns_init =
        status_field(status, "NSpid").and_then(|v| v.split_whitespace().last()) == Some("1");
    match (status_mask(status, "SigCgt"), status_mask(status, "SigIgn")) {
        (Some(caught), Some(ignored)) => ns_init && (caught | ignored) & bit == 0,
        _ => false,
    }
}

fn kill(pid: i32, sig: i32) -> Result<(), HelperError> {
    // Never 0 or negative: those would address process groups.
    if pid <= 0 {
        return Ok(());
    }
    // SAFETY: kill(2) takes plain integers; `pid` is a positive pid of a process we
    // track.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ESRCH => Ok(()),
        source => Err(HelperError::Kill {
            signal: sig,
            pid,
            source,
        }),
    }
}

/// SIGKILLs every direct child of this (single-threaded) process and waits for them.
fn kill_children() {
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children: Vec<i32> = fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if children.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in &children {
            let _ = kill(*pid, libc::SIGKILL);
        }
        for pid in &children {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(*pid), None);
        }
    }
}

/// Checks spec fields that need CAP_SYS_RESOURCE, which a sandboxed agent may lack, so the
/// caller gets a clear error instead of libcontainer's bare EPERM.
/// The capabilities an exec'd process without no_new_privs keeps until its filter is loaded.
const SETPCAP: Capability = Capability::Setpcap;
const SYS_ADMIN: Capability = Capability::SysAdmin;

/// The process libcontainer's tenant builder runs for an exec, and the executor that loads
/// the container's seccomp profile into it.
///
/// libcontainer 0.7's tenant builder rebuilds `linux` for the exec with only namespaces,
/// cgroups path, personality and time offsets, so without this an exec'd process runs
/// with no seccomp filter at all. The profile is always the container's (never one from
/// the exec request) and no_new_privs is the container's (or the request's, if it asks
/// for it). As for the container's init:
/// - with no_new_privs, the filter is loaded right before `execve`, after capabilities
///   were dropped (libcontainer set no_new_privs earlier);
/// - without it, loading a filter needs CAP_SYS_ADMIN: the process keeps CAP_SYS_ADMIN
///   and CAP_SETPCAP until the filter is loaded, then drops to its own capabilities.
///
/// If the filter cannot be loaded (or the capabilities cannot be dropped under it), the
/// exec fails: the process never runs unfiltered.
fn tenant_process(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    container_nnp: bool,
) -> (Process, Option<SeccompExecutor>) {
    let mut process = process.clone();
    let nnp = container_nnp || process.no_new_privileges() == Some(true);
    process.set_no_new_privileges(nnp.then_some(true));
    let Some(seccomp) = seccomp else {
        return (process, None);
    };
    let mut final_caps = None;
    if !nnp {
        if let Some(caps) = process.capabilities().clone() {
            let lacks = |set: &Option<Capabilities>| {
                !set.as_ref()
                    .is_some_and(|s| s.contains(&SYS_ADMIN) && s.contains(&SETPCAP))
            };
            if lacks(caps.effective()) || lacks(caps.permitted()) || lacks(caps.bounding()) {
                let raise = |set: &Option<Capabilities>| {
                    let mut set = set.clone().unwrap_or_default();
                    set.insert(SYS_ADMIN);
                    set.insert(SETPCAP);
                    Some(set)
                };
                let mut raised = caps.clone();
                raised
                    .set_effective(raise(caps.effective()))
                    .set_permitted(raise(caps.permitted()))
                    .set_bounding(raise(caps.bounding()));
                process.set_capabilities(Some(raised));
                final_caps = Some(caps);
            }
        }
    }
    let executor = SeccompExecutor {
        seccomp: seccomp.clone(),
        final_caps,
    };
    (process, Some(executor))
}

/// Runs in the exec'd process right before `execve`: loads the container's seccomp filter,
/// drops any capability kept only to load it, then executes the workload.
#[derive(Clone)]
struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    final_caps: Option<LinuxCapabilities>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        match libcontainer::seccomp::initialize_seccomp(&self.seccomp) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(ExecutorError::Other(
                    "the container's seccomp profile uses a notify listener, which exec'd \
                     processes do not support"
                        .into(),
                ))
            }
            Err(e) => {
                return Err(ExecutorError::Other(format!(
                    "failed to load the container's seccomp profile into the exec'd process: {e}"
                )))
            }
        }
        if let Some(caps) = &self.final_caps {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref()).map_err(|e| {
                ExecutorError::Other(format!(
                    "failed to drop the capabilities kept to load the container's seccomp \
                     profile: {e}"
                ))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

fn check_privileges(id: &str, process: &Process) -> Result<(), HelperError> {
    let has_cap = has_capability(CAP_SYS_RESOURCE);
    let not_permitted = |reason: String| HelperError::NotPermitted {
        id: id.to_owned(),
        reason,
    };
    if let Some(adj) = process.oom_score_adj() {
        let current: i32 = fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if adj < current && !has_cap {
            return Err(not_permitted(format!(
                "process.oomScoreAdj {adj} is below the current {current}; lowering it needs \
                 CAP_SYS_RESOURCE"
            )));
        }
    }
    for rl in process.rlimits().iter().flatten() {
        if rl.soft() > rl.hard() {
            return Err(HelperError::InvalidSpec {
                id: id.to_owned(),
                reason: format!(
                    "rlimit {:?}: soft limit {} exceeds hard limit {}",
                    rl.typ(),
                    rl.soft(),
                    rl.hard()
                ),
            });
        }
        let resource = rlimit_resource(rl.typ());
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct to the valid pointer we pass.
        if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
            continue;
        }
        if rl.hard() > cur.rlim_max && !has_cap {
            return Err(not_permitted(format!(
                "rlimit {:?} hard limit {} is above the current hard limit {}; raising it \
                 needs CAP_SYS_RESOURCE",
                rl.typ(),
                rl.hard(),
                cur.rlim_max
            )));
        }
    }
    Ok(())
}

fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match typ {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Whether this process has `cap` in its effective set.
fn has_capability(cap: u32) -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_mask(&s, "CapEff"))
        .is_some_and(|eff| eff & (1u64 << cap) != 0)
}

/// The value of the field `name` (`name:\tvalue`) in the text of a `/proc/<pid>/status`.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(':'))
            .map(str::trim)
    })
}

/// A hexadecimal mask field (`CapEff`, `SigCgt`, ...) of a `/proc/<pid>/status` text.
fn status_mask(status: &str, name: &str) -> Option<u64> {
    status_field(status, name).and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// The listening end of a console socket: libcontainer's init connects to it and sends
/// the pty master (runc's console-socket protocol).
struct ConsoleListener {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleListener {
    /// Takes the pty master libcontainer sent. By the time create/exec returned, the
    /// process already connected and sent it, so nothing here waits for long.
    fn receive_master(self) -> Result<OwnedFd, HelperError> {
        let err = |op: &'static str| move |source| HelperError::Console { op, source };
        self.listener
            .set_nonblocking(true)
            .map_err(err("set the listener non-blocking"))?;
        let (stream, _) = self
            .listener
            .accept()
            .map_err(err("accept the connection carrying the pty master"))?;
        stream
            .set_nonblocking(false)
            .map_err(err("set the stream blocking"))?;
        stream
            .set_read_timeout(Some(CONSOLE_TIMEOUT))
            .map_err(err("set a read timeout"))?;
        receive_fd(&stream).map_err(err("receive the pty master"))
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn receive_fd(stream: &UnixStream) -> Result<OwnedFd, std::io::Error> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut master = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed `fd` for this message; we are its only owner.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if master.is_none() {
                    master = Some(owned);
                }
            }
        }
    }
    master.ok_or_else(|| std::io::Error::other("no descriptor in the console message"))
}

#[cfg(test)]
mod tests {
    use super::status_drops;

    fn status(nspid: &str, cgt: &str, ign: &str) -> String {
        format!("Name:\ttop\nPid:\t812\nNSpid:\t{nspid}\nSigBlk:\t0000000000000000\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n")
    }

    #[test]
    fn sigterm_to_an_init_without_a_handler_is_dropped() {
        // SIGTERM is 15: bit 14 = 0x4000.
        assert!(status_drops(
            &status("812\t1", "0000000000000000", "0000000000000000"),
            15
        ));
        // A handler, or an explicit ignore: delivered (or ignored by choice).
        assert!(!status_drops(
            &status("812\t1", "0000000000004000", "0000000000000000"),
            15
        ));
        assert!(!status_drops(
            &status("812\t1", "0000000000000000", "0000000000004000"),
            15
        ));
        // A handler for another signal only (SIGINT, bit 1).
        assert!(status_drops(
            &status("812\t1", "0000000000000002", "0000000000000000"),
            15
        ));
        // Not the init of its namespace (a shared pid namespace, or no namespace).
        assert!(!status_drops(
            &status("812\t7", "0000000000000000", "0000000000000000"),
            15
        ));
        assert!(!status_drops(
            &status("812", "0000000000000000", "0000000000000000"),
            15
        ));
        // Unreadable fields and nonsense signals: no special treatment.
        assert!(!status_drops("Name:\tx\nNSpid:\t1\n", 15));
        assert!(!status_drops(
            &status("812\t1", "zz", "0000000000000000"),
            15
        ));
        assert!(!status_drops(
            &status("812\t1", "0000000000000000", "0000000000000000"),
            0
        ));
        assert!(!status_drops(
            &status("812\t1", "0000000000000000", "0000000000000000"),
            99
        ));
    }
}
