//! The containerd Task API, served by one shim process per pod: the first container (the
//! CRI sandbox, or a plain `ctr run` container) boots the pod VM, later containers of the
//! pod join it, and every task call becomes agent calls in the VM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::{api, TtrpcResult};
use protocols::agent as pb;
use protocols::AgentClient;
use tokio::sync::{watch, Mutex};

use crate::config::{self, Config};
use crate::io::{IoRelay, Stdio};
use crate::rootfs;
use crate::sandbox::{self, error_chain, Sandbox};

/// Name of the file in a bundle that records which configuration the pod used (for
/// `delete` after a crash).
pub const CONFIG_PATH_FILE: &str = "kata-cc-config-path";
/// How long CreateContainer may take (guest pull of a large image included).
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a process's output may take to drain after it exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit status of processes whose VM died under them.
const VM_DIED_STATUS: u32 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExitInfo {
    status: u32,
    seconds: i64,
    nanos: i32,
}

impl ExitInfo {
    fn now(status: u32) -> Self {
        let t = Timestamp::now();
        ExitInfo { status, seconds: t.seconds, nanos: t.nanos }
    }
    fn timestamp(&self) -> Timestamp {
        Timestamp { seconds: self.seconds, nanos: self.nanos, ..Default::default() }
    }
}

struct Proc {
    stdio: Stdio,
    status: Status,
    exit: watch::Sender<Option<ExitInfo>>,
    io: Option<Arc<IoRelay>>,
    /// An exec's process until it is started.
    spec: Option<protocols::oci::Process>,
}

impl Proc {
    fn new(stdio: Stdio) -> Self {
        Proc { stdio, status: Status::Created, exit: watch::channel(None).0, io: None, spec: None }
    }
}

struct Container {
    bundle: String,
    /// The CRI sandbox (pause) container, or a standalone container: its deletion ends the pod.
    owns_pod: bool,
    init: Proc,
    execs: HashMap<String, Proc>,
}

#[derive(Default)]
struct PodState {
    config: Option<Arc<Config>>,
    sandbox: Option<Arc<Sandbox>>,
    containers: HashMap<String, Container>,
    /// Set when the VM is gone: every later request fails fast.
    vm_dead: bool,
}

impl PodState {
    fn container(&self, id: &str) -> Result<&Container, ttrpc::Error> {
        self.containers.get(id).ok_or_else(|| not_found(format!("container {id}")))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut Container, ttrpc::Error> {
        self.containers.get_mut(id).ok_or_else(|| not_found(format!("container {id}")))
    }

    /// Container `id` and its process `exec` ("" = the init process).
    fn process(&self, id: &str, exec: &str) -> Result<(&Container, &Proc), ttrpc::Error> {
        let c = self.container(id)?;
        let p = if exec.is_empty() {
            &c.init
        } else {
            c.execs.get(exec).ok_or_else(|| not_found(format!("exec {exec}")))?
        };
        Ok((c, p))
    }
}

struct Shared {
    namespace: String,
    /// `None` when the runtime gave no event address (CRI-O).
    publisher: Option<RemotePublisher>,
    exit: Arc<ExitSignal>,
    pod: Mutex<PodState>,
    /// Serialises Create (the first one boots the VM).
    create: Mutex<()>,
}

/// The task service of one pod.
#[derive(Clone)]
pub struct TaskService {
    s: Arc<Shared>,
}

fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}
fn not_found(what: impl std::fmt::Display) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("{what}: not found"))
}
fn precondition(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::FAILED_PRECONDITION, msg)
}
/// An agent error, with its code kept (the agent's PERMISSION_DENIED stays one).
fn agent_err(what: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let code = s.code();
            status(code, format!("{what}: {}", s.message()))
        }
        other => status(ttrpc::Code::UNAVAILABLE, format!("{what}: {other}")),
    }
}

fn read_spec(bundle: &str) -> Result<oci_spec::runtime::Spec, ttrpc::Error> {
    let path = Path::new(bundle).join("config.json");
    oci_spec::runtime::Spec::load(&path)
        .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, format!("read {}: {e}", path.display())))
}

/// Grouping id of a container: its CRI sandbox, or itself.
pub fn pod_id_of(spec: &oci_spec::runtime::Spec, id: &str) -> String {
    rootfs::cri_view(&spec.annotations().clone().unwrap_or_default())
        .ok()
        .and_then(|v| v.sandbox_id)
        .unwrap_or_else(|| id.to_string())
}

