//! The harness of `adversarial.rs`: the pod (images in the loopback registry, the policy
//! generated from its YAML), the real agent binary enforcing it, one `send` for every RPC,
//! the expectation of a case and the check that a refused request left nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use protocols::agent as pb;
use protocols::{context_with, AgentClient};
use serde_json::{json, Value};

use crate::common;
use crate::common::wire::to_proto;

/// The loopback registry of `tests/registry/start.sh`.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// The pod's image (a registry fixture: busybox with a few applets, `HELLO=world`, cwd
/// `/tmp`), as the YAML names it.
pub const IMAGE: &str = "127.0.0.1:5000/busybox:latest";
/// The PATH containerd adds when the image sets none.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// What a ReadStdout/ReadStderr denied by the policy returns.
pub const REDACTED: &[u8] = guest_agent::service::REDACTED;
/// The random part of the shim's copied-file names.
pub const HEX16: &str = "0123456789abcdef";

/// The pod: two volumes (configMap, secret), exec probes, and the security context fields
/// of the restricted Pod Security Standard. (No emptyDir: the agent does not implement
/// Kata's `local` storage, and a bind source in another container's directory is refused.)
pub const POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: shop-config, namespace: adv}
data: {mode: production}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-secret, namespace: adv}
data: {token: c2VjcmV0}
---
apiVersion: v1
kind: Pod
metadata: {name: shop, namespace: adv}
spec:
  automountServiceAccountToken: false
  securityContext:
    runAsUser: 1000
    runAsGroup: 1000
    supplementalGroups: [3000]
    fsGroup: 2000
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: web
      image: 127.0.0.1:5000/busybox:latest
      command: ["/bin/busybox", "sleep", "3600"]
      resources:
        limits: {memory: 256Mi, cpu: 500m}
      env:
        - name: MODE
          valueFrom: {configMapKeyRef: {name: shop-config, key: mode}}
        - {name: GREETING, value: hello}
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      livenessProbe: {exec: {command: ["/bin/busybox", "cat", "/etc/shop/mode"]}}
      readinessProbe: {exec: {command: ["/bin/busybox", "true"]}}
      volumeMounts:
        - {name: config, mountPath: /etc/shop}
        - {name: secret, mountPath: /etc/secret}
    - name: helper
      image: 127.0.0.1:5000/busybox:latest
      command: ["/bin/busybox", "sleep", "3600"]
      securityContext:
        runAsUser: 2000
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      readinessProbe: {exec: {command: ["/bin/busybox", "true"]}}
  volumes:
    - {name: config, configMap: {name: shop-config}}
    - {name: secret, secret: {secretName: shop-secret}}
"#;

/// Starts the loopback registry with its fixtures (once per binary; the script locks).
pub fn registry() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/start.sh");
        let out = Command::new("bash").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    });
}

/// The generated policy text and what it pinned.
pub struct Generated {
    /// The Rego policy (rules + policy_data).
    pub rego: String,
    /// The pinned image every container runs.
    pub image: String,
}

/// Generates the pod's policy: the registry's busybox copied into an OCI layout (digests
/// preserved) so that `gen` pins the digest the agent then pulls; `$(cpath)` is the
/// agent's shared directory (a plain-process agent keeps containers there).
pub fn generate(dir: &Path, cpath: &Path) -> Generated {
    registry();
    let layout = dir.join("layouts/busybox");
    std::fs::create_dir_all(dir.join("layouts")).unwrap();
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false", "--preserve-digests"])
        .arg(format!("docker://{IMAGE}"))
        .arg(format!("oci:{}:latest", layout.display()))
        .output()
        .expect("skopeo (deploy/install-deps.sh)");
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    let mut store = policy::gen::ImageStore::new("linux/amd64");
    store.add_layouts_in(&dir.join("layouts")).unwrap();
    let docs = policy::gen::parse_str(Path::new("shop.yaml"), POD).unwrap();
    let mut settings = policy::gen::Settings::default();
    settings.common.cpath = cpath.display().to_string();
    settings.pause_image = IMAGE.to_owned();
    let out = policy::gen::generate(docs, &store, &settings).unwrap();
    let p = &out.policies[0];
    let names: Vec<&str> = p.data.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pause", "web", "helper"]);
    Generated { rego: p.rego.clone(), image: p.data.containers[1].image.clone() }
}

