//! Policy generation: from Kubernetes YAML and the images' configs to an agent policy and
//! its initdata (what `kata-cc-policy gen` does).
//!
//! A generated policy is [`RULES`] (our generic rule set, `policy/rego/rules.rego`) followed
//! by one line `policy_data := {...}`: a JSON document, [`PolicyData`], that describes exactly
//! one pod. The rules compare each agent request with it.
//!
//! # `policy_data` schema (version 1)
//!
//! ```text
//! {
//!   "version": 1,
//!   "common": {                      // from the settings; the same for every pod
//!     "cpath": "/run/kata-containers/shared/containers",
//!     "default_caps": [...], "privileged_caps": [...],
//!     "masked_paths": [...], "readonly_paths": [...],   // containers: these, or more
//!     "sandbox_masked_paths": [...], "sandbox_readonly_paths": [...], // pause: at least
//!     "default_mounts": [Mount...],   // what the CRI gives every container (/proc, /dev, ...)
//!     "default_sysctls": {"net.ipv4.ping_group_range": "0 2147483647", ...},
//!     "allow_env_regex": [...],       // env vars Kubernetes injects (services)
//!     "copy_file_regex": [...]        // CopyFileRequest paths
//!   },
//!   "sandbox": {"name_regex": "^web-[a-z0-9]{1,10}-[a-z0-9]{5}$", "namespace": "shop",
//!               "sysctls": {...}},     // pod securityContext.sysctls
//!   "request_defaults": {"ReadStreamRequest": false, "WriteStreamRequest": false,
//!                        "CloseStdinRequest": false},
//!   "containers": [{                  // the pause container first, then init containers,
//!     "name": "app", "type": "container" | "sandbox",      // then containers
//!     "image": "docker.io/library/nginx@sha256:...",        // pinned, normalized
//!     "image_names": [...],            // the names the CRI may send for it
//!     "privileged": false, "read_only_root": false,
//!     "seccomp": "unconfined" | "runtime-default" | "localhost",
//!     "process": {"Args": [...], "Cwd": "/", "UID": 1000 | null, "GID": 0 | null,
//!                 "Env": ["K=V", ...],         // must all be sent; nothing else but:
//!                 "EnvRegex": ["^HOSTNAME=...$", ...],
//!                 "NoNewPrivileges": true, "Terminal": false,
//!                 "Capabilities": ["CAP_CHOWN", ...]},
//!     "mounts": [Mount...],           // Mount: {destination, type, source (regex with
//!                                     //  $(cpath), $(bundle-id), $(sandbox-id)), options,
//!                                     //  required}
//!     "storages": [{"driver": "local", "mount_point": "..."}],  // emptyDir volumes
//!     "exec_commands": [["/bin/sh", "-c", "..."], ...]
//!   }]
//! }
//! ```

mod image;
mod initdata;
mod k8s;
mod pod;
#[cfg(feature = "registry")]
mod registry;
mod review;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pod::parse_quantity;
pub use image::{ImageConfig, ImageError, ImageRef, ImageStore, RemoteImages, ResolvedImage};
#[cfg(feature = "registry")]
pub use registry::{Registry, RegistryError, RegistryOptions};
pub use initdata::{decode_annotation, encode_annotation, Algorithm, InitData, InitDataError};
pub use k8s::{load_files, parse_str, workloads, Document, K8sError, Workload};
pub use pod::PodError;
pub use review::{diff, request_errors, split_policy, DiffReport, ReviewError};

/// The generic rules of a generated policy (`policy/rego/rules.rego`).
pub const RULES: &str = include_str!("../../rego/rules.rego");

/// The annotation carrying the initdata: base64(gzip(TOML)).
pub use protocols::initdata::ANNOTATION as INITDATA_ANNOTATION;

/// Our annotation listing the commands `ExecProcess` may run: a JSON list of argv arrays
/// (for every container) or an object from container name to such a list.
pub const EXEC_ALLOW_ANNOTATION: &str = "kata-cc.io/exec-allow";

/// The runtime class `gen` sets when a pod has none.
pub const RUNTIME_CLASS: &str = "kata-cc";

/// The marker that starts the data section of a generated policy.
pub const POLICY_DATA_MARKER: &str = "\npolicy_data := ";

/// Version of the [`PolicyData`] schema written by this code.
pub const POLICY_DATA_VERSION: u32 = 1;

