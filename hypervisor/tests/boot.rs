//! Integration tests that really boot guests under QEMU/TCG.
//!
//! They need QEMU 10+, `vhost-device-vsock`, a stock Debian kernel, busybox-static,
//! cpio, gzip and xz: `hypervisor/tests/setup-host.sh` installs them. A missing tool
//! makes the test FAIL with a message naming the script (CI installs them); tests
//! that need TEE or PVM hardware are ignored through cfgs set by `build.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)] // test code

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hypervisor::probe::HostCapabilities;
use hypervisor::qemu::{QemuConfig, QemuError, QemuHypervisor};
use hypervisor::{CrashKind, Error, Hypervisor, Machine, Vm, VmExit, VmSpec, VmState};

const SETUP: &str = "run `hypervisor/tests/setup-host.sh` (CI does)";
const MARKER: &str = "KATA_CC_TEST_BOOTED";

struct Tools {
    qemu: PathBuf,
    vhost: PathBuf,
    kernel: PathBuf,
    modules: PathBuf,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Finds every tool or panics with a clear message.
fn tools() -> Tools {
    let qemu = find_on_path("qemu-system-x86_64")
        .unwrap_or_else(|| panic!("qemu-system-x86_64 not found: {SETUP}"));
    let out = Command::new(&qemu)
        .arg("--version")
        .output()
        .expect("run qemu --version");
    let version = hypervisor::probe::parse_qemu_version(&String::from_utf8_lossy(&out.stdout));
    assert!(
        matches!(version, Some((major, _, _)) if major >= 10),
        "QEMU {version:?} is older than 10: {SETUP}"
    );
    let vhost = find_on_path("vhost-device-vsock")
        .unwrap_or_else(|| panic!("vhost-device-vsock not found: {SETUP}"));
    let kernel_dir = PathBuf::from(
        std::env::var("KATA_CC_KERNEL_DIR").unwrap_or_else(|_| "/var/cache/kata-cc/kernel".into()),
    );
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(kernel_dir.join("boot"))
        .unwrap_or_else(|e| panic!("no kernel in {}/boot ({e}): {SETUP}", kernel_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let kernel = kernels
        .pop()
        .unwrap_or_else(|| panic!("no vmlinuz-* in {}/boot: {SETUP}", kernel_dir.display()));
    let release = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    let modules = kernel_dir.join("lib/modules").join(release);
    for tool in ["cpio", "gzip", "xz"] {
        assert!(find_on_path(tool).is_some(), "{tool} not found: {SETUP}");
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox (busybox-static) not found: {SETUP}"
    );
    Tools {
        qemu,
        vhost,
        kernel,
        modules,
    }
}

/// A tiny initramfs: busybox + /init that prints the marker and then acts on
/// `test.mode=` (poweroff | wait | vsock).
fn initramfs(tools: &Tools, dir: &Path) -> PathBuf {
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/modules")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for m in [
        "kernel/net/vmw_vsock/vsock.ko.xz",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz",
    ] {
        let src = tools.modules.join(m);
        let name = Path::new(m)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".xz")
            .to_owned();
        let out = Command::new("xz").arg("-dc").arg(&src).output().unwrap();
        assert!(out.status.success(), "xz -d {}: {SETUP}", src.display());
        std::fs::write(root.join("lib/modules").join(name), out.stdout).unwrap();
    }
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo {MARKER}
mode=$(sed -n 's/.*test.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
case "$mode" in
poweroff) poweroff -f ;;
vsock)
    insmod /lib/modules/vsock.ko
    insmod /lib/modules/vmw_vsock_virtio_transport_common.ko
    insmod /lib/modules/vmw_vsock_virtio_transport.ko
    if ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ | grep -q virtio; then echo VSOCK_BOUND; else echo VSOCK_MISSING; fi
    ;;
esac
while true; do sleep 3600; done
"#
    );
    let init_path = root.join("init");
    std::fs::write(&init_path, init).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&init_path)
        .status()
        .unwrap();
    let img = dir.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            img.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "building the initramfs failed");
    img
}