/// A 64-hex container id, distinct per `n`.
pub fn cid(n: u32) -> String {
    format!("{n:064x}")
}

/// The real agent on a unix socket with the generated policy.
pub struct Agent {
    /// The agent process.
    pub child: Child,
    /// Holds shared/, state/, the socket and the policy.
    pub dir: tempfile::TempDir,
    /// Connected client.
    pub client: AgentClient,
    /// Its containers' cgroup parent.
    pub cgroup_parent: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The agent's cgroup parent (its containers' cgroups are gone with them; a
        // leftover child is removed too, best effort: a cgroup with processes stays).
        for dir in cgroup_parents(&self.cgroup_parent) {
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl Agent {
    /// Starts the agent in a fresh directory whose `shared/` is `shared` (the policy's
    /// `$(cpath)`, chosen before the policy was generated).
    pub async fn start(dir: tempfile::TempDir, rego: &str) -> Agent {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = dir.path().join("policy.rego");
        std::fs::write(&path, rego).unwrap();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cgroup_parent = format!("/kata-cc-adv-{}-{n}", std::process::id());
        let child = Command::new(common::AGENT_BIN)
            .args(common::agent_args(dir.path(), &cgroup_parent))
            .args(["--insecure-registry", REGISTRY, "--policy"])
            .arg(&path)
            .spawn()
            .unwrap();
        let client = common::agent_client(dir.path()).await;
        Agent { child, dir, client, cgroup_parent }
    }

    /// The shared directory (`$(cpath)`).
    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// Whether the process is still running and answers.
    pub async fn alive(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the agent exited: {status}"));
        }
        match self.send(&Req::GetGuestDetails(pb::GuestDetailsRequest::new())).await {
            Got::Ok => Ok(()),
            other => Err(format!("the agent does not answer GetGuestDetails: {other:?}")),
        }
    }

    /// Sends one request and classifies the answer.
    pub async fn send(&self, req: &Req) -> Got {
        let a = self.client.agent();
        let ctx = || context_with(Duration::from_secs(30));
        macro_rules! call {
            ($m:ident, $r:expr) => {
                Got::from(a.$m(ctx(), $r).await.map(|_| ()))
            };
        }
        match req {
            Req::CreateContainer(v) => call!(create_container, &to_proto::<pb::CreateContainerRequest>(v)),
            Req::StartContainer(r) => call!(start_container, r),
            Req::RemoveContainer(r) => call!(remove_container, r),
            Req::ExecProcess(v) => call!(exec_process, &to_proto::<pb::ExecProcessRequest>(v)),
            Req::SignalProcess(r) => call!(signal_process, r),
            Req::WaitProcess(r) => call!(wait_process, r),
            Req::UpdateContainer(v) => call!(update_container, &to_proto::<pb::UpdateContainerRequest>(v)),
            Req::UpdateEphemeralMounts(v) => {
                call!(update_ephemeral_mounts, &to_proto::<pb::UpdateEphemeralMountsRequest>(v))
            }
            Req::StatsContainer(r) => call!(stats_container, r),
            Req::PauseContainer(r) => call!(pause_container, r),
            Req::ResumeContainer(r) => call!(resume_container, r),
            Req::RemoveStaleVirtiofsShareMounts => {
                call!(remove_stale_virtiofs_share_mounts, &pb::RemoveStaleVirtiofsShareMountsRequest::new())
            }
            Req::GetDiagnosticData(r) => call!(get_diagnostic_data, r),
            Req::WriteStdin(r) => call!(write_stdin, r),
            // A read waits for output: these read finished processes (their output is
            // buffered or at end of stream), a short deadline bounds a mistake.
            Req::ReadStdout(r) => Got::from_read(a.read_stdout(context_with(Duration::from_secs(5)), r).await),
            Req::ReadStderr(r) => Got::from_read(a.read_stderr(context_with(Duration::from_secs(5)), r).await),
            Req::CloseStdin(r) => call!(close_stdin, r),
            Req::TtyWinResize(r) => call!(tty_win_resize, r),
            Req::UpdateInterface(v) => call!(update_interface, &to_proto::<pb::UpdateInterfaceRequest>(v)),
            Req::UpdateRoutes(v) => call!(update_routes, &to_proto::<pb::UpdateRoutesRequest>(v)),
            Req::ListInterfaces => call!(list_interfaces, &pb::ListInterfacesRequest::new()),
            Req::ListRoutes => call!(list_routes, &pb::ListRoutesRequest::new()),
            Req::AddARPNeighbors(v) => call!(add_arp_neighbors, &to_proto::<pb::AddARPNeighborsRequest>(v)),
            Req::GetIPTables(r) => call!(get_ip_tables, r),
            Req::SetIPTables(r) => call!(set_ip_tables, r),
            Req::GetMetrics => call!(get_metrics, &pb::GetMetricsRequest::new()),
            Req::MemAgentMemcgSet(r) => call!(mem_agent_memcg_set, r),
            Req::MemAgentCompactSet(r) => call!(mem_agent_compact_set, r),
            Req::CreateSandbox(v) => call!(create_sandbox, &to_proto::<pb::CreateSandboxRequest>(v)),
            Req::DestroySandbox => call!(destroy_sandbox, &pb::DestroySandboxRequest::new()),
            Req::OnlineCPUMem(r) => call!(online_cpu_mem, r),
            Req::ReseedRandomDev(r) => call!(reseed_random_dev, r),
            Req::GetGuestDetails(r) => call!(get_guest_details, r),
            Req::MemHotplugByProbe(r) => call!(mem_hotplug_by_probe, r),
            Req::SetGuestDateTime(r) => call!(set_guest_date_time, r),
            Req::CopyFile(r) => call!(copy_file, r),
            Req::GetOOMEvent => {
                // Blocks until a container is OOM-killed: a short wait that ends is the answer.
                match a.get_oom_event(context_with(Duration::from_millis(300)), &pb::GetOOMEventRequest::new()).await {
                    Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::DEADLINE_EXCEEDED => Got::Ok,
                    Err(e) if e.to_string().contains("deadline elapsed") => Got::Ok,
                    other => Got::from(other.map(|_| ())),
                }
            }
            Req::AddSwap(r) => call!(add_swap, r),
            Req::AddSwapPath(r) => call!(add_swap_path, r),
            Req::GetVolumeStats(r) => call!(get_volume_stats, r),
            Req::ResizeVolume(r) => call!(resize_volume, r),
            Req::SetPolicy(r) => call!(set_policy, r),
        }
    }
}

/// One request of any RPC. JSON where the policy's field names matter (the shapes of
/// `policy/tests/inputs/`), the message itself elsewhere.
#[allow(clippy::large_enum_variant)]
pub enum Req {
    CreateContainer(Value),
    StartContainer(pb::StartContainerRequest),
    RemoveContainer(pb::RemoveContainerRequest),
    ExecProcess(Value),
    SignalProcess(pb::SignalProcessRequest),
    WaitProcess(pb::WaitProcessRequest),
    UpdateContainer(Value),
    UpdateEphemeralMounts(Value),
    StatsContainer(pb::StatsContainerRequest),
    PauseContainer(pb::PauseContainerRequest),
    ResumeContainer(pb::ResumeContainerRequest),
    RemoveStaleVirtiofsShareMounts,
    GetDiagnosticData(pb::GetDiagnosticDataRequest),
    WriteStdin(pb::WriteStreamRequest),
    ReadStdout(pb::ReadStreamRequest),
    ReadStderr(pb::ReadStreamRequest),
    CloseStdin(pb::CloseStdinRequest),
    TtyWinResize(pb::TtyWinResizeRequest),
    UpdateInterface(Value),
    UpdateRoutes(Value),
    ListInterfaces,
    ListRoutes,
    AddARPNeighbors(Value),
    GetIPTables(pb::GetIPTablesRequest),
    SetIPTables(pb::SetIPTablesRequest),
    GetMetrics,
    MemAgentMemcgSet(pb::MemAgentMemcgConfig),
    MemAgentCompactSet(pb::MemAgentCompactConfig),
    CreateSandbox(Value),
    DestroySandbox,
    OnlineCPUMem(pb::OnlineCPUMemRequest),
    ReseedRandomDev(pb::ReseedRandomDevRequest),
    GetGuestDetails(pb::GuestDetailsRequest),
    MemHotplugByProbe(pb::MemHotplugByProbeRequest),
    SetGuestDateTime(pb::SetGuestDateTimeRequest),
    CopyFile(pb::CopyFileRequest),
    GetOOMEvent,
    AddSwap(pb::AddSwapRequest),
    AddSwapPath(pb::AddSwapPathRequest),
    GetVolumeStats(pb::VolumeStatsRequest),
    ResizeVolume(pb::ResizeVolumeRequest),
    SetPolicy(pb::SetPolicyRequest),
}

impl Req {
    /// The RPC's name.
    pub fn rpc(&self) -> &'static str {
        match self {
            Req::CreateContainer(_) => "CreateContainer",
            Req::StartContainer(_) => "StartContainer",
            Req::RemoveContainer(_) => "RemoveContainer",
            Req::ExecProcess(_) => "ExecProcess",
            Req::SignalProcess(_) => "SignalProcess",
            Req::WaitProcess(_) => "WaitProcess",
            Req::UpdateContainer(_) => "UpdateContainer",
            Req::UpdateEphemeralMounts(_) => "UpdateEphemeralMounts",
            Req::StatsContainer(_) => "StatsContainer",
            Req::PauseContainer(_) => "PauseContainer",
            Req::ResumeContainer(_) => "ResumeContainer",
            Req::RemoveStaleVirtiofsShareMounts => "RemoveStaleVirtiofsShareMounts",
            Req::GetDiagnosticData(_) => "GetDiagnosticData",
            Req::WriteStdin(_) => "WriteStdin",
            Req::ReadStdout(_) => "ReadStdout",
            Req::ReadStderr(_) => "ReadStderr",
            Req::CloseStdin(_) => "CloseStdin",
            Req::TtyWinResize(_) => "TtyWinResize",
            Req::UpdateInterface(_) => "UpdateInterface",
            Req::UpdateRoutes(_) => "UpdateRoutes",
            Req::ListInterfaces => "ListInterfaces",
            Req::ListRoutes => "ListRoutes",
            Req::AddARPNeighbors(_) => "AddARPNeighbors",
            Req::GetIPTables(_) => "GetIPTables",
            Req::SetIPTables(_) => "SetIPTables",
            Req::GetMetrics => "GetMetrics",
            Req::MemAgentMemcgSet(_) => "MemAgentMemcgSet",
            Req::MemAgentCompactSet(_) => "MemAgentCompactSet",
            Req::CreateSandbox(_) => "CreateSandbox",
            Req::DestroySandbox => "DestroySandbox",
            Req::OnlineCPUMem(_) => "OnlineCPUMem",
            Req::ReseedRandomDev(_) => "ReseedRandomDev",
            Req::GetGuestDetails(_) => "GetGuestDetails",
            Req::MemHotplugByProbe(_) => "MemHotplugByProbe",
            Req::SetGuestDateTime(_) => "SetGuestDateTime",
            Req::CopyFile(_) => "CopyFile",
            Req::GetOOMEvent => "GetOOMEvent",
            Req::AddSwap(_) => "AddSwap",
            Req::AddSwapPath(_) => "AddSwapPath",
            Req::GetVolumeStats(_) => "GetVolumeStats",
            Req::ResizeVolume(_) => "ResizeVolume",
            Req::SetPolicy(_) => "SetPolicy",
        }
    }
}

