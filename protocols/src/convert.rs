//! Conversion between the Kata wire spec ([`crate::oci`]) and the `oci-spec` runtime types.
//!
//! The agent API carries the OCI runtime spec as protobuf messages (`oci.proto`) whose
//! shape follows Kata Containers. This module translates them to and from
//! [`oci_spec::runtime`], in both directions, field by field.
//!
//! * `*_from_grpc` reads a message the host sent. The host is not trusted: these
//!   functions never panic, and every value that has no OCI meaning (an unknown
//!   namespace type, capability, rlimit, seccomp action, device type, a number out of
//!   the OCI range, ...) yields a [`ConvertError`](crate::convert::ConvertError) naming the field, for example
//!   `linux.namespaces[2].type: unknown namespace "foo"`.
//! * `*_to_grpc` encodes a spec to send (shim, CLI). It cannot fail.
//!
//! # Presence rules
//!
//! Proto3 scalars and repeated fields carry no presence, and Kata's Go runtime encodes
//! a missing (nil) OCI value as the zero value. Going from the wire to OCI, therefore:
//!
//! * an empty string, an empty list, an empty map (except `annotations`) and a zero
//!   number in an optional OCI field mean "not set" (`None`). This covers, among
//!   others, `hostname`, `process.{args,env,rlimits,apparmorProfile,selinuxLabel}`,
//!   `process.oomScoreAdj` (0), `user.{additionalGids,username}`, `mount.{type,source,
//!   options}`, hook `{args,env,timeout}`, every optional number of `linux.resources`
//!   (memory `limit`/`reservation`/`swap`/`kernel`/`kernelTCP`/`swappiness`, cpu
//!   `shares`/`quota`/`period`/`realtime*`, blkio weights, `classID`), device
//!   `fileMode`, seccomp `valueTwo`, and every optional list of `linux`;
//! * a `false` `disableOOMKiller` means "not set"; `terminal`, `noNewPrivileges` and
//!   `root.readonly` are always set (`Some(bool)`), as in Kata's agent;
//! * a device-cgroup rule's `major`/`minor` of `0` or `-1` is the wildcard (`None`);
//!   the encoder writes `0` for the wildcard, as Kata's Go runtime does;
//! * message fields (`process`, `root`, `hooks`, `linux`, `consoleSize`, `capabilities`,
//!   `resources`, `memory`, `cpu`, `pids`, `blockIO`, `network`, `seccomp`,
//!   `intelRdt`) keep their presence exactly, and so does a syscall's `errnoRet`
//!   (a proto `oneof`);
//! * `annotations` is always `Some` (possibly empty), and so is `resources.devices`
//!   when `resources` is present: an empty map or list means the same as none there,
//!   and this is what `Spec::default()` holds;
//! * device `uid`/`gid` are always `Some` (0 is root, which is also what "unset" means);
//!   an absent `process.user` is uid 0, gid 0.
//!
//! Negative numbers are passed through where OCI gives them a meaning (memory `-1` is
//! "unlimited", cpu quota `-1` is "no limit"). Strings are written with the names Kata's
//! Go runtime uses: namespaces `pid`, `network`, `mount`, `ipc`, `uts`, `user`,
//! `cgroup`, `time` (`net` and `mnt` are accepted too), capabilities `CAP_*` (a bare or
//! JSON-quoted name is accepted too), `RLIMIT_*`, `SCMP_ACT_*`, `SCMP_CMP_*`,
//! `SCMP_ARCH_*`, `SECCOMP_FILTER_FLAG_*`, device types `c`, `b`, `u`, `p` (and `a`
//! for device-cgroup rules).
//!
//! # What the wire cannot carry
//!
//! Fields of `oci-spec` that `oci.proto` lacks are dropped by `*_to_grpc`:
//! `domainname`, `vm`, `zos`, `solaris`, `windows`; `process.{commandLine, ioPriority,
//! scheduler, execCPUAffinity}`, `user.umask`; mount `uidMappings`/`gidMappings`;
//! `linux.{netDevices, memoryPolicy, personality, timeOffsets}`;
//! `resources.{rdma, unified}`, memory `useHierarchy`/`checkBeforeUpdate`, cpu
//! `idle`/`burst`; seccomp `defaultErrnoRet`, `listenerPath`, `listenerMetadata`;
//! intelRdt everything but `l3CacheSchema`.
//!
//! Within the fields both sides have, OCI → wire → OCI gives back the same spec except
//! where the presence rules above merge two OCI values. An explicit zero/empty optional
//! value comes back as `None` (`valueTwo: 0`, device-cgroup `major: 0`,
//! `disableOOMKiller: false`, `args: []`, ...: same meaning), and an absent `terminal`,
//! `noNewPrivileges`, `root.readonly`, device `uid`/`gid`, `annotations` or
//! `resources.devices` comes back as its zero value (same meaning). Three merges do
//! change meaning, because proto3 and Kata's Go runtime cannot tell 0 from unset:
//! `oomScoreAdj: 0` and `swappiness: 0` come back unset, as in Kata's agent; device
//! `fileMode: 0` comes back unset (the runtime's default, 0666), where Kata's agent
//! would make a mode-0000 node of every device the Go runtime sent without a mode.
//! Capability sets lose their (meaningless) order. The encoder clamps a console
//! dimension above `u32::MAX` and writes a negative hugepage limit (not valid OCI) as
//! 0; a non-UTF-8 path is written lossily. The decoder refuses device type `a` for a
//! device node (OCI allows only `c`, `b`, `u`, `p` there), so such a spec does not
//! round-trip.
//!
//! # Example
//!
//! ```
//! use protocols::convert::{spec_from_grpc, spec_to_grpc};
//!
//! let spec = oci_spec::runtime::Spec::default();
//! let wire = spec_to_grpc(&spec);
//! assert_eq!(wire.Linux.Namespaces[1].Type, "network");
//! assert_eq!(spec_from_grpc(&wire).unwrap(), spec);
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime as oci;
use protobuf::MessageField;