/// Everything a generated policy knows about one pod. See the module docs for the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyData {
    /// Schema version, [`POLICY_DATA_VERSION`].
    pub version: u32,
    /// Settings shared by every pod.
    pub common: Common,
    /// The pod (sandbox) identity.
    pub sandbox: SandboxData,
    /// Switches for requests that carry workload data.
    pub request_defaults: RequestDefaults,
    /// The pause container, then init containers, then containers.
    pub containers: Vec<ContainerData>,
}

/// The part of [`PolicyData`] that comes from the settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// Where the shim shares container files in the guest (`$(cpath)` in mount sources).
    pub cpath: String,
    /// Capabilities of a non-privileged container before `add`/`drop`.
    pub default_caps: Vec<String>,
    /// Capabilities of a privileged container.
    pub privileged_caps: Vec<String>,
    /// `Linux.MaskedPaths` a non-privileged container must have (at least: masking more
    /// only hides more).
    pub masked_paths: Vec<String>,
    /// `Linux.ReadonlyPaths` a non-privileged container must have (at least).
    pub readonly_paths: Vec<String>,
    /// `Linux.MaskedPaths` the sandbox (pause) container must have at least: containerd's
    /// defaults, those common to containerd 1.6 and 1.7 (the kubelet's list above is for
    /// containers only).
    #[serde(default = "default_sandbox_masked_paths")]
    pub sandbox_masked_paths: Vec<String>,
    /// `Linux.ReadonlyPaths` the sandbox (pause) container must have at least.
    #[serde(default = "default_sandbox_readonly_paths")]
    pub sandbox_readonly_paths: Vec<String>,
    /// Mounts every container gets from the CRI.
    pub default_mounts: Vec<MountData>,
    /// Sysctls the CRI may set on every container.
    pub default_sysctls: BTreeMap<String, String>,
    /// Env vars Kubernetes injects (service links), as regexes over `NAME=value`.
    pub allow_env_regex: Vec<String>,
    /// `CopyFileRequest` paths, as regexes (placeholders as in mount sources).
    pub copy_file_regex: Vec<String>,
    /// Rlimits a process may be given: type -> largest hard limit.
    #[serde(default = "default_allowed_rlimits")]
    pub allowed_rlimits: BTreeMap<String, u64>,
    /// Syscalls a seccomp profile may allow only to a container holding one of the listed
    /// capabilities (none listed: never). What the runtimes' default profiles reserve.
    #[serde(default = "default_seccomp_gated_syscalls")]
    pub seccomp_gated_syscalls: BTreeMap<String, Vec<String>>,
}

fn default_seccomp_gated_syscalls() -> BTreeMap<String, Vec<String>> {
    let gated: &[(&[&str], &[&str])] = &[
        (
            &[
                "mount", "umount", "umount2", "unshare", "setns", "fsopen", "fsconfig", "fsmount",
                "fspick", "move_mount", "open_tree", "mount_setattr", "sethostname",
                "setdomainname", "name_to_handle_at", "lookup_dcookie", "quotactl",
                "quotactl_fd", "fanotify_init", "clone", "clone3",
            ],
            &["CAP_SYS_ADMIN"],
        ),
        (&["bpf"], &["CAP_SYS_ADMIN", "CAP_BPF"]),
        (&["perf_event_open"], &["CAP_SYS_ADMIN", "CAP_PERFMON"]),
        (&["init_module", "finit_module", "delete_module"], &["CAP_SYS_MODULE"]),
        (&["reboot", "kexec_load", "kexec_file_load"], &["CAP_SYS_BOOT"]),
        (&["iopl", "ioperm"], &["CAP_SYS_RAWIO"]),
        (&["settimeofday", "stime", "clock_settime", "clock_settime64"], &["CAP_SYS_TIME"]),
        (&["acct"], &["CAP_SYS_PACCT"]),
        (&["open_by_handle_at"], &["CAP_DAC_READ_SEARCH"]),
        (&["chroot"], &["CAP_SYS_CHROOT"]),
        (
            &[
                "swapon", "swapoff", "keyctl", "add_key", "request_key", "nfsservctl",
                "create_module", "get_kernel_syms", "uselib", "vm86", "vm86old", "_sysctl",
            ],
            &[],
        ),
    ];
    gated
        .iter()
        .flat_map(|(names, caps)| {
            names.iter().map(move |n| ((*n).to_owned(), caps.iter().map(|c| (*c).to_owned()).collect()))
        })
        .collect()
}