impl TaskService {
    /// A service publishing events for `namespace` through `publisher`.
    pub fn new(namespace: String, publisher: Option<RemotePublisher>, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            s: Arc::new(Shared {
                namespace,
                publisher,
                exit,
                pod: Mutex::new(PodState::default()),
                create: Mutex::new(()),
            }),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = ttrpc::context::with_timeout(0);
        let Some(publisher) = &self.s.publisher else { return };
        if let Err(e) = publisher.publish(ctx, topic, &self.s.namespace, event).await {
            tracing::warn!("publish {topic}: {e}");
        }
    }

    async fn agent(&self) -> Result<(AgentClient, u32), ttrpc::Error> {
        let pod = self.s.pod.lock().await;
        if pod.vm_dead {
            return Err(status(ttrpc::Code::UNAVAILABLE, "the pod VM is gone"));
        }
        let sb = pod.sandbox.as_ref().ok_or_else(|| precondition("the pod VM is not running"))?;
        Ok((sb.agent.clone(), sb.vm.pid().unwrap_or(0)))
    }

    async fn pid(&self) -> u32 {
        self.s.pod.lock().await.sandbox.as_ref().and_then(|s| s.vm.pid()).unwrap_or(0)
    }

    /// Records the exit of `cid`/`exec` once (later calls are ignored) and publishes TaskExit.
    async fn mark_exited(&self, cid: &str, exec: &str, code: u32) {
        let (info, pid) = {
            let mut pod = self.s.pod.lock().await;
            let pid = pod.sandbox.as_ref().and_then(|s| s.vm.pid()).unwrap_or(0);
            let Some(c) = pod.containers.get_mut(cid) else { return };
            let p = if exec.is_empty() { Some(&mut c.init) } else { c.execs.get_mut(exec) };
            let Some(p) = p else { return };
            if p.exit.borrow().is_some() {
                return;
            }
            let info = ExitInfo::now(code);
            p.status = Status::Stopped;
            p.exit.send_replace(Some(info));
            (info, pid)
        };
        let e = ev::TaskExit {
            container_id: cid.to_string(),
            id: if exec.is_empty() { cid.to_string() } else { exec.to_string() },
            pid,
            exit_status: info.status,
            exited_at: MessageField::some(info.timestamp()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e)).await;
    }

