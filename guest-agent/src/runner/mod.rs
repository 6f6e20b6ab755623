//! The container engine: one single-threaded helper process ("runner") per container.
//!
//! youki's `libcontainer` is not safe to call from a multi-threaded process (its
//! intermediate child can deadlock on locks held by other threads, and it `chdir`s
//! process-wide), it makes its caller non-dumpable, and it expects to `waitpid` its own
//! children. So the agent never calls it: for every container it re-executes its own
//! binary as `<exe> __runner` (see [`helper_main`]), and that helper owns the container's
//! libcontainer state dir, is the parent of all the container's processes, reaps them and
//! reports their exit statuses.
//!
//! Agent and helper talk over a `SOCK_SEQPACKET` socketpair with small JSON messages;
//! stdio descriptors travel as `SCM_RIGHTS`:
//! - stdio: the agent makes three pipes per process and sends the container-side ends; it
//!   keeps the other ends ([`ProcessIo`]). With `process.terminal`, the helper receives
//!   the pty master from libcontainer through a console socket and passes it back
//!   ([`ProcessIo::pty_master`]).
//! - exits: the helper pushes an event when it reaps a process; [`Runner::wait`] watches
//!   a `tokio::sync::watch` per process, so any number of callers may wait.
//! - OOM: the helper watches the memory cgroup (v1 eventfd on `memory.oom_control`, v2
//!   inotify on `memory.events`) and pushes an event per OOM kill; [`Runner::oom_event`]
//!   hands them out one by one.
//! - lifetime: when the agent side of the socket closes (the [`Runner`] is dropped or the
//!   agent dies), the helper kills the container, deletes it and exits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), guest_agent::runner::RunnerError> {
//! use guest_agent::runner::{Runner, RunnerConfig};
//! let cfg = RunnerConfig {
//!     helper_exe: "/proc/self/exe".into(),
//!     state_root: "/run/kata-cc/containers".into(),
//! };
//! let (runner, io, _pid) = Runner::create(&cfg, "c1", "/run/bundles/c1".as_ref()).await?;
//! runner.start().await?;
//! let status = runner.wait(None).await?;
//! runner.destroy().await?;
//! # drop((io, status)); Ok(()) }
//! ```

mod helper;
mod oom;
mod proto;
mod stats;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};

pub use helper::{helper_main, HELPER_ARG, HELPER_LOG_ENV};
pub use proto::{
    BlkioEntry, BlkioStats, ContainerStats, CpuStats, FailureKind, HelperFailure, MemoryEntry,
    MemoryStats, PidsStats,
};
use proto::{FrameError, HelperMsg, Reply, Request, RequestMsg};

/// How long the agent waits for a helper to exit after destroy or a failed create.
const HELPER_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the helpers come from and where they keep state.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The agent binary to re-execute as `<helper_exe> __runner` (the agent passes
    /// `/proc/self/exe`).
    pub helper_exe: PathBuf,
    /// libcontainer's root directory; each container gets `<state_root>/<id>`.
    pub state_root: PathBuf,
}

/// The agent-side ends of one container process's stdio.
///
/// Without a terminal: `stdin` (write end), `stdout` and `stderr` (read ends) are set and
/// `pty_master` is `None`. With a terminal: only `pty_master` is set. Drop `stdin` to give
/// the process EOF.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// Write end of the process's stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// Read end of the process's stdout pipe.
    pub stdout: Option<OwnedFd>,
    /// Read end of the process's stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// Master side of the process's pseudo-terminal.
    pub pty_master: Option<OwnedFd>,
}