/// What the agent answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// Success.
    Ok,
    /// A denied ReadStdout/ReadStderr: the redaction marker instead of output.
    Redacted,
    /// An error status.
    Status(ttrpc::Code, String),
    /// No status: the connection broke (an agent that died answers this way).
    Transport(String),
}

impl From<ttrpc::Result<()>> for Got {
    fn from(r: ttrpc::Result<()>) -> Got {
        match r {
            Ok(()) => Got::Ok,
            Err(ttrpc::Error::RpcStatus(s)) => Got::Status(s.code(), s.message().to_owned()),
            Err(e) => Got::Transport(e.to_string()),
        }
    }
}

impl Got {
    fn from_read(r: ttrpc::Result<pb::ReadStreamResponse>) -> Got {
        match r {
            // The marker, or the end of stream (nothing to hide: no byte of output).
            Ok(resp) if resp.data == REDACTED || resp.data.is_empty() => Got::Redacted,
            other => Got::from(other.map(|_| ())),
        }
    }
}

/// Who must refuse a case, and what the refusal must name.
#[derive(Debug, Clone)]
pub enum Expect {
    /// The policy: PERMISSION_DENIED whose reason contains every needle (field, value).
    Policy(Vec<String>),
    /// An agent check after the policy: an error status other than PERMISSION_DENIED
    /// (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...) naming every needle. A
    /// policy denial naming them is accepted too (refused earlier).
    Agent(Vec<String>),
    /// The RPC is not implemented: UNIMPLEMENTED (or a policy denial).
    Unimplemented,
    /// A denied output read: the redaction marker (or a refusal).
    Redacted,
}