use crate::oci as grpc;

/// A wire spec that has no OCI meaning.
///
/// `path` is the field, relative to the message handed to the conversion function and
/// written with the OCI `config.json` names (`linux.namespaces[2].type`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A name that must be one of a fixed set names none of them.
    #[error("{path}: unknown {kind} {value:?}")]
    Unknown {
        /// The field.
        path: String,
        /// What the name should have named (`namespace`, `capability`, ...).
        kind: &'static str,
        /// The name received (its first 64 characters: the host chooses its length).
        value: String,
    },
    /// A number outside the range of its OCI field.
    #[error("{path}: {value} is out of range ({expected})")]
    OutOfRange {
        /// The field.
        path: String,
        /// The number received.
        value: i128,
        /// The range OCI accepts, in words.
        expected: &'static str,
    },
    /// `oci-spec` refused to build the value.
    #[error("{path}: rejected by oci-spec")]
    Rejected {
        /// The field.
        path: String,
        /// Why `oci-spec` refused it.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

impl ConvertError {
    /// The field the error is about, e.g. `linux.namespaces[2].type`.
    pub fn path(&self) -> &str {
        match self {
            Self::Unknown { path, .. }
            | Self::OutOfRange { path, .. }
            | Self::Rejected { path, .. } => path,
        }
    }

    fn path_mut(&mut self) -> &mut String {
        match self {
            Self::Unknown { path, .. }
            | Self::OutOfRange { path, .. }
            | Self::Rejected { path, .. } => path,
        }
    }

    /// Prefixes the path with the field `name` that contains it.
    fn at(mut self, name: &str) -> Self {
        let path = self.path_mut();
        *path = if path.is_empty() {
            name.to_owned()
        } else if path.starts_with('[') {
            format!("{name}{path}")
        } else {
            format!("{name}.{path}")
        };
        self
    }

    /// Prefixes the path with the list index `index` that contains it.
    fn at_index(mut self, index: usize) -> Self {
        let path = self.path_mut();
        *path = if path.is_empty() || path.starts_with('[') {
            format!("[{index}]{path}")
        } else {
            format!("[{index}].{path}")
        };
        self
    }
}

fn unknown(kind: &'static str, value: &str) -> ConvertError {
    ConvertError::Unknown {
        path: String::new(),
        kind,
        value: value.chars().take(64).collect(),
    }
}

fn out_of_range(value: impl Into<i128>, expected: &'static str) -> ConvertError {
    ConvertError::OutOfRange {
        path: String::new(),
        value: value.into(),
        expected,
    }
}

/// Takes the result of an `oci-spec` builder.
fn built<T>(result: Result<T, oci_spec::OciSpecError>) -> Result<T, ConvertError> {
    result.map_err(|source| ConvertError::Rejected {
        path: String::new(),
        source,
    })
}

/// Extension to put a field name on the error of a nested conversion.
trait At<T> {
    fn at(self, name: &str) -> Result<T, ConvertError>;
}

impl<T> At<T> for Result<T, ConvertError> {
    fn at(self, name: &str) -> Result<T, ConvertError> {
        self.map_err(|e| e.at(name))
    }
}

// ---------------------------------------------------------------------------
// Presence helpers (wire → OCI).

fn opt_string(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn opt_vec<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn opt_nonzero<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// Converts every element of a list; an empty list is `None`.
fn opt_list<G, O>(
    items: &[G],
    mut convert: impl FnMut(&G) -> Result<O, ConvertError>,
) -> Result<Option<Vec<O>>, ConvertError> {
    if items.is_empty() {
        return Ok(None);
    }
    list(items, &mut convert).map(Some)
}

fn list<G, O>(
    items: &[G],
    mut convert: impl FnMut(&G) -> Result<O, ConvertError>,
) -> Result<Vec<O>, ConvertError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| convert(item).map_err(|e| e.at_index(i)))
        .collect()
}

fn parse_named<T: FromStr>(s: &str, kind: &'static str) -> Result<T, ConvertError> {
    s.parse::<T>().map_err(|_| unknown(kind, s))
}

fn non_zero_u16(v: u32) -> Result<Option<u16>, ConvertError> {
    match v {
        0 => Ok(None),
        v => u16::try_from(v)
            .map(Some)
            .map_err(|_| out_of_range(v, "0..=65535")),
    }
}

// ---------------------------------------------------------------------------
// Encoding helpers (OCI → wire).

