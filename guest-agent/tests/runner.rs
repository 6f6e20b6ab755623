//! Integration tests of the per-container runner helper (run as root, cgroup v1 or v2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{bundle, existing_cgroup_dirs, pid_alive, Bundle};
use guest_agent::runner::{FailureKind, ProcessIo, Runner, RunnerConfig, RunnerError};

const T: Duration = Duration::from_secs(30);

/// Fails the test instead of hanging.
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

struct Env {
    state: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            state: tempfile::Builder::new()
                .prefix("runner-state-")
                .tempdir()
                .expect("state dir"),
        }
    }

    fn cfg(&self) -> RunnerConfig {
        RunnerConfig {
            helper_exe: PathBuf::from(env!("CARGO_BIN_EXE_kata-cc-agent")),
            state_root: self.state.path().to_owned(),
        }
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.state.path().join(id)
    }

    async fn create(&self, id: &str, b: &Bundle) -> (Runner, ProcessIo, i32) {
        within("create", Runner::create(&self.cfg(), id, b.path()))
            .await
            .unwrap_or_else(|e| panic!("create {id}: {}", chain(&e)))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Reads a pipe (or pty master) to EOF (or EIO, which a pty gives once the slave closed).
async fn read_all(fd: Option<OwnedFd>) -> String {
    let fd = fd.expect("descriptor");
    within(
        "read output",
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::from(fd);
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }),
    )
    .await
    .expect("reader task")
}

async fn wait(r: &Runner, exec_id: Option<&str>) -> i32 {
    within("wait", r.wait(exec_id))
        .await
        .unwrap_or_else(|e| panic!("wait: {}", chain(&e)))
}

async fn destroy(r: &Runner) {
    within("destroy", r.destroy())
        .await
        .unwrap_or_else(|e| panic!("destroy: {}", chain(&e)));
}

fn exec_process(b: &Bundle, args: &[&str]) -> oci_spec::runtime::Process {
    let mut p = b.spec.process().clone().expect("process");
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p
}

/// Asserts that nothing of the container is left: processes, cgroups, state, helper.
fn assert_gone(env: &Env, id: &str, pids: &[i32], helper: Option<u32>) {
    for pid in pids {
        assert!(!pid_alive(*pid), "pid {pid} of {id} survived");
    }
    assert_eq!(
        existing_cgroup_dirs(id),
        Vec::<PathBuf>::new(),
        "cgroup of {id} left"
    );
    assert!(!env.state_dir(id).exists(), "state dir of {id} left");
    if let Some(h) = helper {
        assert!(!pid_alive(h as i32), "helper {h} of {id} still running");
    }
    let leftovers: Vec<_> = std::fs::read_dir(env.state.path())
        .expect("state root")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "state root not empty: {leftovers:?}");
}

