//! `ctr run` against the private test containerd (`tests/containerd/start.sh`), outside
//! CRI: with runc a container prints the host's kernel; with
//! `--runtime io.containerd.kata-cc.v2 --snapshotter kata-cc` (the image left in the
//! registry and pulled inside the VM) it prints the test guest image's kernel (the VM gets
//! QEMU user-mode networking: `standalone_network = "user"` in the test configuration;
//! `ctr run --cni` is not supported with kata-cc, see docs/shim.md). The image is made available for the snapshotter with
//! `kata-cc-snapshotter pull` (ctr's own pull would unpack it on the host).
//!
//! `ctr run --cni` reads its network config only from /etc/cni/net.d: each run gets a
//! private mount namespace in which the harness's config dir is bound there (start.sh
//! makes the empty mount point), so the host's /etc/cni is never written.
//!
//! The kata-cc test needs the shim and the snapshotter built (`cargo build -p
//! kata-cc-shim -p kata-cc-snapshotter`), the test guest image and QEMU (see tests/cri.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kata_cc_tests::cri::{
    cni_release, containerd, host_kernel_release, kill9, shim_of, unique_name, wait_nothing_left,
};

/// containerd namespaces of these tests: one per runtime, so that the image pulled for
/// runc (unpacked on the host) and the image registered for the kata-cc snapshotter (no
/// layers) are separate image records.
const NS_RUNC: &str = "kata-cc-ctr-runc";
const NS_KATA: &str = "kata-cc-ctr-kata";

/// Serializes the pulls of the kata-cc tests (same namespace, same image).
static PULL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ctr(ns: &str) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address").arg(&containerd().sock).args(["-n", ns]);
    c
}

/// Makes `image` available in the test namespace: `ctr images pull` (layers unpacked on the
/// host) without a snapshotter; with the kata-cc snapshotter `kata-cc-snapshotter pull`,
/// which records the layers without fetching them (ctr's own pull would unpack them).
fn pull(ns: &str, image: &str, snapshotter: Option<&str>) {
    let _serial = PULL.lock().unwrap_or_else(|e| e.into_inner());
    let ctrd = containerd();
    let certs = ctrd.dir.join("certs.d");
    let mut c = match snapshotter {
        None => {
            let mut c = ctr(ns);
            c.args(["images", "pull", "--hosts-dir"]).arg(&certs);
            c
        }
        Some(s) => {
            let mut c = Command::new(ctrd.dir.join("bin/kata-cc-snapshotter"));
            c.arg("pull")
                .arg("--containerd")
                .arg(&ctrd.sock)
                .args(["-n", ns, "--snapshotter", s, "--hosts-dir"])
                .arg(&certs);
            c
        }
    };
    let out = c.arg(image).output().unwrap();
    assert!(
        out.status.success(),
        "pull {image} (snapshotter {snapshotter:?}): {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills and deletes container `id` (and releases its CNI address) when dropped, whatever
/// state the test left it in.
struct Guard {
    ns: &'static str,
    id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Each step bounded: a shim that does not answer must not hang the test run.
        let quiet = |args: &[&str]| {
            let _ = Command::new("timeout")
                .arg("60")
                .arg("ctr")
                .arg("--address")
                .arg(&containerd().sock)
                .args(["-n", self.ns])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["tasks", "kill", "-s", "SIGKILL", &self.id]);
        quiet(&["tasks", "delete", "--force", &self.id]);
        quiet(&["containers", "delete", &self.id]);
        // A shim that could not be made to let go: kill it; containerd then runs its
        // `delete`, which tears the VM down.
        if let Some(shim) = shim_of(&self.id) {
            eprintln!("cleanup: killing the shim of {} ({})", self.id, shim.pid);
            kill9(shim.pid);
            let deadline = Instant::now() + Duration::from_secs(60);
            while shim.rss_kib().is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            quiet(&["tasks", "delete", "--force", &self.id]);
            quiet(&["containers", "delete", &self.id]);
        }
        // `ctr run --cni` names the attachment <namespace>-<id>.
        cni_release(&format!("{}-{}", self.ns, self.id));
    }
}

/// `ctr run --rm [--cni] <args...>`, in a private mount namespace whose /etc/cni/net.d is
/// the harness's CNI config (and /opt/cni/bin Debian's plugins); killed (and failed) after
/// `limit`.
fn ctr_run(ns: &str, cni: bool, args: &[&str], limit: Duration) -> Output {
    let ctrd = containerd();
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        // ctr 1.7+ looks for the CNI plugins in /opt/cni/bin only (Debian's 1.6 ctr in
        // /usr/lib/cni): bind Debian's plugins there too unless that directory has them.
        r#"mount --bind "$1" /etc/cni/net.d && { [ -x /opt/cni/bin/bridge ] || mount --bind /usr/lib/cni /opt/cni/bin; } && shift && exec "$@""#,
        "sh",
    ])
    .arg(ctrd.dir.join("cni/net.d"))
    .arg("ctr")
    .arg("--address")
    .arg(&ctrd.sock)
    .args(["-n", ns, "run", "--rm"])
    .args(if cni { &["--cni"][..] } else { &[] })
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ctr run {args:?} did not finish within {limit:?}; stdout {:?}, stderr {:?}\ncontainerd log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                ctrd.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ctr run {args:?}: {}; stdout {:?}, stderr {:?}\ncontainerd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail(40)
    );
    out
}

