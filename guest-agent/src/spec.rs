//! What the agent changes in, and checks of, a container spec sent by the host.
//!
//! The host is untrusted and its paths mean nothing inside the guest, so:
//! - the rootfs must resolve to a directory below the shared directory, without
//!   following a symlink in any component (`openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` from the shared directory);
//! - every bind mount source is resolved the same way below one of its allowed roots
//!   (the shared directory, the sandbox directory) and must be a directory or a regular
//!   file; it may not be a root itself nor lie in another container's directory
//!   `<shared>/<other container id>`. Non-bind mounts may only be the kernel's virtual
//!   file systems ([`VIRTUAL_FS`]) and their source is a label, never a path. See
//!   [`check_mounts`] for the race that remains;
//! - namespace paths are dropped; containers get new mount, pid, ipc and uts
//!   namespaces and share the VM's network namespace (the pod network), and, as with
//!   Kata's agent, the pod's IPC namespace: the sandbox container's, where the pod's
//!   sysctls are set (a Kubernetes pod has one IPC namespace);
//! - the cgroup path is chosen by the agent (`<cgroup_parent>/<container id>`);
//! - OCI hooks are dropped: they would run host-chosen binaries as root in the guest.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use oci_spec::runtime::{LinuxBuilder, LinuxNamespace, LinuxNamespaceType, Mount, Process, Spec};

use crate::error::AgentError;

/// Inputs of [`adjust`].
#[derive(Debug)]
pub struct Adjust<'a> {
    /// The container's id.
    pub container_id: &'a str,
    /// Root below which the rootfs must lie.
    pub shared_dir: &'a Path,
    /// Where the guest's `/run/kata-containers/sandbox` really is (see
    /// `AgentConfig::sandbox_dir`): mount sources below that path are redirected there.
    pub sandbox_dir: &'a Path,
    /// cgroup parent path.
    pub cgroup_parent: &'a str,
    /// The sandbox hostname, used when the spec sets none.
    pub hostname: Option<&'a str>,
    /// Ids of the sandbox's other containers: their `<shared>/<id>` directories (rootfs
    /// and all) are never a bind mount source of this one.
    pub other_containers: &'a [String],
    /// The pod's IPC namespace (`/proc/<sandbox container pid>/ns/ipc`), joined by every
    /// other container of the pod; None for the sandbox container itself (and for a
    /// container without a sandbox container, e.g. `ctr run`).
    pub pod_ipc: Option<&'a Path>,
}

/// Resolves the rootfs and rewrites namespaces, cgroups path and hooks (see module docs).
pub fn adjust(spec: &mut Spec, a: &Adjust<'_>) -> Result<(), AgentError> {
    let rootfs = resolve_rootfs(spec, a)?;
    if let Some(root) = spec.root_mut() {
        root.set_path(rootfs);
    }

    redirect_sandbox_mounts(spec, a.sandbox_dir);
    check_mounts(spec, a)?;

    let process = spec.process_mut().as_mut().ok_or_else(|| AgentError::invalid("OCI.Process", "missing"))?;
    check_process(process)?;
    ensure_path(process);
    normalize_no_new_privileges(process);

    let mut linux = match spec.linux().clone() {
        Some(l) => l,
        None => LinuxBuilder::default().build().map_err(|e| AgentError::invalid("OCI.Linux", e.to_string()))?,
    };
    let mut namespaces: Vec<LinuxNamespace> = Vec::new();
    let requested = linux.namespaces().clone().unwrap_or_default();
    for ns in requested {
        let typ = ns.typ();
        if typ == LinuxNamespaceType::Network || namespaces.iter().any(|n| n.typ() == typ) {
            continue;
        }
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        namespaces.push(n);
    }
    for typ in [LinuxNamespaceType::Mount, LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts] {
        if !namespaces.iter().any(|n| n.typ() == typ) {
            let mut n = LinuxNamespace::default();
            n.set_typ(typ);
            namespaces.push(n);
        }
    }
    if let Some(n) = namespaces.iter_mut().find(|n| n.typ() == LinuxNamespaceType::Ipc) {
        n.set_path(a.pod_ipc.map(Path::to_path_buf));
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(format!(
        "{}/{}",
        a.cgroup_parent.trim_end_matches('/'),
        a.container_id
    ))));
    spec.set_linux(Some(linux));
    spec.set_hooks(None);
    if spec.hostname().as_deref().unwrap_or("").is_empty() {
        spec.set_hostname(a.hostname.map(str::to_string));
    }
    Ok(())
}

