//! The agent's state (sandbox, containers, processes and their streams) and the
//! handlers of the RPCs it implements. Handlers return [`AgentError`]; the ttrpc
//! service in [`crate::service`] converts at one boundary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use protocols::agent as pb;
use protocols::empty::Empty;
use tokio::sync::{mpsc, Mutex};

use crate::copy_file::{copy_file, CopyFileArgs};
use crate::error::AgentError;
use crate::runner::{ProcessIo, Runner, RunnerConfig};
use crate::stream::FdStream;

/// Where the agent keeps things and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Root below which container rootfs and CopyFile destinations must lie
    /// (Kata: `/run/kata-containers/shared/containers`).
    pub shared_dir: PathBuf,
    /// The agent's own state: bundles and the runners' libcontainer state.
    pub state_dir: PathBuf,
    /// cgroup path under which each container gets `<parent>/<container id>`.
    pub cgroup_parent: String,
    /// The executable re-run as a container runner (`/proc/self/exe`).
    pub helper_exe: PathBuf,
    /// True when the agent is PID 1 of the VM (may set hostname, clock, DNS).
    pub init_mode: bool,
    /// Where the guest's `/run/kata-containers/sandbox` (sandbox storages such as the
    /// pod's shm) really is: that path in the VM, another directory for a plain-process
    /// agent (container bind mounts from below it are redirected there).
    pub sandbox_dir: PathBuf,
}

/// Largest chunk returned by one ReadStdout/ReadStderr.
const MAX_READ: usize = 1 << 20;
/// Largest id accepted for containers and processes.
const MAX_ID_LEN: usize = 128;

/// One process of a container (its init or an exec) and the agent's ends of its stdio.
#[derive(Debug)]
struct Process {
    pid: i32,
    stdin: Mutex<Option<Arc<FdStream>>>,
    stdout: Option<Arc<FdStream>>,
    stderr: Option<Arc<FdStream>>,
    /// Set for `terminal: true`: the pty master carries stdin and stdout.
    tty: Option<Arc<FdStream>>,
    /// Serialises reads per stream so chunks come back in order.
    read_out: Mutex<()>,
    read_err: Mutex<()>,
    /// Set once a read returned end of stream / WaitProcess returned: an exec whose
    /// outputs are drained and whose status was collected is forgotten.
    out_eof: AtomicBool,
    err_eof: AtomicBool,
    waited: AtomicBool,
}

impl Process {
    fn new(pid: i32, io: ProcessIo) -> Result<Self, AgentError> {
        let wrap = |fd: Option<std::os::fd::OwnedFd>| -> Result<Option<Arc<FdStream>>, AgentError> {
            fd.map(|f| FdStream::new(f).map(Arc::new)).transpose().map_err(AgentError::io("set up process stdio"))
        };
        Ok(Self {
            pid,
            stdin: Mutex::new(wrap(io.stdin)?),
            stdout: wrap(io.stdout)?,
            stderr: wrap(io.stderr)?,
            tty: wrap(io.pty_master)?,
            read_out: Mutex::new(()),
            read_err: Mutex::new(()),
            out_eof: AtomicBool::new(false),
            err_eof: AtomicBool::new(false),
            waited: AtomicBool::new(false),
        })
    }

    /// Waited for, and every output stream read to its end.
    fn finished(&self) -> bool {
        let out_done = (self.stdout.is_none() && self.tty.is_none()) || self.out_eof.load(Ordering::Acquire);
        let err_done = self.stderr.is_none() || self.err_eof.load(Ordering::Acquire);
        self.waited.load(Ordering::Acquire) && out_done && err_done
    }
}

#[derive(Debug)]
struct Container {
    id: String,
    runner: Runner,
    bundle: PathBuf,
    init_exec_id: String,
    processes: std::sync::Mutex<HashMap<String, Arc<Process>>>,
    /// The rootfs the agent made from a guest-pulled image, released at removal.
    guest_rootfs: std::sync::Mutex<Option<crate::image_pull::GuestRootfs>>,
    /// Its directory below the shared directory (real path, id joined lexically): no
    /// mount below it survives the teardown.
    dir: PathBuf,
}

impl Container {
    /// Drops an exec process the host is done with (the init stays until removal), so
    /// repeated execs (e.g. probes) do not accumulate.
    fn forget_if_finished(&self, exec_id: &str, p: &Process) {
        if exec_id.is_empty() || exec_id == self.init_exec_id || !p.finished() {
            return;
        }
        if let Ok(mut procs) = self.processes.lock() {
            procs.remove(exec_id);
        }
    }