#[tokio::test]
async fn create_start_wait_collects_output_and_status() {
    let env = Env::new();
    let id = unique("basic");
    let b = bundle(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (r, io, pid) = env.create(&id, &b).await;
    assert!(pid > 0);
    assert!(env.state_dir(&id).exists());
    drop(io.stdin);
    let out = tokio::spawn(read_all(io.stdout));
    let err = tokio::spawn(read_all(io.stderr));
    within("start", r.start()).await.expect("start");
    assert_eq!(wait(&r, None).await, 3);
    // A second waiter gets the same status.
    assert_eq!(wait(&r, None).await, 3);
    assert_eq!(out.await.expect("stdout"), "out\n");
    assert_eq!(err.await.expect("stderr"), "err\n");
    let helper = r.helper_pid();
    destroy(&r).await;
    assert_gone(&env, &id, &[pid], helper);
}

#[tokio::test]
async fn create_start_wait_of_true_is_fast() {
    let env = Env::new();
    let id = unique("timing");
    let b = bundle(&id, &["true"]);
    // Warm up (page cache, binary), then measure.
    let mut times = Vec::new();
    for i in 0..3 {
        let cid = format!("{id}-{i}");
        let t0 = Instant::now();
        let (r, _io, _) = env.create(&cid, &b).await;
        let t1 = Instant::now();
        within("start", r.start()).await.expect("start");
        assert_eq!(wait(&r, None).await, 0);
        let t2 = Instant::now();
        destroy(&r).await;
        let t3 = Instant::now();
        times.push((t1 - t0, t2 - t1, t3 - t2));
    }
    eprintln!("create / start+wait / destroy of /bin/true: {times:?}");
    let (c, s, _) = times[2];
    assert!(c + s < Duration::from_secs(2), "too slow: {times:?}");
}

#[tokio::test]
async fn stdin_reaches_the_container() {
    let env = Env::new();
    let id = unique("stdin");
    let b = bundle(&id, &["cat"]);
    let (r, io, _) = env.create(&id, &b).await;
    let out = tokio::spawn(read_all(io.stdout));
    within("start", r.start()).await.expect("start");
    let mut stdin = std::fs::File::from(io.stdin.expect("stdin"));
    stdin
        .write_all(b"hello through cat\n")
        .expect("write stdin");
    drop(stdin);
    assert_eq!(wait(&r, None).await, 0);
    assert_eq!(out.await.expect("stdout"), "hello through cat\n");
    destroy(&r).await;
}

#[tokio::test]
async fn signals_give_kata_statuses() {
    let env = Env::new();
    // Without a pid namespace the init is an ordinary process: SIGTERM kills it.
    let id = unique("sigterm");
    let mut b = bundle(&id, &["sleep", "100"]);
    b.linux_mut()
        .namespaces_mut()
        .as_mut()
        .expect("ns")
        .retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid);
    b.write();
    let (r, _io, _) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    within("signal", r.signal(None, libc::SIGTERM, false))
        .await
        .expect("signal");
    assert_eq!(wait(&r, None).await, 143);
    // Signalling an exited process is not an error.
    within("signal", r.signal(None, libc::SIGTERM, false))
        .await
        .expect("signal after exit");
    destroy(&r).await;

    // With a pid namespace, the kernel drops a SIGTERM that the init has no handler for
    // (sleep has none): the runner sends SIGKILL instead, at once (critest's "stopping
    // container" stops `top` right after its start, before it installed its handler).
    let id = unique("sigterm-init");
    let b = bundle(&id, &["sleep", "100"]);
    let (r, _io, _) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    within("signal", r.signal(None, libc::SIGTERM, false))
        .await
        .expect("signal");
    assert_eq!(wait(&r, None).await, 137);
    destroy(&r).await;
    // An init with a SIGTERM handler gets the SIGTERM.
    let id = unique("sigterm-trap");
    let b = bundle(
        &id,
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 1 & wait $!; done",
        ],
    );
    let (r, io, _) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    let mut out = std::fs::File::from(io.stdout.expect("stdout"));
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).expect("ready");
    within("signal", r.signal(None, libc::SIGTERM, false))
        .await
        .expect("signal");
    assert_eq!(wait(&r, None).await, 42);
    destroy(&r).await;

    // With a pid namespace: an exec'd process dies of SIGTERM, the init of SIGKILL.
    let id = unique("sigkill");
    let b = bundle(&id, &["sleep", "100"]);
    let (r, _io, _) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    let (_eio, _) = within("exec", r.exec("s1", &exec_process(&b, &["sleep", "100"])))
        .await
        .expect("exec");
    within("signal", r.signal(Some("s1"), libc::SIGTERM, false))
        .await
        .expect("signal exec");
    assert_eq!(wait(&r, Some("s1")).await, 143);
    within("signal", r.signal(None, libc::SIGKILL, true))
        .await
        .expect("kill all");
    assert_eq!(wait(&r, None).await, 137);
    let e = r
        .signal(Some("nope"), libc::SIGTERM, false)
        .await
        .unwrap_err();
    assert!(matches!(e, RunnerError::UnknownExec { .. }), "{e:?}");
    let e = r.signal(None, 99, false).await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::InvalidArgument, "{e:?}");
    destroy(&r).await;
}