fn default_allowed_rlimits() -> BTreeMap<String, u64> {
    BTreeMap::from([("RLIMIT_NOFILE".to_owned(), 1_048_576)])
}

/// A mount a container may have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountData {
    /// Mount point in the container.
    pub destination: String,
    /// Mount type (`bind`, `proc`, `local`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Regex (anchored by the rules) over the source; `$(cpath)`, `$(bundle-id)` and
    /// `$(sandbox-id)` are expanded first.
    pub source: String,
    /// Options, compared as a set.
    pub options: Vec<String>,
    /// Another option set accepted in place of `options` (empty: none): `ro` for a
    /// volume mount that asks for `rro` only where the runtime supports it
    /// (`recursiveReadOnly: IfPossible`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_options: Vec<String>,
    /// Whether the request must carry this mount (the pod's own volume mounts).
    #[serde(default)]
    pub required: bool,
}

/// The pod's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxData {
    /// Anchored regex over the pod name (exact for a Pod, with the controller's suffix
    /// pattern for a Deployment, StatefulSet, ...).
    pub name_regex: String,
    /// The namespace.
    pub namespace: String,
    /// `securityContext.sysctls` of the pod.
    pub sysctls: BTreeMap<String, String>,
    /// `spec.hostname`, when the pod sets one (else the hostname is the pod name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Requests that are allowed or not as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDefaults {
    /// Whether container output may be read (`kubectl logs`); denied reads are redacted.
    #[serde(rename = "ReadStreamRequest")]
    pub read_stream: bool,
    /// Whether the host may write to a container's stdin.
    #[serde(rename = "WriteStreamRequest")]
    pub write_stream: bool,
    /// Whether the host may close a container's stdin.
    #[serde(rename = "CloseStdinRequest")]
    pub close_stdin: bool,
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerData {
    /// Container name (`io.kubernetes.cri.container-name`).
    pub name: String,
    /// `sandbox` for the pause container, `container` otherwise.
    #[serde(rename = "type")]
    pub kind: String,
    /// The image, normalized and pinned by digest.
    pub image: String,
    /// Every name the CRI may send for the image (as written in the output YAML, and
    /// normalized).
    pub image_names: Vec<String>,
    /// `securityContext.privileged`.
    pub privileged: bool,
    /// `securityContext.readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `unconfined`, `runtime-default` or `localhost`.
    pub seccomp: String,
    /// The process the container runs.
    pub process: ProcessData,
    /// The container's own mounts (besides [`Common::default_mounts`]).
    pub mounts: Vec<MountData>,
    /// Storages the container's volumes need (emptyDir).
    pub storages: Vec<StorageData>,
    /// The argv lists `ExecProcess` may run in this container.
    pub exec_commands: Vec<Vec<String>>,
    /// The pod spec's resource limits for this container (absent: no limit set).
    #[serde(default, skip_serializing_if = "ResourceLimits::is_empty")]
    pub resources: ResourceLimits,
}

/// A container's `resources.limits`, as the rules compare them with cgroup settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// `limits.memory` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// `limits.cpu` in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_milli: Option<u64>,
}

impl ResourceLimits {
    fn is_empty(&self) -> bool {
        self.memory_limit.is_none() && self.cpu_limit_milli.is_none()
    }
}

/// The process of a container, with the OCI field names the rules compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)] // the OCI spec's field names, which the rules compare
pub struct ProcessData {
    /// The command line (image entrypoint/cmd merged with the pod's command/args).
    pub Args: Vec<String>,
    /// Working directory.
    pub Cwd: String,
    /// User id, or `null` when not known at generation time (then not checked).
    pub UID: Option<u32>,
    /// Group id, or `null` when not known at generation time (then not checked).
    pub GID: Option<u32>,
    /// `NAME=value` entries that must all be sent.
    pub Env: Vec<String>,
    /// Anchored regexes for entries whose value is only known at run time.
    pub EnvRegex: Vec<String>,
    /// Whether the request must set `NoNewPrivileges`.
    pub NoNewPrivileges: bool,
    /// Whether the process has a terminal (`tty: true`).
    pub Terminal: bool,
    /// The capabilities any capability set may hold.
    pub Capabilities: Vec<String>,
    /// Supplementary groups besides the primary one (`supplementalGroups`, `fsGroup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub AdditionalGids: Vec<u32>,
}

