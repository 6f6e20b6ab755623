//! Child processes, start-up sequence and the watchdog.

use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::qmp::QmpClient;
use super::{QemuConfig, QemuError};
use crate::spec::{TapRef, VmSpec, Vsock, AGENT_VSOCK_PORT, HYBRID_GUEST_CID};
use crate::{AgentAddress, CrashKind, Error, Vm, VmExit, VmState};

/// Lines of stderr kept per child for error messages.
const TAIL_LINES: usize = 40;
/// Longest stderr line kept.
const TAIL_LINE_LEN: usize = 512;
/// How long `quit` may take before QEMU is killed.
const QUIT_WAIT: Duration = Duration::from_secs(3);
/// Timeout of one watchdog status query.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll step while waiting for sockets.
const SOCKET_POLL: Duration = Duration::from_millis(20);

/// The last lines a child wrote to stderr.
#[derive(Debug, Clone, Default)]
struct Tail(Arc<StdMutex<VecDeque<String>>>);

impl Tail {
    fn capture<R: AsyncRead + Unpin + Send + 'static>(&self, name: &'static str, stream: R) {
        let lines = self.0.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            loop {
                let mut buf = Vec::new();
                match (&mut reader)
                    .take(TAIL_LINE_LEN as u64)
                    .read_until(b'\n', &mut buf)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if line.is_empty() {
                    continue;
                }
                tracing::debug!(target: "hypervisor::child", program = name, "{line}");
                let mut q = lines
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if q.len() == TAIL_LINES {
                    q.pop_front();
                }
                q.push_back(line);
            }
        });
    }

    fn text(&self) -> String {
        let q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Everything a VM holds on the host. Dropping it kills the children and removes
/// the files even if [`Resources::teardown`] never ran.
#[derive(Debug)]
struct Resources {
    qemu: Option<Child>,
    vhost: Option<Child>,
    qemu_tail: Tail,
    vhost_tail: Tail,
    state_dir: PathBuf,
    /// Sockets outside the state dir (hybrid vsock dir elsewhere).
    extra_files: Vec<PathBuf>,
    /// Directory we created outside the state dir, removed if empty.
    extra_dir: Option<PathBuf>,
    done: bool,
}

impl Resources {
    fn new(spec: &VmSpec) -> Self {
        let (extra_files, extra_dir) = match &spec.vsock {
            Vsock::Hybrid { dir } if *dir != spec.state_dir => (
                vec![dir.join("vhost.sock"), dir.join("vm.vsock")],
                Some(dir.clone()),
            ),
            _ => (Vec::new(), None),
        };
        Self {
            qemu: None,
            vhost: None,
            qemu_tail: Tail::default(),
            vhost_tail: Tail::default(),
            state_dir: spec.state_dir.clone(),
            extra_files,
            extra_dir,
            done: false,
        }
    }

    /// Kills and reaps both children, then removes the files.
    async fn teardown(&mut self) {
        for child in [self.qemu.as_mut(), self.vhost.as_mut()]
            .into_iter()
            .flatten()
        {
            // kill() sends SIGKILL and waits; an already reaped child is fine.
            if let Err(e) = child.kill().await {
                tracing::debug!(error = %e, "kill");
            }
        }
        self.remove_files();
        self.done = true;
    }

    fn remove_files(&self) {
        for f in &self.extra_files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(d) = &self.extra_dir {
            // Only if empty: the directory may hold other things.
            let _ = std::fs::remove_dir(d);
        }
        match std::fs::remove_dir_all(&self.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.state_dir.display(), error = %e, "cannot remove state dir")
            }
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for child in [self.qemu.as_mut(), self.vhost.as_mut()]
            .into_iter()
            .flatten()
        {
            // SIGKILL; tokio reaps the orphan in the background.
            let _ = child.start_kill();
        }
        self.remove_files();
    }
}

fn status_text(s: &std::io::Result<ExitStatus>) -> String {
    match s {
        Ok(st) => st.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

fn make_dir(path: &Path) -> Result<(), QemuError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| QemuError::Prepare {
            path: path.to_owned(),
            source,
        })
}

fn remove_stale(path: &Path) -> Result<(), QemuError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(QemuError::Prepare {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Waits for a child to exit, or forever if there is none.
async fn wait_opt(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Polls until `path` exists, the child exits, or the deadline passes.
async fn wait_for_socket(
    path: &Path,
    child: &mut Child,
    program: &str,
    tail: &Tail,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), QemuError> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // Let the stderr reader catch up.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(QemuError::ExitedDuringStart {
                program: program.to_owned(),
                status: status.to_string(),
                stderr: tail.text(),
            });
        }
        if path.exists() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(QemuError::BootTimeout {
                what: format!("{} ({program})", path.display()),
                timeout,
            });
        }
        tokio::time::sleep(SOCKET_POLL).await;
    }
}