#[tokio::test]
async fn exec_runs_in_the_container() {
    let env = Env::new();
    let id = unique("exec");
    let b = bundle(&id, &["sleep", "100"]);
    let (r, _io, init_pid) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");

    let mut p = exec_process(
        &b,
        &[
            "sh",
            "-c",
            "echo hi $FOO; pwd; hostname; echo oops >&2; exit 5",
        ],
    );
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
    p.set_cwd(PathBuf::from("/tmp"));
    let (io, pid) = within("exec", r.exec("e1", &p)).await.expect("exec");
    assert!(pid > 0 && pid != init_pid);
    drop(io.stdin);
    let out = tokio::spawn(read_all(io.stdout));
    let err = tokio::spawn(read_all(io.stderr));
    assert_eq!(wait(&r, Some("e1")).await, 5);
    assert_eq!(
        out.await.expect("stdout"),
        format!(
            "hi bar\n/tmp\n{}\n",
            b.spec.hostname().clone().unwrap_or_default()
        )
    );
    assert_eq!(err.await.expect("stderr"), "oops\n");

    // The exec sees the init as pid 1 (same pid namespace).
    let (io, _) = within(
        "exec ps",
        r.exec("e2", &exec_process(&b, &["cat", "/proc/1/cmdline"])),
    )
    .await
    .expect("exec");
    let out = tokio::spawn(read_all(io.stdout));
    assert_eq!(wait(&r, Some("e2")).await, 0);
    assert_eq!(out.await.expect("stdout"), "sleep\u{0}100\u{0}");

    // Several concurrent execs.
    let mut handles = Vec::new();
    for i in 0..4 {
        let r = r.clone();
        let p = exec_process(&b, &["sh", "-c", &format!("exit {}", 10 + i)]);
        handles.push(tokio::spawn(async move {
            let id = format!("c{i}");
            let (_io, _) = r.exec(&id, &p).await.expect("exec");
            r.wait(Some(&id)).await.expect("wait")
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within("concurrent", h).await.expect("join"), 10 + i as i32);
    }

    // Errors: unknown exec id, a running exec id reused, a missing binary.
    let e = r.wait(Some("nope")).await.unwrap_err();
    assert!(matches!(e, RunnerError::UnknownExec { .. }), "{e:?}");
    let (_io, _) = within("exec", r.exec("long", &exec_process(&b, &["sleep", "100"])))
        .await
        .expect("exec");
    let e = r
        .exec("long", &exec_process(&b, &["true"]))
        .await
        .unwrap_err();
    assert!(matches!(e, RunnerError::ExecExists { .. }), "{e:?}");
    let e = within(
        "exec missing",
        r.exec("bad", &exec_process(&b, &["/no/such/binary"])),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RunnerError::Process { .. }), "{e:?}");
    // The container is still fine afterwards.
    let (_io, _) = within("exec", r.exec("ok", &exec_process(&b, &["true"])))
        .await
        .expect("exec after failure");
    assert_eq!(wait(&r, Some("ok")).await, 0);

    // Start twice is refused; exec into a stopped container too.
    let e = r.start().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::InvalidState, "{}", chain(&e));
    within("kill", r.signal(None, libc::SIGKILL, false))
        .await
        .expect("kill");
    assert_eq!(wait(&r, None).await, 137);
    // Killing the init ends the pid namespace: the remaining exec is gone too.
    assert_eq!(wait(&r, Some("long")).await, 137);
    let e = r
        .exec("late", &exec_process(&b, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), FailureKind::InvalidState, "{}", chain(&e));
    let helper = r.helper_pid();
    destroy(&r).await;
    assert_gone(&env, &id, &[init_pid, pid], helper);
}

fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from the valid pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn terminal_gives_a_pty() {
    let env = Env::new();
    let id = unique("tty");
    let mut b = bundle(&id, &["sh", "-c", "tty; stty size; sleep 100"]);
    b.process_mut().set_terminal(Some(true));
    b.write();
    let (r, io, _) = env.create(&id, &b).await;
    assert!(io.stdin.is_none() && io.stdout.is_none() && io.stderr.is_none());
    let master = io.pty_master.expect("pty master");
    set_winsize(&master, 33, 77);
    let mut reader = std::fs::File::from(master.try_clone().expect("dup master"));
    within("start", r.start()).await.expect("start");
    // Read until both lines arrived.
    let out = within(
        "pty output",
        tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            let mut buf = [0u8; 1024];
            while !(out.contains("/dev/") && out.contains("33 77")) {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            out
        }),
    )
    .await
    .expect("reader");
    assert!(
        out.contains("/dev/pts/0") || out.contains("/dev/console"),
        "{out:?}"
    );
    assert!(out.contains("33 77"), "{out:?}");

    // An exec with a terminal gets its own pty.
    let mut p = exec_process(&b, &["sh", "-c", "tty; stty size"]);
    p.set_terminal(Some(true));
    let (eio, _) = within("exec tty", r.exec("t1", &p)).await.expect("exec");
    let emaster = eio.pty_master.expect("exec pty");
    // The size is set on the master after the process started: stty may race with it,
    // so only the tty name is checked here.
    let out = tokio::spawn(read_all(Some(emaster)));
    assert_eq!(wait(&r, Some("t1")).await, 0);
    let out = out.await.expect("exec output");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    drop(master);
    destroy(&r).await;
}