    /// Waits in the guest for `cid`/`exec` to exit, lets its output drain, records the exit.
    fn spawn_waiter(&self, agent: AgentClient, cid: String, exec: String, io: Option<Arc<IoRelay>>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut r = pb::WaitProcessRequest::new();
            r.container_id = cid.clone();
            r.exec_id = exec.clone();
            let code = match agent.agent().wait_process(protocols::context_with(Duration::ZERO), &r).await {
                Ok(w) => u32::try_from(w.status).unwrap_or(VM_DIED_STATUS),
                Err(e) => {
                    tracing::warn!("{cid}/{exec}: WaitProcess: {e}");
                    VM_DIED_STATUS
                }
            };
            if let Some(io) = io {
                if !io.wait_output(DRAIN_TIMEOUT).await {
                    tracing::warn!("{cid}/{exec}: output not drained within {DRAIN_TIMEOUT:?}");
                }
            }
            this.mark_exited(&cid, &exec, code).await;
        });
    }

    /// Watches the VM: when it stops, every process still running exits with
    /// [`VM_DIED_STATUS`] and the pod is reported dead.
    fn spawn_vm_monitor(&self, sb: Arc<Sandbox>) {
        let this = self.clone();
        tokio::spawn(async move {
            let exit = sb.vm.wait().await;
            let running: Vec<(String, String)> = {
                let mut pod = this.s.pod.lock().await;
                if pod.sandbox.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sb)) {
                    pod.vm_dead = true;
                }
                pod.containers
                    .iter()
                    .flat_map(|(cid, c)| {
                        let init = (c.init.exit.borrow().is_none()).then(|| (cid.clone(), String::new()));
                        let execs = c
                            .execs
                            .iter()
                            .filter(|(_, p)| p.exit.borrow().is_none() && p.status != Status::Created)
                            .map(|(e, _)| (cid.clone(), e.clone()));
                        init.into_iter().chain(execs).collect::<Vec<_>>()
                    })
                    .collect()
            };
            if !running.is_empty() {
                tracing::error!("pod VM {} stopped ({exit}); {} process(es) reported exited", sb.id, running.len());
            }
            for (cid, exec) in running {
                this.mark_exited(&cid, &exec, VM_DIED_STATUS).await;
            }
        });
    }

    /// Relays the agent's OOM events for the pod's life.
    fn spawn_oom_watch(&self, agent: AgentClient) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match agent.agent().get_oom_event(protocols::context_with(Duration::ZERO), &pb::GetOOMEventRequest::new()).await {
                    Ok(e) => {
                        let ev = ev::TaskOOM { container_id: e.container_id, ..Default::default() };
                        this.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
                    }
                    Err(e) => {
                        tracing::debug!("GetOOMEvent: {e}; stop watching");
                        return;
                    }
                }
            }
        });
    }

    async fn create_inner(&self, req: &api::CreateTaskRequest) -> Result<u32, ttrpc::Error> {
        let _serial = self.s.create.lock().await;
        let mut spec = read_spec(&req.bundle)?;
        // CRI-O's annotations become containerd's (docs/crio.md).
        let view = rootfs::normalize_cri_annotations(&mut spec).map_err(precondition)?;
        let ctype = view.container_type.as_deref();
        let owns_pod = ctype.is_none() || ctype == Some("sandbox");
        {
            let pod = self.s.pod.lock().await;
            if pod.containers.contains_key(&req.id) {
                return Err(status(ttrpc::Code::ALREADY_EXISTS, format!("container {}: already exists", req.id)));
            }
            if owns_pod && pod.sandbox.is_some() {
                return Err(precondition(format!("container {}: this shim already runs a pod", req.id)));
            }
            if !owns_pod && pod.sandbox.is_none() {
                return Err(precondition(format!(
                    "container {}: its pod sandbox {} is not running in this shim",
                    req.id,
                    pod_id_of(&spec, &req.id)
                )));
            }
            if pod.vm_dead {
                return Err(status(ttrpc::Code::UNAVAILABLE, "the pod VM is gone"));
            }
            if let (false, Some(sb)) = (owns_pod, &pod.sandbox) {
                sb.check_fits(&req.id, &spec).map_err(precondition)?;
            }
        }

        let image = if ctype == Some("sandbox") {
            "pause".to_string()
        } else {
            rootfs::image_reference(&spec, &req.rootfs).map_err(precondition)?
        };
        let copies = rootfs::rewrite_spec(&req.id, &mut spec).map_err(precondition)?;

        let mut booted = None;
        if owns_pod {
            let opt_path = req.options.as_ref().and_then(config::options_config_path);
            let path = config::config_path(opt_path.as_deref());
            let cfg = Config::load(&path).map_err(|e| precondition(error_chain(e)))?;
            // Remember the configuration for `delete` after a crash.
            let _ = std::fs::write(Path::new(&req.bundle).join(CONFIG_PATH_FILE), path.to_string_lossy().as_bytes());
            let t = Instant::now();
            let sb = sandbox::start(&cfg, &req.id, &spec)
                .await
                .map_err(|e| status(ttrpc::Code::UNKNOWN, format!("pod {}: {}", req.id, error_chain(e))))?;
            tracing::info!("kata-cc timing: pod={} phase=vm_boot ms={}", req.id, t.elapsed().as_millis());
            let sb = Arc::new(sb);
            let mut pod = self.s.pod.lock().await;
            pod.config = Some(Arc::new(cfg));
            pod.sandbox = Some(Arc::clone(&sb));
            drop(pod);
            self.spawn_vm_monitor(Arc::clone(&sb));
            self.spawn_oom_watch(sb.agent.clone());
            if let Some(net) = &sb.net {
                // CRI PortForward dials loopback in the pod netns; forward it to the VM.
                if let Err(e) = crate::portforward::start(&net.netns).await {
                    tracing::warn!("pod {}: port-forward unavailable: {e}", req.id);
                }
            }
            booted = Some(sb);
        }

        let result = self.create_in_guest(req, &spec, &image, &copies, owns_pod).await;
        if let Err(e) = result {
            if let Some(sb) = booted {
                let mut pod = self.s.pod.lock().await;
                pod.sandbox = None;
                drop(pod);
                sb.stop(Duration::ZERO).await;
            }
            return Err(e);
        }
        Ok(self.pid().await)
    }

    async fn create_in_guest(
        &self,
        req: &api::CreateTaskRequest,
        spec: &oci_spec::runtime::Spec,
        image: &str,
        copies: &[rootfs::HostCopy],
        owns_pod: bool,
    ) -> Result<(), ttrpc::Error> {
        let (agent, _) = self.agent().await?;
        for c in copies {
            for r in rootfs::copy_requests(c).map_err(precondition)? {
                agent.agent().copy_file(agent.context(), &r).await.map_err(|e| agent_err(&format!("CopyFile {}", c.dst), e))?;
            }
        }
        let mut r = pb::CreateContainerRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.id.clone();
        let mut guest_spec = spec.clone();
        rootfs::guest_namespaces(&mut guest_spec);
        r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&guest_spec));
        r.storages = vec![rootfs::guest_pull_storage(&req.id, image, spec)];
        let t = Instant::now();
        agent
            .agent()
            .create_container(protocols::context_with(CREATE_TIMEOUT), &r)
            .await
            .map_err(|e| agent_err(&format!("CreateContainer {} (image {image})", req.id), e))?;
        tracing::info!("kata-cc timing: pod_container={} phase=create_container ms={}", req.id, t.elapsed().as_millis());

        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io = match IoRelay::start(agent.clone(), &req.id, "", &stdio).await {
            Ok(io) => io,
            Err(e) => {
                let mut rm = pb::RemoveContainerRequest::new();
                rm.container_id = req.id.clone();
                let _ = agent.agent().remove_container(agent.context(), &rm).await;
                return Err(status(ttrpc::Code::INTERNAL, format!("stdio of {}: {e}", req.id)));
            }
        };
        let io = Arc::new(io);
        let mut init = Proc::new(stdio);
        init.io = Some(Arc::clone(&io));
        self.s.pod.lock().await.containers.insert(
            req.id.clone(),
            Container { bundle: req.bundle.clone(), owns_pod, init, execs: HashMap::new() },
        );
        // Wait from now on: a container killed before it was started exits too.
        self.spawn_waiter(agent, req.id.clone(), String::new(), Some(io));
        Ok(())
    }
}