/// How a case turned out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Refused by whom the case expects, naming what it expects.
    Refused,
    /// Refused, but the reason lacks a needle or came with an unexpected code.
    RefusedOtherwise(String),
    /// Not refused.
    WronglyAllowed,
    /// The agent died or stopped answering.
    Panic(String),
}

impl Expect {
    /// Judges an answer.
    pub fn judge(&self, got: &Got) -> Verdict {
        let names = |msg: &str, needles: &[String]| -> Result<(), String> {
            let missing: Vec<&String> = needles.iter().filter(|n| !msg.contains(n.as_str())).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("reason {msg:?} lacks {missing:?}"))
            }
        };
        match (self, got) {
            // Whether the agent died is decided by the liveness check after the case.
            (_, Got::Transport(e)) => Verdict::RefusedOtherwise(format!("no status: {e}")),
            (Expect::Redacted, Got::Redacted) => Verdict::Refused,
            (_, Got::Ok | Got::Redacted) => Verdict::WronglyAllowed,
            (Expect::Policy(n), Got::Status(code, msg)) => {
                if *code != ttrpc::Code::PERMISSION_DENIED {
                    return Verdict::RefusedOtherwise(format!("not by the policy: {code:?} {msg:?}"));
                }
                names(msg, n).map_or_else(Verdict::RefusedOtherwise, |()| Verdict::Refused)
            }
            (Expect::Agent(n), Got::Status(code, msg)) => {
                if *code == ttrpc::Code::INTERNAL || *code == ttrpc::Code::UNKNOWN {
                    return Verdict::RefusedOtherwise(format!("{code:?} (not a checked refusal): {msg:?}"));
                }
                names(msg, n).map_or_else(Verdict::RefusedOtherwise, |()| Verdict::Refused)
            }
            (Expect::Unimplemented | Expect::Redacted, Got::Status(code, msg)) => {
                if matches!(code, ttrpc::Code::UNIMPLEMENTED | ttrpc::Code::PERMISSION_DENIED) {
                    Verdict::Refused
                } else {
                    Verdict::RefusedOtherwise(format!("{code:?} {msg:?}"))
                }
            }
        }
    }

    /// "policy" or "agent": who is expected to refuse.
    pub fn by(&self) -> &'static str {
        match self {
            Expect::Policy(_) | Expect::Redacted => "policy",
            Expect::Agent(_) | Expect::Unimplemented => "agent",
        }
    }
}