/// Starts the processes; on error everything is already cleaned up.
pub(super) async fn launch(
    config: &QemuConfig,
    spec: VmSpec,
    args: Vec<String>,
) -> Result<QemuVm, QemuError> {
    let mut res = Resources::new(&spec);
    match start(config, &spec, args, &mut res).await {
        Ok((qmp, agent)) => Ok(spawn_watchdog(config, spec, res, qmp, agent)),
        Err(e) => {
            res.teardown().await;
            Err(e)
        }
    }
}

async fn start(
    config: &QemuConfig,
    spec: &VmSpec,
    args: Vec<String>,
    res: &mut Resources,
) -> Result<(QmpClient, AgentAddress), QemuError> {
    let timeout = spec.boot_timeout;
    let deadline = Instant::now() + timeout;
    make_dir(&spec.state_dir)?;
    remove_stale(&spec.qmp_socket())?;
    remove_stale(&spec.pidfile())?;
    if let Some(log) = &spec.console_log {
        if let Some(parent) = log.parent() {
            make_dir(parent)?;
        }
    }

    let agent = match &spec.vsock {
        Vsock::Kernel { cid } => AgentAddress::Vsock {
            cid: *cid,
            port: AGENT_VSOCK_PORT,
        },
        Vsock::Hybrid { dir } => {
            make_dir(dir)?;
            let vhost_sock = dir.join("vhost.sock");
            let uds = dir.join("vm.vsock");
            remove_stale(&vhost_sock)?;
            remove_stale(&uds)?;
            let program = config.vhost_device_vsock.display().to_string();
            let mut child = Command::new(&config.vhost_device_vsock)
                .arg("--guest-cid")
                .arg(HYBRID_GUEST_CID.to_string())
                .arg("--socket")
                .arg(&vhost_sock)
                .arg("--uds-path")
                .arg(&uds)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| QemuError::Spawn {
                    program: program.clone(),
                    source,
                })?;
            if let Some(err) = child.stderr.take() {
                res.vhost_tail.capture("vhost-device-vsock", err);
            }
            let result = wait_for_socket(
                &vhost_sock,
                &mut child,
                &program,
                &res.vhost_tail,
                deadline,
                timeout,
            )
            .await;
            res.vhost = Some(child);
            result?;
            AgentAddress::Hybrid {
                path: uds,
                port: AGENT_VSOCK_PORT,
            }
        }
    };

    let program = config.qemu.display().to_string();
    let mut cmd = Command::new(&config.qemu);
    cmd.args(&args)
        .current_dir(&spec.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let tap_fds: Vec<i32> = spec
        .net
        .iter()
        .filter_map(|n| match n.tap {
            TapRef::Fd(fd) => Some(fd),
            TapRef::Name(_) | TapRef::User => None,
        })
        .collect();
    if !tap_fds.is_empty() {
        // SAFETY: the closure runs in the forked child before exec and only calls
        // fcntl(2), which is async-signal-safe; it touches no heap state besides the
        // Vec captured by value, which is only read.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &tap_fds {
                    // Clear FD_CLOEXEC so QEMU inherits the tap (fd=N on its argv).
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Some(err) = child.stderr.take() {
        res.qemu_tail.capture("qemu", err);
    }
    let qmp_path = spec.qmp_socket();
    let result = wait_for_socket(
        &qmp_path,
        &mut child,
        &program,
        &res.qemu_tail,
        deadline,
        timeout,
    )
    .await;
    res.qemu = Some(child);
    result?;

    let qmp = loop {
        match QmpClient::connect(&qmp_path).await {
            Ok(q) => break q,
            Err(e) => {
                // QEMU binds the socket before it checks the rest of its options; a
                // refused connection usually means it is exiting.
                if let Some(q) = res.qemu.as_mut() {
                    if let Ok(Some(status)) = q.try_wait() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Err(QemuError::ExitedDuringStart {
                            program,
                            status: status.to_string(),
                            stderr: res.qemu_tail.text(),
                        });
                    }
                }
                if Instant::now() >= deadline {
                    return Err(QemuError::Qmp(e));
                }
                tokio::time::sleep(SOCKET_POLL).await;
            }
        }
    };
    let status = match tokio::time::timeout_at(deadline, qmp.query_status()).await {
        Ok(s) => s.map_err(QemuError::Qmp)?,
        Err(_) => {
            return Err(QemuError::BootTimeout {
                what: "QMP query-status".into(),
                timeout,
            })
        }
    };
    if status.is_crash() {
        return Err(QemuError::CrashedDuringStart {
            status: status.to_string(),
            stderr: res.qemu_tail.text(),
        });
    }
    Ok((qmp, agent))
}