fn any_json<T: serde::de::DeserializeOwned>(any: &Any, what: &str) -> Result<T, ttrpc::Error> {
    serde_json::from_slice(&any.value)
        .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, format!("{what} ({}): {e}", any.type_url)))
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(ttrpc::Code::UNIMPLEMENTED, "restore from checkpoint is not supported"));
        }
        let pid = self.create_inner(&req).await?;
        let e = ev::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(ev::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(e)).await;
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let (agent, pid) = self.agent().await?;
        if req.exec_id.is_empty() {
            {
                let pod = self.s.pod.lock().await;
                let c = pod.container(&req.id)?;
                if c.init.status != Status::Created {
                    return Err(precondition(format!("container {} is not in the created state", req.id)));
                }
            }
            let mut r = pb::StartContainerRequest::new();
            r.container_id = req.id.clone();
            agent.agent().start_container(agent.context(), &r).await.map_err(|e| agent_err("StartContainer", e))?;
            if let Some(c) = self.s.pod.lock().await.containers.get_mut(&req.id) {
                if c.init.status == Status::Created {
                    c.init.status = Status::Running;
                }
            }
            let e = ev::TaskStart { container_id: req.id.clone(), pid, ..Default::default() };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(e)).await;
        } else {
            let (spec, stdio) = {
                let pod = self.s.pod.lock().await;
                let c = pod.container(&req.id)?;
                let p = c.execs.get(&req.exec_id).ok_or_else(|| not_found(format!("exec {}", req.exec_id)))?;
                if p.status != Status::Created {
                    return Err(precondition(format!("exec {} is not in the created state", req.exec_id)));
                }
                (p.spec.clone().unwrap_or_default(), p.stdio.clone())
            };
            let mut r = pb::ExecProcessRequest::new();
            r.container_id = req.id.clone();
            r.exec_id = req.exec_id.clone();
            r.process = MessageField::some(spec);
            agent.agent().exec_process(agent.context(), &r).await.map_err(|e| agent_err("ExecProcess", e))?;
            let io = IoRelay::start(agent.clone(), &req.id, &req.exec_id, &stdio)
                .await
                .map_err(|e| status(ttrpc::Code::INTERNAL, format!("stdio of exec {}: {e}", req.exec_id)))?;
            let io = Arc::new(io);
            if let Some(p) = self.s.pod.lock().await.containers.get_mut(&req.id).and_then(|c| c.execs.get_mut(&req.exec_id)) {
                p.status = Status::Running;
                p.io = Some(Arc::clone(&io));
            }
            self.spawn_waiter(agent, req.id.clone(), req.exec_id.clone(), Some(io));
            let e = ev::TaskExecStarted { container_id: req.id.clone(), exec_id: req.exec_id.clone(), pid, ..Default::default() };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e)).await;
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let pid = self.pid().await;
        let pod = self.s.pod.lock().await;
        let (c, p) = pod.process(&req.id, &req.exec_id)?;
        let st = match p.status {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        };
        let exit = *p.exit.borrow();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid,
            status: st.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let pid = self.pid().await;
        if !req.exec_id.is_empty() {
            let mut pod = self.s.pod.lock().await;
            let c = pod.container_mut(&req.id)?;
            let p = c.execs.get(&req.exec_id).ok_or_else(|| not_found(format!("exec {}", req.exec_id)))?;
            if matches!(p.status, Status::Running | Status::Paused) {
                return Err(precondition(format!("exec {} is still running", req.exec_id)));
            }
            let exit = p.exit.borrow().unwrap_or(ExitInfo::now(0));
            c.execs.remove(&req.exec_id);
            return Ok(api::DeleteResponse { pid, exit_status: exit.status, exited_at: MessageField::some(exit.timestamp()), ..Default::default() });
        }
        let (exit, owns_pod) = {
            let pod = self.s.pod.lock().await;
            let c = pod.container(&req.id)?;
            if matches!(c.init.status, Status::Running | Status::Paused) && !pod.vm_dead {
                return Err(precondition(format!("container {} is still running", req.id)));
            }
            let exit = c.init.exit.borrow().unwrap_or(ExitInfo::now(0));
            (exit, c.owns_pod)
        };
        if let Ok((agent, _)) = self.agent().await {
            let mut r = pb::RemoveContainerRequest::new();
            r.container_id = req.id.clone();
            r.timeout = 10;
            if let Err(e) = agent.agent().remove_container(protocols::context_with(Duration::from_secs(30)), &r).await {
                tracing::warn!("RemoveContainer {}: {e}", req.id);
            }
        }
        let sandbox = {
            let mut pod = self.s.pod.lock().await;
            pod.containers.remove(&req.id);
            if owns_pod {
                pod.sandbox.take()
            } else {
                None
            }
        };
        if let Some(sb) = sandbox {
            sb.stop(Duration::from_secs(3)).await;
        }
        let e = ev::TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(e)).await;
        Ok(api::DeleteResponse { pid, exit_status: exit.status, exited_at: MessageField::some(exit.timestamp()), ..Default::default() })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let pid = self.pid().await;
        if !self.s.pod.lock().await.containers.contains_key(&req.id) {
            return Err(not_found(format!("container {}", req.id)));
        }
        // Processes live in the guest; the host-side process of all of them is the VM.
        let info = containerd_shim::protos::types::task::ProcessInfo { pid, ..Default::default() };
        Ok(api::PidsResponse { processes: vec![info], ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let (agent, _) = self.agent().await?;
        let mut r = pb::PauseContainerRequest::new();
        r.container_id = req.id.clone();
        agent.agent().pause_container(agent.context(), &r).await.map_err(|e| agent_err("PauseContainer", e))?;
        if let Some(c) = self.s.pod.lock().await.containers.get_mut(&req.id) {
            c.init.status = Status::Paused;
        }
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev::TaskPaused { container_id: req.id, ..Default::default() })).await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let (agent, _) = self.agent().await?;
        let mut r = pb::ResumeContainerRequest::new();
        r.container_id = req.id.clone();
        agent.agent().resume_container(agent.context(), &r).await.map_err(|e| agent_err("ResumeContainer", e))?;
        if let Some(c) = self.s.pod.lock().await.containers.get_mut(&req.id) {
            c.init.status = Status::Running;
        }
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev::TaskResumed { container_id: req.id, ..Default::default() })).await;
        Ok(api::Empty::new())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(status(ttrpc::Code::UNIMPLEMENTED, "checkpoint is not supported by kata-cc (the guest memory is not the host's to save)"))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        {
            let pod = self.s.pod.lock().await;
            let (_, p) = pod.process(&req.id, &req.exec_id)?;
            if p.exit.borrow().is_some() || pod.vm_dead {
                return Err(not_found("process already finished"));
            }
            if p.status == Status::Created && !req.exec_id.is_empty() {
                return Err(precondition(format!("exec {} was not started", req.exec_id)));
            }
        }
        let (agent, _) = self.agent().await?;
        let mut r = pb::SignalProcessRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.signal = req.signal;
        match agent.agent().signal_process(agent.context(), &r).await {
            Ok(_) => Ok(api::Empty::new()),
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => Err(not_found("process already finished")),
            Err(e) => Err(agent_err("SignalProcess", e)),
        }
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let process: oci_spec::runtime::Process = any_json(req.spec.as_ref().unwrap_or(&Any::new()), "exec process spec")?;
        {
            let mut pod = self.s.pod.lock().await;
            let c = pod.container_mut(&req.id)?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(ttrpc::Code::ALREADY_EXISTS, format!("exec {}: already exists", req.exec_id)));
            }
            let mut p = Proc::new(Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = Some(protocols::convert::process_to_grpc(&process));
            c.execs.insert(req.exec_id.clone(), p);
        }
        let e = ev::TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e)).await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let (agent, _) = self.agent().await?;
        let mut r = pb::TtyWinResizeRequest::new();
        r.container_id = req.id;
        r.exec_id = req.exec_id;
        r.row = req.height;
        r.column = req.width;
        agent.agent().tty_win_resize(agent.context(), &r).await.map_err(|e| agent_err("TtyWinResize", e))?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let pod = self.s.pod.lock().await;
        let (_, p) = pod.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(io) = &p.io {
                io.close_stdin();
            }
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let (agent, _) = self.agent().await?;
        let res: oci_spec::runtime::LinuxResources =
            any_json(req.resources.as_ref().unwrap_or(&Any::new()), "resources")?;
        let mut r = pb::UpdateContainerRequest::new();
        r.container_id = req.id;
        r.resources = MessageField::some(protocols::convert::resources_to_grpc(&res));
        agent.agent().update_container(agent.context(), &r).await.map_err(|e| agent_err("UpdateContainer", e))?;
        Ok(api::Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let pod = self.s.pod.lock().await;
            let (_, p) = pod.process(&req.id, &req.exec_id)?;
            p.exit.subscribe()
        };
        let info = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| not_found(format!("{} was deleted while waiting", req.id)))?
            .unwrap_or(ExitInfo::now(VM_DIED_STATUS));
        Ok(api::WaitResponse { exit_status: info.status, exited_at: MessageField::some(info.timestamp()), ..Default::default() })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let (agent, _) = self.agent().await?;
        let mut r = pb::StatsContainerRequest::new();
        r.container_id = req.id;
        let s = agent.agent().stats_container(agent.context(), &r).await.map_err(|e| agent_err("StatsContainer", e))?;
        let m = crate::stats::to_v1_metrics(&s);
        let value = m.write_to_bytes().map_err(|e| status(ttrpc::Code::INTERNAL, format!("encode metrics: {e}")))?;
        let any = Any { type_url: crate::stats::V1_METRICS_TYPE.into(), value, ..Default::default() };
        Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, _req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pid().await,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let pod = self.s.pod.lock().await;
        if pod.containers.is_empty() {
            self.s.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

/// `delete` of a task whose shim is gone: clean up the pod's VM and state if `id` was
/// the pod's owner. `bundle` holds the configuration path the pod used.
pub fn cleanup_after_crash(id: &str, bundle: &Path) -> bool {
    let recorded = std::fs::read_to_string(bundle.join(CONFIG_PATH_FILE)).ok();
    let path: PathBuf = config::config_path(recorded.as_deref().map(str::trim));
    match Config::load(&path) {
        Ok(cfg) => sandbox::cleanup_dead(&cfg, id),
        Err(e) => {
            tracing::warn!("delete {id}: {}; nothing cleaned", error_chain(e));
            false
        }
    }
}