/// Needles from string literals.
pub fn needles(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

// ---- what a refused request must not leave behind -------------------------------------

/// The agent-visible state a refused request must not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    mounts: Vec<String>,
    cgroups: BTreeSet<String>,
    procs: BTreeSet<i32>,
    files: BTreeSet<String>,
}

impl Snapshot {
    /// Mounts of the agent below its directory, cgroups below its parent, its descendant
    /// processes, the files of its shared and state directories (not below mount points).
    pub fn take(agent: &Agent) -> Snapshot {
        let pid = agent.child.id() as i32;
        let root = agent.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort();
        let mut cgroups = BTreeSet::new();
        for dir in cgroup_parents(&agent.cgroup_parent) {
            walk(&dir, &BTreeSet::new(), &mut |p, is_dir| {
                if is_dir {
                    cgroups.insert(p.display().to_string());
                }
            }, 3);
        }
        let mount_set: BTreeSet<String> = mounts.iter().cloned().collect();
        let mut files = BTreeSet::new();
        for d in ["shared", "state"] {
            walk(&agent.dir.path().join(d), &mount_set, &mut |p, _| {
                files.insert(p.display().to_string());
            }, 12);
        }
        Snapshot { mounts, cgroups, procs: descendants(pid), files }
    }

    /// Asserts that the snapshot sees running container `id` (its cgroup, its rootfs
    /// mount, its processes): the leftover check is not blind.
    pub fn assert_sees(&self, id: &str) {
        assert!(self.cgroups.iter().any(|c| c.ends_with(id)), "no cgroup of {id} in {:?}", self.cgroups);
        assert!(self.mounts.iter().any(|m| m.contains(id)), "no mount of {id} in {:?}", self.mounts);
        assert!(self.files.iter().any(|f| f.contains(id)), "no file of {id}");
        assert!(self.procs.iter().any(|p| cmdline(*p).contains("sleep")), "no container process in {:?}", self.procs);
    }

