//! The real agent binary on a unix socket, driven over ttrpc with a busybox rootfs:
//! lifecycle, exit codes, signals, stdio, tty, exec, stats, pause/resume, OOM, bad
//! input, and that nothing of a container remains after RemoveContainer. Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec};
use protocols::agent as pb;
use protocols::protobuf::MessageField;
use protocols::{context_with, AgentClient, ConnectOptions};

/// One agent process with its own directories and cgroup parent.
struct TestAgent {
    child: Child,
    dir: tempfile::TempDir,
    cgroup_parent: String,
    client: AgentClient,
}

impl TestAgent {
    async fn start() -> TestAgent {
        Self::start_with_policy(None).await
    }

    async fn start_with_policy(policy: Option<&str>) -> TestAgent {
        Self::start_with(policy, false).await
    }

    /// With `own_netns`, the agent runs in a new network namespace, which stands in for
    /// the VM's (the pod's) network namespace of a real guest.
    async fn start_with(policy: Option<&str>, own_netns: bool) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = Vec::new();
        if let Some(rego) = policy {
            let path = dir.path().join("policy.rego");
            std::fs::write(&path, rego).unwrap();
            extra.push("--policy".to_string());
            extra.push(path.display().to_string());
        }
        let cgroup_parent = format!("/kata-cc-test-{}-{}", std::process::id(), rand_suffix());
        let mut cmd = Command::new(common::AGENT_BIN);
        cmd.args(common::agent_args(dir.path(), &cgroup_parent)).args(&extra);
        if own_netns {
            use std::os::unix::process::CommandExt;
            // SAFETY: unshare(2) only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
            }
        }
        let child = cmd.spawn().unwrap();
        let client = common::agent_client(dir.path()).await;
        TestAgent { child, dir, cgroup_parent, client }
    }

    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// A busybox rootfs at `<shared>/<cid>/rootfs` and a spec running `args` in it.
    fn spec(&self, cid: &str, args: &[&str]) -> Spec {
        let rootfs = self.shared().join(cid).join("rootfs");
        if !rootfs.join("bin/busybox").exists() {
            common::busybox_rootfs(&rootfs);
        }
        let mut spec = Spec::default();
        // Spec::default() names the host "youki"; let the sandbox decide.
        spec.set_hostname(None);
        let mut root = spec.root().clone().unwrap();
        root.set_path(PathBuf::from("rootfs"));
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        spec
    }

    async fn create(&self, cid: &str, spec: &Spec) -> ttrpc::Result<()> {
        let mut r = pb::CreateContainerRequest::new();
        r.container_id = cid.into();
        r.exec_id = cid.into();
        r.OCI = MessageField::some(protocols::convert::spec_to_grpc(spec));
        self.client.agent().create_container(self.client.context(), &r).await.map(|_| ())
    }

    async fn start_container(&self, cid: &str) -> ttrpc::Result<()> {
        let mut r = pb::StartContainerRequest::new();
        r.container_id = cid.into();
        self.client.agent().start_container(self.client.context(), &r).await.map(|_| ())
    }

    async fn run(&self, cid: &str, args: &[&str]) {
        self.create(cid, &self.spec(cid, args)).await.unwrap();
        self.start_container(cid).await.unwrap();
    }

    async fn wait(&self, cid: &str, exec_id: &str) -> ttrpc::Result<i32> {
        let mut r = pb::WaitProcessRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        self.client.agent().wait_process(context_with(Duration::from_secs(30)), &r).await.map(|w| w.status)
    }

    async fn read(&self, cid: &str, exec_id: &str, stdout: bool) -> ttrpc::Result<Vec<u8>> {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        r.len = 4096;
        let ctx = context_with(Duration::from_secs(30));
        let a = self.client.agent();
        if stdout { a.read_stdout(ctx, &r).await } else { a.read_stderr(ctx, &r).await }.map(|x| x.data)
    }

    /// Reads a stream to its end.
    async fn read_all(&self, cid: &str, exec_id: &str, stdout: bool) -> String {
        let mut all = Vec::new();
        loop {
            let chunk = self.read(cid, exec_id, stdout).await.unwrap();
            if chunk.is_empty() {
                return String::from_utf8_lossy(&all).into_owned();
            }
            all.extend(chunk);
        }
    }

    async fn write_stdin(&self, cid: &str, exec_id: &str, data: &[u8]) -> ttrpc::Result<u32> {
        let mut r = pb::WriteStreamRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        r.data = data.to_vec();
        self.client.agent().write_stdin(self.client.context(), &r).await.map(|w| w.len)
    }

    async fn close_stdin(&self, cid: &str, exec_id: &str) {
        let mut r = pb::CloseStdinRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        self.client.agent().close_stdin(self.client.context(), &r).await.unwrap();
    }

    async fn signal(&self, cid: &str, exec_id: &str, sig: u32) -> ttrpc::Result<()> {
        let mut r = pb::SignalProcessRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        r.signal = sig;
        self.client.agent().signal_process(self.client.context(), &r).await.map(|_| ())
    }

    async fn exec(&self, cid: &str, exec_id: &str, args: &[&str], tty: bool) -> ttrpc::Result<()> {
        let mut p = protocols::oci::Process::new();
        p.Args = args.iter().map(|s| s.to_string()).collect();
        p.Env = vec!["PATH=/bin".into()];
        p.Cwd = "/".into();
        p.Terminal = tty;
        p.User = MessageField::some(protocols::oci::User::new());
        let mut r = pb::ExecProcessRequest::new();
        r.container_id = cid.into();
        r.exec_id = exec_id.into();
        r.process = MessageField::some(p);
        self.client.agent().exec_process(self.client.context(), &r).await.map(|_| ())
    }

    async fn remove(&self, cid: &str) -> ttrpc::Result<()> {
        let mut r = pb::RemoveContainerRequest::new();
        r.container_id = cid.into();
        self.client.agent().remove_container(self.client.context(), &r).await.map(|_| ())
    }

    /// Every cgroup directory of the container on any v1 controller or v2.
    fn cgroup_dirs(&self, cid: &str) -> Vec<PathBuf> {
        let rel = format!("{}/{cid}", self.cgroup_parent.trim_start_matches('/'));
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = entry.path().join(&rel);
            if p.exists() {
                found.push(p);
            }
        }
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && Path::new("/sys/fs/cgroup").join(&rel).exists() {
            found.push(Path::new("/sys/fs/cgroup").join(&rel));
        }
        found
    }

    fn mounts_under(&self, cid: &str) -> Vec<String> {
        let root = self.shared().join(cid).canonicalize().unwrap();
        let root = root.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(4).is_some_and(|m| m.starts_with(&root)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // SIGTERM: the agent destroys its containers before exiting.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(ctl.path().join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    h.finish() as u32
}

fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not an RPC status: {other:?}"),
    }
}