/// Mount sources below the guest's sandbox directory (the pod's shm) point at
/// `sandbox_dir` when the agent keeps it elsewhere (a plain-process agent).
fn redirect_sandbox_mounts(spec: &mut Spec, sandbox_dir: &Path) {
    let guest = Path::new(crate::sandbox_storage::SANDBOX_DIR);
    if sandbox_dir == guest {
        return;
    }
    let Some(mut mounts) = spec.mounts().clone() else { return };
    for m in &mut mounts {
        let Some(rel) = m.source().as_deref().and_then(|s| s.strip_prefix(guest).ok()).map(Path::to_path_buf) else {
            continue;
        };
        m.set_source(Some(sandbox_dir.join(rel)));
    }
    spec.set_mounts(Some(mounts));
}

/// `PATH` a process gets when neither the spec nor the image set one (Docker's default).
pub const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Adds [`DEFAULT_PATH_ENV`] to a process environment without `PATH` (an image whose
/// config sets other variables only); the container runtime refuses to start without it.
pub fn ensure_path(process: &mut Process) {
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH_ENV.to_string());
        process.set_env(Some(env));
    }
}

/// `noNewPrivileges: false` is the same as no field (OCI runtime spec), but the container
/// runtime (libcontainer 0.7) treats any value as "set": it then loads the seccomp filter
/// after dropping capabilities, without no_new_privs and without CAP_SYS_ADMIN, and the
/// kernel refuses it ("failed to load seccomp context" for every RuntimeDefault or
/// Localhost profile, whose specs come with `false` from our gRPC conversion).
pub fn normalize_no_new_privileges(process: &mut Process) {
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
}

fn resolve_rootfs(spec: &Spec, a: &Adjust<'_>) -> Result<PathBuf, AgentError> {
    let root = spec.root().as_ref().ok_or_else(|| AgentError::invalid("OCI.Root", "missing"))?;
    let given = root.path();
    let bad = |why: String| AgentError::invalid("OCI.Root.Path", format!("{}: {why}", given.display()));
    let shared = Root::open(a.shared_dir)?;
    let rel = if given.is_absolute() {
        shared.relative(given).ok_or_else(|| bad(format!("not below the shared directory {}", shared.real.display())))?
    } else {
        lexical_relative(given).map(|r| Path::new(a.container_id).join(r))
            .ok_or_else(|| bad("contains '..' or '.'".into()))?
    };
    if rel.as_os_str().is_empty() {
        return Err(bad("names the shared directory itself".into()));
    }
    let (fd, real) = shared.resolve(&rel).map_err(|e| bad(resolve_error(e)))?;
    let st = fstat(fd.as_raw_fd()).map_err(|e| bad(format!("stat: {e}")))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(bad("is not a directory".into()));
    }
    Ok(real)
}