/// Failures of the container engine.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The bundle's config.json could not be read.
    #[error("failed to read the spec of container {container_id} at {path}")]
    ReadSpec {
        /// Container id.
        container_id: String,
        /// Path of config.json.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle's config.json is not a valid OCI runtime spec.
    #[error("failed to parse the spec of container {container_id} at {path}")]
    ParseSpec {
        /// Container id.
        container_id: String,
        /// Path of config.json.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Setting up the helper (socket, pipes, process) failed.
    #[error("failed to {what} for container {container_id}")]
    Setup {
        /// Container id.
        container_id: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The command socket failed.
    #[error("failed to talk to the helper of container {container_id}")]
    Channel {
        /// Container id.
        container_id: String,
        /// The cause.
        #[source]
        source: ChannelError,
    },
    /// The helper exited or closed its socket.
    #[error("the helper of container {container_id} is gone")]
    HelperGone {
        /// Container id.
        container_id: String,
    },
    /// The container was destroyed through this handle.
    #[error("container {container_id} has been destroyed")]
    Destroyed {
        /// Container id.
        container_id: String,
    },
    /// The helper answered with a reply that does not fit the request.
    #[error("the helper of container {container_id} answered {op} with an unexpected reply")]
    Protocol {
        /// Container id.
        container_id: String,
        /// The request.
        op: &'static str,
    },
    /// A container-level operation failed inside the helper.
    #[error("failed to {op} container {container_id}")]
    Container {
        /// Container id.
        container_id: String,
        /// The operation.
        op: &'static str,
        /// What the helper reported (libcontainer's error chain).
        #[source]
        source: HelperFailure,
    },
    /// A process-level operation failed inside the helper.
    #[error("failed to {op} process {exec_id} of container {container_id}")]
    Process {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
        /// The operation.
        op: &'static str,
        /// What the helper reported (libcontainer's error chain).
        #[source]
        source: HelperFailure,
    },
    /// No process with this exec id was executed in the container.
    #[error("no process {exec_id} in container {container_id}")]
    UnknownExec {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
    },
    /// A process with this exec id is still running.
    #[error("process {exec_id} already exists in container {container_id}")]
    ExecExists {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
    },
    /// The helper did not exit in time after destroy and was killed.
    #[error("the helper of container {container_id} did not exit; killed it")]
    HelperStuck {
        /// Container id.
        container_id: String,
    },
}

impl RunnerError {
    /// The helper's classification of the failure, or the equivalent for local errors.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Container { source, .. } | Self::Process { source, .. } => source.kind,
            Self::UnknownExec { .. } => FailureKind::NotFound,
            Self::ExecExists { .. } => FailureKind::AlreadyExists,
            Self::ParseSpec { .. } => FailureKind::InvalidArgument,
            Self::ReadSpec { source, .. } if source.kind() == ErrorKind::NotFound => {
                FailureKind::NotFound
            }
            Self::Destroyed { .. } | Self::HelperGone { .. } => FailureKind::InvalidState,
            _ => FailureKind::Internal,
        }
    }
}

/// A failure of the command socket.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ChannelError(#[from] FrameError);

/// State of one process as the agent knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcState {
    Running,
    Exited(i32),
    /// The helper went away before reporting an exit.
    Lost,
}

type ReplySender = oneshot::Sender<(Result<Reply, HelperFailure>, Vec<OwnedFd>)>;

/// State shared between the handle and the reader task.
struct Shared {
    /// Requests awaiting a reply; `None` once the helper is gone.
    pending: Mutex<Option<HashMap<u64, ReplySender>>>,
    /// Exit state per process (`None`: the init process).
    procs: Mutex<HashMap<Option<String>, watch::Sender<ProcState>>>,
    oom_tx: Mutex<Option<mpsc::UnboundedSender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    id: String,
    sock: Arc<AsyncFd<OwnedFd>>,
    shared: Arc<Shared>,
    next_seq: AtomicU64,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
    helper_pid: Option<u32>,
    destroyed: AtomicBool,
    destroy_lock: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader task keeps its own reference to the socket; shutting it down makes
        // both the helper (which then cleans up) and the reader see EOF.
        let _ = nix::sys::socket::shutdown(
            self.sock.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }
}

/// Handle to one container's helper. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("id", &self.inner.id)
            .field("helper_pid", &self.inner.helper_pid)
            .finish()
    }
}

/// Container-side and agent-side ends of a process's stdio pipes.
struct Pipes {
    container: [OwnedFd; 3],
    agent: ProcessIo,
}

fn make_pipes(id: &str) -> Result<Pipes, RunnerError> {
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| RunnerError::Setup {
            container_id: id.to_owned(),
            what: "create stdio pipes",
            source: e.into(),
        })
    };
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(Pipes {
        container: [in_r, out_w, err_w],
        agent: ProcessIo {
            stdin: Some(in_w),
            stdout: Some(out_r),
            stderr: Some(err_r),
            pty_master: None,
        },
    })
}