    /// Finds a process: an empty exec id, or the init's exec id, means the init.
    fn process(&self, exec_id: &str) -> Result<(Option<String>, Arc<Process>), AgentError> {
        let key = if exec_id.is_empty() { self.init_exec_id.as_str() } else { exec_id };
        let procs = self.processes.lock().map_err(|_| AgentError::FailedPrecondition("process table poisoned".into()))?;
        let p = procs.get(key).cloned().ok_or_else(|| AgentError::NotFound {
            what: "process",
            id: format!("{}/{}", self.id, exec_id),
        })?;
        let runner_id = (key != self.init_exec_id).then(|| key.to_string());
        Ok((runner_id, p))
    }
}

#[derive(Debug, Default)]
struct Sandbox {
    id: Option<String>,
    hostname: Option<String>,
    /// Sandbox storages mounted by CreateSandbox (unmounted by DestroySandbox).
    storages: Vec<PathBuf>,
    containers: HashMap<String, Arc<Container>>,
    /// Ids reserved by a CreateContainer in progress.
    creating: std::collections::HashSet<String>,
}

/// The guest agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    runner_cfg: RunnerConfig,
    sandbox: Mutex<Sandbox>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: Mutex<mpsc::UnboundedReceiver<String>>,
    /// The policy behind the gate, for SetPolicy.
    policy: Option<Arc<crate::policy_gate::PolicyCheck>>,
    /// The `image_guest_pull` storage driver (pulls into `<state_dir>/images`).
    images: Arc<crate::image_pull::ImagePuller>,
    /// CopyFile writes the shared directory under the write lock; CreateContainer holds
    /// the read lock from checking its mount sources until its mounts are made, so no
    /// CopyFile can swap a checked source for a symlink in between.
    tree: tokio::sync::RwLock<()>,
}

/// Passfd I/O (host vsock ports for stdio) is not supported; names the port that was set.
fn check_no_passfd(stdin: u32, stdout: u32, stderr: u32) -> Result<(), AgentError> {
    for (field, port) in [("stdin_port", stdin), ("stdout_port", stdout), ("stderr_port", stderr)] {
        if port != 0 {
            return Err(AgentError::invalid(field, format!("{port}: passfd I/O is not supported; use ReadStdout/WriteStdin")));
        }
    }
    Ok(())
}