fn message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn lifecycle_exit_code_and_output() {
    let t = TestAgent::start().await;
    t.run("c1", &["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    let (out, err) = tokio::join!(t.read_all("c1", "", true), t.read_all("c1", "", false));
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    assert_eq!(t.wait("c1", "").await.unwrap(), 3);
    // The init's exec id works as well as the empty one.
    assert_eq!(t.wait("c1", "c1").await.unwrap(), 3);
    t.remove("c1").await.unwrap();
    assert!(t.cgroup_dirs("c1").is_empty());
}

#[tokio::test]
async fn stdin_is_relayed_and_closed() {
    let t = TestAgent::start().await;
    t.run("cat", &["cat"]).await;
    assert_eq!(t.write_stdin("cat", "", b"hello\n").await.unwrap(), 6);
    t.close_stdin("cat", "").await;
    assert_eq!(t.read_all("cat", "", true).await, "hello\n");
    assert_eq!(t.wait("cat", "").await.unwrap(), 0);
    // Stdin is gone now.
    let e = t.write_stdin("cat", "", b"x").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{}", message(&e));
}

#[tokio::test]
async fn signals_reach_the_process() {
    let t = TestAgent::start().await;
    t.run("trap", &["sh", "-c", "trap 'exit 7' TERM; echo ready; while true; do sleep 0.05; done"]).await;
    assert_eq!(t.read("trap", "", true).await.unwrap(), b"ready\n");
    t.signal("trap", "", 15).await.unwrap();
    assert_eq!(t.wait("trap", "", ).await.unwrap(), 7);

    t.run("kill", &["sleep", "1000"]).await;
    t.signal("kill", "", 9).await.unwrap();
    assert_eq!(t.wait("kill", "").await.unwrap(), 128 + 9);
    let e = t.signal("kill", "", 0).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
}

#[tokio::test]
async fn exec_into_running_container() {
    let t = TestAgent::start().await;
    t.run("svc", &["sleep", "1000"]).await;
    t.exec("svc", "e1", &["sh", "-c", "echo from-exec; cat /proc/1/cmdline; exit 5"], false).await.unwrap();
    let out = t.read_all("svc", "e1", true).await;
    assert!(out.starts_with("from-exec\nsleep"), "{out:?}");
    assert_eq!(t.read_all("svc", "e1", false).await, "");
    assert_eq!(t.wait("svc", "e1").await.unwrap(), 5);
    // Drained and waited: the agent forgets the exec (execs do not pile up).
    let e = t.wait("svc", "e1").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
    // Duplicate exec id.
    t.exec("svc", "e2", &["sleep", "1000"], false).await.unwrap();
    let e = t.exec("svc", "e2", &["true"], false).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS, "{}", message(&e));
    t.signal("svc", "e2", 9).await.unwrap();
    assert_eq!(t.wait("svc", "e2").await.unwrap(), 137);
    // Unknown exec id.
    let e = t.wait("svc", "nope").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
    assert!(message(&e).contains("nope"), "{}", message(&e));
}

#[tokio::test]
async fn tty_gets_a_real_pty_and_resizes() {
    let t = TestAgent::start().await;
    let mut spec = t.spec("tty", &["sh", "-c", "read x; tty; stty size"]);
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    spec.set_process(Some(p));
    t.create("tty", &spec).await.unwrap();
    t.start_container("tty").await.unwrap();
    let mut r = pb::TtyWinResizeRequest::new();
    r.container_id = "tty".into();
    r.row = 40;
    r.column = 100;
    t.client.agent().tty_win_resize(t.client.context(), &r).await.unwrap();
    t.write_stdin("tty", "", b"go\n").await.unwrap();
    let out = t.read_all("tty", "", true).await;
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    assert_eq!(t.wait("tty", "").await.unwrap(), 0);
    // No stderr with a terminal.
    assert!(t.read("tty", "", false).await.unwrap().is_empty());
    // Resizing a process without a terminal is refused.
    t.run("notty", &["true"]).await;
    r.container_id = "notty".into();
    let e = t.client.agent().tty_win_resize(t.client.context(), &r).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn stats_and_pause_resume() {
    let t = TestAgent::start().await;
    t.run("ctr", &["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut r = pb::StatsContainerRequest::new();
    r.container_id = "ctr".into();
    let s = t.client.agent().stats_container(t.client.context(), &r).await.unwrap();
    let cg = s.cgroup_stats.as_ref().unwrap();
    assert!(cg.memory_stats.usage.usage > 0, "{cg:?}");
    assert!(cg.pids_stats.current >= 1, "{cg:?}");
    assert!(cg.cpu_stats.cpu_usage.total_usage > 0, "{cg:?}");

    let count = t.shared().join("ctr/rootfs/tmp/count");
    let read = || std::fs::read_to_string(&count).unwrap_or_default().trim().parse::<u64>().unwrap_or(0);
    let mut p = pb::PauseContainerRequest::new();
    p.container_id = "ctr".into();
    t.client.agent().pause_container(t.client.context(), &p).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = read();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(read(), frozen, "counter moved while paused");
    let mut rs = pb::ResumeContainerRequest::new();
    rs.container_id = "ctr".into();
    t.client.agent().resume_container(t.client.context(), &rs).await.unwrap();
    // Under load the thawed loop may take a while to be scheduled: poll, up to 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read() <= frozen && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(read() > frozen, "counter did not move after resume");
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let t = TestAgent::start().await;
    let mut spec = t.spec("oom", &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"]);
    let memory = LinuxMemoryBuilder::default().limit(32 * 1024 * 1024).swap(32 * 1024 * 1024).build().unwrap();
    let resources = LinuxResourcesBuilder::default().memory(memory).build().unwrap();
    let mut linux = spec.linux().clone().unwrap_or_else(|| LinuxBuilder::default().build().unwrap());
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    let oom = tokio::spawn({
        let c = t.client.clone();
        async move { c.agent().get_oom_event(context_with(Duration::from_secs(30)), &pb::GetOOMEventRequest::new()).await }
    });
    t.create("oom", &spec).await.unwrap();
    t.start_container("oom").await.unwrap();
    assert_eq!(t.wait("oom", "").await.unwrap(), 137);
    assert_eq!(oom.await.unwrap().unwrap().container_id, "oom");
}

#[tokio::test]
async fn remove_leaves_no_process_mount_or_cgroup() {
    let t = TestAgent::start().await;
    t.run("gone", &["sh", "-c", "sleep 1000 & sleep 1000"]).await;
    t.exec("gone", "x", &["sleep", "1000"], false).await.unwrap();
    let mut r = pb::StatsContainerRequest::new();
    r.container_id = "gone".into();
    assert!(!t.cgroup_dirs("gone").is_empty());
    let pids: Vec<i32> = t
        .cgroup_dirs("gone")
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| s.lines().filter_map(|l| l.parse().ok()).collect::<Vec<i32>>())
        .collect();
    assert!(pids.len() >= 3, "{pids:?}");
    t.remove("gone").await.unwrap();
    for p in &pids {
        assert!(!common::pid_alive(*p), "pid {p} survived");
    }
    assert!(t.cgroup_dirs("gone").is_empty(), "{:?}", t.cgroup_dirs("gone"));
    assert!(t.mounts_under("gone").is_empty(), "{:?}", t.mounts_under("gone"));
    assert!(!t.dir.path().join("state/bundles/gone").exists());
    assert!(!t.dir.path().join("state/runners/gone").exists());
    let e = t.wait("gone", "").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_agent_keeps_serving() {
    let t = TestAgent::start().await;
    // Unknown container.
    let e = t.start_container("ghost").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
    assert!(message(&e).contains("ghost"));
    // Bad ids.
    for bad in ["", "../x", "-x", "a/b", &"x".repeat(200)] {
        let e = t.create(bad, &Spec::default()).await.unwrap_err();
        assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{bad:?}: {}", message(&e));
        assert!(message(&e).contains("container_id"), "{}", message(&e));
    }
    // Missing spec.
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = "nospec".into();
    let e = t.client.agent().create_container(t.client.context(), &r).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    // Empty args, relative cwd.
    let spec = t.spec("noargs", &[]);
    let e = t.create("noargs", &spec).await.unwrap_err();
    assert!(message(&e).contains("process.Args"), "{}", message(&e));
    // Rootfs outside the shared directory.
    let mut spec = t.spec("escape", &["true"]);
    let mut root = spec.root().clone().unwrap();
    root.set_path(PathBuf::from("/etc"));
    spec.set_root(Some(root));
    let e = t.create("escape", &spec).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(message(&e).contains("OCI.Root.Path"), "{}", message(&e));
    // Unknown namespace type on the wire.
    let mut g = protocols::convert::spec_to_grpc(&t.spec("badns", &["true"]));
    let mut ns = protocols::oci::LinuxNamespace::new();
    ns.Type = "bogus".into();
    g.Linux.mut_or_insert_default().Namespaces.push(ns);
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = "badns".into();
    r.OCI = MessageField::some(g);
    let e = t.client.agent().create_container(t.client.context(), &r).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{}", message(&e));
    // Duplicate container id.
    t.run("dup", &["sleep", "1000"]).await;
    let e = t.create("dup", &t.spec("dup", &["true"])).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS);
    // Unimplemented RPCs answer UNIMPLEMENTED after the gate.
    let e = t.client.agent().get_ip_tables(t.client.context(), &pb::GetIPTablesRequest::new()).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::UNIMPLEMENTED);
    // Still serving.
    t.client.check().await.unwrap();
    assert_eq!(t.wait("dup", "nope").await.map_err(|e| code(&e)).unwrap_err(), ttrpc::Code::NOT_FOUND);
}

#[tokio::test]
async fn failed_create_leaves_nothing_behind() {
    let t = TestAgent::start().await;
    let with_bind = |source: &Path, dest: &str| {
        let mut spec = t.spec("broken", &["true"]);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(dest)
                .source(source)
                .typ("bind")
                .options(vec!["rbind".to_string()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        spec
    };
    // Refused by the agent (a source outside its roots) ...
    let e = t.create("broken", &with_bind(Path::new("/does/not/exist"), "/data")).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(message(&e).contains("OCI.Mounts[") && message(&e).contains("/does/not/exist"), "{}", message(&e));
    // ... and failing in the runner (a file bound onto a directory).
    let file = t.shared().join("broken-0123456789abcdef-hosts");
    std::fs::write(&file, b"").unwrap();
    let e = t.create("broken", &with_bind(&file, "/bin")).await.unwrap_err();
    assert!(message(&e).contains("broken"), "{}", message(&e));
    assert!(t.cgroup_dirs("broken").is_empty(), "{:?}", t.cgroup_dirs("broken"));
    assert!(t.mounts_under("broken").is_empty());
    assert!(!t.dir.path().join("state/bundles/broken").exists());
    assert!(!t.dir.path().join("state/runners/broken").exists());
    // The id is free again.
    t.run("broken", &["true"]).await;
    assert_eq!(t.wait("broken", "").await.unwrap(), 0);
}

#[tokio::test]
async fn copy_file_guest_details_and_clock() {
    let t = TestAgent::start().await;
    let path = format!("{}/pod/config/app.conf", t.shared().canonicalize().unwrap().display());
    let mut r = pb::CopyFileRequest::new();
    r.path = path.clone();
    r.file_size = 5;
    r.file_mode = 0o100644;
    r.dir_mode = 0o755;
    r.data = b"hello".to_vec();
    t.client.agent().copy_file(t.client.context(), &r).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello");
    for bad in ["/etc/passwd".to_string(), format!("{path}/../../../../etc/x"), "rel/x".to_string()] {
        r.path = bad.clone();
        let e = t.client.agent().copy_file(t.client.context(), &r).await.unwrap_err();
        assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{bad}: {}", message(&e));
    }

    let mut g = pb::GuestDetailsRequest::new();
    g.mem_block_size = true;
    let d = t.client.agent().get_guest_details(t.client.context(), &g).await.unwrap();
    assert_eq!(d.agent_details.version, env!("CARGO_PKG_VERSION"));
    assert!(!d.agent_details.init_daemon);

    // Setting the clock to (about) now is harmless on a shared host.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut c = pb::SetGuestDateTimeRequest::new();
    c.Sec = now.as_secs() as i64;
    c.Usec = i64::from(now.subsec_micros());
    t.client.agent().set_guest_date_time(t.client.context(), &c).await.unwrap();
    c.Usec = 2_000_000;
    let e = t.client.agent().set_guest_date_time(t.client.context(), &c).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
}

#[tokio::test]
async fn oversized_frame_is_refused_and_agent_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestAgent::start().await;
    let sock = t.dir.path().join("agent.sock");
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    // Header: length 8 MiB (over ttrpc's 4 MiB limit), stream 1, request.
    let len: u32 = 8 << 20;
    let mut frame = Vec::new();
    frame.extend(len.to_be_bytes());
    frame.extend(1u32.to_be_bytes());
    frame.extend([1u8, 0u8]);
    s.write_all(&frame).await.unwrap();
    let body = vec![0u8; len as usize];
    let _ = s.write_all(&body).await;
    let mut hdr = [0u8; 10];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut hdr)).await;
    if let Ok(Ok(_)) = got {
        assert_eq!(hdr[8], 2, "expected a response frame");
    }
    // Whatever happened to that connection, the agent still answers others.
    t.client.check().await.unwrap();
    let fresh = AgentClient::connect(&format!("unix://{}", sock.display()).parse().unwrap(), ConnectOptions::default()).await.unwrap();
    fresh.check().await.unwrap();
}

#[tokio::test]
async fn destroy_sandbox_kills_everything() {
    let t = TestAgent::start().await;
    let mut r = pb::CreateSandboxRequest::new();
    r.sandbox_id = "pod".into();
    r.hostname = "podhost".into();
    t.client.agent().create_sandbox(t.client.context(), &r).await.unwrap();
    let e = t.client.agent().create_sandbox(t.client.context(), &r).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS);
    t.run("a", &["sh", "-c", "hostname; sleep 1000"]).await;
    assert_eq!(t.read("a", "", true).await.unwrap(), b"podhost\n");
    t.run("b", &["sleep", "1000"]).await;
    t.client.agent().destroy_sandbox(t.client.context(), &pb::DestroySandboxRequest::new()).await.unwrap();
    assert!(t.cgroup_dirs("a").is_empty() && t.cgroup_dirs("b").is_empty());
    let e = t.start_container("a").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
}

fn shm_storage(opts: &[&str]) -> pb::Storage {
    let mut s = pb::Storage::new();
    s.driver = "ephemeral".into();
    s.source = "shm".into();
    s.fstype = "tmpfs".into();
    s.mount_point = "/run/kata-containers/sandbox/shm".into();
    s.options = opts.iter().map(|o| o.to_string()).collect();
    s
}

fn is_mount_point(p: &Path) -> bool {
    let p = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

/// Kata's pod shm: CreateSandbox mounts the `ephemeral` tmpfs, every container binds it as
/// /dev/shm (one shm for the pod), DestroySandbox unmounts it; bad storages are refused
/// naming the field, with nothing mounted.
#[tokio::test]
async fn sandbox_shm_storage_is_shared_by_the_containers_and_unmounted() {
    let t = TestAgent::start().await;
    // The plain-process agent keeps the guest's /run/kata-containers/sandbox below its state dir.
    let shm = t.dir.path().join("state/sandbox/shm");
    let bad_cases: Vec<(pb::Storage, &str)> = vec![
        (shm_storage(&["nosuid", "size=1g1"]), "storages.options"),
        (shm_storage(&["size=4g"]), "storages.options"),
        ({ let mut s = shm_storage(&["size=1m"]); s.mount_point = "/run/kata-containers/shared/containers/x".into(); s }, "storages.mount_point"),
        ({ let mut s = shm_storage(&["size=1m"]); s.mount_point = "/run/kata-containers/sandbox/../../../etc".into(); s }, "storages.mount_point"),
        ({ let mut s = shm_storage(&["size=1m"]); s.driver = "local".into(); s }, "storages.driver"),
        ({ let mut s = shm_storage(&["size=1m"]); s.fstype = "ext4".into(); s }, "storages.fstype"),
    ];
    for (st, field) in bad_cases {
        let mut r = pb::CreateSandboxRequest::new();
        r.sandbox_id = "pod".into();
        r.storages = vec![st.clone()];
        let e = t.client.agent().create_sandbox(t.client.context(), &r).await.unwrap_err();
        assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{st:?}");
        assert!(message(&e).contains(field), "{st:?}: {}", message(&e));
        assert!(!is_mount_point(&shm));
    }
    let mut r = pb::CreateSandboxRequest::new();
    r.sandbox_id = "pod".into();
    r.storages = vec![shm_storage(&["noexec", "nosuid", "nodev", "mode=1777", "size=4m"])];
    t.client.agent().create_sandbox(t.client.context(), &r).await.unwrap();
    assert!(is_mount_point(&shm), "no tmpfs at {}", shm.display());

    let with_shm = |cid: &str, args: &[&str]| {
        let mut spec = t.spec(cid, args);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/dev/shm")
                .typ("bind")
                .source("/run/kata-containers/sandbox/shm")
                .options(vec!["rbind".to_string()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        spec
    };
    t.create("w", &with_shm("w", &["sh", "-c", "echo shared > /dev/shm/x"])).await.unwrap();
    t.start_container("w").await.unwrap();
    assert_eq!(t.wait("w", "").await.unwrap(), 0);
    t.create("r", &with_shm("r", &["sh", "-c", "cat /dev/shm/x; grep ' /dev/shm ' /proc/mounts"])).await.unwrap();
    t.start_container("r").await.unwrap();
    let out = t.read_all("r", "", true).await;
    assert!(out.starts_with("shared\nshm /dev/shm tmpfs "), "{out}");
    assert!(out.contains("size=4096k"), "{out}");
    assert_eq!(std::fs::read_to_string(shm.join("x")).unwrap(), "shared\n");

    t.client.agent().destroy_sandbox(t.client.context(), &pb::DestroySandboxRequest::new()).await.unwrap();
    assert!(!is_mount_point(&shm), "{} still mounted after DestroySandbox", shm.display());
    assert!(!shm.exists());
}

const TEST_POLICY: &str = r#"package agent_policy
import rego.v1
default AllowAll := true
CreateContainerRequest if AllowAll
StartContainerRequest if AllowAll
WaitProcessRequest if AllowAll
RemoveContainerRequest if AllowAll
default ReadStreamRequest := false
ReadStreamRequest if input.container_id != "secret"
default ExecProcessRequest := {"allowed": false, "reason": "no exec in this pod"}
SetPolicyRequest if AllowAll
"#;

#[tokio::test]
async fn policy_gates_every_request_redacts_logs_and_set_policy_replaces_it() {
    let t = TestAgent::start_with_policy(Some(TEST_POLICY)).await;
    // Allowed by the policy.
    t.run("secret", &["sh", "-c", "echo top-secret; sleep 1000"]).await;
    // Denied log reads are redacted, not failed (the container must not stall).
    let first = t.read("secret", "", true).await.unwrap();
    assert_eq!(first, b"[kata-cc: output redacted by policy]\n");
    // Exec is refused with the policy's reason.
    let e = t.exec("secret", "x", &["true"], false).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::PERMISSION_DENIED);
    assert!(message(&e).contains("no exec in this pod"), "{}", message(&e));
    // No rule for StatsContainer: default deny.
    let mut r = pb::StatsContainerRequest::new();
    r.container_id = "secret".into();
    let e = t.client.agent().stats_container(t.client.context(), &r).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::PERMISSION_DENIED);
    // A policy that does not parse is refused and the old one stays.
    let mut sp = pb::SetPolicyRequest::new();
    sp.policy = "package agent_policy\nthis is not rego".into();
    let e = t.client.agent().set_policy(t.client.context(), &sp).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{}", message(&e));
    assert_eq!(code(&t.exec("secret", "x", &["true"], false).await.unwrap_err()), ttrpc::Code::PERMISSION_DENIED);
    // SetPolicy (allowed by the current policy) installs a new one.
    sp.policy = policy::builtin::ALLOW_ALL.to_string();
    t.client.agent().set_policy(t.client.context(), &sp).await.unwrap();
    t.exec("secret", "x", &["true"], false).await.unwrap();
    assert_eq!(t.wait("secret", "x").await.unwrap(), 0);
    // ... and a policy that forbids SetPolicy locks itself in.
    sp.policy = policy::builtin::DENY_ALL.to_string();
    t.client.agent().set_policy(t.client.context(), &sp).await.unwrap();
    sp.policy = policy::builtin::ALLOW_ALL.to_string();
    let e = t.client.agent().set_policy(t.client.context(), &sp).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::PERMISSION_DENIED);
    t.client.check().await.unwrap();
}

/// What the host names is confined: CopyFile cannot plant a symlink out of the shared
/// directory, a bind mount of `/` (or of a planted symlink) is refused naming the
/// mount, and a DNS line with a second line smuggled in is refused naming it.
#[tokio::test]
async fn host_named_paths_are_confined() {
    let t = TestAgent::start().await;
    let shared = t.shared().canonicalize().unwrap();
    let mut r = pb::CopyFileRequest::new();
    r.path = format!("{}/evil", shared.display());
    r.file_mode = 0o120777;
    r.data = b"/".to_vec();
    let e = t.client.agent().copy_file(t.client.context(), &r).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(message(&e).contains("symlink target"), "{}", message(&e));
    assert!(std::fs::symlink_metadata(shared.join("evil")).is_err());
    r.file_mode = 0o104755;
    r.data = b"x".to_vec();
    r.file_size = 1;
    let e = t.client.agent().copy_file(t.client.context(), &r).await.unwrap_err();
    assert!(message(&e).contains("setuid"), "{}", message(&e));

    std::os::unix::fs::symlink("/", shared.join("planted")).unwrap();
    for source in [PathBuf::from("/"), shared.join("planted"), shared.join("planted/etc")] {
        let mut spec = t.spec("c", &["true"]);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/host")
                .source(&source)
                .typ("bind")
                .options(vec!["rbind".to_string()])
                .build()
                .unwrap(),
        );
        let i = mounts.len() - 1;
        spec.set_mounts(Some(mounts));
        let e = t.create("c", &spec).await.unwrap_err();
        assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
        let want = format!("OCI.Mounts[{i}].source {:?}", source.display().to_string());
        assert!(message(&e).contains(&want), "{want}: {}", message(&e));
    }

    let mut s = pb::CreateSandboxRequest::new();
    s.sandbox_id = "pod".into();
    s.dns = vec!["nameserver 10.96.0.10".into(), "nameserver 10.0.0.1\nnameserver 6.6.6.6".into()];
    let e = t.client.agent().create_sandbox(t.client.context(), &s).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(message(&e).contains("invalid dns: line 1"), "{}", message(&e));
    s.dns = vec!["nameserver 10.96.0.10".into(), "search default.svc.cluster.local".into(), "options ndots:5".into()];
    t.client.agent().create_sandbox(t.client.context(), &s).await.unwrap();
}