    /// What appeared since `before` (empty: nothing was left behind).
    pub fn new_since(&self, before: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let mut old = before.mounts.clone();
        for m in &self.mounts {
            match old.iter().position(|o| o == m) {
                Some(i) => {
                    old.remove(i);
                }
                None => out.push(format!("mount {m}")),
            }
        }
        out.extend(self.cgroups.difference(&before.cgroups).map(|c| format!("cgroup {c}")));
        out.extend(self.procs.difference(&before.procs).map(|p| format!("process {p} ({})", cmdline(*p))));
        out.extend(self.files.difference(&before.files).map(|f| format!("file {f}")));
        out
    }
}

/// `parent` in the unified hierarchy and in every v1 hierarchy (existing ones only).
fn cgroup_parents(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut out = vec![Path::new("/sys/fs/cgroup").join(rel)];
    for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        out.push(e.path().join(rel));
    }
    out.retain(|p| p.is_dir());
    out.sort();
    out.dedup();
    out
}

fn walk(dir: &Path, skip: &BTreeSet<String>, f: &mut dyn FnMut(&Path, bool), depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        f(&p, is_dir);
        if is_dir && depth > 0 && !skip.contains(&p.display().to_string()) {
            walk(&p, skip, f, depth - 1);
        }
    }
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
        .unwrap_or_default()
}

/// Live (not zombie) descendants of `pid`.
fn descendants(pid: i32) -> BTreeSet<i32> {
    let mut parent = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut it = rest.split_whitespace();
        let state = it.next().unwrap_or("");
        let ppid: i32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if state != "Z" && state != "X" {
            parent.push((p, ppid));
        }
    }
    let mut out = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for (p, pp) in &parent {
            if *pp == x && out.insert(*p) {
                frontier.push(*p);
            }
        }
    }
    out
}

// ---- the pod's legitimate requests ------------------------------------------------------