#[test]
fn ctr_run_runc_prints_host_kernel() {
    let ctrd = containerd();
    pull(NS_RUNC, &ctrd.busybox_image, None);
    let id = unique_name("ctr-runc");
    let _guard = Guard {
        ns: NS_RUNC,
        id: id.clone(),
    };
    let out = ctr_run(
        NS_RUNC,
        true,
        &[
            &ctrd.busybox_image,
            &id,
            "/bin/sh",
            "-c",
            "/bin/busybox uname -r; /bin/busybox ip -4 -o addr show eth0",
        ],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(host_kernel_release().as_str()), "{stdout}");
    let eth0 = lines.next().unwrap_or("");
    assert!(eth0.contains("inet 10.88."), "no CNI address on eth0: {stdout}");
    wait_nothing_left(&id, Duration::from_secs(60));
}

/// `ctr run` of `uname -r` with the kata-cc runtime and snapshotter; asserts it prints the
/// test guest's kernel and leaves nothing behind.
fn ctr_run_kata_cc() {
    let guest = kata_cc_tests::guest_image().kernel_release;
    let stdout = ctr_run_kata_cc_with(&[], &["/bin/busybox", "uname", "-r"]);
    assert_eq!(stdout.trim(), guest, "expected the guest kernel");
    assert_ne!(stdout.trim(), host_kernel_release());
}

/// Read-only binds of a host directory with a tmpfs below it, as OCI mount options reach
/// the agent whatever the containerd version (ctr passes them as given): `rbind:ro`
/// leaves the tmpfs writable (the shim binds it on its own with its host flag), `rbind:rro`
/// makes it read-only too (the guest's runtime applies `rro` with mount_setattr).
#[test]
fn ctr_run_kata_cc_read_only_binds() {
    let host = kata_cc_tests::cri::HostPathWithTmpfs::mount();
    let src = host.path().display().to_string();
    let (ro, rro) = (format!("type=bind,src={src},dst=/ro,options=rbind:ro"), format!("type=bind,src={src},dst=/rro,options=rbind:rro"));
    let script = "for p in /ro/top /ro/tmpfs/f /rro/top /rro/tmpfs/f; do /bin/busybox touch $p 2>/dev/null && echo $p rw || echo $p ro; done";
    let stdout = ctr_run_kata_cc_with(&["--mount", &ro, "--mount", &rro], &["/bin/sh", "-c", script]);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["/ro/top ro", "/ro/tmpfs/f rw", "/rro/top ro", "/rro/tmpfs/f ro"], "{stdout}");
}