/// containerd 2.x's defaults (`enable_unprivileged_ports`, `enable_unprivileged_icmp`)
/// put two `net.*` sysctls in every container's spec. The container shares the agent's
/// network namespace (the VM's, here a namespace of the test's own), so the agent sets
/// them there: the container is created and sees the values; the host's stay as they were.
#[tokio::test]
async fn net_sysctls_are_set_in_the_shared_network_namespace() {
    let host_ping = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
    let host_port = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let t = TestAgent::start_with(None, true).await;
    let mut spec =
        t.spec("c1", &["cat", "/proc/sys/net/ipv4/ping_group_range", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some(
        [
            ("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string()),
            ("net.ipv4.ping_group_range".to_string(), "0 2147483647".to_string()),
        ]
        .into(),
    ));
    spec.set_linux(Some(linux));
    t.create("c1", &spec).await.unwrap();
    t.start_container("c1").await.unwrap();
    let out = t.read_all("c1", "", true).await;
    assert_eq!(t.wait("c1", "").await.unwrap(), 0);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "2147483647", "0"], "{out}");
    t.remove("c1").await.unwrap();

    // A name that is not a plain sysctl is refused, naming it.
    let mut spec = t.spec("c2", &["true"]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some([("net.ipv4/../../kernel.hostname".to_string(), "x".to_string())].into()));
    spec.set_linux(Some(linux));
    let e = t.create("c2", &spec).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{e:?}");
    assert!(message(&e).contains("net.ipv4/../../kernel.hostname"), "{}", message(&e));

    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap(), host_ping);
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(), host_port);
}