struct Env {
    tools: Tools,
    dir: tempfile::TempDir,
    initrd: PathBuf,
}

fn env() -> Env {
    let tools = tools();
    let dir = tempfile::Builder::new()
        .prefix("hv")
        .tempdir_in("/tmp")
        .unwrap();
    let initrd = initramfs(&tools, dir.path());
    Env { tools, dir, initrd }
}

impl Env {
    fn hypervisor(&self) -> QemuHypervisor {
        let config = QemuConfig {
            qemu: self.tools.qemu.clone(),
            vhost_device_vsock: self.tools.vhost.clone(),
            ..QemuConfig::default()
        };
        QemuHypervisor::new(config)
    }

    fn spec(&self, mode: &str) -> VmSpec {
        let mut spec = VmSpec::new(
            format!("test-{mode}"),
            &self.tools.kernel,
            self.dir.path().join("state"),
        );
        spec.initramfs = Some(self.initrd.clone());
        spec.cmdline = format!("test.mode={mode}");
        spec.console_log = Some(self.dir.path().join("console.log"));
        spec.boot_timeout = Duration::from_secs(20);
        spec
    }
}

/// Waits for `needle` in the console log; returns the elapsed time.
async fn wait_console(vm: &dyn Vm, needle: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    let log = vm.console_log().unwrap().to_owned();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(needle) {
            return start.elapsed();
        }
        if let VmState::Stopped(exit) = vm.state() {
            panic!("VM stopped ({exit}) before {needle:?}; console:\n{text}");
        }
        assert!(
            start.elapsed() < timeout,
            "no {needle:?} within {timeout:?}; console:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Pids of `vhost-device-vsock` processes whose command line contains `needle`.
fn vhost_pids(needle: &str) -> Vec<u32> {
    pids_with_arg(needle)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or(&[]))
                        .ends_with("vhost-device-vsock")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Pids whose command line contains `needle`.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn assert_cleaned(env: &Env, qemu_pid: Option<u32>) {
    let state = env.dir.path().join("state");
    assert!(
        !state.exists(),
        "state dir {} still exists",
        state.display()
    );
    if let Some(pid) = qemu_pid {
        assert!(!alive(pid), "QEMU {pid} still alive");
    }
    let left = pids_with_arg(&state.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test]
async fn q35_boots_to_marker_and_guest_poweroff_is_reported() {
    let env = env();
    let hv = env.hypervisor();
    let t0 = Instant::now();
    let vm = hv.start(env.spec("poweroff")).await.unwrap();
    let started = t0.elapsed();
    let boot = wait_console(vm.as_ref(), MARKER, Duration::from_secs(60)).await;
    eprintln!(
        "q35/TCG: QEMU up in {started:?}, marker after {:?} total",
        started + boot
    );
    let pid = vm.pid();
    let exit = tokio::time::timeout(Duration::from_secs(30), vm.wait())
        .await
        .unwrap();
    assert_eq!(exit, VmExit::GuestPoweroff);
    assert_cleaned(&env, pid);
}

#[tokio::test]
#[ignore = "microvm under TCG hangs intermittently in early boot (after the mount-cache line) on this host, even with lpj=; q35 is the supported machine"]
async fn microvm_boots_to_marker() {
    let env = env();
    let hv = env.hypervisor();
    let mut spec = env.spec("poweroff");
    spec.machine = Machine::Microvm;
    let t0 = Instant::now();
    let vm = hv.start(spec).await.unwrap();
    let boot = wait_console(vm.as_ref(), MARKER, Duration::from_secs(60)).await;
    eprintln!("microvm/TCG: marker after {:?}", t0.elapsed().max(boot));
    let pid = vm.pid();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), vm.wait())
            .await
            .unwrap(),
        VmExit::GuestPoweroff
    );
    assert_cleaned(&env, pid);
}