/// A storage (besides the image pull) a container may ask the agent for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageData {
    /// Storage driver (`local`, `ephemeral`).
    pub driver: String,
    /// Regex over the mount point (placeholders as in mount sources).
    pub mount_point: String,
}

/// Generation settings: the `common` part of [`PolicyData`] and the defaults of the rest.
/// Loaded from `--settings settings.json`; missing fields take the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Copied into every policy.
    pub common: Common,
    /// Copied into every policy.
    pub request_defaults: RequestDefaults,
    /// The pause (sandbox) image. Resolved through the image layouts like any image, or
    /// used as is when pinned by digest and not found there.
    pub pause_image: String,
    /// The namespace of workloads that name none.
    pub default_namespace: String,
    /// The platform picked from a multi-platform image index, e.g. `linux/amd64`.
    pub platform: String,
}

impl Default for Settings {
    fn default() -> Self {
        let caps = |list: &[&str]| list.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>();
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mount = |dest: &str, kind: &str, source: &str, options: &[&str]| MountData {
            destination: dest.to_owned(),
            kind: kind.to_owned(),
            source: source.to_owned(),
            options: strings(options),
            alt_options: Vec::new(),
            required: false,
        };
        let svc = "[A-Z_][A-Z0-9_]*";
        let ip = r"[0-9]{1,3}(\.[0-9]{1,3}){3}";
        let port = "[0-9]{1,5}";
        Self {
            common: Common {
                cpath: "/run/kata-containers/shared/containers".to_owned(),
                default_caps: caps(&[
                    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                    "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                    "AUDIT_WRITE",
                ]),
                privileged_caps: caps(&[
                    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
                    "SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
                    "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
                    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
                    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
                    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
                    "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
                    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
                ]),
                masked_paths: strings(&[
                    "/proc/asound",
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                    "/sys/devices/virtual/powercap",
                ]),
                readonly_paths: strings(&[
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ]),
                sandbox_masked_paths: default_sandbox_masked_paths(),
                sandbox_readonly_paths: default_sandbox_readonly_paths(),
                default_mounts: vec![
                    mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
                    mount(
                        "/dev",
                        "tmpfs",
                        "tmpfs",
                        &["nosuid", "strictatime", "mode=755", "size=65536k"],
                    ),
                    mount(
                        "/dev/pts",
                        "devpts",
                        "devpts",
                        &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
                    ),
                    mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
                    mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
                    mount(
                        "/sys/fs/cgroup",
                        "cgroup",
                        "cgroup",
                        &["nosuid", "noexec", "nodev", "relatime", "ro"],
                    ),
                    mount("/dev/shm", "bind", "/run/kata-containers/sandbox/shm", &["rbind"]),
                ],
                default_sysctls: BTreeMap::from([
                    ("net.ipv4.ip_unprivileged_port_start".to_owned(), "0".to_owned()),
                    ("net.ipv4.ping_group_range".to_owned(), "0 2147483647".to_owned()),
                ]),
                allow_env_regex: vec![
                    format!("^{svc}_SERVICE_HOST={ip}$"),
                    format!("^{svc}_SERVICE_PORT={port}$"),
                    format!("^{svc}_SERVICE_PORT_[A-Z0-9_]+={port}$"),
                    format!("^{svc}_PORT=(tcp|udp|sctp)://{ip}:{port}$"),
                    format!("^{svc}_PORT_{port}_(TCP|UDP|SCTP)=(tcp|udp|sctp)://{ip}:{port}$"),
                    format!("^{svc}_PORT_{port}_(TCP|UDP|SCTP)_PROTO=(tcp|udp|sctp)$"),
                    format!("^{svc}_PORT_{port}_(TCP|UDP|SCTP)_PORT={port}$"),
                    format!("^{svc}_PORT_{port}_(TCP|UDP|SCTP)_ADDR={ip}$"),
                ],
                copy_file_regex: vec![
                    "^$(cpath)/$(bundle-id)-[a-z0-9]{16}-[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
                        .to_owned(),
                ],
                allowed_rlimits: default_allowed_rlimits(),
                seccomp_gated_syscalls: default_seccomp_gated_syscalls(),
            },
            request_defaults: RequestDefaults {
                read_stream: false,
                write_stream: false,
                close_stdin: false,
            },
            pause_image: "registry.k8s.io/pause:3.10".to_owned(),
            default_namespace: "default".to_owned(),
            platform: "linux/amd64".to_owned(),
        }
    }
}