/// File systems a non-bind mount may have: the kernel's virtual ones, whose source is a
/// label. Anything else (a disk, virtiofs, overlay, ...) would give a container the
/// guest's storage.
pub const VIRTUAL_FS: &[&str] = &["proc", "tmpfs", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"];

/// Whether the container runtime (youki's `is_bind`) treats `m` as a bind mount.
fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Checks every mount and rewrites each bind source to the path it resolved to (see
/// module docs).
///
/// Remaining race: the container runtime (youki 0.7) canonicalises a bind source and
/// opens it by path again when it mounts, so it cannot be handed an `O_PATH` descriptor
/// (`/proc/self/fd/N` would be read back into a path). Between this check and the mount
/// a writer of the tree could swap the last component for a symlink. The agent's own
/// writer, CopyFile, is excluded for that window (the agent holds its tree lock from
/// here until the container is created); a container that can write into a shared
/// volume or the pod's shm can still race another container's create.
pub fn check_mounts(spec: &mut Spec, a: &Adjust<'_>) -> Result<(), AgentError> {
    let Some(mut mounts) = spec.mounts().clone() else { return Ok(()) };
    let shared = Root::open(a.shared_dir)?;
    let mut sandbox: Option<Root> = None;
    for (index, m) in mounts.iter_mut().enumerate() {
        let source = m.source().clone().unwrap_or_default();
        let err = |why: String| AgentError::InvalidMount { index, field: "source", value: source.display().to_string(), why };
        if !is_bind(m) {
            let typ = m.typ().clone().unwrap_or_default();
            if !VIRTUAL_FS.contains(&typ.as_str()) {
                return Err(AgentError::InvalidMount {
                    index,
                    field: "type",
                    value: typ,
                    why: format!("only bind mounts and the virtual file systems {VIRTUAL_FS:?} are allowed"),
                });
            }
            if source.as_os_str().as_bytes().contains(&b'/') {
                return Err(err(format!("a {typ} mount's source is a label, not a path")));
            }
            continue;
        }
        let (root, rel) = if let Some(rel) = shared.relative(&source) {
            (&shared, rel)
        } else {
            if sandbox.is_none() && source.starts_with(a.sandbox_dir) {
                sandbox = Some(Root::open(a.sandbox_dir).map_err(|_| err("the sandbox directory does not exist".into()))?);
            }
            match sandbox.as_ref().and_then(|r| r.relative(&source).map(|rel| (r, rel))) {
                Some(found) => found,
                None => {
                    return Err(err(format!(
                        "a bind mount source must lie below the shared directory {} or the sandbox directory {}",
                        a.shared_dir.display(),
                        crate::sandbox_storage::SANDBOX_DIR
                    )))
                }
            }
        };
        if rel.as_os_str().is_empty() {
            return Err(err("names a whole root directory".into()));
        }
        if std::ptr::eq(root, &shared) {
            if let Some(Component::Normal(first)) = rel.components().next() {
                if a.other_containers.iter().any(|c| OsStr::new(c) == first) {
                    return Err(err(format!("lies in the directory of another container ({})", first.to_string_lossy())));
                }
            }
        }
        let (fd, real) = root.resolve(&rel).map_err(|e| err(resolve_error(e)))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| err(format!("stat: {e}")))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            // O_PATH | O_NOFOLLOW opens a last-component symlink itself.
            return Err(err(resolve_error(Errno::ELOOP)));
        }
        if kind != SFlag::S_IFDIR && kind != SFlag::S_IFREG {
            return Err(err(format!("is not a directory or a regular file (type {:o})", kind.bits())));
        }
        m.set_source(Some(real));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// A trusted directory (configured by the agent) below which host-named paths resolve.
struct Root {
    /// As configured.
    given: PathBuf,
    /// Canonical (the configured path may itself contain symlinks, e.g. /tmp).
    real: PathBuf,
    fd: OwnedFd,
}

impl Root {
    fn open(dir: &Path) -> Result<Root, AgentError> {
        let real = dir.canonicalize().map_err(AgentError::io(format!("resolve {}", dir.display())))?;
        let fd = open_how(None, real.as_os_str(), OFlag::O_DIRECTORY, ResolveFlag::RESOLVE_NO_MAGICLINKS)
            .map_err(|e| AgentError::io(format!("open {}", real.display()))(e.into()))?;
        Ok(Root { given: dir.to_path_buf(), real, fd })
    }

    /// `path` relative to this root, when it is lexically below it (as configured or
    /// canonical) and has no `.`/`..` segment.
    fn relative(&self, path: &Path) -> Option<PathBuf> {
        let rel = path.strip_prefix(&self.given).or_else(|_| path.strip_prefix(&self.real)).ok()?;
        lexical_relative(rel)
    }

    /// Opens `rel` (`O_PATH`) without leaving the root or following any symlink.
    fn resolve(&self, rel: &Path) -> Result<(OwnedFd, PathBuf), Errno> {
        let fd = open_how(Some(&self.fd), rel.as_os_str(), OFlag::O_NOFOLLOW, BENEATH_NO_LINKS)?;
        Ok((fd, self.real.join(rel)))
    }
}

/// `p` (relative) if none of its raw segments is `.` or `..` (`Path::components` would
/// fold `.` away) and it has no NUL byte.
fn lexical_relative(p: &Path) -> Option<PathBuf> {
    let b = p.as_os_str().as_bytes();
    if b.contains(&0) || p.is_absolute() || b.split(|c| *c == b'/').any(|s| s == b"." || s == b"..") {
        return None;
    }
    Some(p.to_path_buf())
}

fn resolve_error(e: Errno) -> String {
    match e {
        Errno::ELOOP => "a component is a symlink (not followed)".into(),
        Errno::EXDEV => "escapes its root".into(),
        Errno::ENOENT => "does not exist".into(),
        Errno::ENOTDIR => "a component is not a directory".into(),
        e => format!("cannot be opened: {e}"),
    }
}

fn open_how(dir: Option<&OwnedFd>, name: &OsStr, flags: OFlag, resolve: ResolveFlag) -> Result<OwnedFd, Errno> {
    open_at2(dir, name, flags | OFlag::O_PATH, resolve)
}

/// `openat2` of `name` below `dir` (or the cwd) with `flags | O_CLOEXEC` and `resolve`.
fn open_at2(dir: Option<&OwnedFd>, name: &OsStr, flags: OFlag, resolve: ResolveFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).mode(Mode::empty()).resolve(resolve);
    let fd = openat2(dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()), name, how)?;
    // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolution that never leaves the starting directory nor follows any symlink.
const BENEATH_NO_LINKS: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// Checks a process description before it is run.
pub fn check_process(p: &Process) -> Result<(), AgentError> {
    let args = p.args().as_deref().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(AgentError::invalid("process.Args", "empty: nothing to run"));
    }
    if !p.cwd().is_absolute() {
        return Err(AgentError::invalid("process.Cwd", format!("{:?} is not absolute", p.cwd())));
    }
    for e in p.env().as_deref().unwrap_or_default() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(AgentError::invalid("process.Env", format!("{e:?} is not NAME=value")));
        }
    }
    Ok(())
}