#[tokio::test]
async fn qmp_pause_resume_and_shutdown() {
    let env = env();
    let hv = env.hypervisor();
    let vm = hv.start(env.spec("wait")).await.unwrap();
    wait_console(vm.as_ref(), MARKER, Duration::from_secs(60)).await;
    vm.pause().await.unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    // A pause is not a crash: the watchdog must leave it alone.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(vm.state(), VmState::Paused);
    vm.resume().await.unwrap();
    assert_eq!(vm.state(), VmState::Running);
    let pid = vm.pid();
    let t0 = Instant::now();
    // busybox init ignores the ACPI button: after the grace period QEMU gets `quit`.
    let exit = vm.shutdown(Duration::from_millis(500)).await.unwrap();
    eprintln!("shutdown took {:?}", t0.elapsed());
    assert_eq!(exit, VmExit::Shutdown { forced: false });
    assert_eq!(
        vm.shutdown(Duration::ZERO).await.unwrap(),
        exit,
        "shutdown is idempotent"
    );
    assert!(matches!(vm.pause().await, Err(Error::NotRunning(_))));
    assert_cleaned(&env, pid);
}

#[tokio::test]
async fn hybrid_vsock_reaches_the_guest_kernel() {
    let env = env();
    let hv = env.hypervisor();
    let vm = hv.start(env.spec("vsock")).await.unwrap();
    let agent = vm.agent_address().to_string();
    let uds = env.dir.path().join("state/vm.vsock");
    assert_eq!(agent, format!("hvsock://{}:1024", uds.display()));
    // The daemon unlinks vhost.sock once QEMU is connected.
    assert!(uds.exists());
    wait_console(vm.as_ref(), "VSOCK_BOUND", Duration::from_secs(60)).await;
    // No listener on port 1024 in this guest: the guest kernel answers with a reset
    // and the daemon closes our stream instead of saying "OK".
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        !reply.starts_with("OK"),
        "nobody listens in the guest, got {reply:?}"
    );
    eprintln!("vsock reset seen after {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "the guest never answered"
    );
    let pid = vm.pid();
    vm.shutdown(Duration::ZERO).await.unwrap();
    assert_cleaned(&env, pid);
}

#[tokio::test]
async fn killing_qemu_is_a_reported_crash_and_everything_is_cleaned() {
    let env = env();
    let hv = env.hypervisor();
    let vm = hv.start(env.spec("wait")).await.unwrap();
    wait_console(vm.as_ref(), MARKER, Duration::from_secs(60)).await;
    let pid = vm.pid().unwrap();
    let vhost = vhost_pids(
        &env.dir
            .path()
            .join("state/vhost.sock")
            .display()
            .to_string(),
    );
    assert_eq!(vhost.len(), 1, "one vhost-device-vsock per VM");
    Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .unwrap();
    assert!(
        matches!(
            exit,
            VmExit::Crashed {
                kind: CrashKind::QemuExited,
                ..
            }
        ),
        "{exit}"
    );
    assert!(!alive(vhost[0]));
    assert_cleaned(&env, Some(pid));
}

#[tokio::test]
async fn killing_the_vsock_daemon_is_a_reported_crash_and_everything_is_cleaned() {
    let env = env();
    let hv = env.hypervisor();
    let vm = hv.start(env.spec("wait")).await.unwrap();
    wait_console(vm.as_ref(), MARKER, Duration::from_secs(60)).await;
    let vhost = vhost_pids(
        &env.dir
            .path()
            .join("state/vhost.sock")
            .display()
            .to_string(),
    );
    assert_eq!(vhost.len(), 1);
    Command::new("kill")
        .arg("-9")
        .arg(vhost[0].to_string())
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .unwrap();
    assert!(
        matches!(
            exit,
            VmExit::Crashed {
                kind: CrashKind::VsockDaemonExited,
                ..
            }
        ),
        "{exit}"
    );
    assert_cleaned(&env, vm.pid());
}

#[tokio::test]
async fn dropping_the_vm_kills_and_cleans() {
    let env = env();
    let hv = env.hypervisor();
    let vm = hv.start(env.spec("wait")).await.unwrap();
    let pid = vm.pid();
    drop(vm);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.dir.path().join("state").exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_cleaned(&env, pid);
}

