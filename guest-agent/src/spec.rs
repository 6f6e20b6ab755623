//! What the agent changes in, and checks of, a container spec sent by the host.
//!
//! The host is untrusted and its paths mean nothing inside the guest, so:
//! - the rootfs must resolve to a directory below the shared directory;
//! - namespace paths are dropped; containers get new mount, pid, ipc and uts
//!   namespaces and share the VM's network namespace (the pod network);
//! - the cgroup path is chosen by the agent (`<cgroup_parent>/<container id>`);
//! - OCI hooks are dropped: they would run host-chosen binaries as root in the guest.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxBuilder, LinuxNamespace, LinuxNamespaceType, Process, Spec};

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
}

/// Resolves the rootfs and rewrites namespaces, cgroups path and hooks (see module docs).
pub fn adjust(spec: &mut Spec, a: &Adjust<'_>) -> Result<(), AgentError> {
    let rootfs = resolve_rootfs(spec, a)?;
    if let Some(root) = spec.root_mut() {
        root.set_path(rootfs);
    }

    redirect_sandbox_mounts(spec, a.sandbox_dir);

    let process = spec.process_mut().as_mut().ok_or_else(|| AgentError::invalid("OCI.Process", "missing"))?;
    check_process(process)?;
    ensure_path(process);

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

fn resolve_rootfs(spec: &Spec, a: &Adjust<'_>) -> Result<PathBuf, AgentError> {
    let root = spec.root().as_ref().ok_or_else(|| AgentError::invalid("OCI.Root", "missing"))?;
    let given = root.path();
    let candidate = if given.is_absolute() {
        given.clone()
    } else {
        a.shared_dir.join(a.container_id).join(given)
    };
    let shared = a
        .shared_dir
        .canonicalize()
        .map_err(AgentError::io(format!("resolve shared directory {}", a.shared_dir.display())))?;
    let real = candidate.canonicalize().map_err(|e| {
        AgentError::invalid("OCI.Root.Path", format!("{}: {e}", candidate.display()))
    })?;
    if !real.starts_with(&shared) || real == shared {
        return Err(AgentError::invalid(
            "OCI.Root.Path",
            format!("{} resolves outside the shared directory {}", given.display(), shared.display()),
        ));
    }
    if !real.is_dir() {
        return Err(AgentError::invalid("OCI.Root.Path", format!("{} is not a directory", real.display())));
    }
    Ok(real)
}

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
        let a = Adjust { container_id: "c1", shared_dir: &shared, sandbox_dir: Path::new("/run/kata-containers/sandbox"), cgroup_parent: "/kata-cc", hostname: Some("pod") };

        let mut s = spec_with_root("rootfs");
        adjust(&mut s, &a).unwrap();
        assert_eq!(s.root().as_ref().unwrap().path(), &shared.canonicalize().unwrap().join("c1/rootfs"));
        assert_eq!(s.linux().as_ref().unwrap().cgroups_path().as_ref().unwrap(), Path::new("/kata-cc/c1"));
        assert_eq!(s.hostname().as_deref(), Some("pod"));
        let ns: Vec<_> = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Mount) && ns.contains(&LinuxNamespaceType::Pid));

        for bad in ["/etc", "../../elsewhere", "link", "missing"] {
            let mut s = spec_with_root(bad);
            let e = adjust(&mut s, &a).unwrap_err();
            assert!(e.to_string().contains("OCI.Root.Path"), "{bad}: {e}");
        }
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
}