/// Where the agent writes `net.*` sysctls: the VM's network namespace, which every
/// container of the pod shares.
pub const PROC_SYS_NET: &str = "/proc/sys/net";
/// Longest sysctl name accepted (the kernel's longest are well below this).
const MAX_SYSCTL_KEY: usize = 256;
/// Longest sysctl value accepted (the kernel reads at most a page).
const MAX_SYSCTL_VALUE: usize = 4096;

/// Applies the `net.*` sysctls of a container that shares the VM's network namespace
/// (every container: [`adjust`] drops the network namespace) to that namespace, below
/// `proc_sys_net` (`/proc/sys/net` in the agent's namespace, [`PROC_SYS_NET`]), and
/// removes them from the spec: the container runtime refuses `net.*` sysctls without a
/// network namespace of the container's own. The policy decided which sysctls the host
/// may send; as in Kubernetes, where net sysctls are pod-level, one container's setting
/// holds for the whole pod. Other sysctls stay in the spec.
///
/// Every name is checked before any is written: `net.` then `.`-separated segments of
/// `[A-Za-z0-9_-]` (so no `/`, no `..`), resolved below `proc_sys_net` without following
/// a symlink; the value is at most [`MAX_SYSCTL_VALUE`] bytes of printable ASCII, space
/// or tab.
pub fn apply_net_sysctls(spec: &mut Spec, proc_sys_net: &Path) -> Result<(), AgentError> {
    let Some(linux) = spec.linux_mut() else { return Ok(()) };
    let Some(sysctls) = linux.sysctl_mut() else { return Ok(()) };
    let mut net: Vec<(String, PathBuf, String)> = Vec::new();
    for (key, value) in sysctls.iter().filter(|(k, _)| k.starts_with("net.")) {
        let rel = net_sysctl_path(key, value)?;
        net.push((key.clone(), rel, value.clone()));
    }
    if net.is_empty() {
        return Ok(());
    }
    let dir = open_how(None, proc_sys_net.as_os_str(), OFlag::O_DIRECTORY, ResolveFlag::RESOLVE_NO_MAGICLINKS)
        .map_err(|e| AgentError::io(format!("open {}", proc_sys_net.display()))(e.into()))?;
    for (key, rel, value) in &net {
        let refused = |why: String| AgentError::invalid("OCI.Linux.Sysctl", format!("{key:?}={value:?}: {why}"));
        let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
        let fd = open_at2(Some(&dir), rel.as_os_str(), flags, BENEATH_NO_LINKS).map_err(|e| refused(resolve_error(e)))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| refused(format!("cannot stat: {e}")))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(refused("not a sysctl file".into()));
        }
        // One write: the kernel parses a sysctl value from a single write.
        let n = nix::unistd::write(&fd, value.as_bytes()).map_err(|e| refused(format!("cannot be set: {e}")))?;
        if n != value.len() {
            return Err(refused(format!("short write ({n} of {} bytes)", value.len())));
        }
    }
    sysctls.retain(|k, _| !k.starts_with("net."));
    Ok(())
}