/// Loads `policy/tests/inputs/<name>`.
pub fn template(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/inputs").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// CreateSandbox as the shim sends it for the pod (with the pod's shm).
pub fn create_sandbox(sandbox_id: &str) -> Value {
    let mut v = template("create-sandbox.json");
    v.as_object_mut().unwrap().remove("guest_userns");
    v["sandbox_id"] = json!(sandbox_id);
    v["dns"] = json!(["nameserver 10.96.0.10", "search adv.svc.cluster.local svc.cluster.local cluster.local", "options ndots:5"]);
    v["storages"] = json!([{"driver": "ephemeral", "source": "shm", "fstype": "tmpfs",
        "mount_point": "/run/kata-containers/sandbox/shm", "driver_options": [],
        "options": ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"], "fs_group": null}]);
    v
}

/// Names of the files the shim copies for a container (`<cpath>/<cid>-<hex>-<name>`).
pub fn copied(cpath: &Path, owner: &str, name: &str) -> String {
    format!("{}/{owner}-{HEX16}-{name}", cpath.display())
}

/// Caps the kubelet sends for a capability list (every set but Inheritable/Ambient).
fn caps(list: &[&str]) -> Value {
    json!({"Bounding": list, "Effective": list, "Permitted": list, "Inheritable": [], "Ambient": []})
}

/// A RuntimeDefault-like seccomp profile: refuses by default, allows what busybox and the
/// runtime's last steps use, `clone` only without namespace flags, `clone3` refused (libc
/// falls back to clone), as the runtimes' default profiles do.
pub fn seccomp() -> Value {
    const ALLOWED: &str = "read write readv writev pread64 pwrite64 open openat close stat fstat lstat newfstatat statx \
        poll ppoll select pselect6 lseek mmap mprotect munmap mremap madvise brk rt_sigaction rt_sigprocmask \
        rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigsuspend sigaltstack ioctl access faccessat faccessat2 \
        pipe pipe2 dup dup2 dup3 nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time \
        getpid getppid gettid getuid geteuid getgid getegid getgroups setgroups setuid setgid setresuid setresgid \
        getresuid getresgid setsid setpgid getpgid getpgrp capget capset prctl arch_prctl set_tid_address \
        set_robust_list get_robust_list futex rseq execve execveat exit exit_group wait4 waitid kill tkill tgkill \
        fork vfork uname fcntl flock fsync fdatasync truncate ftruncate getdents getdents64 getcwd chdir fchdir \
        rename renameat renameat2 mkdir mkdirat rmdir unlink unlinkat link linkat symlink symlinkat readlink \
        readlinkat chmod fchmod fchmodat chown fchown lchown fchownat umask getrlimit setrlimit prlimit64 getrusage \
        sysinfo times statfs fstatfs sched_yield sched_getaffinity getrandom socket connect bind listen accept \
        accept4 sendto recvfrom sendmsg recvmsg shutdown getsockname getpeername setsockopt getsockopt \
        epoll_create1 epoll_ctl epoll_pwait eventfd2 close_range restart_syscall";
    let allowed: Vec<&str> = ALLOWED.split_whitespace().collect();
    json!({"DefaultAction": "SCMP_ACT_ERRNO", "Architectures": ["SCMP_ARCH_X86_64"], "Flags": [],
           "Syscalls": [
               {"Names": allowed, "Action": "SCMP_ACT_ALLOW", "Args": []},
               {"Names": ["clone"], "Action": "SCMP_ACT_ALLOW",
                "Args": [{"Index": 0, "Value": 2114060288u64, "ValueTwo": 0, "Op": "SCMP_CMP_MASKED_EQ"}]},
               {"Names": ["clone3"], "Action": "SCMP_ACT_ERRNO", "Args": []}
           ]})
}

/// The pod's identity for the requests.
#[derive(Clone)]
pub struct Pod {
    /// `$(cpath)` = the agent's shared dir.
    pub cpath: PathBuf,
    /// The pinned image.
    pub image: String,
    /// The sandbox id (= the pause container's id).
    pub sandbox_id: String,
    /// web's id: the files every container request names are copied under it.
    pub files_owner: String,
}

impl Pod {
    fn annotations(&self, name: &str, kind: &str) -> Value {
        json!({
            "io.kubernetes.cri.container-type": kind,
            "io.kubernetes.cri.sandbox-name": "shop",
            "io.kubernetes.cri.sandbox-namespace": "adv",
            "io.kubernetes.cri.sandbox-id": self.sandbox_id,
            "io.kubernetes.cri.container-name": name,
            "io.kubernetes.cri.image-name": self.image,
        })
    }

    fn storage(&self, cid: &str, kind: &str, source: &str) -> Value {
        let meta = json!({"metadata": {"io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.image-name": source}});
        json!([{"driver": "image_guest_pull", "driver_options": [format!("image_guest_pull={meta}")],
                "source": source, "fstype": "overlay", "options": [], "mount_point": self.rootfs(cid), "fs_group": null}])
    }

    /// Where container `cid`'s rootfs is mounted (`$(cpath)/<cid>/rootfs`).
    pub fn rootfs(&self, cid: &str) -> String {
        format!("{}/{cid}/rootfs", self.cpath.display())
    }

    /// A bind of a copied file or volume of the pod.
    pub fn shared(&self, dest: &str, name: &str, mode: &str) -> Value {
        json!({"destination": dest, "type": "bind", "source": copied(&self.cpath, &self.files_owner, name),
               "options": ["rbind", "rprivate", mode]})
    }


    /// The pause container's request.
    pub fn pause(&self) -> Value {
        let cid = &self.sandbox_id;
        let mut r = template("create-pause.json");
        r["container_id"] = json!(cid);
        r["exec_id"] = json!(cid);
        r["storages"] = self.storage(cid, "sandbox", &self.image);
        let oci = &mut r["OCI"];
        oci["Root"] = json!({"Path": self.rootfs(cid), "Readonly": true});
        oci["Annotations"] = self.annotations("pause", "sandbox");
        // containerd gives the sandbox the pod's hostname.
        oci["Hostname"] = json!("shop");
        let p = &mut oci["Process"];
        p["Args"] = json!(["/bin/sh"]);
        p["Env"] = json!(["HELLO=world"]);
        p["Cwd"] = json!("/tmp");
        p["User"] = json!({"UID": 0, "GID": 0, "AdditionalGids": [0], "Username": ""});
        // containerd's -997 needs CAP_SYS_RESOURCE, which a test host may not grant.
        p["OOMScoreAdj"] = json!(0);
        oci["Linux"]["Seccomp"] = seccomp();
        r
    }

    /// A container's request: `name` is "web" or "helper".
    pub fn container(&self, name: &str, cid: &str) -> Value {
        let mut r = template("create-app.json");
        r["container_id"] = json!(cid);
        r["exec_id"] = json!(cid);
        r["storages"] = self.storage(cid, "container", &self.image);
        let mut env = vec![PATH_ENV.to_owned(), "HELLO=world".into()];
        if name == "web" {
            env.extend(["MODE=production".to_owned(), "GREETING=hello".to_owned()]);
        }
        env.extend(["HOSTNAME=shop", "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443"].map(str::to_owned));
        let (uid, caps_list): (u32, &[&str]) =
            if name == "web" { (1000, &["CAP_NET_BIND_SERVICE"]) } else { (2000, &[]) };
        let oci = &mut r["OCI"];
        oci["Root"] = json!({"Path": self.rootfs(cid), "Readonly": name == "web"});
        oci["Annotations"] = self.annotations(name, "container");
        let p = &mut oci["Process"];
        p["Args"] = json!(["/bin/busybox", "sleep", "3600"]);
        p["Env"] = json!(env);
        p["Cwd"] = json!("/tmp");
        p["User"] = json!({"UID": uid, "GID": 1000, "AdditionalGids": [1000, 2000, 3000], "Username": ""});
        p["Capabilities"] = caps(caps_list);
        p["NoNewPrivileges"] = json!(true);
        p["OOMScoreAdj"] = json!(1000);
        let mut mounts: Vec<Value> = oci["Mounts"].as_array().unwrap()[..7].to_vec();
        mounts.extend([
            self.shared("/etc/hosts", "hosts", "rw"),
            self.shared("/dev/termination-log", "termination-log", "rw"),
            self.shared("/etc/hostname", "hostname", "ro"),
            self.shared("/etc/resolv.conf", "resolv.conf", "ro"),
        ]);
        if name == "web" {
            mounts.push(self.shared("/etc/shop", "config", "ro"));
            mounts.push(self.shared("/etc/secret", "secret", "ro"));
        }
        oci["Mounts"] = json!(mounts);
        oci["Linux"]["Seccomp"] = seccomp();
        r
    }

    /// ExecProcess of `args` in container `cid` (as web's probes run).
    pub fn exec(&self, cid: &str, exec_id: &str, args: &[&str]) -> Value {
        let mut v = template("exec-app.json");
        v["container_id"] = json!(cid);
        v["exec_id"] = json!(exec_id);
        let p = &mut v["process"];
        p["Args"] = json!(args);
        p["Cwd"] = json!("/tmp");
        p["User"] = json!({"UID": 1000, "GID": 1000, "AdditionalGids": [1000, 2000, 3000], "Username": ""});
        p["Env"] = json!([PATH_ENV, "HELLO=world", "MODE=production", "GREETING=hello", "HOSTNAME=shop"]);
        p["NoNewPrivileges"] = json!(true);
        v
    }

    /// The copies the shim makes for web (and every container uses): path, content.
    pub fn files(&self) -> Vec<(String, &'static [u8])> {
        let c = |name: &str| copied(&self.cpath, &self.files_owner, name);
        vec![
            (c("hosts"), b"127.0.0.1 localhost\n"),
            (c("termination-log"), b""),
            (c("hostname"), b"shop\n"),
            (c("resolv.conf"), b"nameserver 10.96.0.10\n"),
            (format!("{}/mode", c("config")), b"production"),
            (format!("{}/token", c("secret")), b"secret"),
        ]
    }
}

/// A CopyFile of a regular file as the shim sends it.
pub fn copy_file(path: &str, data: &[u8], mode: u32) -> pb::CopyFileRequest {
    let mut r = pb::CopyFileRequest::new();
    r.path = path.to_owned();
    r.file_size = data.len() as i64;
    r.file_mode = mode;
    r.dir_mode = 0o40755;
    r.data = data.to_vec();
    r
}