/// A VM whose hybrid-vsock channel never answers although its agent serves (what
/// vhost-device-vsock sometimes does, docs/shim.md): the shim boots a new VM, once, and
/// the container runs. The first VM's vsock daemon is a wrapper that gives the guest a
/// working device but puts a listener that accepts and never answers where the shim
/// dials; the second VM gets the real daemon.
#[test]
fn ctr_run_kata_cc_survives_a_stalled_vsock_channel() {
    let ctrd = containerd();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = std::fs::read_to_string(&ctrd.shim_config).unwrap();
    let line = config.lines().find(|l| l.trim_start().starts_with("vhost_device_vsock")).expect("vhost_device_vsock in the test configuration");
    let real = line.split('"').nth(1).unwrap().to_owned();
    let runs = tmp.path().join("runs");
    let wrapper = tmp.path().join("vhost-device-vsock-stall");
    std::fs::write(
        &wrapper,
        STALL_WRAPPER.replace("@REAL@", &real).replace("@RUNS@", &runs.display().to_string()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stalled_config = tmp.path().join("configuration.toml");
    std::fs::write(&stalled_config, config.replace(line, &format!("vhost_device_vsock = \"{}\"", wrapper.display()))).unwrap();
    let from = ctrd.log_len();
    let stdout = ctr_run_kata_cc_in(&stalled_config, &[], &["/bin/busybox", "echo", "ran"]);
    assert_eq!(stdout.trim(), "ran");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "blackhole\nreal\n", "the vsock daemon's runs");
    let log = ctrd.log_since(from);
    assert!(log.contains("vsock channel has not answered for 30s: booting a new VM"), "shim log:\n{log}");
}

/// The stalling vsock daemon (see above): Python, as it needs a process that holds a
/// listener and the real daemon, which dies with it.
const STALL_WRAPPER: &str = r#"#!/usr/bin/env python3
import ctypes, os, signal, socket, subprocess, sys
REAL, RUNS = "@REAL@", "@RUNS@"
args = sys.argv[1:]
first = not os.path.exists(RUNS)
with open(RUNS, "a") as f:
    f.write("blackhole\n" if first else "real\n")
if not first:
    os.execv(REAL, [REAL] + args)
i = args.index("--uds-path")
uds = args[i + 1]
args[i + 1] = uds + ".hidden"
libc = ctypes.CDLL(None)
child = subprocess.Popen([REAL] + args, preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
srv = socket.socket(socket.AF_UNIX)
srv.bind(uds)
srv.listen(64)
held = []
while True:
    conn, _ = srv.accept()
    held.append(conn)
"#;

/// `ctr run --rm` of `cmd` with the kata-cc runtime and snapshotter and `extra` ctr
/// arguments; returns its stdout once nothing is left behind.
fn ctr_run_kata_cc_with(extra: &[&str], cmd: &[&str]) -> String {
    ctr_run_kata_cc_in(&containerd().shim_config, extra, cmd)
}

/// [`ctr_run_kata_cc_with`] with the shim configuration at `config`.
fn ctr_run_kata_cc_in(config: &std::path::Path, extra: &[&str], cmd: &[&str]) -> String {
    let ctrd = containerd();
    ctrd.require_shim();
    let snapshotter = ctrd.snapshotter.clone().unwrap_or_else(|| {
        panic!(
            "the kata-cc snapshotter is not configured: build it (`cargo build -p kata-cc-snapshotter`); \
             see {}/snapshotter.log if it did not start",
            ctrd.dir.display()
        )
    });
    pull(NS_KATA, &ctrd.busybox_image, Some(&snapshotter));
    let id = unique_name("ctr-kata");
    let _guard = Guard {
        ns: NS_KATA,
        id: id.clone(),
    };
    let config = config.display().to_string();
    let mut args = vec!["--runtime", "io.containerd.kata-cc.v2", "--runtime-config-path", &config, "--snapshotter", &snapshotter];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&ctrd.busybox_image, &id]);
    args.extend_from_slice(cmd);
    let out = ctr_run(NS_KATA, false, &args, Duration::from_secs(300));
    wait_nothing_left(&id, Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Without `--cni` the pod has no netns: the test configuration gives such a VM QEMU
/// user-mode networking (`standalone_network = "user"`), through which the guest pulls.
/// (`ctr run --cni` is not supported with kata-cc: ctr runs CNI in the task pid's netns
/// after Create, but the task pid is QEMU's, in the host netns, and the guest pulls the
/// image during Create, before any CNI network could exist; see docs/shim.md.)
#[test]
fn ctr_run_kata_cc_prints_guest_kernel() {
    ctr_run_kata_cc();
}