/// Removes `dir` and the directories below it that are empty (bottom-up, at most `depth`
/// levels). Never removes a file, and `rmdir` refuses a mount point (EBUSY), so nothing
/// that is still mounted is touched.
fn remove_empty_dirs(dir: &Path, depth: u32) {
    if depth > 0 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_empty_dirs(&e.path(), depth - 1);
                }
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Checks a container or exec id: 1..=128 characters of `[A-Za-z0-9_.-]`, not starting
/// with `.` or `-` (ids become path components and cgroup names).
pub fn validate_id(field: &'static str, id: &str) -> Result<(), AgentError> {
    if id.is_empty() {
        return Err(AgentError::invalid(field, "empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(AgentError::invalid(field, format!("longer than {MAX_ID_LEN} characters")));
    }
    if id.starts_with(['.', '-']) || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(AgentError::invalid(field, format!("{id:?} must match [A-Za-z0-9_.-]+ and not start with '.' or '-'")));
    }
    Ok(())
}

impl Agent {
    /// A new agent with no sandbox and no containers.
    pub fn new(cfg: AgentConfig) -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        let runner_cfg = RunnerConfig { helper_exe: cfg.helper_exe.clone(), state_root: cfg.state_dir.join("runners") };
        let images = Arc::new(crate::image_pull::ImagePuller::new(
            cfg.state_dir.join("images"),
            crate::image_pull::ImagePullConfig::default(),
        ));
        Self {
            cfg,
            runner_cfg,
            sandbox: Mutex::new(Sandbox::default()),
            oom_tx,
            oom_rx: Mutex::new(oom_rx),
            policy: None,
            images,
            tree: tokio::sync::RwLock::new(()),
        }
    }

    /// Pulls guest-pulled images with `cfg` (registries, signature policy, keys).
    pub fn with_image_pull(mut self, cfg: crate::image_pull::ImagePullConfig) -> Self {
        self.images = Arc::new(crate::image_pull::ImagePuller::new(self.cfg.state_dir.join("images"), cfg));
        self
    }

    /// Lets SetPolicy replace `policy` (the same check the gate runs).
    pub fn with_policy(mut self, policy: Arc<crate::policy_gate::PolicyCheck>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// SetPolicy: replaces the agent policy. The gate has already checked the request
    /// against the current policy; a policy that does not load leaves it in force.
    pub async fn set_policy(&self, req: pb::SetPolicyRequest) -> Result<Empty, AgentError> {
        let p = self
            .policy
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("this agent runs without a policy engine".into()))?;
        p.replace(&req.policy).map_err(|e| AgentError::invalid("policy", crate::error::chain(&e)))?;
        Ok(Empty::new())
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        self.sandbox
            .lock()
            .await
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound { what: "container", id: id.to_string() })
    }

    // ---- sandbox -------------------------------------------------------------------

    /// CreateSandbox: records the sandbox, mounts its storages (only the `ephemeral`
    /// tmpfs, see [`crate::sandbox_storage`]); as PID 1 also sets the hostname and DNS.
    /// Everything is checked before anything is changed; a failure undoes the mounts.
    pub async fn create_sandbox(&self, req: pb::CreateSandboxRequest) -> Result<Empty, AgentError> {
        if !req.kernel_modules.is_empty() {
            return Err(AgentError::invalid("kernel_modules", "loading kernel modules on request is not supported"));
        }
        if !req.guest_hook_path.is_empty() {
            return Err(AgentError::invalid("guest_hook_path", "guest hooks are not supported"));
        }
        let storages = crate::sandbox_storage::parse(&req.storages)?;
        if !req.hostname.is_empty() && (req.hostname.len() > 64 || req.hostname.contains(['/', '\0'])) {
            return Err(AgentError::invalid("hostname", format!("{:?} is not a valid hostname", req.hostname)));
        }
        let resolv_conf = crate::dns::resolv_conf(&req.dns)?;
        let mut sb = self.sandbox.lock().await;
        if let Some(id) = &sb.id {
            return Err(AgentError::AlreadyExists { what: "sandbox", id: id.clone() });
        }
        let mounted = crate::sandbox_storage::mount_all(&self.cfg.sandbox_dir, &storages)?;
        let undo = |e: AgentError| {
            crate::sandbox_storage::undo(&mounted);
            e
        };
        if self.cfg.init_mode && !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|e| undo(AgentError::io("set hostname")(e.into())))?;
        }
        if self.cfg.init_mode && !req.dns.is_empty() {
            std::fs::write("/etc/resolv.conf", resolv_conf).map_err(|e| undo(AgentError::io("write /etc/resolv.conf")(e)))?;
        }
        sb.id = Some(if req.sandbox_id.is_empty() { "sandbox".into() } else { req.sandbox_id.clone() });
        sb.hostname = (!req.hostname.is_empty()).then(|| req.hostname.clone());
        sb.storages = mounted;
        Ok(Empty::new())
    }

    /// DestroySandbox: destroys every container, unmounts the sandbox storages and
    /// forgets the sandbox.
    pub async fn destroy_sandbox(&self, _req: pb::DestroySandboxRequest) -> Result<Empty, AgentError> {
        let (containers, storages): (Vec<Arc<Container>>, Vec<PathBuf>) = {
            let mut sb = self.sandbox.lock().await;
            sb.id = None;
            sb.hostname = None;
            (sb.containers.drain().map(|(_, c)| c).collect(), std::mem::take(&mut sb.storages))
        };
        let mut first_err = None;
        for c in containers {
            if let Err(e) = Self::teardown(&c).await {
                first_err.get_or_insert(e);
            }
        }
        for p in storages.iter().rev() {
            if let Err(e) = crate::sandbox_storage::unmount(p) {
                first_err.get_or_insert(e);
            }
        }
        // Whatever failed above: no mount of the agent's stays.
        let roots = [&self.cfg.shared_dir, &self.cfg.state_dir, &self.cfg.sandbox_dir].map(|d| crate::mounts::real(d));
        if let Err(e) = crate::mounts::unmount_below(&roots) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(Empty::new()), Err)
    }

    /// Destroys every container (on agent shutdown).
    pub async fn shutdown(&self) {
        if let Err(e) = self.destroy_sandbox(pb::DestroySandboxRequest::new()).await {
            tracing::warn!("shutdown: {}", crate::error::chain(&e));
        }
    }

    // ---- containers ----------------------------------------------------------------

    /// CreateContainer: validates and adjusts the spec, then creates the container
    /// (not started). On any failure nothing of it remains.
    pub async fn create_container(&self, req: pb::CreateContainerRequest) -> Result<Empty, AgentError> {
        let cid = req.container_id.clone();
        validate_id("container_id", &cid)?;
        let exec_id = if req.exec_id.is_empty() { cid.clone() } else { req.exec_id.clone() };
        validate_id("exec_id", &exec_id)?;
        if !req.devices.is_empty() {
            return Err(AgentError::invalid("devices", "device hot-plug is not supported yet"));
        }
        check_no_passfd(req.stdin_port, req.stdout_port, req.stderr_port)?;
        let grpc_spec = req.OCI.as_ref().ok_or_else(|| AgentError::invalid("OCI", "missing"))?;
        let mut spec = protocols::convert::spec_from_grpc(grpc_spec)?;

        {
            let mut sb = self.sandbox.lock().await;
            if sb.containers.contains_key(&cid) || !sb.creating.insert(cid.clone()) {
                return Err(AgentError::AlreadyExists { what: "container", id: cid });
            }
        }
        // An `image_guest_pull` storage: pull the image and mount its rootfs first.
        let result = match self.images.prepare(&self.cfg.shared_dir, &cid, &req.storages, &mut spec).await {
            Err(e) => Err(e),
            Ok(rootfs) => match self.create_reserved(&cid, &exec_id, spec).await {
                Ok(c) => {
                    if let Ok(mut slot) = c.guest_rootfs.lock() {
                        *slot = rootfs;
                    }
                    Ok(c)
                }
                Err(e) => {
                    if let Some(r) = rootfs {
                        if let Err(re) = r.release() {
                            tracing::warn!("container {cid}: releasing its rootfs: {}", crate::error::chain(&re));
                        }
                    }
                    Err(e)
                }
            },
        };
        if result.is_err() {
            // This attempt reserved the id: what it made below <shared>/<id> is its own.
            remove_empty_dirs(&self.cfg.shared_dir.join(&cid), 8);
        }
        let mut sb = self.sandbox.lock().await;
        sb.creating.remove(&cid);
        let container = result?;
        sb.containers.insert(cid, container);
        Ok(Empty::new())
    }

    async fn create_reserved(
        &self,
        cid: &str,
        exec_id: &str,
        mut spec: oci_spec::runtime::Spec,
    ) -> Result<Arc<Container>, AgentError> {
        let (hostname, others, pod_ipc) = {
            let sb = self.sandbox.lock().await;
            let others: Vec<String> =
                sb.containers.keys().chain(sb.creating.iter()).filter(|id| id.as_str() != cid).cloned().collect();
            // The pod's IPC namespace: the sandbox (pause) container's, whose id is the
            // sandbox id; the pod's sysctls (kernel.shm*, fs.mqueue.*) are set there.
            let pod_ipc = sb
                .id
                .as_ref()
                .filter(|id| id.as_str() != cid)
                .and_then(|id| sb.containers.get(id))
                .and_then(|c| c.process("").ok())
                .map(|(_, p)| PathBuf::from(format!("/proc/{}/ns/ipc", p.pid)));
            (sb.hostname.clone(), others, pod_ipc)
        };
        // Held until the runner has made the container's mounts (see `tree`).
        let _tree = self.tree.read().await;
        crate::spec::adjust(&mut spec, &crate::spec::Adjust {
            container_id: cid,
            shared_dir: &self.cfg.shared_dir,
            sandbox_dir: &self.cfg.sandbox_dir,
            cgroup_parent: &self.cfg.cgroup_parent,
            hostname: hostname.as_deref(),
            other_containers: &others,
            pod_ipc: pod_ipc.as_deref(),
        })?;
        crate::spec::apply_net_sysctls(&mut spec, Path::new(crate::spec::PROC_SYS_NET))?;
        let bundle = self.cfg.state_dir.join("bundles").join(cid);
        let cleanup_bundle = |b: &Path| {
            let _ = std::fs::remove_dir_all(b);
        };
        std::fs::create_dir_all(&bundle).map_err(AgentError::io(format!("create bundle {}", bundle.display())))?;
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| AgentError::invalid("OCI", e.to_string()))?;
        if let Err(e) = std::fs::write(bundle.join("config.json"), json) {
            cleanup_bundle(&bundle);
            return Err(AgentError::io("write config.json")(e));
        }
        let (runner, io, pid) = match Runner::create(&self.runner_cfg, cid, &bundle).await {
            Ok(v) => v,
            Err(e) => {
                cleanup_bundle(&bundle);
                return Err(e.into());
            }
        };
        let init = match Process::new(pid, io) {
            Ok(p) => p,
            Err(e) => {
                let _ = runner.destroy().await;
                cleanup_bundle(&bundle);
                return Err(e);
            }
        };
        let container = Arc::new(Container {
            id: cid.to_string(),
            runner,
            bundle,
            init_exec_id: exec_id.to_string(),
            processes: std::sync::Mutex::new(HashMap::from([(exec_id.to_string(), Arc::new(init))])),
            guest_rootfs: std::sync::Mutex::new(None),
            dir: crate::mounts::real(&self.cfg.shared_dir).join(cid),
        });
        self.watch_oom(&container);
        Ok(container)
    }

    /// Forwards the container's OOM kills to GetOOMEvent until the runner goes away.
    fn watch_oom(&self, c: &Arc<Container>) {
        let c = Arc::clone(c);
        let tx = self.oom_tx.clone();
        tokio::spawn(async move {
            while c.runner.oom_event().await.is_ok() {
                if tx.send(c.id.clone()).is_err() {
                    break;
                }
            }
        });
    }

    /// StartContainer: runs the container's process.
    pub async fn start_container(&self, req: pb::StartContainerRequest) -> Result<Empty, AgentError> {
        let c = self.container(&req.container_id).await?;
        c.runner.start().await?;
        Ok(Empty::new())
    }

    /// RemoveContainer: kills every process of the container, waits for them and frees
    /// everything of it (processes, cgroups, state, bundle). With a non-zero `timeout`
    /// (seconds) it fails if that takes longer; the teardown still completes.
    pub async fn remove_container(&self, req: pb::RemoveContainerRequest) -> Result<Empty, AgentError> {
        let c = self.container(&req.container_id).await?;
        self.sandbox.lock().await.containers.remove(&req.container_id);
        let agent_teardown = {
            let c = Arc::clone(&c);
            async move { Self::teardown(&c).await }
        };
        if req.timeout == 0 {
            agent_teardown.await?;
            return Ok(Empty::new());
        }
        let task = tokio::spawn(agent_teardown);
        match tokio::time::timeout(std::time::Duration::from_secs(u64::from(req.timeout)), task).await {
            Ok(Ok(r)) => r.map(|()| Empty::new()),
            Ok(Err(join)) => Err(AgentError::io("remove container")(std::io::Error::other(join))),
            Err(_) => Err(AgentError::FailedPrecondition(format!(
                "container {:?} not removed within {} s (teardown continues)",
                req.container_id, req.timeout
            ))),
        }
    }

    /// Destroys the container's processes and runner and frees its rootfs. Whatever
    /// fails, nothing stays mounted below `<shared>/<id>` (a rootfs still busy is
    /// detached), and the first error is returned.
    async fn teardown(c: &Container) -> Result<(), AgentError> {
        let r = c.runner.destroy().await;
        if let Ok(mut p) = c.processes.lock() {
            p.clear();
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        let rootfs = c.guest_rootfs.lock().ok().and_then(|mut g| g.take());
        let released = rootfs.map_or(Ok(()), crate::image_pull::GuestRootfs::release);
        if let Err(e) = &released {
            tracing::warn!("container {}: {}; detaching what is left", c.id, crate::error::chain(e));
        }
        let swept = crate::mounts::unmount_below(std::slice::from_ref(&c.dir));
        remove_empty_dirs(&c.dir, 8);
        r?;
        released.and(swept)
    }

    /// ExecProcess: starts another process in a running container.
    pub async fn exec_process(&self, req: pb::ExecProcessRequest) -> Result<Empty, AgentError> {
        validate_id("exec_id", &req.exec_id)?;
        check_no_passfd(req.stdin_port, req.stdout_port, req.stderr_port)?;
        let c = self.container(&req.container_id).await?;
        let grpc = req.process.as_ref().ok_or_else(|| AgentError::invalid("process", "missing"))?;
        let mut process = protocols::convert::process_from_grpc(grpc)?;
        crate::spec::check_process(&process)?;
        crate::spec::ensure_path(&mut process);
        crate::spec::normalize_no_new_privileges(&mut process);
        {
            let mut procs = c.processes.lock().map_err(|_| AgentError::FailedPrecondition("process table poisoned".into()))?;
            if procs.contains_key(&req.exec_id) {
                return Err(AgentError::AlreadyExists { what: "process", id: format!("{}/{}", c.id, req.exec_id) });
            }
            // Reserve the id while the exec runs; replaced below.
            procs.insert(req.exec_id.clone(), Arc::new(Process::new(0, ProcessIo::default())?));
        }
        let result = async {
            let (io, pid) = c.runner.exec(&req.exec_id, &process).await?;
            Process::new(pid, io)
        }
        .await;
        let mut procs = c.processes.lock().map_err(|_| AgentError::FailedPrecondition("process table poisoned".into()))?;
        match result {
            Ok(p) => {
                procs.insert(req.exec_id.clone(), Arc::new(p));
                Ok(Empty::new())
            }
            Err(e) => {
                procs.remove(&req.exec_id);
                Err(e)
            }
        }
    }

    /// SignalProcess: sends a signal to the init (empty exec id) or an exec.
    pub async fn signal_process(&self, req: pb::SignalProcessRequest) -> Result<Empty, AgentError> {
        let c = self.container(&req.container_id).await?;
        let (runner_id, _) = c.process(&req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| AgentError::invalid("signal", format!("{} is not a signal number", req.signal)))?;
        c.runner.signal(runner_id.as_deref(), signal, false).await?;
        Ok(Empty::new())
    }

    /// WaitProcess: blocks until the process exits and returns its status
    /// (exit code, or 128 + signal).
    pub async fn wait_process(&self, req: pb::WaitProcessRequest) -> Result<pb::WaitProcessResponse, AgentError> {
        let c = self.container(&req.container_id).await?;
        let (runner_id, p) = c.process(&req.exec_id)?;
        let status = c.runner.wait(runner_id.as_deref()).await?;
        tracing::debug!(container = %c.id, exec = %req.exec_id, pid = p.pid, status, "process exited");
        p.waited.store(true, Ordering::Release);
        c.forget_if_finished(&req.exec_id, &p);
        let mut resp = pb::WaitProcessResponse::new();
        resp.status = status;
        Ok(resp)
    }

    /// UpdateContainer: applies new cgroup resources.
    pub async fn update_container(&self, req: pb::UpdateContainerRequest) -> Result<Empty, AgentError> {
        let c = self.container(&req.container_id).await?;
        let res = req.resources.as_ref().ok_or_else(|| AgentError::invalid("resources", "missing"))?;
        let res = protocols::convert::resources_from_grpc(res)?;
        c.runner.update(&res).await?;
        Ok(Empty::new())
    }

    /// StatsContainer: cgroup statistics and the VM's network counters.
    pub async fn stats_container(&self, req: pb::StatsContainerRequest) -> Result<pb::StatsContainerResponse, AgentError> {
        let c = self.container(&req.container_id).await?;
        let stats = c.runner.stats().await?;
        let mut resp = pb::StatsContainerResponse::new();
        resp.cgroup_stats = protobuf::MessageField::some(crate::stats::cgroup_stats_to_grpc(&stats));
        resp.network_stats = crate::stats::network_stats();
        Ok(resp)
    }

    /// PauseContainer: freezes every process of the container.
    pub async fn pause_container(&self, req: pb::PauseContainerRequest) -> Result<Empty, AgentError> {
        self.container(&req.container_id).await?.runner.pause().await?;
        Ok(Empty::new())
    }

    /// ResumeContainer: thaws the container.
    pub async fn resume_container(&self, req: pb::ResumeContainerRequest) -> Result<Empty, AgentError> {
        self.container(&req.container_id).await?.runner.resume().await?;
        Ok(Empty::new())
    }

    // ---- streams -------------------------------------------------------------------

    /// WriteStdin: writes to the process's stdin (or its pty).
    pub async fn write_stdin(&self, req: pb::WriteStreamRequest) -> Result<pb::WriteStreamResponse, AgentError> {
        let c = self.container(&req.container_id).await?;
        let (_, p) = c.process(&req.exec_id)?;
        let len = u32::try_from(req.data.len()).map_err(|_| AgentError::invalid("data", "longer than 4 GiB"))?;
        let sink = match &p.tty {
            Some(t) => Arc::clone(t),
            None => p.stdin.lock().await.clone().ok_or_else(|| {
                AgentError::FailedPrecondition(format!("stdin of {}/{} is closed or was not opened", c.id, req.exec_id))
            })?,
        };
        sink.write_all(&req.data).await.map_err(AgentError::io("write stdin"))?;
        let mut resp = pb::WriteStreamResponse::new();
        resp.len = len;
        Ok(resp)
    }

    /// ReadStdout: up to `len` bytes of stdout (or the pty); empty data means end of stream.
    pub async fn read_stdout(&self, req: pb::ReadStreamRequest) -> Result<pb::ReadStreamResponse, AgentError> {
        self.read_stream(req, true).await
    }

    /// ReadStderr: up to `len` bytes of stderr; empty data means end of stream (always
    /// empty for a process with a terminal).
    pub async fn read_stderr(&self, req: pb::ReadStreamRequest) -> Result<pb::ReadStreamResponse, AgentError> {
        self.read_stream(req, false).await
    }

    async fn read_stream(&self, req: pb::ReadStreamRequest, stdout: bool) -> Result<pb::ReadStreamResponse, AgentError> {
        let c = self.container(&req.container_id).await?;
        let (_, p) = c.process(&req.exec_id)?;
        let len = (req.len as usize).clamp(1, MAX_READ);
        let (source, lock) = match (&p.tty, stdout) {
            (Some(t), true) => (Some(t), &p.read_out),
            (Some(_), false) => (None, &p.read_err),
            (None, true) => (p.stdout.as_ref(), &p.read_out),
            (None, false) => (p.stderr.as_ref(), &p.read_err),
        };
        let mut resp = pb::ReadStreamResponse::new();
        if let Some(s) = source {
            let _order = lock.lock().await;
            resp.data = s.read_some(len).await.map_err(AgentError::io("read process output"))?;
        }
        if resp.data.is_empty() {
            let flag = if stdout { &p.out_eof } else { &p.err_eof };
            flag.store(true, Ordering::Release);
            c.forget_if_finished(&req.exec_id, &p);
        }
        Ok(resp)
    }

    /// CloseStdin: closes the process's stdin (sends end-of-file on a pty).
    pub async fn close_stdin(&self, req: pb::CloseStdinRequest) -> Result<Empty, AgentError> {
        let c = self.container(&req.container_id).await?;
        let (_, p) = c.process(&req.exec_id)?;
        if let Some(t) = &p.tty {
            // VEOF (^D) at the start of a line ends the reader's input.
            t.write_all(&[0x04]).await.map_err(AgentError::io("send EOF to the pty"))?;
        }
        p.stdin.lock().await.take();
        Ok(Empty::new())
    }

    /// TtyWinResize: sets the window size of the process's pty.
    pub async fn tty_win_resize(&self, req: pb::TtyWinResizeRequest) -> Result<Empty, AgentError> {
        let c = self.container(&req.container_id).await?;
        let (_, p) = c.process(&req.exec_id)?;
        let t = p.tty.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!("process {}/{} has no terminal", c.id, req.exec_id))
        })?;
        let (row, col) = (u16::try_from(req.row), u16::try_from(req.column));
        let (Ok(ws_row), Ok(ws_col)) = (row, col) else {
            return Err(AgentError::invalid("row/column", "out of range (max 65535)"));
        };
        let ws = libc::winsize { ws_row, ws_col, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the
        // call; the fd is the pty master this process owns.
        let rc = unsafe { libc::ioctl(t.raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(AgentError::io("resize the pty")(std::io::Error::last_os_error()));
        }
        Ok(Empty::new())
    }

    // ---- guest ---------------------------------------------------------------------

    /// GetOOMEvent: waits for the next OOM kill in any container.
    pub async fn get_oom_event(&self, _req: pb::GetOOMEventRequest) -> Result<pb::OOMEvent, AgentError> {
        let id = self.oom_rx.lock().await.recv().await.ok_or_else(|| AgentError::FailedPrecondition("agent shutting down".into()))?;
        let mut ev = pb::OOMEvent::new();
        ev.container_id = id;
        Ok(ev)
    }

    /// GetGuestDetails: memory block size and what this agent supports.
    pub async fn get_guest_details(&self, req: pb::GuestDetailsRequest) -> Result<pb::GuestDetailsResponse, AgentError> {
        let mut resp = pb::GuestDetailsResponse::new();
        if req.mem_block_size {
            resp.mem_block_size_bytes = std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
        }
        let mut details = pb::AgentDetails::new();
        details.version = env!("CARGO_PKG_VERSION").to_string();
        details.init_daemon = self.cfg.init_mode;
        details.supports_seccomp = true;
        resp.agent_details = protobuf::MessageField::some(details);
        resp.support_mem_hotplug_probe = false;
        Ok(resp)
    }

    /// SetGuestDateTime: sets the guest's wall clock.
    pub async fn set_guest_date_time(&self, req: pb::SetGuestDateTimeRequest) -> Result<Empty, AgentError> {
        if req.Sec < 0 || !(0..1_000_000).contains(&req.Usec) {
            return Err(AgentError::invalid("Sec/Usec", format!("{}.{:06} is not a valid time", req.Sec, req.Usec)));
        }
        let tv = nix::sys::time::TimeVal::new(req.Sec, req.Usec);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, nix::sys::time::TimeSpec::from(libc::timespec {
            tv_sec: tv.tv_sec(),
            tv_nsec: tv.tv_usec() * 1000,
        }))
        .map_err(|e| AgentError::io("set the clock")(e.into()))?;
        Ok(Empty::new())
    }

    /// CopyFile: writes a file below the shared directory.
    pub async fn copy_file(&self, req: pb::CopyFileRequest) -> Result<Empty, AgentError> {
        let root = self.cfg.shared_dir.clone();
        let _tree = self.tree.write().await;
        tokio::task::spawn_blocking(move || {
            copy_file(&root, &CopyFileArgs {
                path: &req.path,
                file_size: req.file_size,
                file_mode: req.file_mode,
                dir_mode: req.dir_mode,
                uid: req.uid,
                gid: req.gid,
                offset: req.offset,
                data: &req.data,
            })
        })
        .await
        .map_err(|e| AgentError::io("copy_file task")(std::io::Error::other(e)))??;
        Ok(Empty::new())
    }

    // ---- network (crate::net does the work, on a blocking thread) ------------------

    /// UpdateInterface: addresses, MTU, name and up state of the NIC with `hwAddr`.
    pub async fn update_interface(&self, req: pb::UpdateInterfaceRequest) -> Result<protocols::types::Interface, AgentError> {
        let iface = req.interface.into_option().ok_or_else(|| AgentError::invalid("interface", "missing"))?;
        net_blocking("UpdateInterface", move || crate::net::update_interface(&iface)).await
    }

    /// UpdateRoutes: replaces the routes of the devices the request names.
    pub async fn update_routes(&self, req: pb::UpdateRoutesRequest) -> Result<pb::Routes, AgentError> {
        let routes = req.routes.into_option().map(|r| r.Routes).unwrap_or_default();
        let list = net_blocking("UpdateRoutes", move || crate::net::update_routes(&routes)).await?;
        let mut resp = pb::Routes::new();
        resp.Routes = list;
        Ok(resp)
    }

    /// ListInterfaces: every link with its addresses.
    pub async fn list_interfaces(&self, _req: pb::ListInterfacesRequest) -> Result<pb::Interfaces, AgentError> {
        let mut resp = pb::Interfaces::new();
        resp.Interfaces = net_blocking("ListInterfaces", crate::net::list_interfaces).await?;
        Ok(resp)
    }

    /// ListRoutes: the main routing table.
    pub async fn list_routes(&self, _req: pb::ListRoutesRequest) -> Result<pb::Routes, AgentError> {
        let mut resp = pb::Routes::new();
        resp.Routes = net_blocking("ListRoutes", crate::net::list_routes).await?;
        Ok(resp)
    }

    /// AddARPNeighbors: permanent neighbour entries.
    pub async fn add_arp_neighbors(&self, req: pb::AddARPNeighborsRequest) -> Result<Empty, AgentError> {
        let neighbors = req.neighbors.into_option().map(|n| n.ARPNeighbors).unwrap_or_default();
        net_blocking("AddARPNeighbors", move || crate::net::add_arp_neighbors(&neighbors)).await?;
        Ok(Empty::new())
    }
}

/// Runs a netlink handler of [`crate::net`] on a blocking thread.
async fn net_blocking<T: Send + 'static>(
    rpc: &'static str,
    f: impl FnOnce() -> Result<T, crate::net::NetError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::io(format!("{rpc} task"))(std::io::Error::other(e)))?
        .map_err(AgentError::from)
}
