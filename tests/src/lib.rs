//! Shared helpers for kata-cc's end-to-end suites: locating the guest image and tools,
//! booting a pod VM with the real hypervisor crate, and talking to the agent inside.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: failing loudly is the point

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypervisor::qemu::{QemuConfig, QemuHypervisor};
use hypervisor::{Hypervisor, Vm, VmSpec};
use protocols::{AgentAddr, AgentClient, ConnectOptions};

pub mod attest;
pub mod cri;
pub mod genpolicy;
pub mod streaming;

/// How to get what these tests need (CI does both).
pub const SETUP: &str =
    "run `hypervisor/tests/setup-host.sh` and `deploy/guest/build-image.sh --variant test`";

/// Where the baked busybox rootfs lives inside the test image.
pub const GUEST_ROOTFS: &str = "/run/kata-containers/shared/containers/busybox/rootfs";

/// The test guest image: kernel + initramfs built by `deploy/guest/build-image.sh`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs with the agent as PID 1 and the busybox rootfs.
    pub initramfs: PathBuf,
    /// `uname -r` of the kernel.
    pub kernel_release: String,
}

/// Finds the test image (`KATA_CC_GUEST_DIR`, default `<repo>/target/guest-image/test`, where
/// `deploy/guest/build-image.sh --variant test` puts it) or panics saying how to build it.
pub fn guest_image() -> GuestImage {
    let dir = std::env::var_os("KATA_CC_GUEST_DIR").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-image/test")
    });
    let kernel = dir.join("vmlinuz");
    let initramfs = dir.join("initramfs.cpio.gz");
    assert!(kernel.is_file() && initramfs.is_file(), "no guest image in {}: {SETUP}", dir.display());
    let manifest = std::fs::read_to_string(dir.join("manifest.txt"))
        .unwrap_or_else(|e| panic!("{}/manifest.txt: {e}: {SETUP}", dir.display()));
    let release = manifest
        .lines()
        .find_map(|l| l.strip_prefix("kernel_release="))
        .unwrap_or_else(|| panic!("no kernel_release in {}/manifest.txt", dir.display()));
    GuestImage { kernel, initramfs, kernel_release: release.trim().to_string() }
}

/// Finds `name` on PATH or in ~/.cargo/bin.
pub fn find_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| panic!("{name} not found: {SETUP}"))
}

/// The QEMU backend with the tools found on this host.
pub fn qemu_hypervisor() -> QemuHypervisor {
    qemu_hypervisor_with(false)
}

/// Like [`qemu_hypervisor`]; `allow_simulated_tee` lets specs use the simulated TEE.
pub fn qemu_hypervisor_with(allow_simulated_tee: bool) -> QemuHypervisor {
    QemuHypervisor::new(QemuConfig {
        qemu: find_tool("qemu-system-x86_64"),
        vhost_device_vsock: find_tool("vhost-device-vsock"),
        allow_simulated_tee,
        ..QemuConfig::default()
    })
}

/// A pod VM booted from the test image, with a connected agent client.
pub struct PodVm {
    /// The VM.
    pub vm: Box<dyn Vm>,
    /// Connected, healthy agent client.
    pub agent: AgentClient,
    /// Time from `start` to the agent answering Health.Check.
    pub ready_after: Duration,
    /// Scratch directory (state, console log).
    pub dir: tempfile::TempDir,
    /// The image it booted.
    pub image: GuestImage,
}

impl PodVm {
    /// Boots the test image with `memory_mib` and waits up to 90 s for the agent.
    pub async fn boot(name: &str, memory_mib: u64) -> PodVm {
        Self::boot_with(name, memory_mib, Vec::new()).await
    }

    /// Like [`PodVm::boot`], with NICs.
    pub async fn boot_with(name: &str, memory_mib: u64, net: Vec<hypervisor::NetDevice>) -> PodVm {
        Self::boot_with_disks(name, memory_mib, net, Vec::new()).await
    }

    /// Like [`PodVm::boot`], with NICs and read-only disks.
    pub async fn boot_with_disks(
        name: &str,
        memory_mib: u64,
        net: Vec<hypervisor::NetDevice>,
        disks: Vec<hypervisor::Disk>,
    ) -> PodVm {
        Self::boot_custom(name, memory_mib, false, |spec, _| {
            spec.net = net;
            spec.disks = disks;
        })
        .await
    }