#[tokio::test]
async fn failed_start_leaves_nothing_behind() {
    let env = env();
    // QEMU that exits at once.
    let config = QemuConfig {
        qemu: "/bin/false".into(),
        vhost_device_vsock: env.tools.vhost.clone(),
        ..QemuConfig::default()
    };
    let host = HostCapabilities::probe(&env.tools.qemu);
    let hv = QemuHypervisor::with_host(config, host.clone());
    let err = hv.start(env.spec("wait")).await.unwrap_err();
    assert!(
        matches!(err, Error::Qemu(QemuError::ExitedDuringStart { .. })),
        "{err:?}"
    );
    assert_cleaned(&env, None);

    // A missing vsock daemon.
    let config = QemuConfig {
        qemu: env.tools.qemu.clone(),
        vhost_device_vsock: "/nonexistent/vhost-device-vsock".into(),
        ..QemuConfig::default()
    };
    let hv = QemuHypervisor::with_host(config, host.clone());
    let err = hv.start(env.spec("wait")).await.unwrap_err();
    assert!(
        matches!(err, Error::Qemu(QemuError::Spawn { .. })),
        "{err:?}"
    );
    assert_cleaned(&env, None);

    // QEMU refusing its command line (a kernel that does not exist).
    let config = QemuConfig {
        qemu: env.tools.qemu.clone(),
        vhost_device_vsock: env.tools.vhost.clone(),
        ..QemuConfig::default()
    };
    let hv = QemuHypervisor::with_host(config, host);
    let mut spec = env.spec("wait");
    spec.kernel = "/nonexistent/vmlinuz".into();
    let err = hv.start(spec).await.unwrap_err();
    match &err {
        Error::Qemu(QemuError::ExitedDuringStart { stderr, .. }) => {
            assert!(stderr.contains("vmlinuz"), "{stderr}")
        }
        other => panic!("{other:?}"),
    }
    assert_cleaned(&env, None);
}

/// QEMU 10 parses our SNP options; on a host without SNP it fails only for lack of
/// hardware ("not supported by KVM"/no /dev/sev), never on syntax.
#[tokio::test]
async fn snp_command_line_is_accepted_by_qemu() {
    let env = env();
    let state = env.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut spec = env.spec("wait");
    spec.vsock = hypervisor::Vsock::Hybrid { dir: state.clone() };
    let disk = env.dir.path().join("initdata.img");
    std::fs::write(&disk, [0u8; 512]).unwrap();
    spec.disks.push(hypervisor::Disk {
        path: disk,
        serial: "initdata".into(),
    });
    spec.cpu_model = Some("EPYC-v4".into());
    spec.confidential = hypervisor::Confidential::Snp(hypervisor::SnpConfig {
        firmware: "/usr/share/seabios/bios-256k.bin".into(),
        host_data: [7; 32],
        ..Default::default()
    });
    let args = hypervisor::qemu::cmdline::qemu_args(&spec, hypervisor::ResolvedAccel::Kvm).unwrap();
    let mut vhost = Command::new(&env.tools.vhost)
        .args(["--guest-cid", "3", "--socket"])
        .arg(state.join("vhost.sock"))
        .arg("--uds-path")
        .arg(state.join("vm.vsock"))
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !state.join("vhost.sock").exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = Command::new(&env.tools.qemu)
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = vhost.kill();
    let _ = vhost.wait();
    for bad in [
        "Invalid parameter",
        "does not accept",
        "Parameter '",
        "invalid",
        "unknown",
    ] {
        assert!(
            !stderr.contains(bad),
            "QEMU rejected the SNP syntax: {stderr}"
        );
    }
    if status.is_some() && !cfg!(snp_host) {
        assert!(
            stderr.contains("SEV") || stderr.contains("sev"),
            "unexpected failure: {stderr}"
        );
    }
}