/// The path of the `net.*` sysctl `key` relative to `/proc/sys/net`, once its name and
/// value are checked (see [`apply_net_sysctls`]).
fn net_sysctl_path(key: &str, value: &str) -> Result<PathBuf, AgentError> {
    let refused = |why: &str| AgentError::invalid("OCI.Linux.Sysctl", format!("{key:?}={value:?}: {why}"));
    if key.len() > MAX_SYSCTL_KEY {
        return Err(refused(&format!("name longer than {MAX_SYSCTL_KEY} bytes")));
    }
    let rest = key.strip_prefix("net.").ok_or_else(|| refused("not a net.* sysctl"))?;
    let segments: Vec<&str> = rest.split('.').collect();
    if segments.iter().any(|s| s.is_empty() || !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return Err(refused("not a plain sysctl name (dot-separated segments of letters, digits, '_' and '-')"));
    }
    if value.len() > MAX_SYSCTL_VALUE {
        return Err(refused(&format!("value longer than {MAX_SYSCTL_VALUE} bytes")));
    }
    if !value.bytes().all(|c| c == b' ' || c == b'\t' || c.is_ascii_graphic()) {
        return Err(refused("value has a byte that is not printable ASCII, space or tab"));
    }
    Ok(segments.iter().collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec_with_root(path: &str) -> Spec {
        let mut s = Spec::default();
        s.set_hostname(None);
        let mut root = s.root().clone().unwrap();
        root.set_path(PathBuf::from(path));
        s.set_root(Some(root));
        s
    }

    #[test]
    fn rootfs_must_stay_below_shared_dir() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        std::fs::create_dir_all(t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), shared.join("c1/link")).unwrap();
        let a = Adjust { container_id: "c1", shared_dir: &shared, sandbox_dir: Path::new("/run/kata-containers/sandbox"), cgroup_parent: "/kata-cc", hostname: Some("pod"), other_containers: &[], pod_ipc: None };

        let mut s = spec_with_root("rootfs");
        adjust(&mut s, &a).unwrap();
        assert_eq!(s.root().as_ref().unwrap().path(), &shared.canonicalize().unwrap().join("c1/rootfs"));
        assert_eq!(s.linux().as_ref().unwrap().cgroups_path().as_ref().unwrap(), Path::new("/kata-cc/c1"));
        assert_eq!(s.hostname().as_deref(), Some("pod"));
        let ns: Vec<_> = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Mount) && ns.contains(&LinuxNamespaceType::Pid));

        // A symlink in a middle component (canonicalize() used to follow it) and a
        // symlink as the last one, both pointing back inside.
        std::os::unix::fs::symlink(shared.join("c1"), shared.join("c1/self")).unwrap();
        std::os::unix::fs::symlink(shared.join("c1/rootfs"), shared.join("c1/rootlink")).unwrap();
        std::fs::write(shared.join("c1/file"), b"").unwrap();
        for bad in ["/etc", "../../elsewhere", "link", "missing", "self/rootfs", "rootlink", "file", "./rootfs"] {
            let mut s = spec_with_root(bad);
            let e = adjust(&mut s, &a).unwrap_err();
            assert!(e.to_string().contains("OCI.Root.Path"), "{bad}: {e}");
        }
    }

    fn bind(source: &Path) -> Mount {
        oci_spec::runtime::MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string()])
            .build()
            .unwrap()
    }

    /// Adjusts a spec whose rootfs is `<shared>/c1/rootfs` with `extra` mounts added to
    /// the default ones; returns the adjusted mounts or the error text.
    fn with_mounts(shared: &Path, sandbox: &Path, extra: Vec<Mount>) -> Result<Vec<Mount>, String> {
        let others = ["c2".to_string()];
        let a = Adjust { container_id: "c1", shared_dir: shared, sandbox_dir: sandbox, cgroup_parent: "/kata-cc", hostname: None, other_containers: &others, pod_ipc: None };
        let mut s = spec_with_root("rootfs");
        let mut mounts = s.mounts().clone().unwrap();
        mounts.extend(extra);
        s.set_mounts(Some(mounts));
        adjust(&mut s, &a).map(|()| s.mounts().clone().unwrap()).map_err(|e| e.to_string())
    }

    /// What CopyFile could plant below the shared directory (symlinks to `/`, to the
    /// agent's state, to another container; device nodes; fifos) is never a bind source.
    #[test]
    fn bind_sources_resolve_below_their_root_without_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        let sandbox = t.path().join("state/sandbox");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        std::fs::create_dir_all(shared.join("c2/rootfs")).unwrap();
        std::fs::create_dir_all(sandbox.join("shm")).unwrap();
        std::fs::create_dir_all(shared.join("cm/..2024_01_01")).unwrap();
        std::fs::write(shared.join("c1-0123456789abcdef-hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink("/", shared.join("root")).unwrap();
        std::os::unix::fs::symlink(t.path().join("state"), shared.join("state")).unwrap();
        std::os::unix::fs::symlink("..2024_01_01", shared.join("cm/..data")).unwrap();
        std::os::unix::fs::symlink("../c2/rootfs", shared.join("cm/other")).unwrap();
        nix::unistd::mkfifo(&shared.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        nix::sys::stat::mknod(&shared.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), nix::sys::stat::makedev(1, 3)).unwrap();

        // Allowed: a copied file, a directory, the pod shm (guest path, redirected).
        let ok = with_mounts(&shared, &sandbox, vec![
            bind(&shared.join("c1-0123456789abcdef-hosts")),
            bind(&shared.join("cm/..2024_01_01")),
            bind(Path::new("/run/kata-containers/sandbox/shm")),
        ])
        .unwrap();
        let real = shared.canonicalize().unwrap();
        let n = ok.len();
        assert_eq!(ok[n - 3].source().as_deref(), Some(real.join("c1-0123456789abcdef-hosts").as_path()));
        assert_eq!(ok[n - 2].source().as_deref(), Some(real.join("cm/..2024_01_01").as_path()));
        assert_eq!(ok[n - 1].source().as_deref(), Some(sandbox.canonicalize().unwrap().join("shm").as_path()));

        let bad: Vec<(PathBuf, &str)> = vec![
            (PathBuf::from("/"), "below the shared directory"),
            (PathBuf::from("/dev"), "below the shared directory"),
            (PathBuf::from("/proc"), "below the shared directory"),
            (t.path().join("state"), "below the shared directory"),
            (shared.clone(), "whole root"),
            (sandbox.clone(), "whole root"),
            (shared.join("root"), "symlink"),
            (shared.join("root/etc"), "symlink"),
            (shared.join("state/runners"), "symlink"),
            (shared.join("cm/..data"), "symlink"),
            (shared.join("cm/other"), "symlink"),
            (shared.join("c1/../root"), "below the shared directory"),
            (shared.join("c2/rootfs"), "another container"),
            (shared.join("fifo"), "not a directory or a regular file"),
            (shared.join("null"), "not a directory or a regular file"),
            (shared.join("missing"), "does not exist"),
            (sandbox.join("../runners"), "below the shared directory"),
        ];
        for (i, (src, why)) in bad.iter().enumerate() {
            let e = with_mounts(&shared, &sandbox, vec![bind(src)]).unwrap_err();
            assert!(e.contains("OCI.Mounts[") && e.contains("].source") && e.contains(why), "case {i} {}: {e}", src.display());
            assert!(e.contains(&format!("{:?}", src.display().to_string())), "case {i}: {e}");
        }
        // A bind mount is also one that only says so in its options.
        let mut m = bind(Path::new("/"));
        m.set_typ(Some("none".into()));
        assert!(with_mounts(&shared, &sandbox, vec![m]).unwrap_err().contains("OCI.Mounts["));
    }

    #[test]
    fn non_bind_mounts_are_virtual_file_systems_with_a_label_source() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        let sandbox = t.path().join("sandbox");
        // The default mounts (proc, tmpfs, devpts, mqueue, sysfs, cgroup) pass unchanged.
        let defaults = spec_with_root("rootfs").mounts().clone().unwrap();
        assert_eq!(with_mounts(&shared, &sandbox, vec![]).unwrap(), defaults);
        let m = |typ: &str, src: &str| {
            oci_spec::runtime::MountBuilder::default().destination("/x").typ(typ).source(src).build().unwrap()
        };
        let e = with_mounts(&shared, &sandbox, vec![m("ext4", "/dev/vda1")]).unwrap_err();
        assert!(e.contains(".type \"ext4\""), "{e}");
        let e = with_mounts(&shared, &sandbox, vec![m("tmpfs", "/etc")]).unwrap_err();
        assert!(e.contains(".source \"/etc\""), "{e}");
    }

    #[test]
    fn a_missing_path_gets_the_default_and_a_given_one_is_kept() {
        let mut p = Process::default();
        p.set_env(Some(vec!["HELLO=world".into()]));
        ensure_path(&mut p);
        assert_eq!(p.env().as_ref().unwrap(), &["HELLO=world".to_string(), DEFAULT_PATH_ENV.to_string()]);
        p.set_env(Some(vec!["PATH=/x".into()]));
        ensure_path(&mut p);
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/x".to_string()]);
    }

    #[test]
    fn containers_join_the_pods_ipc_namespace() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        let ipc_of = |s: &Spec| {
            let l = s.linux().as_ref().unwrap();
            l.namespaces().as_ref().unwrap().iter().find(|n| n.typ() == LinuxNamespaceType::Ipc).unwrap().path().clone()
        };
        let with_ipc = |path: Option<&str>| {
            let mut s = spec_with_root("rootfs");
            let mut linux = s.linux().clone().unwrap();
            let mut n = LinuxNamespace::default();
            n.set_typ(LinuxNamespaceType::Ipc);
            n.set_path(path.map(PathBuf::from));
            linux.set_namespaces(Some(vec![n]));
            s.set_linux(Some(linux));
            s
        };
        let pod = Path::new("/proc/77/ns/ipc");
        for (asked, pod_ipc, want) in [
            // The host's path is never used: the pod's namespace is.
            (Some("/proc/4242/ns/ipc"), Some(pod), Some(pod)),
            (None, Some(pod), Some(pod)),
            // No sandbox container (it is the sandbox container): a new namespace.
            (Some("/proc/4242/ns/ipc"), None, None),
            (None, None, None),
        ] {
            let a = Adjust { container_id: "c1", shared_dir: &shared, sandbox_dir: Path::new("/run/kata-containers/sandbox"), cgroup_parent: "/kata-cc", hostname: None, other_containers: &[], pod_ipc };
            let mut s = with_ipc(asked);
            adjust(&mut s, &a).unwrap();
            assert_eq!(ipc_of(&s).as_deref(), want, "asked {asked:?}, pod {pod_ipc:?}");
        }
    }

    #[test]
    fn no_new_privileges_false_is_no_field() {
        let mut p = Process::default();
        p.set_no_new_privileges(Some(false));
        normalize_no_new_privileges(&mut p);
        assert_eq!(p.no_new_privileges(), None);
        p.set_no_new_privileges(Some(true));
        normalize_no_new_privileges(&mut p);
        assert_eq!(p.no_new_privileges(), Some(true));
    }

    #[test]
    fn process_checks() {
        let mut p = Process::default();
        p.set_args(Some(vec![]));
        assert!(check_process(&p).unwrap_err().to_string().contains("process.Args"));
        p.set_args(Some(vec!["sh".into()]));
        p.set_cwd(PathBuf::from("rel"));
        assert!(check_process(&p).unwrap_err().to_string().contains("process.Cwd"));
        p.set_cwd(PathBuf::from("/"));
        p.set_env(Some(vec!["NOEQUALS".into()]));
        assert!(check_process(&p).unwrap_err().to_string().contains("process.Env"));
    }

    fn with_sysctls(pairs: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_sysctl(Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        spec.set_linux(Some(linux));
        spec
    }

    fn sysctls(spec: &Spec) -> Vec<(String, String)> {
        spec.linux().as_ref().unwrap().sysctl().clone().unwrap_or_default().into_iter().collect()
    }

    /// A temp dir standing in for /proc/sys/net.
    fn fake_proc_sys_net() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ipv4")).unwrap();
        std::fs::write(d.path().join("ipv4/ping_group_range"), "1\t0\n").unwrap();
        std::fs::write(d.path().join("ipv4/ip_unprivileged_port_start"), "1024\n").unwrap();
        d
    }

    #[test]
    fn net_sysctls_are_written_and_removed_others_kept() {
        let d = fake_proc_sys_net();
        let mut spec = with_sysctls(&[
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
            ("kernel.shm_rmid_forced", "1"),
        ]);
        apply_net_sysctls(&mut spec, d.path()).unwrap();
        assert_eq!(sysctls(&spec), [("kernel.shm_rmid_forced".to_string(), "1".to_string())]);
        // O_WRONLY without O_TRUNC, as the kernel's files: the value overwrites from 0.
        assert_eq!(std::fs::read_to_string(d.path().join("ipv4/ip_unprivileged_port_start")).unwrap(), "0024\n");
        assert_eq!(std::fs::read_to_string(d.path().join("ipv4/ping_group_range")).unwrap(), "0 2147483647");

        // Nothing to do: the spec is unchanged.
        let mut spec = with_sysctls(&[("kernel.msgmax", "8192")]);
        apply_net_sysctls(&mut spec, Path::new("/nonexistent")).unwrap();
        assert_eq!(sysctls(&spec), [("kernel.msgmax".to_string(), "8192".to_string())]);
        let mut spec = Spec::default();
        spec.set_linux(None);
        apply_net_sysctls(&mut spec, Path::new("/nonexistent")).unwrap();
    }

    #[test]
    fn bad_net_sysctls_are_refused_naming_key_and_value_and_nothing_is_written() {
        let d = fake_proc_sys_net();
        std::os::unix::fs::symlink(d.path().join("ipv4"), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("ipv4/leak")).unwrap();
        std::fs::create_dir(d.path().join("ipv4/conf")).unwrap();
        let long = "9".repeat(MAX_SYSCTL_VALUE + 1);
        let bad: &[(&str, &str, &str)] = &[
            ("net.ipv4/../../kernel.hostname", "x", "not a plain sysctl name"),
            ("net.ipv4..ping_group_range", "0 1", "not a plain sysctl name"),
            ("net.", "1", "not a plain sysctl name"),
            ("net.ipv4.ping group", "1", "not a plain sysctl name"),
            ("net.ipv4.ping_group_range", &long, "value longer than 4096 bytes"),
            ("net.ipv4.ping_group_range", "0\n1", "not printable ASCII"),
            ("net.link.ping_group_range", "0 1", "symlink"),
            ("net.ipv4.leak", "1", "symlink"),
            ("net.ipv4.nonexistent", "1", "does not exist"),
            ("net.ipv4.conf", "1", "cannot be opened"),
        ];
        for (key, value, why) in bad {
            // A good one next to it: nothing is written when any name is bad (names are
            // checked first), or only what precedes a file that fails to open.
            let mut spec = with_sysctls(&[(key, value), ("kernel.msgmax", "8192")]);
            let before = sysctls(&spec);
            let e = apply_net_sysctls(&mut spec, d.path()).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, AgentError::InvalidArgument { field: "OCI.Linux.Sysctl", .. }), "{msg}");
            assert!(msg.contains(&format!("{key:?}").trim_matches('"').to_string()), "{key}: {msg}");
            assert!(msg.contains(why), "{key}: {msg}");
            if value.len() < 100 {
                assert!(msg.contains(value.escape_debug().to_string().as_str()), "{key}: {msg}");
            }
            assert_eq!(sysctls(&spec), before, "the spec is unchanged on error");
        }
        assert_eq!(std::fs::read_to_string(d.path().join("ipv4/ping_group_range")).unwrap(), "1\t0\n");
        assert_eq!(std::fs::read_to_string("/etc/hostname").is_ok(), Path::new("/etc/hostname").exists());

        // A bad name among good ones: none is written.
        let mut spec = with_sysctls(&[("net.ipv4.ping_group_range", "0 1"), ("net.ipv4.x/y", "1")]);
        apply_net_sysctls(&mut spec, d.path()).unwrap_err();
        assert_eq!(std::fs::read_to_string(d.path().join("ipv4/ping_group_range")).unwrap(), "1\t0\n");
    }
}