    /// Boots the test image after `customize(spec, scratch_dir)` adjusted the spec (NICs,
    /// disks, TEE; files it needs can go in the scratch dir). `allow_simulated_tee`
    /// configures the backend to accept the simulated TEE.
    pub async fn boot_custom(
        name: &str,
        memory_mib: u64,
        allow_simulated_tee: bool,
        customize: impl FnOnce(&mut VmSpec, &Path),
    ) -> PodVm {
        let image = guest_image();
        let dir = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(format!("e2e-{name}"), &image.kernel, dir.path().join("state"));
        spec.initramfs = Some(image.initramfs.clone());
        spec.memory_mib = memory_mib;
        spec.console_log = Some(dir.path().join("console.log"));
        spec.boot_timeout = Duration::from_secs(30);
        customize(&mut spec, dir.path());
        let started = Instant::now();
        let vm = qemu_hypervisor_with(allow_simulated_tee)
            .start(spec)
            .await
            .unwrap_or_else(|e| panic!("start VM: {e:?}"));
        let addr: AgentAddr = vm.agent_address().to_string().parse().unwrap();
        let agent = match AgentClient::wait_ready(&addr, ConnectOptions::default(), Instant::now() + Duration::from_secs(90)).await {
            Ok(a) => a,
            Err(e) => {
                let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
                panic!("agent not ready: {e} ({e:?})\nconsole:\n{log}");
            }
        };
        PodVm { vm, agent, ready_after: started.elapsed(), dir, image }
    }

    /// The console log so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }
}

/// A spec running `args` in the image's baked busybox rootfs (read-only; the sandbox,
/// not the spec, names the host).
pub fn guest_spec(args: &[&str]) -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(None);
    let mut root = spec.root().clone().unwrap();
    root.set_path(PathBuf::from(GUEST_ROOTFS));
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p.set_terminal(Some(false));
    spec.set_process(Some(p));
    spec
}

/// CreateContainer + StartContainer, panicking on failure.
pub async fn create_start(a: &AgentClient, id: &str, spec: &oci_spec::runtime::Spec) {
    use protocols::agent as pb;
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = id.into();
    r.OCI = protocols::protobuf::MessageField::some(protocols::convert::spec_to_grpc(spec));
    a.agent().create_container(protocols::context_with(Duration::from_secs(60)), &r).await.unwrap();
    let mut s = pb::StartContainerRequest::new();
    s.container_id = id.into();
    a.agent().start_container(a.context(), &s).await.unwrap();
}

/// Reads a process's stdout (`exec` empty: the init) to end of stream.
pub async fn read_stdout_all(a: &AgentClient, id: &str, exec: &str) -> String {
    let mut r = protocols::agent::ReadStreamRequest::new();
    r.container_id = id.into();
    r.exec_id = exec.into();
    r.len = 4096;
    let mut out = Vec::new();
    loop {
        let d = a.agent().read_stdout(protocols::context_with(Duration::from_secs(60)), &r).await.unwrap().data;
        if d.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend(d);
    }
}

/// WaitProcess; returns the status.
pub async fn wait_status(a: &AgentClient, id: &str, exec: &str) -> i32 {
    let mut r = protocols::agent::WaitProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec.into();
    a.agent().wait_process(protocols::context_with(Duration::from_secs(60)), &r).await.unwrap().status
}

/// A pod network namespace with `eth0` (`<net>.2/24`, default route via `<net>.1`) paired
/// with a host-side veth holding `<net>.1`, as a CNI plugin would make it. Removed on drop.
pub struct PodNetns {
    /// The netns name (`ip netns`).
    pub name: String,
    /// The host end of the veth.
    pub host_if: String,
    /// The first three octets, e.g. `10.208.4`.
    pub net: String,
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?} failed");
}

impl PodNetns {
    /// Creates `kata-cc-<tag>-<pid>-<n>` with the subnet `<net>.0/24`.
    pub fn new(tag: &str, n: u32, net: &str) -> PodNetns {
        let name = format!("kata-cc-{tag}-{}-{n}", std::process::id());
        let host_if = format!("k{}{}h{n}", &tag[..tag.len().min(3)], std::process::id() % 10000);
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name]);
        ip(&["addr", "add", &format!("{net}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{net}.2/24"), "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "route", "add", "default", "via", &format!("{net}.1")]);
        PodNetns { name, host_if, net: net.to_string() }
    }

    /// The netns path for `hypervisor::net`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// The host's address on the veth (`<net>.1`).
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.net)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Tells the agent about the pod network (UpdateInterface, UpdateRoutes), as the shim does.
pub async fn configure_pod_network(a: &AgentClient, net: &hypervisor::net::PodNetwork) {
    use protocols::agent as pb;
    let mut ui = pb::UpdateInterfaceRequest::new();
    ui.interface = protocols::protobuf::MessageField::some(net.interface.clone());
    a.agent().update_interface(a.context(), &ui).await.unwrap();
    let mut ur = pb::UpdateRoutesRequest::new();
    let mut routes = pb::Routes::new();
    routes.Routes = net.routes.clone();
    ur.routes = protocols::protobuf::MessageField::some(routes);
    a.agent().update_routes(a.context(), &ur).await.unwrap();
}

/// Starts the local test registry with its fixtures (`tests/registry/start.sh`, idempotent)
/// and returns its directory (keys under `keys/`).
pub fn registry_dir() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("registry/start.sh");
    let out = std::process::Command::new("bash").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    PathBuf::from(std::env::var("KATA_CC_REGISTRY_DIR").unwrap_or_else(|_| "/var/tmp/kata-cc-registry".into()))
}