fn default_sandbox_masked_paths() -> Vec<String> {
    [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn default_sandbox_readonly_paths() -> Vec<String> {
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        .into_iter()
        .map(String::from)
        .collect()
}

impl Default for Common {
    fn default() -> Self {
        Settings::default().common
    }
}

impl Default for RequestDefaults {
    fn default() -> Self {
        Settings::default().request_defaults
    }
}

/// Errors of [`generate`] and the settings loader.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// Reading the settings file failed.
    #[error("cannot read settings {path}")]
    SettingsRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The settings file is not valid.
    #[error("settings {path} are not valid")]
    SettingsJson {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Reading or understanding the Kubernetes YAML failed.
    #[error(transparent)]
    K8s(#[from] K8sError),
    /// Building the policy data of a pod failed.
    #[error("{workload}")]
    Pod {
        /// `Kind/name` of the workload.
        workload: String,
        /// The cause.
        #[source]
        source: Box<PodError>,
    },
    /// The input has no pod-bearing workload.
    #[error("no Pod or workload with a pod template found in the input")]
    NoWorkload,
    /// Serializing the policy data or the YAML failed.
    #[error("cannot serialize the {what}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Building the initdata failed.
    #[error(transparent)]
    InitData(#[from] InitDataError),
}

impl Settings {
    /// Load settings from a JSON file; fields it omits keep their defaults.
    pub fn load(path: &std::path::Path) -> Result<Self, GenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GenError::SettingsRead { path: path.to_owned(), source })?;
        serde_json::from_str(&text)
            .map_err(|source| GenError::SettingsJson { path: path.to_owned(), source })
    }
}

/// The policy generated for one workload.
#[derive(Debug, Clone)]
pub struct GeneratedPolicy {
    /// `Kind/name` of the workload.
    pub workload: String,
    /// The data the rules compare requests with.
    pub data: PolicyData,
    /// The full Rego text: [`RULES`] + `policy_data`.
    pub rego: String,
    /// The initdata TOML carrying the policy.
    pub initdata: String,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generated {
    /// One policy per workload, in input order.
    pub policies: Vec<GeneratedPolicy>,
    /// The input YAML with images pinned, the initdata annotation and the runtime class
    /// added (multi-document YAML).
    pub yaml: String,
}

/// Generate a policy for every workload in `documents` (see [`load_files`]), with
/// images resolved in `images`.
pub fn generate(
    mut documents: Vec<Document>,
    images: &ImageStore,
    settings: &Settings,
) -> Result<Generated, GenError> {
    let refs = k8s::References::collect(&documents);
    let mut policies = Vec::new();
    for doc in &mut documents {
        for workload in k8s::workloads(doc)? {
            let label = workload.label();
            let pinned = pod::build(&workload, &refs, images, settings)
                .map_err(|e| GenError::Pod { workload: label.clone(), source: Box::new(e) })?;
            let rego = render_policy(&pinned.data)?;
            let initdata = InitData::with_policy(Algorithm::Sha256, &rego).to_toml();
            let annotation = encode_annotation(initdata.as_bytes())?;
            if workload.apply(doc, &pinned.images, &annotation).is_none() {
                return Err(GenError::Serialize {
                    what: "YAML",
                    source: format!("{label}: the pod template moved while it was updated").into(),
                });
            }
            policies.push(GeneratedPolicy { workload: label, data: pinned.data, rego, initdata });
        }
    }
    if policies.is_empty() {
        return Err(GenError::NoWorkload);
    }
    let yaml = k8s::render(&documents)
        .map_err(|e| GenError::Serialize { what: "YAML", source: Box::new(e) })?;
    Ok(Generated { policies, yaml })
}

/// The Rego text of a generated policy: [`RULES`], then `policy_data := <JSON>`.
pub fn render_policy(data: &PolicyData) -> Result<String, GenError> {
    let json = serde_json::to_string_pretty(data)
        .map_err(|e| GenError::Serialize { what: "policy data", source: Box::new(e) })?;
    let mut out = String::with_capacity(RULES.len() + json.len() + 64);
    out.push_str(RULES.trim_end());
    out.push_str("\n\n# ---- data (generated by kata-cc-policy) ---------------------------------------\n");
    out.push_str(POLICY_DATA_MARKER.trim_start_matches('\n'));
    out.push_str(&json);
    out.push('\n');
    Ok(out)
}