/// Size of the file a container's loop appends to (read through the rootfs on the host).
fn counter(rootfs: &Path) -> u64 {
    std::fs::metadata(rootfs.join("tmp/counter"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn pause_freezes_and_resume_thaws() {
    let env = Env::new();
    let id = unique("pause");
    let b = bundle(
        &id,
        &[
            "sh",
            "-c",
            "while true; do echo x >> /tmp/counter; sleep 0.01; done",
        ],
    );
    let (r, _io, _) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    within("pause", r.pause()).await.expect("pause");
    let frozen = counter(&b.rootfs());
    assert!(frozen > 0, "the loop did not run");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counter(&b.rootfs()),
        frozen,
        "a frozen container progressed"
    );
    // Pausing twice is refused.
    let e = r.pause().await.unwrap_err();
    assert_eq!(e.kind(), FailureKind::InvalidState, "{}", chain(&e));
    within("resume", r.resume()).await.expect("resume");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        counter(&b.rootfs()) > frozen,
        "resumed container did not progress"
    );
    destroy(&r).await;
}

#[tokio::test]
async fn stats_and_update() {
    let env = Env::new();
    let id = unique("stats");
    let mut b = bundle(&id, &["sh", "-c", "sleep 100 & sleep 100"]);
    b.linux_mut()
        .resources_mut()
        .as_mut()
        .expect("res")
        .set_memory(Some(
            oci_spec::runtime::LinuxMemoryBuilder::default()
                .limit(128 * 1024 * 1024i64)
                .build()
                .expect("memory"),
        ));
    b.write();
    let (r, _io, _) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = within("stats", r.stats()).await.expect("stats");
    assert!(s.memory.usage.usage > 0, "{s:?}");
    assert_eq!(s.memory.usage.limit, 128 * 1024 * 1024, "{s:?}");
    assert!(s.pids.current >= 2, "{s:?}");
    assert!(s.cpu.total_usage > 0, "{s:?}");
    // Nanoseconds everywhere (v1 cpuacct.stat counts ticks, v2 microseconds).
    assert!(
        s.cpu.usage_in_kernelmode + s.cpu.usage_in_usermode == 0
            || s.cpu.usage_in_kernelmode + s.cpu.usage_in_usermode >= 1_000_000,
        "{s:?}"
    );
    let pids = within("pids", r.pids()).await.expect("pids");
    assert!(pids.len() >= 2, "{pids:?}");

    let res = oci_spec::runtime::LinuxResourcesBuilder::default()
        .memory(
            oci_spec::runtime::LinuxMemoryBuilder::default()
                .limit(64 * 1024 * 1024i64)
                .build()
                .expect("memory"),
        )
        .pids(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(50i64)
                .build()
                .expect("pids"),
        )
        .build()
        .expect("resources");
    within("update", r.update(&res)).await.expect("update");
    let s = within("stats", r.stats()).await.expect("stats");
    assert_eq!(s.memory.usage.limit, 64 * 1024 * 1024, "{s:?}");
    assert_eq!(s.pids.limit, 50, "{s:?}");
    destroy(&r).await;
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let env = Env::new();
    let id = unique("oom");
    let mut b = bundle(
        &id,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"],
    );
    let limit = 32 * 1024 * 1024i64;
    b.linux_mut()
        .resources_mut()
        .as_mut()
        .expect("res")
        .set_memory(Some(
            oci_spec::runtime::LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .expect("memory"),
        ));
    b.write();
    let (r, io, _) = env.create(&id, &b).await;
    drop(io);
    within("start", r.start()).await.expect("start");
    assert_eq!(wait(&r, None).await, 137);
    within("oom event", r.oom_event()).await.expect("oom event");
    let s = within("stats", r.stats()).await.expect("stats");
    assert_eq!(s.memory.usage.max_usage, limit as u64, "{s:?}");
    destroy(&r).await;
    // After destroy the OOM stream ends instead of hanging.
    let e = within("oom after destroy", r.oom_event())
        .await
        .unwrap_err();
    assert!(matches!(e, RunnerError::Destroyed { .. }), "{e:?}");
}

#[tokio::test]
async fn seccomp_profile_is_enforced() {
    let env = Env::new();
    let id = unique("seccomp");
    let mut b = bundle(
        &id,
        &[
            "sh",
            "-c",
            "mkdir /tmp/x; echo rc=$?; touch /tmp/y && echo touched",
        ],
    );
    let profile = oci_spec::runtime::LinuxSeccompBuilder::default()
        .default_action(oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![oci_spec::runtime::Arch::ScmpArchX86_64])
        .syscalls(vec![oci_spec::runtime::LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
            .action(oci_spec::runtime::LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .build()
            .expect("syscall rule")])
        .build()
        .expect("seccomp");
    b.linux_mut().set_seccomp(Some(profile));
    b.write();
    let (r, io, _) = env.create(&id, &b).await;
    let out = tokio::spawn(read_all(io.stdout));
    let err = tokio::spawn(read_all(io.stderr));
    within("start", r.start()).await.expect("start");
    assert_eq!(wait(&r, None).await, 0);
    let out = out.await.expect("stdout");
    let err = err.await.expect("stderr");
    assert!(
        out.contains("rc=1") && out.contains("touched"),
        "{out:?} {err:?}"
    );
    assert!(err.contains("Operation not permitted"), "{err:?}");
    assert!(!b.rootfs().join("tmp/x").exists());
    destroy(&r).await;
}

/// The `Seccomp:`, `NoNewPrivs:` and capability lines of a /proc/<pid>/status text.
fn security_lines(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| {
            [
                "Seccomp:",
                "NoNewPrivs:",
                "CapEff:",
                "CapPrm:",
                "CapBnd:",
                "CapInh:",
                "CapAmb:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// An exec'd process gets the container's seccomp filter (and no_new_privs and
/// capabilities exactly as the container's init), with and without no_new_privs.
async fn exec_gets_the_seccomp_profile(nnp: bool) {
    let env = Env::new();
    let id = unique(if nnp { "exec-sc-nnp" } else { "exec-sc" });
    let mut b = bundle(&id, &["sleep", "100"]);
    let profile = oci_spec::runtime::LinuxSeccompBuilder::default()
        .default_action(oci_spec::runtime::LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![oci_spec::runtime::Arch::ScmpArchX86_64])
        .syscalls(vec![oci_spec::runtime::LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
            .action(oci_spec::runtime::LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .build()
            .expect("syscall rule")])
        .build()
        .expect("seccomp");
    b.linux_mut().set_seccomp(Some(profile));
    if !nnp {
        // As the agent passes `noNewPrivileges: false`: no field.
        b.process_mut().set_no_new_privileges(None);
    }
    b.write();
    let (r, _io, init_pid) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    let init_status = std::fs::read_to_string(format!("/proc/{init_pid}/status")).expect("status");
    let init_lines = security_lines(&init_status);
    assert!(
        init_lines.contains(&"Seccomp: 2".to_string()),
        "{init_lines:?}"
    );

    // The exec request asks for no no_new_privs: it still gets the container's.
    let mut p = exec_process(
        &b,
        &[
            "sh",
            "-c",
            "cat /proc/self/status; mkdir /tmp/x; echo rc=$?",
        ],
    );
    p.set_no_new_privileges(None);
    let (io, _) = within("exec", r.exec("e1", &p)).await.expect("exec");
    drop(io.stdin);
    let out = tokio::spawn(read_all(io.stdout));
    let err = tokio::spawn(read_all(io.stderr));
    assert_eq!(wait(&r, Some("e1")).await, 0);
    let out = out.await.expect("stdout");
    let err = err.await.expect("stderr");
    // `cat` is a child of the exec'd `sh`: it inherits the filter, as any descendant.
    assert_eq!(security_lines(&out), init_lines, "{out}");
    assert!(out.contains("rc=1"), "{out:?} {err:?}");
    assert!(err.contains("Operation not permitted"), "{err:?}");
    assert!(!b.rootfs().join("tmp/x").exists());
    destroy(&r).await;
}

#[tokio::test]
async fn exec_gets_the_seccomp_profile_with_no_new_privs() {
    exec_gets_the_seccomp_profile(true).await;
}

#[tokio::test]
async fn exec_gets_the_seccomp_profile_without_no_new_privs() {
    exec_gets_the_seccomp_profile(false).await;
}

#[tokio::test]
async fn readonly_rootfs_and_user() {
    let env = Env::new();
    let id = unique("ro");
    let mut b = bundle(&id, &["sh", "-c", "echo x > /x; echo rc=$?; id"]);
    b.spec
        .root_mut()
        .as_mut()
        .expect("root")
        .set_readonly(Some(true));
    b.process_mut().set_user(
        oci_spec::runtime::UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .expect("user"),
    );
    b.write();
    let (r, io, _) = env.create(&id, &b).await;
    let out = tokio::spawn(read_all(io.stdout));
    let err = tokio::spawn(read_all(io.stderr));
    within("start", r.start()).await.expect("start");
    assert_eq!(wait(&r, None).await, 0);
    let out = out.await.expect("stdout");
    let err = err.await.expect("stderr");
    assert!(out.contains("rc=1"), "{out:?} {err:?}");
    assert!(out.contains("uid=1000(user) gid=1000(user)"), "{out:?}");
    assert!(err.contains("Read-only file system"), "{err:?}");
    assert!(!b.rootfs().join("x").exists());
    destroy(&r).await;
}

#[tokio::test]
async fn destroy_leaves_nothing() {
    let env = Env::new();
    let id = unique("destroy");
    let b = bundle(&id, &["sh", "-c", "sleep 100 & sleep 100"]);
    let (r, _io, init_pid) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    let (_eio, exec_pid) = within("exec", r.exec("e", &exec_process(&b, &["sleep", "100"])))
        .await
        .expect("exec");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut pids = within("pids", r.pids()).await.expect("pids");
    assert!(pids.len() >= 3, "{pids:?}");
    pids.extend([init_pid, exec_pid]);
    assert!(!existing_cgroup_dirs(&id).is_empty());
    let helper = r.helper_pid();
    assert!(helper.is_some_and(|h| pid_alive(h as i32)));

    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.wait(None).await })
    };
    destroy(&r).await;
    assert_eq!(
        within("waiter", waiter).await.expect("join").expect("wait"),
        137
    );
    assert_gone(&env, &id, &pids, helper);
    // Idempotent; everything else now says destroyed.
    destroy(&r).await;
    let e = r.start().await.unwrap_err();
    assert!(matches!(e, RunnerError::Destroyed { .. }), "{e:?}");
}

#[tokio::test]
async fn dropping_the_handle_cleans_up() {
    let env = Env::new();
    let id = unique("drop");
    let b = bundle(&id, &["sleep", "100"]);
    let (r, _io, init_pid) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    let helper = r.helper_pid();
    drop(r);
    let deadline = Instant::now() + T;
    while (pid_alive(init_pid)
        || helper.is_some_and(|h| pid_alive(h as i32))
        || env.state_dir(&id).exists())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_gone(&env, &id, &[init_pid], helper);
}

/// Creates `id` with a helper started through a symlink of its own name, asserts the
/// create fails and that neither the container nor that helper is left.
async fn assert_create_fails(env: &Env, id: &str, b: &Bundle) -> RunnerError {
    let link = env
        .state
        .path()
        .with_extension(format!("helper-{}", id.replace('/', "_")));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kata-cc-agent"), &link).expect("symlink");
    let cfg = RunnerConfig {
        helper_exe: link.clone(),
        ..env.cfg()
    };
    let e = match within("create", Runner::create(&cfg, id, b.path())).await {
        Ok(_) => panic!("create of {id} succeeded"),
        Err(e) => e,
    };
    assert_gone(env, id, &[], None);
    let left = helpers_started_as(&link);
    assert!(left.is_empty(), "helpers of {id} left: {left:?}");
    std::fs::remove_file(&link).expect("remove symlink");
    e
}

/// Live children of this test process whose argv[0] is `exe`.
fn helpers_started_as(exe: &Path) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{me}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(s) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for pid in s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let argv0 = std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .and_then(|c| c.split(|b| *b == 0).next().map(<[u8]>::to_vec));
            if argv0.as_deref() == Some(exe.as_os_str().as_encoded_bytes()) && pid_alive(pid as i32)
            {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn failed_create_leaves_nothing() {
    let env = Env::new();

    let id = unique("nobin");
    let b = bundle(&id, &["/no/such/binary"]);
    let e = assert_create_fails(&env, &id, &b).await;
    assert!(
        matches!(e, RunnerError::Container { op: "create", .. }),
        "{}",
        chain(&e)
    );

    let id = unique("badmount");
    let mut b = bundle(&id, &["true"]);
    let mut mounts = b.spec.mounts().clone().unwrap_or_default();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/mnt")
            .typ("nosuchfs")
            .source("none")
            .build()
            .expect("mount"),
    );
    b.spec.set_mounts(Some(mounts));
    b.write();
    let e = assert_create_fails(&env, &id, &b).await;
    assert!(
        matches!(e, RunnerError::Container { op: "create", .. }),
        "{}",
        chain(&e)
    );

    let id = unique("badid/x");
    let b = bundle("badid", &["true"]);
    let e = assert_create_fails(&env, &id, &b).await;
    assert_eq!(e.kind(), FailureKind::InvalidArgument, "{}", chain(&e));

    let id = unique("nobundle");
    let e = match Runner::create(&env.cfg(), &id, Path::new("/no/such/bundle")).await {
        Ok(_) => panic!("create without bundle succeeded"),
        Err(e) => e,
    };
    assert!(matches!(e, RunnerError::ReadSpec { .. }), "{e:?}");
}

/// Whether this process may lower oom_score_adj / raise hard rlimits.
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|c| c & (1 << 24) != 0)
}

#[tokio::test]
async fn privileged_spec_fields_fail_clearly() {
    let env = Env::new();
    let cap = has_cap_sys_resource();

    let id = unique("oomadj");
    let mut b = bundle(&id, &["true"]);
    b.process_mut().set_oom_score_adj(Some(-500));
    b.write();
    let result = within("create", Runner::create(&env.cfg(), &id, b.path())).await;
    match (cap, result) {
        (true, Ok((r, _, _))) => destroy(&r).await,
        (false, Err(e)) => {
            assert_eq!(e.kind(), FailureKind::PermissionDenied, "{}", chain(&e));
            assert!(chain(&e).contains("oomScoreAdj"), "{}", chain(&e));
        }
        (cap, other) => panic!("cap={cap}: unexpected {:?}", other.map(|_| ())),
    }
    assert_gone(&env, &id, &[], None);

    let id = unique("rlimit");
    let mut b = bundle(&id, &["true"]);
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    assert_eq!(rc, 0);
    b.process_mut()
        .set_rlimits(Some(vec![oci_spec::runtime::PosixRlimitBuilder::default()
            .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
            .soft(1024u64)
            .hard(hard.rlim_max + 1)
            .build()
            .expect("rlimit")]));
    b.write();
    let result = within("create", Runner::create(&env.cfg(), &id, b.path())).await;
    match (cap, result) {
        (true, Ok((r, _, _))) => destroy(&r).await,
        (false, Err(e)) => {
            assert_eq!(e.kind(), FailureKind::PermissionDenied, "{}", chain(&e));
            assert!(chain(&e).contains("RlimitNofile"), "{}", chain(&e));
        }
        (cap, other) => panic!("cap={cap}: unexpected {:?}", other.map(|_| ())),
    }
    assert_gone(&env, &id, &[], None);
}

#[tokio::test]
async fn destroy_of_created_and_paused_containers() {
    let env = Env::new();

    // Created, never started.
    let id = unique("created");
    let b = bundle(&id, &["sleep", "100"]);
    let (r, _io, pid) = env.create(&id, &b).await;
    assert!(pid_alive(pid));
    let helper = r.helper_pid();
    destroy(&r).await;
    assert_eq!(wait(&r, None).await, 137);
    assert_gone(&env, &id, &[pid], helper);

    // Paused, with an exec'd process.
    let id = unique("paused");
    let b = bundle(&id, &["sleep", "100"]);
    let (r, _io, pid) = env.create(&id, &b).await;
    within("start", r.start()).await.expect("start");
    let (_eio, epid) = within("exec", r.exec("e", &exec_process(&b, &["sleep", "100"])))
        .await
        .expect("exec");
    within("pause", r.pause()).await.expect("pause");
    let helper = r.helper_pid();
    destroy(&r).await;
    assert_eq!(wait(&r, Some("e")).await, 137);
    assert_gone(&env, &id, &[pid, epid], helper);
}