impl Runner {
    /// Spawns the helper and creates the container from `bundle` (a directory holding
    /// `config.json` whose `root.path` is absolute): namespaces, mounts, pivot_root,
    /// cgroups, seccomp. The init process exists but waits for [`Runner::start`].
    ///
    /// Returns the handle, the init process's agent-side stdio and its (agent-visible)
    /// pid. On failure nothing is left behind: no helper, no cgroup, no state dir.
    pub async fn create(
        cfg: &RunnerConfig,
        id: &str,
        bundle: &Path,
    ) -> Result<(Runner, ProcessIo, i32), RunnerError> {
        let spec_path = bundle.join("config.json");
        let bytes = tokio::fs::read(&spec_path)
            .await
            .map_err(|source| RunnerError::ReadSpec {
                container_id: id.to_owned(),
                path: spec_path.clone(),
                source,
            })?;
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&bytes).map_err(|source| RunnerError::ParseSpec {
                container_id: id.to_owned(),
                path: spec_path.clone(),
                source,
            })?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);

        let runner = Self::spawn(cfg, id)?;
        let pipes = if terminal {
            None
        } else {
            Some(make_pipes(id)?)
        };
        let fds: Vec<BorrowedFd<'_>> = pipes
            .as_ref()
            .map(|p| p.container.iter().map(|f| f.as_fd()).collect())
            .unwrap_or_default();
        let req = Request::Create {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            state_root: cfg.state_root.clone(),
        };
        let result = runner.request(req, &fds).await;
        drop(fds);
        let (container_side, mut agent_io) = match pipes {
            Some(p) => (Some(p.container), p.agent),
            None => (None, ProcessIo::default()),
        };
        drop(container_side);
        let err = match result {
            Ok(Ok((Reply::Created { pid }, mut fds))) => {
                agent_io.pty_master = fds.pop();
                if terminal == agent_io.pty_master.is_some() {
                    return Ok((runner, agent_io, pid));
                }
                RunnerError::Protocol {
                    container_id: id.to_owned(),
                    op: "create (pty master)",
                }
            }
            Ok(Ok(_)) => RunnerError::Protocol {
                container_id: id.to_owned(),
                op: "create",
            },
            Ok(Err(source)) => {
                // The helper exits by itself after a failed create; make sure it did.
                runner.inner.destroyed.store(true, Ordering::SeqCst);
                runner.reap_helper().await?;
                return Err(RunnerError::Container {
                    container_id: id.to_owned(),
                    op: "create",
                    source,
                });
            }
            Err(e) => e,
        };
        if let Err(e) = runner.destroy().await {
            tracing::warn!(error = %e, "cleanup after a failed create of {id} failed");
        }
        Err(err)
    }

    fn spawn(cfg: &RunnerConfig, id: &str) -> Result<Runner, RunnerError> {
        let setup = |what: &'static str| {
            let container_id = id.to_owned();
            move |source: std::io::Error| RunnerError::Setup {
                container_id,
                what,
                source,
            }
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| setup("create the command socket")(e.into()))?;
        fcntl(ours.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| setup("make the command socket non-blocking")(e.into()))?;
        let theirs_raw = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&cfg.helper_exe);
        cmd.arg(HELPER_ARG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (dup2, fcntl, setsid) on plain integers.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_raw == helper::HELPER_SOCKET_FD {
                    // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                    if libc::fcntl(theirs_raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, helper::HELPER_SOCKET_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Own session: terminal signals aimed at the agent's group do not hit
                // the helper, which must outlive nothing but its socket.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(setup("spawn the runner helper"))?;
        drop(theirs);
        let helper_pid = child.id();
        // SAFETY: an `OwnedFd` keeps its descriptor open and always returns the same
        // number until the `AsyncFd` (its owner) is dropped.
        let registered = unsafe { AsyncFd::register(ours) };
        let sock = Arc::new(registered.map_err(|e| {
            setup("register the command socket with tokio")(std::io::Error::from(e))
        })?);
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            procs: Mutex::new(HashMap::from([(
                None,
                watch::Sender::new(ProcState::Running),
            )])),
            oom_tx: Mutex::new(Some(oom_tx)),
        });
        tokio::spawn(read_loop(sock.clone(), shared.clone()));
        Ok(Runner {
            inner: Arc::new(Inner {
                id: id.to_owned(),
                sock,
                shared,
                next_seq: AtomicU64::new(1),
                oom_rx: tokio::sync::Mutex::new(oom_rx),
                child: tokio::sync::Mutex::new(Some(child)),
                helper_pid,
                destroyed: AtomicBool::new(false),
                destroy_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Pid of the helper process (for diagnostics), if it was known at spawn.
    pub fn helper_pid(&self) -> Option<u32> {
        self.inner.helper_pid
    }

    /// Starts the created container's init process.
    pub async fn start(&self) -> Result<(), RunnerError> {
        self.simple(Request::Start, "start").await
    }

    /// Executes a new process (`args`, `env`, `cwd`, `user`, `terminal`, capabilities...)
    /// in the running container. Returns its agent-side stdio and its pid.
    pub async fn exec(
        &self,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<(ProcessIo, i32), RunnerError> {
        let key = Some(exec_id.to_owned());
        {
            let mut procs = lock(&self.inner.shared.procs);
            if procs
                .get(&key)
                .is_some_and(|tx| *tx.borrow() == ProcState::Running)
            {
                return Err(RunnerError::ExecExists {
                    container_id: self.inner.id.clone(),
                    exec_id: exec_id.to_owned(),
                });
            }
            // Registered before the request: the exit event may follow the reply at once.
            procs.insert(key.clone(), watch::Sender::new(ProcState::Running));
        }
        let terminal = process.terminal().unwrap_or(false);
        let pipes = if terminal {
            None
        } else {
            Some(make_pipes(&self.inner.id)?)
        };
        let fds: Vec<BorrowedFd<'_>> = pipes
            .as_ref()
            .map(|p| p.container.iter().map(|f| f.as_fd()).collect())
            .unwrap_or_default();
        let req = Request::Exec {
            exec_id: exec_id.to_owned(),
            process: Box::new(process.clone()),
        };
        let result = self.request(req, &fds).await;
        drop(fds);
        let mut agent_io = pipes.map(|p| p.agent).unwrap_or_default();
        let err = match result {
            Ok(Ok((Reply::Execed { pid }, mut fds))) => {
                if terminal {
                    agent_io.pty_master = fds.pop();
                }
                return Ok((agent_io, pid));
            }
            Ok(Ok(_)) => RunnerError::Protocol {
                container_id: self.inner.id.clone(),
                op: "exec",
            },
            Ok(Err(source)) => RunnerError::Process {
                container_id: self.inner.id.clone(),
                exec_id: exec_id.to_owned(),
                op: "exec",
                source,
            },
            Err(e) => e,
        };
        lock(&self.inner.shared.procs).remove(&key);
        Err(err)
    }

    /// Sends `signal` to the init process (`exec_id` None) or to an exec'd process. With
    /// `all` (init only), every process in the container's cgroup gets it. Signalling a
    /// process that already exited is not an error.
    pub async fn signal(
        &self,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), RunnerError> {
        self.check_exec_known(exec_id)?;
        let req = Request::Signal {
            exec_id: exec_id.map(str::to_owned),
            signal,
            all,
        };
        match self.request(req, &[]).await? {
            Ok((Reply::Done, _)) => Ok(()),
            Ok(_) => Err(self.protocol("signal")),
            Err(source) => Err(self.op_error(exec_id, "signal", source)),
        }
    }

    /// Waits for the process to exit and returns its status as Kata reports it: the exit
    /// code, or 128 + the signal number. Any number of callers may wait on one process;
    /// cancel-safe.
    pub async fn wait(&self, exec_id: Option<&str>) -> Result<i32, RunnerError> {
        let key = exec_id.map(str::to_owned);
        let mut rx = lock(&self.inner.shared.procs)
            .get(&key)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| self.unknown_exec(exec_id))?;
        let state = *rx
            .wait_for(|s| *s != ProcState::Running)
            .await
            .map_err(|_| self.gone())?;
        match state {
            ProcState::Exited(status) => Ok(status),
            _ => Err(self.gone()),
        }
    }

    /// Freezes the container.
    pub async fn pause(&self) -> Result<(), RunnerError> {
        self.simple(Request::Pause, "pause").await
    }

    /// Thaws the container.
    pub async fn resume(&self) -> Result<(), RunnerError> {
        self.simple(Request::Resume, "resume").await
    }

    /// Reads the container's cgroup statistics (v1 or v2).
    pub async fn stats(&self) -> Result<ContainerStats, RunnerError> {
        match self.request(Request::Stats, &[]).await? {
            Ok((Reply::Stats(s), _)) => Ok(*s),
            Ok(_) => Err(self.protocol("stats")),
            Err(source) => Err(self.op_error(None, "read stats of", source)),
        }
    }

    /// Applies new resource limits to the container's cgroup. The spec's device rules are
    /// kept unless `resources` carries its own.
    pub async fn update(
        &self,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), RunnerError> {
        let req = Request::Update {
            resources: Box::new(resources.clone()),
        };
        self.simple(req, "update").await
    }

    /// Pids (agent-visible) of every process in the container's cgroup.
    pub async fn pids(&self) -> Result<Vec<i32>, RunnerError> {
        match self.request(Request::Pids, &[]).await? {
            Ok((Reply::Pids(p), _)) => Ok(p),
            Ok(_) => Err(self.protocol("pids")),
            Err(source) => Err(self.op_error(None, "list pids of", source)),
        }
    }

    /// Waits for the next OOM kill in the container that no earlier call returned. OOM
    /// kills are queued from create on, so none is missed between calls. Cancel-safe.
    pub async fn oom_event(&self) -> Result<(), RunnerError> {
        let mut rx = self.inner.oom_rx.lock().await;
        rx.recv().await.ok_or_else(|| self.gone())
    }

    /// Kills every process of the container (SIGKILL), deletes it (cgroups, state dir) and
    /// stops the helper. Idempotent.
    pub async fn destroy(&self) -> Result<(), RunnerError> {
        let _guard = self.inner.destroy_lock.lock().await;
        if self.inner.destroyed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let result = match self.request(Request::Destroy, &[]).await {
            Ok(Ok(_)) | Err(RunnerError::HelperGone { .. }) => Ok(()),
            Ok(Err(source)) => Err(self.op_error(None, "destroy", source)),
            Err(e) => Err(e),
        };
        self.inner.destroyed.store(true, Ordering::SeqCst);
        self.reap_helper().await?;
        result
    }

    /// Waits for the helper process to exit (it does after destroy or a failed create);
    /// kills it if it does not.
    async fn reap_helper(&self) -> Result<(), RunnerError> {
        let mut child = self.inner.child.lock().await;
        let Some(c) = child.as_mut() else {
            return Ok(());
        };
        let r = match tokio::time::timeout(HELPER_EXIT_TIMEOUT, c.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = c.kill().await;
                Err(RunnerError::HelperStuck {
                    container_id: self.inner.id.clone(),
                })
            }
        };
        *child = None;
        r
    }

    async fn simple(&self, req: Request, op: &'static str) -> Result<(), RunnerError> {
        match self.request(req, &[]).await? {
            Ok((Reply::Done, _)) => Ok(()),
            Ok(_) => Err(self.protocol(op)),
            Err(source) => Err(self.op_error(None, op, source)),
        }
    }

    /// Sends a request and waits for its reply. The outer error is the transport; the
    /// inner one is the helper's answer.
    async fn request(
        &self,
        req: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Result<(Reply, Vec<OwnedFd>), HelperFailure>, RunnerError> {
        if self.inner.destroyed.load(Ordering::SeqCst) {
            return Err(RunnerError::Destroyed {
                container_id: self.inner.id.clone(),
            });
        }
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.inner.shared.pending).as_mut() {
            Some(p) => p.insert(seq, tx),
            None => return Err(self.gone()),
        };
        let bytes = serde_json::to_vec(&RequestMsg { seq, req })
            .map_err(|e| self.channel(FrameError::Encode(e)))?;
        if let Err(e) = send_async(&self.inner.sock, &bytes, fds).await {
            if let Some(p) = lock(&self.inner.shared.pending).as_mut() {
                p.remove(&seq);
            }
            return Err(match e {
                FrameError::Io(ref io)
                    if matches!(
                        io.kind(),
                        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                    ) =>
                {
                    self.gone()
                }
                e => self.channel(e),
            });
        }
        let (result, fds) = rx.await.map_err(|_| self.gone())?;
        Ok(result.map(|r| (r, fds)))
    }

    fn check_exec_known(&self, exec_id: Option<&str>) -> Result<(), RunnerError> {
        if lock(&self.inner.shared.procs).contains_key(&exec_id.map(str::to_owned)) {
            Ok(())
        } else {
            Err(self.unknown_exec(exec_id))
        }
    }

    fn unknown_exec(&self, exec_id: Option<&str>) -> RunnerError {
        RunnerError::UnknownExec {
            container_id: self.inner.id.clone(),
            exec_id: exec_id.unwrap_or("<init>").to_owned(),
        }
    }

    fn gone(&self) -> RunnerError {
        if self.inner.destroyed.load(Ordering::SeqCst) {
            RunnerError::Destroyed {
                container_id: self.inner.id.clone(),
            }
        } else {
            RunnerError::HelperGone {
                container_id: self.inner.id.clone(),
            }
        }
    }

    fn channel(&self, e: FrameError) -> RunnerError {
        RunnerError::Channel {
            container_id: self.inner.id.clone(),
            source: ChannelError(e),
        }
    }

    fn protocol(&self, op: &'static str) -> RunnerError {
        RunnerError::Protocol {
            container_id: self.inner.id.clone(),
            op,
        }
    }

    fn op_error(
        &self,
        exec_id: Option<&str>,
        op: &'static str,
        source: HelperFailure,
    ) -> RunnerError {
        match exec_id {
            Some(e) => RunnerError::Process {
                container_id: self.inner.id.clone(),
                exec_id: e.to_owned(),
                op,
                source,
            },
            None => RunnerError::Container {
                container_id: self.inner.id.clone(),
                op,
                source,
            },
        }
    }
}

async fn send_async(
    sock: &AsyncFd<OwnedFd>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    loop {
        let mut guard = sock.writable().await.map_err(FrameError::Io)?;
        let r = guard.try_io(
            |s| match proto::send_bytes(s.get_ref().as_fd(), bytes, fds) {
                Err(FrameError::Io(e)) if e.kind() == ErrorKind::WouldBlock => Err(e),
                other => Ok(other),
            },
        );
        if let Ok(result) = r {
            return result.map_err(FrameError::Io)?;
        }
    }
}

async fn recv_async(
    sock: &AsyncFd<OwnedFd>,
) -> Result<Option<(HelperMsg, Vec<OwnedFd>)>, FrameError> {
    loop {
        let mut guard = sock.readable().await.map_err(FrameError::Io)?;
        let r = guard.try_io(
            |s| match proto::recv_msg::<HelperMsg>(s.get_ref().as_fd()) {
                Err(FrameError::Io(e)) if e.kind() == ErrorKind::WouldBlock => Err(e),
                other => Ok(other),
            },
        );
        if let Ok(result) = r {
            return result.map_err(FrameError::Io)?;
        }
    }
}

/// Dispatches the helper's messages until it goes away.
async fn read_loop(sock: Arc<AsyncFd<OwnedFd>>, shared: Arc<Shared>) {
    loop {
        match recv_async(&sock).await {
            Ok(Some((HelperMsg::Reply { seq, result }, fds))) => {
                let tx = lock(&shared.pending).as_mut().and_then(|p| p.remove(&seq));
                if let Some(tx) = tx {
                    let _ = tx.send((result, fds));
                }
            }
            Ok(Some((HelperMsg::Exited { exec_id, status }, _))) => {
                if let Some(tx) = lock(&shared.procs).get(&exec_id) {
                    tx.send_replace(ProcState::Exited(status));
                }
            }
            Ok(Some((HelperMsg::Oom, _))) => {
                if let Some(tx) = lock(&shared.oom_tx).as_ref() {
                    let _ = tx.send(());
                }
            }
            Ok(None) => break,
            Err(FrameError::Decode(e)) => {
                tracing::error!(error = %e, "undecodable message from a runner helper");
            }
            Err(e) => {
                tracing::error!(error = %e, "runner helper socket failed");
                break;
            }
        }
    }
    // Gone: fail pending requests, mark running processes lost, end OOM streams.
    lock(&shared.pending).take();
    for tx in lock(&shared.procs).values() {
        tx.send_if_modified(|s| {
            if *s == ProcState::Running {
                *s = ProcState::Lost;
                true
            } else {
                false
            }
        });
    }
    lock(&shared.oom_tx).take();
}