enum Cmd {
    Shutdown {
        grace: Duration,
        reply: oneshot::Sender<VmExit>,
    },
}

fn spawn_watchdog(
    config: &QemuConfig,
    spec: VmSpec,
    res: Resources,
    qmp: QmpClient,
    agent: AgentAddress,
) -> QemuVm {
    let qmp = Arc::new(qmp);
    let (state_tx, _) = watch::channel(VmState::Running);
    let state = Arc::new(state_tx);
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let pid = res.qemu.as_ref().and_then(Child::id);
    tokio::spawn(watchdog(
        res,
        qmp.clone(),
        state.clone(),
        cmd_rx,
        config.poll_interval,
    ));
    QemuVm {
        id: spec.id,
        agent,
        console_log: spec.console_log,
        pid,
        qmp,
        state,
        cmds: cmd_tx,
    }
}

enum Wake {
    QemuExit(std::io::Result<ExitStatus>),
    VhostExit(std::io::Result<ExitStatus>),
    Event(Result<super::qmp::QmpEvent, broadcast::error::RecvError>),
    Tick,
    Cmd(Option<Cmd>),
}

async fn watchdog(
    mut res: Resources,
    qmp: Arc<QmpClient>,
    state: Arc<watch::Sender<VmState>>,
    mut cmds: mpsc::Receiver<Cmd>,
    poll: Duration,
) {
    let mut events = qmp.subscribe();
    let mut events_open = true;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reply = None;
    let exit = loop {
        let wake = tokio::select! {
            s = wait_opt(&mut res.qemu) => Wake::QemuExit(s),
            s = wait_opt(&mut res.vhost) => Wake::VhostExit(s),
            e = events.recv(), if events_open => Wake::Event(e),
            _ = tick.tick() => Wake::Tick,
            c = cmds.recv() => Wake::Cmd(c),
        };
        match wake {
            Wake::QemuExit(s) => break qemu_exit(&res, &s),
            Wake::VhostExit(s) => {
                // QEMU going away may take the daemon with it; give QEMU's own exit a
                // moment to be seen so a guest poweroff is not reported as a crash.
                if let Some(q) = res.qemu.as_mut() {
                    if let Ok(qs) = tokio::time::timeout(Duration::from_millis(300), q.wait()).await
                    {
                        break qemu_exit(&res, &qs);
                    }
                }
                break VmExit::Crashed {
                    kind: CrashKind::VsockDaemonExited,
                    detail: format!(
                        "vhost-device-vsock exited ({}): {}",
                        status_text(&s),
                        res.vhost_tail.text()
                    ),
                };
            }
            Wake::Event(Ok(ev)) if ev.name == "GUEST_PANICKED" => {
                break VmExit::Crashed {
                    kind: CrashKind::GuestPanicked,
                    detail: format!("GUEST_PANICKED {}", ev.data),
                };
            }
            // A STOP may be an error stop: look now rather than at the next tick.
            Wake::Event(Ok(ev)) if ev.name == "STOP" => tick.reset_immediately(),
            Wake::Event(Ok(_)) | Wake::Event(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Wake::Event(Err(broadcast::error::RecvError::Closed)) => events_open = false,
            Wake::Tick => {
                if let Ok(Ok(status)) =
                    tokio::time::timeout(STATUS_TIMEOUT, qmp.query_status()).await
                {
                    if status.is_crash() {
                        break VmExit::Crashed {
                            kind: CrashKind::GuestState,
                            detail: format!(
                                "QEMU state {status}; stderr: {}",
                                res.qemu_tail.text()
                            ),
                        };
                    }
                }
            }
            Wake::Cmd(Some(Cmd::Shutdown { grace, reply: r })) => {
                reply = Some(r);
                break graceful_shutdown(&mut res, &qmp, grace).await;
            }
            // The Vm handle was dropped: stop everything.
            Wake::Cmd(None) => break VmExit::Shutdown { forced: true },
        }
    };
    res.teardown().await;
    tracing::info!(exit = %exit, "VM stopped");
    state.send_replace(VmState::Stopped(exit.clone()));
    if let Some(r) = reply {
        let _ = r.send(exit);
    }
    // Answer shutdowns that raced with the end.
    cmds.close();
    while let Some(Cmd::Shutdown { reply, .. }) = cmds.recv().await {
        let _ = reply.send(state.borrow().clone().into_exit());
    }
}

impl VmState {
    fn into_exit(self) -> VmExit {
        match self {
            VmState::Stopped(e) => e,
            _ => VmExit::Crashed {
                kind: CrashKind::Lost,
                detail: "no exit recorded".into(),
            },
        }
    }
}

fn qemu_exit(res: &Resources, s: &std::io::Result<ExitStatus>) -> VmExit {
    match s {
        Ok(st) if st.success() => VmExit::GuestPoweroff,
        _ => VmExit::Crashed {
            kind: CrashKind::QemuExited,
            detail: format!("QEMU exited ({}): {}", status_text(s), res.qemu_tail.text()),
        },
    }
}

async fn wait_qemu(res: &mut Resources, within: Duration) -> bool {
    match res.qemu.as_mut() {
        Some(q) => tokio::time::timeout(within, q.wait()).await.is_ok(),
        None => true,
    }
}

async fn graceful_shutdown(res: &mut Resources, qmp: &QmpClient, grace: Duration) -> VmExit {
    if !grace.is_zero() {
        // A guest without ACPI handling ignores the button; the grace period covers it.
        let _ = qmp.system_powerdown().await;
        if wait_qemu(res, grace).await {
            return VmExit::Shutdown { forced: false };
        }
    }
    let _ = tokio::time::timeout(QUIT_WAIT, qmp.quit()).await;
    if wait_qemu(res, QUIT_WAIT).await {
        return VmExit::Shutdown { forced: false };
    }
    VmExit::Shutdown { forced: true }
}

/// A VM run by QEMU. Dropping it stops the VM (through the watchdog, or the
/// resources' `Drop` if the runtime is gone).
#[derive(Debug)]
pub struct QemuVm {
    id: String,
    agent: AgentAddress,
    console_log: Option<PathBuf>,
    pid: Option<u32>,
    qmp: Arc<QmpClient>,
    state: Arc<watch::Sender<VmState>>,
    cmds: mpsc::Sender<Cmd>,
}

impl QemuVm {
    fn stopped(&self) -> Option<VmExit> {
        match &*self.state.borrow() {
            VmState::Stopped(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// The QMP session (for commands this API does not wrap).
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent_address(&self) -> &AgentAddress {
        &self.agent
    }

    fn console_log(&self) -> Option<&Path> {
        self.console_log.as_deref()
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn state(&self) -> VmState {
        self.state.borrow().clone()
    }

    async fn wait(&self) -> VmExit {
        let mut rx = self.state.subscribe();
        let result = rx.wait_for(|s| matches!(s, VmState::Stopped(_))).await;
        match result {
            Ok(s) => s.clone().into_exit(),
            // The sender lives in self: cannot be closed while we are here.
            Err(_) => VmExit::Crashed {
                kind: CrashKind::Lost,
                detail: "watchdog gone".into(),
            },
        }
    }

    async fn pause(&self) -> Result<(), Error> {
        if let Some(e) = self.stopped() {
            return Err(Error::NotRunning(e));
        }
        self.qmp.stop().await.map_err(Error::Qmp)?;
        self.state.send_if_modified(|s| {
            let change = *s == VmState::Running;
            if change {
                *s = VmState::Paused;
            }
            change
        });
        Ok(())
    }

    async fn resume(&self) -> Result<(), Error> {
        if let Some(e) = self.stopped() {
            return Err(Error::NotRunning(e));
        }
        self.qmp.cont().await.map_err(Error::Qmp)?;
        self.state.send_if_modified(|s| {
            let change = *s == VmState::Paused;
            if change {
                *s = VmState::Running;
            }
            change
        });
        Ok(())
    }

    async fn shutdown(&self, grace: Duration) -> Result<VmExit, Error> {
        if let Some(e) = self.stopped() {
            return Ok(e);
        }
        let (tx, rx) = oneshot::channel();
        if self
            .cmds
            .send(Cmd::Shutdown { grace, reply: tx })
            .await
            .is_err()
        {
            return Ok(self.wait().await);
        }
        match rx.await {
            Ok(exit) => Ok(exit),
            Err(_) => Ok(self.wait().await),
        }
    }
}
