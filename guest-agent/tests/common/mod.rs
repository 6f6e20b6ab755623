//! Test helpers: a busybox-static rootfs and OCI bundles around it.
#![allow(dead_code, clippy::expect_used)]

pub mod wire;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, RootBuilder, Spec, UserBuilder,
};

/// Where busybox-static lives on the test host.
pub const BUSYBOX: &str = "/bin/busybox";

/// The busybox applets linked into the test rootfs.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "false", "ls", "id", "ps", "head", "yes", "dd", "mkdir",
    "tty", "stty", "env", "pwd", "touch", "rm", "grep", "wc", "seq", "kill", "trap", "test",
    "printf", "date", "hostname", "readlink",
];

/// A bundle directory: `config.json` + `rootfs/`, removed on drop.
pub struct Bundle {
    /// The temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// The spec, edit it and call [`Bundle::write`].
    pub spec: Spec,
}

impl Bundle {
    /// Path of the bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the rootfs.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Writes `config.json`.
    pub fn write(&self) {
        self.spec
            .save(self.dir.path().join("config.json"))
            .expect("write config.json");
    }

    /// The process section (mutable).
    pub fn process_mut(&mut self) -> &mut oci_spec::runtime::Process {
        self.spec.process_mut().as_mut().expect("process")
    }

    /// The linux section (mutable).
    pub fn linux_mut(&mut self) -> &mut oci_spec::runtime::Linux {
        self.spec.linux_mut().as_mut().expect("linux")
    }
}

/// Builds a busybox rootfs under `root`.
pub fn busybox_rootfs(root: &Path) {
    for d in [
        "bin",
        "proc",
        "dev",
        "sys",
        "tmp",
        "etc",
        "root",
        "home/user",
    ] {
        fs::create_dir_all(root.join(d)).expect("mkdir rootfs dir");
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).expect("applet symlink");
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
    fs::write(root.join("etc/hostname"), "test\n").expect("hostname");
    let mut perm = fs::metadata(root.join("tmp")).expect("tmp").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o1777);
    fs::set_permissions(root.join("tmp"), perm).expect("chmod tmp");
}

/// The cgroup path the tests give container `id`.
pub fn cgroup_path(id: &str) -> String {
    format!("/kata-cc-test/{id}")
}

/// A bundle running `args` in a busybox rootfs with the usual isolation: mount, pid,
/// ipc, uts, network namespaces; proc, /dev tmpfs, devpts, sysfs (ro) mounts; masked and
/// readonly paths; the default capability set; no_new_privileges; an NOFILE rlimit.
pub fn bundle(id: &str, args: &[&str]) -> Bundle {
    let dir = tempfile::Builder::new()
        .prefix("runner-bundle-")
        .tempdir()
        .expect("tempdir");
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);

    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(false)
            .build()
            .expect("root"),
    ));
    spec.set_hostname(Some(id.chars().take(60).collect()));
    // Process::default() carries the default capability set and a NOFILE rlimit.
    let mut process = oci_spec::runtime::Process::default();
    process
        .set_args(Some(args.iter().map(|s| s.to_string()).collect()))
        .set_env(Some(vec![
            "PATH=/bin".to_string(),
            "TERM=xterm".to_string(),
            "HOME=/root".to_string(),
        ]))
        .set_cwd(PathBuf::from("/"))
        .set_user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("user"),
        )
        .set_no_new_privileges(Some(true))
        .set_terminal(Some(false));
    spec.set_process(Some(process));

    // Default mounts minus the cgroup filesystem (not needed here).
    let mounts: Vec<_> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
        .collect();
    spec.set_mounts(Some(mounts));

    let namespaces = [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build().expect("ns"))
    .collect::<Vec<_>>();
    let defaults = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroup_path(id)))
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .expect("device rule")])
                .build()
                .expect("resources"),
        )
        .build()
        .expect("linux");
    spec.set_linux(Some(linux));
    let b = Bundle { dir, spec };
    b.write();
    b
}

/// Directories of the container's cgroup in every v1 hierarchy (or the v2 one) that
/// currently exist.
pub fn existing_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let rel = cgroup_path(id);
    let rel = rel.trim_start_matches('/');
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join(rel);
            if p.exists() {
                out.push(p);
            }
        }
    }
    let unified = Path::new("/sys/fs/cgroup").join(rel);
    if unified.exists() && !out.contains(&unified) {
        out.push(unified);
    }
    out
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The path of the agent binary built for these tests.
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_kata-cc-agent");

/// Arguments that make `kata-cc-agent` serve on `<dir>/agent.sock`, with its shared and
/// state directories below `dir` and its containers' cgroups below `cgroup_parent`.
/// Creates `<dir>/shared`.
pub fn agent_args(dir: &Path, cgroup_parent: &str) -> Vec<std::ffi::OsString> {
    fs::create_dir_all(dir.join("shared")).expect("mkdir shared");
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    args.push("--listen".into());
    args.push(format!("unix://{}", dir.join("agent.sock").display()).into());
    args.push("--shared-dir".into());
    args.push(dir.join("shared").into());
    args.push("--state-dir".into());
    args.push(dir.join("state").into());
    args.push("--cgroup-parent".into());
    args.push(cgroup_parent.into());
    args.push("--log".into());
    args.push("warn".into());
    args
}

/// A client of the agent started with [`agent_args`] for `dir`, once it answers
/// Health.Check (within 20 s).
pub async fn agent_client(dir: &Path) -> protocols::AgentClient {
    let addr: protocols::AgentAddr =
        format!("unix://{}", dir.join("agent.sock").display()).parse().expect("agent address");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    protocols::AgentClient::wait_ready(&addr, protocols::ConnectOptions::default(), deadline)
        .await
        .expect("agent did not come up")
}