fn string_or_empty(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn vec_or_empty<T: Clone>(v: &Option<Vec<T>>) -> Vec<T> {
    v.clone().unwrap_or_default()
}

fn map_list<O, G>(v: &Option<Vec<O>>, f: impl FnMut(&O) -> G) -> Vec<G> {
    v.as_deref().unwrap_or_default().iter().map(f).collect()
}

// ---------------------------------------------------------------------------
// Spec.

/// Kata wire spec → OCI runtime spec.
///
/// The input is host-controlled: this never panics, and a value with no OCI meaning
/// gives a [`ConvertError`] naming the field. See the [module docs](self) for which
/// zero values are read as "not set".
pub fn spec_from_grpc(s: &grpc::Spec) -> Result<oci::Spec, ConvertError> {
    let mut spec = oci::Spec::default();
    spec.set_version(s.Version.clone());
    spec.set_process(
        s.Process
            .as_ref()
            .map(process_from_grpc)
            .transpose()
            .at("process")?,
    );
    spec.set_root(s.Root.as_ref().map(root_from_grpc));
    spec.set_hostname(opt_string(&s.Hostname));
    spec.set_mounts(opt_list(&s.Mounts, |m| Ok(mount_from_grpc(m))).at("mounts")?);
    spec.set_hooks(
        s.Hooks
            .as_ref()
            .map(hooks_from_grpc)
            .transpose()
            .at("hooks")?,
    );
    spec.set_annotations(Some(s.Annotations.clone()));
    spec.set_linux(
        s.Linux
            .as_ref()
            .map(linux_from_grpc)
            .transpose()
            .at("linux")?,
    );
    Ok(spec)
}

/// OCI runtime spec → Kata wire spec (used by the shim and the CLI to send a
/// `config.json`). Fields the wire lacks are dropped; see the [module docs](self).
pub fn spec_to_grpc(s: &oci::Spec) -> grpc::Spec {
    grpc::Spec {
        Version: s.version().clone(),
        Process: MessageField::from_option(s.process().as_ref().map(process_to_grpc)),
        Root: MessageField::from_option(s.root().as_ref().map(root_to_grpc)),
        Hostname: string_or_empty(s.hostname()),
        Mounts: map_list(s.mounts(), mount_to_grpc),
        Hooks: MessageField::from_option(s.hooks().as_ref().map(hooks_to_grpc)),
        Annotations: s.annotations().clone().unwrap_or_default(),
        Linux: MessageField::from_option(s.linux().as_ref().map(linux_to_grpc)),
        ..Default::default()
    }
}

fn root_from_grpc(r: &grpc::Root) -> oci::Root {
    let mut root = oci::Root::default();
    root.set_path(PathBuf::from(&r.Path));
    root.set_readonly(Some(r.Readonly));
    root
}

fn root_to_grpc(r: &oci::Root) -> grpc::Root {
    grpc::Root {
        Path: path_string(r.path()),
        Readonly: r.readonly().unwrap_or_default(),
        ..Default::default()
    }
}

fn mount_from_grpc(m: &grpc::Mount) -> oci::Mount {
    let mut mount = oci::Mount::default();
    mount.set_destination(PathBuf::from(&m.destination));
    mount.set_typ(opt_string(&m.type_));
    mount.set_source(opt_path(&m.source));
    mount.set_options(opt_vec(&m.options));
    mount
}

fn mount_to_grpc(m: &oci::Mount) -> grpc::Mount {
    grpc::Mount {
        destination: path_string(m.destination()),
        source: m.source().as_deref().map(path_string).unwrap_or_default(),
        type_: string_or_empty(m.typ()),
        options: vec_or_empty(m.options()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Hooks.

fn hooks_from_grpc(h: &grpc::Hooks) -> Result<oci::Hooks, ConvertError> {
    let mut hooks = oci::Hooks::default();
    #[allow(deprecated)] // `prestart` is deprecated in OCI but still on the wire.
    hooks.set_prestart(opt_list(&h.Prestart, hook_from_grpc).at("prestart")?);
    hooks.set_create_runtime(opt_list(&h.CreateRuntime, hook_from_grpc).at("createRuntime")?);
    hooks.set_create_container(opt_list(&h.CreateContainer, hook_from_grpc).at("createContainer")?);
    hooks.set_start_container(opt_list(&h.StartContainer, hook_from_grpc).at("startContainer")?);
    hooks.set_poststart(opt_list(&h.Poststart, hook_from_grpc).at("poststart")?);
    hooks.set_poststop(opt_list(&h.Poststop, hook_from_grpc).at("poststop")?);
    Ok(hooks)
}

fn hooks_to_grpc(h: &oci::Hooks) -> grpc::Hooks {
    #[allow(deprecated)] // `prestart` is deprecated in OCI but still on the wire.
    let prestart = map_list(h.prestart(), hook_to_grpc);
    grpc::Hooks {
        Prestart: prestart,
        Poststart: map_list(h.poststart(), hook_to_grpc),
        Poststop: map_list(h.poststop(), hook_to_grpc),
        CreateRuntime: map_list(h.create_runtime(), hook_to_grpc),
        CreateContainer: map_list(h.create_container(), hook_to_grpc),
        StartContainer: map_list(h.start_container(), hook_to_grpc),
        ..Default::default()
    }
}

fn hook_from_grpc(h: &grpc::Hook) -> Result<oci::Hook, ConvertError> {
    if h.Timeout < 0 {
        return Err(out_of_range(h.Timeout, "seconds > 0, or 0 for none").at("timeout"));
    }
    let mut hook = oci::Hook::default();
    hook.set_path(PathBuf::from(&h.Path));
    hook.set_args(opt_vec(&h.Args));
    hook.set_env(opt_vec(&h.Env));
    hook.set_timeout(opt_nonzero(h.Timeout));
    Ok(hook)
}

fn hook_to_grpc(h: &oci::Hook) -> grpc::Hook {
    grpc::Hook {
        Path: path_string(h.path()),
        Args: vec_or_empty(h.args()),
        Env: vec_or_empty(h.env()),
        Timeout: h.timeout().unwrap_or_default(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Process.

/// Kata wire process → OCI process (container init or exec). Never panics; error paths
/// are relative to the process (`rlimits[0].type`).
pub fn process_from_grpc(p: &grpc::Process) -> Result<oci::Process, ConvertError> {
    let mut process = oci::Process::default();
    process.set_terminal(Some(p.Terminal));
    let console_size = p
        .ConsoleSize
        .as_ref()
        .map(|b| {
            built(
                oci::BoxBuilder::default()
                    .height(b.Height)
                    .width(b.Width)
                    .build(),
            )
        })
        .transpose()
        .at("consoleSize")?;
    process.set_console_size(console_size);
    process.set_user(p.User.as_ref().map(user_from_grpc).unwrap_or_default());
    process.set_args(opt_vec(&p.Args));
    process.set_env(opt_vec(&p.Env));
    process.set_cwd(PathBuf::from(&p.Cwd));
    process.set_capabilities(
        p.Capabilities
            .as_ref()
            .map(capabilities_from_grpc)
            .transpose()
            .at("capabilities")?,
    );
    process.set_rlimits(opt_list(&p.Rlimits, rlimit_from_grpc).at("rlimits")?);
    process.set_no_new_privileges(Some(p.NoNewPrivileges));
    process.set_apparmor_profile(opt_string(&p.ApparmorProfile));
    let oom_score_adj = match p.OOMScoreAdj {
        0 => None,
        v => Some(
            i32::try_from(v).map_err(|_| out_of_range(v, "a 32-bit integer").at("oomScoreAdj"))?,
        ),
    };
    process.set_oom_score_adj(oom_score_adj);
    process.set_selinux_label(opt_string(&p.SelinuxLabel));
    Ok(process)
}

/// OCI process → Kata wire process. Fields the wire lacks are dropped, and a console
/// dimension above `u32::MAX` is clamped to it.
pub fn process_to_grpc(p: &oci::Process) -> grpc::Process {
    grpc::Process {
        Terminal: p.terminal().unwrap_or_default(),
        ConsoleSize: MessageField::from_option(p.console_size().map(|b| grpc::Box {
            Height: u32::try_from(b.height()).unwrap_or(u32::MAX),
            Width: u32::try_from(b.width()).unwrap_or(u32::MAX),
            ..Default::default()
        })),
        User: MessageField::some(user_to_grpc(p.user())),
        Args: vec_or_empty(p.args()),
        Env: vec_or_empty(p.env()),
        Cwd: path_string(p.cwd()),
        Capabilities: MessageField::from_option(
            p.capabilities().as_ref().map(capabilities_to_grpc),
        ),
        Rlimits: map_list(p.rlimits(), |r| grpc::POSIXRlimit {
            Type: r.typ().to_string(),
            Hard: r.hard(),
            Soft: r.soft(),
            ..Default::default()
        }),
        NoNewPrivileges: p.no_new_privileges().unwrap_or_default(),
        ApparmorProfile: string_or_empty(p.apparmor_profile()),
        OOMScoreAdj: p.oom_score_adj().map(i64::from).unwrap_or_default(),
        SelinuxLabel: string_or_empty(p.selinux_label()),
        ..Default::default()
    }
}

fn user_from_grpc(u: &grpc::User) -> oci::User {
    let mut user = oci::User::default();
    user.set_uid(u.UID);
    user.set_gid(u.GID);
    user.set_additional_gids(opt_vec(&u.AdditionalGids));
    user.set_username(opt_string(&u.Username));
    user
}

fn user_to_grpc(u: &oci::User) -> grpc::User {
    grpc::User {
        UID: u.uid(),
        GID: u.gid(),
        AdditionalGids: vec_or_empty(u.additional_gids()),
        Username: string_or_empty(u.username()),
        ..Default::default()
    }
}

fn capabilities_from_grpc(
    c: &grpc::LinuxCapabilities,
) -> Result<oci::LinuxCapabilities, ConvertError> {
    let set = |names: &[String], field: &str| -> Result<Option<oci::Capabilities>, ConvertError> {
        opt_list(names, |name| parse_capability(name))
            .map(|caps| caps.map(|caps| caps.into_iter().collect()))
            .at(field)
    };
    let mut caps = oci::LinuxCapabilities::default();
    caps.set_bounding(set(&c.Bounding, "bounding")?);
    caps.set_effective(set(&c.Effective, "effective")?);
    caps.set_inheritable(set(&c.Inheritable, "inheritable")?);
    caps.set_permitted(set(&c.Permitted, "permitted")?);
    caps.set_ambient(set(&c.Ambient, "ambient")?);
    Ok(caps)
}

/// Parses `CAP_SYS_ADMIN`; like Kata's agent, also `SYS_ADMIN` and `"CAP_SYS_ADMIN"`.
fn parse_capability(name: &str) -> Result<oci::Capability, ConvertError> {
    let unquoted = name
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(name);
    let bare = unquoted.strip_prefix("CAP_").unwrap_or(unquoted);
    bare.parse::<oci::Capability>()
        .map_err(|_| unknown("capability", name))
}

fn capabilities_to_grpc(c: &oci::LinuxCapabilities) -> grpc::LinuxCapabilities {
    // A set has no order; sort so that the same spec always encodes the same bytes.
    let names = |set: &Option<HashSet<oci::Capability>>| -> Vec<String> {
        let mut names: Vec<String> = set
            .iter()
            .flatten()
            .map(|cap| format!("CAP_{cap}"))
            .collect();
        names.sort_unstable();
        names
    };
    grpc::LinuxCapabilities {
        Bounding: names(c.bounding()),
        Effective: names(c.effective()),
        Inheritable: names(c.inheritable()),
        Permitted: names(c.permitted()),
        Ambient: names(c.ambient()),
        ..Default::default()
    }
}

fn rlimit_from_grpc(r: &grpc::POSIXRlimit) -> Result<oci::PosixRlimit, ConvertError> {
    let typ: oci::PosixRlimitType = parse_named(&r.Type, "rlimit").at("type")?;
    built(
        oci::PosixRlimitBuilder::default()
            .typ(typ)
            .hard(r.Hard)
            .soft(r.Soft)
            .build(),
    )
}

// ---------------------------------------------------------------------------
// Linux.

fn linux_from_grpc(l: &grpc::Linux) -> Result<oci::Linux, ConvertError> {
    let mut linux = oci::Linux::default();
    linux.set_uid_mappings(opt_list(&l.UIDMappings, id_mapping_from_grpc).at("uidMappings")?);
    linux.set_gid_mappings(opt_list(&l.GIDMappings, id_mapping_from_grpc).at("gidMappings")?);
    linux.set_sysctl((!l.Sysctl.is_empty()).then(|| l.Sysctl.clone()));
    linux.set_resources(
        l.Resources
            .as_ref()
            .map(resources_from_grpc)
            .transpose()
            .at("resources")?,
    );
    linux.set_cgroups_path(opt_path(&l.CgroupsPath));
    linux.set_namespaces(opt_list(&l.Namespaces, namespace_from_grpc).at("namespaces")?);
    linux.set_devices(opt_list(&l.Devices, device_from_grpc).at("devices")?);
    linux.set_seccomp(
        l.Seccomp
            .as_ref()
            .map(seccomp_from_grpc)
            .transpose()
            .at("seccomp")?,
    );
    linux.set_rootfs_propagation(opt_string(&l.RootfsPropagation));
    linux.set_masked_paths(opt_vec(&l.MaskedPaths));
    linux.set_readonly_paths(opt_vec(&l.ReadonlyPaths));
    linux.set_mount_label(opt_string(&l.MountLabel));
    linux.set_intel_rdt(l.IntelRdt.as_ref().map(|rdt| {
        let mut intel_rdt = oci::LinuxIntelRdt::default();
        intel_rdt.set_l3_cache_schema(opt_string(&rdt.L3CacheSchema));
        intel_rdt
    }));
    Ok(linux)
}

fn linux_to_grpc(l: &oci::Linux) -> grpc::Linux {
    grpc::Linux {
        UIDMappings: map_list(l.uid_mappings(), id_mapping_to_grpc),
        GIDMappings: map_list(l.gid_mappings(), id_mapping_to_grpc),
        Sysctl: l.sysctl().clone().unwrap_or_default(),
        Resources: MessageField::from_option(l.resources().as_ref().map(resources_to_grpc)),
        CgroupsPath: l
            .cgroups_path()
            .as_deref()
            .map(path_string)
            .unwrap_or_default(),
        Namespaces: map_list(l.namespaces(), |ns| grpc::LinuxNamespace {
            Type: namespace_name(ns.typ()).to_owned(),
            Path: ns.path().as_deref().map(path_string).unwrap_or_default(),
            ..Default::default()
        }),
        Devices: map_list(l.devices(), device_to_grpc),
        Seccomp: MessageField::from_option(l.seccomp().as_ref().map(seccomp_to_grpc)),
        RootfsPropagation: string_or_empty(l.rootfs_propagation()),
        MaskedPaths: vec_or_empty(l.masked_paths()),
        ReadonlyPaths: vec_or_empty(l.readonly_paths()),
        MountLabel: string_or_empty(l.mount_label()),
        IntelRdt: MessageField::from_option(l.intel_rdt().as_ref().map(|rdt| {
            grpc::LinuxIntelRdt {
                L3CacheSchema: string_or_empty(rdt.l3_cache_schema()),
                ..Default::default()
            }
        })),
        ..Default::default()
    }
}

fn id_mapping_from_grpc(m: &grpc::LinuxIDMapping) -> Result<oci::LinuxIdMapping, ConvertError> {
    built(
        oci::LinuxIdMappingBuilder::default()
            .host_id(m.HostID)
            .container_id(m.ContainerID)
            .size(m.Size)
            .build(),
    )
}

fn id_mapping_to_grpc(m: &oci::LinuxIdMapping) -> grpc::LinuxIDMapping {
    grpc::LinuxIDMapping {
        HostID: m.host_id(),
        ContainerID: m.container_id(),
        Size: m.size(),
        ..Default::default()
    }
}

/// The namespace names of the OCI Go types, which Kata's runtime puts on the wire.
fn namespace_name(t: oci::LinuxNamespaceType) -> &'static str {
    match t {
        oci::LinuxNamespaceType::Pid => "pid",
        oci::LinuxNamespaceType::Network => "network",
        oci::LinuxNamespaceType::Mount => "mount",
        oci::LinuxNamespaceType::Ipc => "ipc",
        oci::LinuxNamespaceType::Uts => "uts",
        oci::LinuxNamespaceType::User => "user",
        oci::LinuxNamespaceType::Cgroup => "cgroup",
        oci::LinuxNamespaceType::Time => "time",
    }
}

fn namespace_from_grpc(ns: &grpc::LinuxNamespace) -> Result<oci::LinuxNamespace, ConvertError> {
    // Also accepts "net" and "mnt" (what Kata's runtime-rs sends).
    let typ = oci::LinuxNamespaceType::try_from(ns.Type.as_str())
        .map_err(|_| unknown("namespace", &ns.Type).at("type"))?;
    let mut namespace = oci::LinuxNamespace::default();
    namespace.set_typ(typ);
    namespace.set_path(opt_path(&ns.Path));
    Ok(namespace)
}

fn device_from_grpc(d: &grpc::LinuxDevice) -> Result<oci::LinuxDevice, ConvertError> {
    // A device node is c, b, u or p; "a" (all) only makes sense in a cgroup rule.
    let typ = match parse_named::<oci::LinuxDeviceType>(&d.Type, "device type") {
        Ok(oci::LinuxDeviceType::A) | Err(_) => {
            return Err(unknown("device type", &d.Type).at("type"))
        }
        Ok(typ) => typ,
    };
    let mut device = oci::LinuxDevice::default();
    device.set_path(PathBuf::from(&d.Path));
    device.set_typ(typ);
    device.set_major(d.Major);
    device.set_minor(d.Minor);
    device.set_file_mode(opt_nonzero(d.FileMode));
    device.set_uid(Some(d.UID));
    device.set_gid(Some(d.GID));
    Ok(device)
}

fn device_to_grpc(d: &oci::LinuxDevice) -> grpc::LinuxDevice {
    grpc::LinuxDevice {
        Path: path_string(d.path()),
        Type: d.typ().as_str().to_owned(),
        Major: d.major(),
        Minor: d.minor(),
        FileMode: d.file_mode().unwrap_or_default(),
        UID: d.uid().unwrap_or_default(),
        GID: d.gid().unwrap_or_default(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Seccomp.

fn seccomp_from_grpc(s: &grpc::LinuxSeccomp) -> Result<oci::LinuxSeccomp, ConvertError> {
    let mut seccomp = oci::LinuxSeccomp::default();
    seccomp
        .set_default_action(parse_named(&s.DefaultAction, "seccomp action").at("defaultAction")?);
    seccomp.set_architectures(
        opt_list(&s.Architectures, |a| parse_named(a, "seccomp architecture"))
            .at("architectures")?,
    );
    seccomp.set_flags(opt_list(&s.Flags, |f| parse_named(f, "seccomp flag")).at("flags")?);
    seccomp.set_syscalls(opt_list(&s.Syscalls, syscall_from_grpc).at("syscalls")?);
    Ok(seccomp)
}

fn seccomp_to_grpc(s: &oci::LinuxSeccomp) -> grpc::LinuxSeccomp {
    grpc::LinuxSeccomp {
        DefaultAction: s.default_action().to_string(),
        Architectures: map_list(s.architectures(), ToString::to_string),
        Flags: map_list(s.flags(), ToString::to_string),
        Syscalls: map_list(s.syscalls(), syscall_to_grpc),
        ..Default::default()
    }
}

fn syscall_from_grpc(s: &grpc::LinuxSyscall) -> Result<oci::LinuxSyscall, ConvertError> {
    let mut syscall = oci::LinuxSyscall::default();
    syscall.set_names(s.Names.clone());
    syscall.set_action(parse_named(&s.Action, "seccomp action").at("action")?);
    syscall.set_errno_ret(s.has_errnoret().then(|| s.errnoret()));
    syscall.set_args(opt_list(&s.Args, seccomp_arg_from_grpc).at("args")?);
    Ok(syscall)
}

fn syscall_to_grpc(s: &oci::LinuxSyscall) -> grpc::LinuxSyscall {
    grpc::LinuxSyscall {
        Names: s.names().clone(),
        Action: s.action().to_string(),
        ErrnoRet: s.errno_ret().map(grpc::linux_syscall::ErrnoRet::Errnoret),
        Args: map_list(s.args(), |a| grpc::LinuxSeccompArg {
            Index: a.index() as u64,
            Value: a.value(),
            ValueTwo: a.value_two().unwrap_or_default(),
            Op: a.op().to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn seccomp_arg_from_grpc(a: &grpc::LinuxSeccompArg) -> Result<oci::LinuxSeccompArg, ConvertError> {
    let index =
        usize::try_from(a.Index).map_err(|_| out_of_range(a.Index, "a usize").at("index"))?;
    let op: oci::LinuxSeccompOperator = parse_named(&a.Op, "seccomp operator").at("op")?;
    let mut arg = oci::LinuxSeccompArgBuilder::default()
        .index(index)
        .value(a.Value)
        .op(op);
    if a.ValueTwo != 0 {
        arg = arg.value_two(a.ValueTwo);
    }
    built(arg.build())
}

// ---------------------------------------------------------------------------
// Resources.

/// Kata wire cgroup resources → OCI resources (also used by `UpdateContainer`).
/// Never panics; error paths are relative to the resources (`blockIO.weight`).
pub fn resources_from_grpc(r: &grpc::LinuxResources) -> Result<oci::LinuxResources, ConvertError> {
    let mut res = oci::LinuxResources::default();
    res.set_devices(Some(
        list(&r.Devices, device_cgroup_from_grpc).at("devices")?,
    ));
    res.set_memory(r.Memory.as_ref().map(memory_from_grpc));
    res.set_cpu(r.CPU.as_ref().map(cpu_from_grpc));
    res.set_pids(r.Pids.as_ref().map(|p| {
        let mut pids = oci::LinuxPids::default();
        pids.set_limit(p.Limit);
        pids
    }));
    res.set_block_io(
        r.BlockIO
            .as_ref()
            .map(block_io_from_grpc)
            .transpose()
            .at("blockIO")?,
    );
    res.set_hugepage_limits(opt_list(&r.HugepageLimits, hugepage_from_grpc).at("hugepageLimits")?);
    res.set_network(r.Network.as_ref().map(|n| {
        let mut network = oci::LinuxNetwork::default();
        network.set_class_id(opt_nonzero(n.ClassID));
        network.set_priorities((!n.Priorities.is_empty()).then(|| {
            n.Priorities
                .iter()
                .map(|p| {
                    let mut prio = oci::LinuxInterfacePriority::default();
                    prio.set_name(p.Name.clone());
                    prio.set_priority(p.Priority);
                    prio
                })
                .collect()
        }));
        network
    }));
    Ok(res)
}

/// OCI resources → Kata wire resources. `rdma` and `unified` are dropped; a negative
/// hugepage limit (not valid OCI) is written as 0.
pub fn resources_to_grpc(r: &oci::LinuxResources) -> grpc::LinuxResources {
    grpc::LinuxResources {
        Devices: map_list(r.devices(), |d| grpc::LinuxDeviceCgroup {
            Allow: d.allow(),
            Type: d.typ().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            Major: d.major().unwrap_or_default(),
            Minor: d.minor().unwrap_or_default(),
            Access: string_or_empty(d.access()),
            ..Default::default()
        }),
        Memory: MessageField::from_option(r.memory().as_ref().map(memory_to_grpc)),
        CPU: MessageField::from_option(r.cpu().as_ref().map(cpu_to_grpc)),
        Pids: MessageField::from_option(r.pids().map(|p| grpc::LinuxPids {
            Limit: p.limit(),
            ..Default::default()
        })),
        BlockIO: MessageField::from_option(r.block_io().as_ref().map(block_io_to_grpc)),
        HugepageLimits: map_list(r.hugepage_limits(), |h| grpc::LinuxHugepageLimit {
            Pagesize: h.page_size().clone(),
            Limit: u64::try_from(h.limit()).unwrap_or_default(),
            ..Default::default()
        }),
        Network: MessageField::from_option(r.network().as_ref().map(|n| grpc::LinuxNetwork {
            ClassID: n.class_id().unwrap_or_default(),
            Priorities: map_list(n.priorities(), |p| grpc::LinuxInterfacePriority {
                Name: p.name().clone(),
                Priority: p.priority(),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn device_cgroup_from_grpc(
    d: &grpc::LinuxDeviceCgroup,
) -> Result<oci::LinuxDeviceCgroup, ConvertError> {
    // 0 is what Kata's Go runtime sends for a wildcard, -1 what Kata's older agent used.
    let wildcard = |v: i64, field: &str| match v {
        -1 | 0 => Ok(None),
        v if v > 0 => Ok(Some(v)),
        v => Err(out_of_range(v, "a device number, or 0 or -1 for any").at(field)),
    };
    let typ = match d.Type.as_str() {
        "" => None,
        t => Some(parse_named::<oci::LinuxDeviceType>(t, "device type").at("type")?),
    };
    let mut rule = oci::LinuxDeviceCgroup::default();
    rule.set_allow(d.Allow);
    rule.set_typ(typ);
    rule.set_major(wildcard(d.Major, "major")?);
    rule.set_minor(wildcard(d.Minor, "minor")?);
    rule.set_access(opt_string(&d.Access));
    Ok(rule)
}

fn memory_from_grpc(m: &grpc::LinuxMemory) -> oci::LinuxMemory {
    let mut memory = oci::LinuxMemory::default();
    memory.set_limit(opt_nonzero(m.Limit));
    memory.set_reservation(opt_nonzero(m.Reservation));
    memory.set_swap(opt_nonzero(m.Swap));
    #[allow(deprecated)] // kernel memory limits are obsolete but still on the wire.
    memory.set_kernel(opt_nonzero(m.Kernel));
    memory.set_kernel_tcp(opt_nonzero(m.KernelTCP));
    memory.set_swappiness(opt_nonzero(m.Swappiness));
    memory.set_disable_oom_killer(opt_nonzero(m.DisableOOMKiller));
    memory
}

fn memory_to_grpc(m: &oci::LinuxMemory) -> grpc::LinuxMemory {
    #[allow(deprecated)] // kernel memory limits are obsolete but still on the wire.
    let kernel = m.kernel();
    grpc::LinuxMemory {
        Limit: m.limit().unwrap_or_default(),
        Reservation: m.reservation().unwrap_or_default(),
        Swap: m.swap().unwrap_or_default(),
        Kernel: kernel.unwrap_or_default(),
        KernelTCP: m.kernel_tcp().unwrap_or_default(),
        Swappiness: m.swappiness().unwrap_or_default(),
        DisableOOMKiller: m.disable_oom_killer().unwrap_or_default(),
        ..Default::default()
    }
}

fn cpu_from_grpc(c: &grpc::LinuxCPU) -> oci::LinuxCpu {
    let mut cpu = oci::LinuxCpu::default();
    cpu.set_shares(opt_nonzero(c.Shares));
    cpu.set_quota(opt_nonzero(c.Quota));
    cpu.set_period(opt_nonzero(c.Period));
    cpu.set_realtime_runtime(opt_nonzero(c.RealtimeRuntime));
    cpu.set_realtime_period(opt_nonzero(c.RealtimePeriod));
    cpu.set_cpus(opt_string(&c.Cpus));
    cpu.set_mems(opt_string(&c.Mems));
    cpu
}

fn cpu_to_grpc(c: &oci::LinuxCpu) -> grpc::LinuxCPU {
    grpc::LinuxCPU {
        Shares: c.shares().unwrap_or_default(),
        Quota: c.quota().unwrap_or_default(),
        Period: c.period().unwrap_or_default(),
        RealtimeRuntime: c.realtime_runtime().unwrap_or_default(),
        RealtimePeriod: c.realtime_period().unwrap_or_default(),
        Cpus: string_or_empty(c.cpus()),
        Mems: string_or_empty(c.mems()),
        ..Default::default()
    }
}

fn block_io_from_grpc(b: &grpc::LinuxBlockIO) -> Result<oci::LinuxBlockIo, ConvertError> {
    let throttle = |devices: &[grpc::LinuxThrottleDevice], field: &str| {
        opt_list(devices, |t| {
            built(
                oci::LinuxThrottleDeviceBuilder::default()
                    .major(t.Major)
                    .minor(t.Minor)
                    .rate(t.Rate)
                    .build(),
            )
        })
        .at(field)
    };
    let mut block_io = oci::LinuxBlockIo::default();
    block_io.set_weight(non_zero_u16(b.Weight).at("weight")?);
    block_io.set_leaf_weight(non_zero_u16(b.LeafWeight).at("leafWeight")?);
    block_io.set_weight_device(
        opt_list(&b.WeightDevice, |w| {
            let mut device = oci::LinuxWeightDeviceBuilder::default()
                .major(w.Major)
                .minor(w.Minor);
            if let Some(weight) = non_zero_u16(w.Weight).at("weight")? {
                device = device.weight(weight);
            }
            if let Some(leaf_weight) = non_zero_u16(w.LeafWeight).at("leafWeight")? {
                device = device.leaf_weight(leaf_weight);
            }
            built(device.build())
        })
        .at("weightDevice")?,
    );
    block_io
        .set_throttle_read_bps_device(throttle(&b.ThrottleReadBpsDevice, "throttleReadBpsDevice")?);
    block_io.set_throttle_write_bps_device(throttle(
        &b.ThrottleWriteBpsDevice,
        "throttleWriteBpsDevice",
    )?);
    block_io.set_throttle_read_iops_device(throttle(
        &b.ThrottleReadIOPSDevice,
        "throttleReadIOPSDevice",
    )?);
    block_io.set_throttle_write_iops_device(throttle(
        &b.ThrottleWriteIOPSDevice,
        "throttleWriteIOPSDevice",
    )?);
    Ok(block_io)
}

fn block_io_to_grpc(b: &oci::LinuxBlockIo) -> grpc::LinuxBlockIO {
    let throttle = |devices: &Option<Vec<oci::LinuxThrottleDevice>>| {
        map_list(devices, |t| grpc::LinuxThrottleDevice {
            Major: t.major(),
            Minor: t.minor(),
            Rate: t.rate(),
            ..Default::default()
        })
    };
    grpc::LinuxBlockIO {
        Weight: b.weight().map(u32::from).unwrap_or_default(),
        LeafWeight: b.leaf_weight().map(u32::from).unwrap_or_default(),
        WeightDevice: map_list(b.weight_device(), |w| grpc::LinuxWeightDevice {
            Major: w.major(),
            Minor: w.minor(),
            Weight: w.weight().map(u32::from).unwrap_or_default(),
            LeafWeight: w.leaf_weight().map(u32::from).unwrap_or_default(),
            ..Default::default()
        }),
        ThrottleReadBpsDevice: throttle(b.throttle_read_bps_device()),
        ThrottleWriteBpsDevice: throttle(b.throttle_write_bps_device()),
        ThrottleReadIOPSDevice: throttle(b.throttle_read_iops_device()),
        ThrottleWriteIOPSDevice: throttle(b.throttle_write_iops_device()),
        ..Default::default()
    }
}

fn hugepage_from_grpc(
    h: &grpc::LinuxHugepageLimit,
) -> Result<oci::LinuxHugepageLimit, ConvertError> {
    let limit = i64::try_from(h.Limit)
        .map_err(|_| out_of_range(h.Limit, "0..=i64::MAX bytes").at("limit"))?;
    let mut hugepage = oci::LinuxHugepageLimit::default();
    hugepage.set_page_size(h.Pagesize.clone());
    hugepage.set_limit(limit);
    Ok(hugepage)
}