/// On this machine `/dev/kvm` is PVM: forcing KVM for a stock kernel must end in a
/// reported crash (QEMU sits in `internal-error`), not a hang.
#[tokio::test]
#[cfg_attr(not(pvm_host), ignore = "needs a PVM /dev/kvm")]
async fn stock_kernel_on_pvm_kvm_is_a_reported_crash() {
    let env = env();
    let mut host = HostCapabilities::probe(&env.tools.qemu);
    // Pretend KVM is usable so the backend does not refuse it.
    if let Ok(k) = host.kvm.as_mut() {
        k.flavor = hypervisor::probe::KvmFlavor::Amd;
    }
    let config = QemuConfig {
        qemu: env.tools.qemu.clone(),
        vhost_device_vsock: env.tools.vhost.clone(),
        ..QemuConfig::default()
    };
    let hv = QemuHypervisor::with_host(config, host);
    let mut spec = env.spec("wait");
    spec.accel = hypervisor::Accel::Kvm;
    // `-cpu host` aborts in QEMU on PVM (MSR 0x10a); qemu64 gets to the emulator.
    spec.cpu_model = Some("qemu64".into());
    let t0 = Instant::now();
    let vm = match hv.start(spec).await {
        Ok(vm) => vm,
        // Dead on arrival is fine too, as long as it says so.
        Err(Error::Qemu(QemuError::CrashedDuringStart { status, .. })) => {
            assert_eq!(status, "internal-error");
            assert_cleaned(&env, None);
            return;
        }
        Err(e) => panic!("{e:?}"),
    };
    let pid = vm.pid();
    let exit = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("watchdog missed the crash");
    eprintln!("PVM crash detected after {:?}: {exit}", t0.elapsed());
    assert!(
        matches!(
            exit,
            VmExit::Crashed {
                kind: CrashKind::GuestState,
                ..
            }
        ),
        "{exit}"
    );
    assert_cleaned(&env, pid);
}

#[test]
fn host_report_names_pvm_and_missing_tees() {
    let tools = tools();
    let host = HostCapabilities::probe(&tools.qemu);
    let report = host.report();
    eprintln!("{report}");
    if cfg!(pvm_host) {
        assert!(report.contains("PVM"), "{report}");
        assert!(!host.kvm_usable());
    }
    if !cfg!(snp_host) {
        assert!(host.snp().is_err());
    }
}

/// Boots a measured SNP guest. Set `KATA_CC_SNP_FIRMWARE` to an AmdSev OVMF build.
#[tokio::test]
#[cfg_attr(not(snp_host), ignore = "needs SEV-SNP hardware")]
async fn snp_guest_boots_to_marker() {
    let env = env();
    let hv = env.hypervisor();
    let mut spec = env.spec("wait");
    spec.accel = hypervisor::Accel::Kvm;
    spec.cpu_model = Some("EPYC-v4".into());
    spec.confidential = hypervisor::Confidential::Snp(hypervisor::SnpConfig {
        firmware: std::env::var("KATA_CC_SNP_FIRMWARE")
            .expect("KATA_CC_SNP_FIRMWARE")
            .into(),
        ..Default::default()
    });
    let vm = hv.start(spec).await.unwrap();
    wait_console(vm.as_ref(), MARKER, Duration::from_secs(120)).await;
    vm.shutdown(Duration::ZERO).await.unwrap();
}

/// Boots a TDX guest. Set `KATA_CC_TDX_FIRMWARE` to a TDVF build; needs QEMU 10.1+.
#[tokio::test]
#[cfg_attr(not(tdx_host), ignore = "needs TDX hardware and QEMU 10.1+")]
async fn tdx_guest_boots_to_marker() {
    let env = env();
    let hv = env.hypervisor();
    let mut spec = env.spec("wait");
    spec.accel = hypervisor::Accel::Kvm;
    spec.confidential = hypervisor::Confidential::Tdx(hypervisor::TdxConfig {
        mrconfigid: [1; 48],
        quote_generation_socket: Some(hypervisor::QgsAddress::Vsock { cid: 2, port: 4050 }),
        firmware: std::env::var("KATA_CC_TDX_FIRMWARE")
            .expect("KATA_CC_TDX_FIRMWARE")
            .into(),
    });
    let vm = hv.start(spec).await.unwrap();
    wait_console(vm.as_ref(), MARKER, Duration::from_secs(120)).await;
    vm.shutdown(Duration::ZERO).await.unwrap();
}
