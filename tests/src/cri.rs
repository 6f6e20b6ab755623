//! The private test containerd (`tests/containerd/start.sh`) and a CRI client for it:
//! pods and containers that clean up after themselves, CRI container logs, and the host
//! processes (shims, QEMU) that serve a pod.
//!
//! ```no_run
//! # async fn demo() {
//! use kata_cc_tests::cri::{containerd, Cri, Pod, RUNC};
//! let ctrd = containerd();
//! let mut cri = Cri::connect(&ctrd.sock).await;
//! let pod = Pod::run(&mut cri, "demo", RUNC).await;
//! let c = pod.create_start(&mut cri, "c1", &["/bin/sh", "-c", "echo hi; exec /bin/busybox sleep 60"]).await;
//! pod.wait_log_line("c1", |l| l == "hi", std::time::Duration::from_secs(30));
//! # let _ = c;
//! # }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as pb;
use pb::image_service_client::ImageServiceClient;
use pb::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI runtime handler of runc (the baseline).
pub const RUNC: &str = "runc";
/// CRI runtime handler (RuntimeClass) of kata-cc.
pub const KATA_CC: &str = "kata-cc";
/// The shim binary containerd runs for `io.containerd.kata-cc.v2`.
pub const SHIM_BIN: &str = "containerd-shim-kata-cc-v2";
/// The remote snapshotter binary.
pub const SNAPSHOTTER_BIN: &str = "kata-cc-snapshotter";
/// Pod metadata namespace of every test pod.
pub const POD_NAMESPACE: &str = "kata-cc-tests";
/// The busybox fixture image by the registry address pods and the host both reach
/// (`tests/containerd/start.sh` serves it; every profile uses the same).
pub const BUSYBOX_IMAGE: &str = "10.88.0.1:5000/busybox:latest";

/// The running test containerd, as `tests/containerd/start.sh` describes it.
#[derive(Debug, Clone)]
pub struct Containerd {
    /// containerd's gRPC socket (CRI and ctr).
    pub sock: PathBuf,
    /// containerd's log (the shims' log lines end up here).
    pub log: PathBuf,
    /// The harness directory (`KATA_CC_CTRD_DIR`).
    pub dir: PathBuf,
    /// Registry address that both the host and pods reach (`10.88.0.1:5000`).
    pub registry: String,
    /// The busybox fixture image by that address.
    pub busybox_image: String,
    /// The sandbox image.
    pub pause_image: String,
    /// Parent of the pods' log directories.
    pub pod_log_dir: PathBuf,
    /// The kata-cc runtime's configuration.toml.
    pub shim_config: PathBuf,
    /// The shim's state_dir in that configuration.
    pub shim_state_dir: PathBuf,
    /// Name of the kata-cc snapshotter proxy plugin, if configured.
    pub snapshotter: Option<String>,
    /// The shim binary containerd runs, if one was found.
    pub shim: Option<PathBuf>,
}

impl Containerd {
    /// The shim binary, or a panic telling how to build it.
    pub fn require_shim(&self) -> &Path {
        self.shim.as_deref().unwrap_or_else(|| {
            panic!("no {SHIM_BIN} next to the test binaries: run `cargo build -p kata-cc-shim` first (or set KATA_CC_SHIM)")
        })
    }

    /// The current size of containerd's log (to read what a step appends).
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// containerd's log from byte `from` on.
    pub fn log_since(&self, from: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.log).unwrap();
        f.seek(SeekFrom::Start(from)).unwrap();
        let mut s = Vec::new();
        f.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The last `n` lines of containerd's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Finds a workspace binary: `$env_var` if set, else the nearest ancestor directory of the
/// running test executable that holds `name` (`target/debug/deps/x` → `target/debug/name`),
/// or its `release/` or `debug/` (so a bench, built in `release`, finds a debug build).
pub fn find_binary(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} is not a file", p.display());
        return Some(p);
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .flat_map(|d| [d.join(name), d.join("release").join(name), d.join("debug").join(name)])
        .find(|p| p.is_file())
}

static CONTAINERD: OnceLock<Containerd> = OnceLock::new();
static CONTAINERD_CC: OnceLock<Containerd> = OnceLock::new();

/// Starts (or reuses) the test containerd with `tests/containerd/start.sh`, once per
/// process, handing it the shim (`KATA_CC_SHIM` or next to the test binary) and the
/// snapshotter (`KATA_CC_SNAPSHOTTER` or next to the test binary) when they exist.
pub fn containerd() -> &'static Containerd {
    CONTAINERD.get_or_init(|| start_containerd("default"))
}

/// The `cc` profile's containerd (its own instance on the same bridge and registry): CRI
/// pulls through the kata-cc snapshotter (no layer on the host) and the `kata-cc` runtime
/// uses the simulated TEE. Needs the snapshotter built.
pub fn containerd_cc() -> &'static Containerd {
    CONTAINERD_CC.get_or_init(|| start_containerd("cc"))
}

fn start_containerd(profile: &str) -> Containerd {
    let shim = find_binary(SHIM_BIN, "KATA_CC_SHIM");
    let snapshotter = find_binary(SNAPSHOTTER_BIN, "KATA_CC_SNAPSHOTTER");
    let script = repo_root().join("tests/containerd/start.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).env("KATA_CC_CTRD_PROFILE", profile);
    if let Some(s) = &shim {
        cmd.env("KATA_CC_BIN_DIR", s.parent().unwrap());
    }
    if let Some(s) = &snapshotter {
        cmd.env("KATA_CC_SNAPSHOTTER", s);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} (profile {profile}) failed ({}):\n{stdout}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let kv: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| {
        kv.get(k)
            .unwrap_or_else(|| panic!("{} printed no {k}:\n{stdout}", script.display()))
            .to_string()
    };
    let snap = get("KATA_CC_SNAPSHOTTER_NAME");
    let busybox_image = get("KATA_CC_BUSYBOX_IMAGE");
    assert_eq!(
        busybox_image, BUSYBOX_IMAGE,
        "start.sh and src/cri.rs disagree on the busybox image"
    );
    Containerd {
        sock: get("KATA_CC_CTRD_SOCK").into(),
        log: get("KATA_CC_CTRD_LOG").into(),
        dir: get("KATA_CC_CTRD_DIR").into(),
        registry: get("KATA_CC_REGISTRY"),
        busybox_image,
        pause_image: get("KATA_CC_PAUSE_IMAGE"),
        pod_log_dir: get("KATA_CC_POD_LOG_DIR").into(),
        shim_config: get("KATA_CC_SHIM_CONFIG").into(),
        shim_state_dir: get("KATA_CC_SHIM_STATE_DIR").into(),
        snapshotter: (!snap.is_empty()).then_some(snap),
        shim,
    }
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// How long a CRI call may take for `handler` (a kata-cc pod boots a VM under TCG and
/// pulls images inside it).
pub fn rpc_timeout(handler: &str) -> Duration {
    if handler == KATA_CC {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(60)
    }
}

/// Runs `fut` with a timeout, panicking with `what` when it expires.
pub async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// CRI RuntimeService + ImageService clients over containerd's unix socket.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub rt: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub img: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI server on `sock`.
    pub async fn connect(sock: &Path) -> Cri {
        let path = sock.to_path_buf();
        let channel = Endpoint::try_from("http://[::]")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .unwrap_or_else(|e| panic!("connect CRI at {}: {e}", sock.display()));
        Cri {
            rt: RuntimeServiceClient::new(channel.clone()),
            img: ImageServiceClient::new(channel),
        }
    }

    /// Pulls `image` on the host (CRI PullImage); returns the image ref.
    pub async fn pull(&mut self, image: &str) -> String {
        let req = pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        within(Duration::from_secs(120), "PullImage", self.img.pull_image(req))
            .await
            .unwrap_or_else(|e| panic!("PullImage {image}: {e}"))
            .into_inner()
            .image_ref
    }

    /// ContainerStatus.
    pub async fn container_status(&mut self, id: &str) -> pb::ContainerStatus {
        let req = pb::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        within(
            Duration::from_secs(60),
            "ContainerStatus",
            self.rt.container_status(req),
        )
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner()
        .status
        .unwrap_or_else(|| panic!("ContainerStatus {id}: no status"))
    }

    /// Polls ContainerStatus until the container has exited (or `limit` passes).
    pub async fn wait_exited(&mut self, id: &str, limit: Duration) -> pb::ContainerStatus {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.container_status(id).await;
            if st.state == pb::ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} not exited after {limit:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// ExecSync with a timeout in seconds; returns (stdout, stderr, exit code).
    pub async fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout_secs: i64) -> (String, String, i32) {
        let req = pb::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let limit = Duration::from_secs(timeout_secs.unsigned_abs() + 30);
        let r = within(limit, "ExecSync", self.rt.exec_sync(req))
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}"))
            .into_inner();
        (
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
            r.exit_code,
        )
    }

    /// ExecSync that must succeed; returns stdout, trimmed.
    pub async fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> String {
        let (out, err, code) = self.exec_sync(id, cmd, 60).await;
        assert_eq!(
            code, 0,
            "exec {cmd:?} in {id}: exit {code}, stdout {out:?}, stderr {err:?}"
        );
        out.trim().to_string()
    }

    /// ContainerStats.
    pub async fn container_stats(&mut self, id: &str) -> pb::ContainerStats {
        let req = pb::ContainerStatsRequest {
            container_id: id.into(),
        };
        within(Duration::from_secs(60), "ContainerStats", self.rt.container_stats(req))
            .await
            .unwrap_or_else(|e| panic!("ContainerStats {id}: {e}"))
            .into_inner()
            .stats
            .unwrap_or_else(|| panic!("ContainerStats {id}: no stats"))
    }

    /// PodSandboxStatus.
    pub async fn pod_status(&mut self, id: &str) -> pb::PodSandboxStatus {
        let req = pb::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        within(
            Duration::from_secs(60),
            "PodSandboxStatus",
            self.rt.pod_sandbox_status(req),
        )
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
        .into_inner()
        .status
        .unwrap_or_else(|| panic!("PodSandboxStatus {id}: no status"))
    }
}

/// A pod sandbox created by RunPodSandbox. Dropping it stops and removes it (with its
/// containers) and deletes its log directory, whether or not the test got that far.
pub struct Pod {
    /// The sandbox id.
    pub id: String,
    /// The unique pod name (also its hostname and uid).
    pub name: String,
    /// The runtime handler.
    pub handler: String,
    /// The config it was created with (CreateContainer needs it).
    pub config: pb::PodSandboxConfig,
    /// The pod's log directory.
    pub log_dir: PathBuf,
    /// The containerd it runs in.
    pub ctrd: &'static Containerd,
    removed: bool,
}

impl Pod {
    /// The config of a pod named `name` (unique: see [`unique_name`]).
    pub fn config(name: &str, log_dir: &Path) -> pb::PodSandboxConfig {
        pb::PodSandboxConfig {
            metadata: Some(pb::PodSandboxMetadata {
                name: name.into(),
                uid: name.into(),
                namespace: POD_NAMESPACE.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            labels: HashMap::from([("kata-cc-test".to_string(), "true".to_string())]),
            linux: Some(pb::LinuxPodSandboxConfig {
                security_context: Some(pb::LinuxSandboxSecurityContext {
                    namespace_options: Some(pb::NamespaceOption {
                        network: pb::NamespaceMode::Pod as i32,
                        pid: pb::NamespaceMode::Container as i32,
                        ipc: pb::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox for a new pod named `<prefix>-<pid>-<n>` with runtime `handler`.
    pub async fn run(cri: &mut Cri, prefix: &str, handler: &str) -> Pod {
        Self::run_with(cri, prefix, handler, |_| {}).await
    }

    /// Like [`Pod::run`], after `customize` adjusted the config (annotations, ...).
    pub async fn run_with(
        cri: &mut Cri,
        prefix: &str,
        handler: &str,
        customize: impl FnOnce(&mut pb::PodSandboxConfig),
    ) -> Pod {
        Self::run_in(containerd(), cri, prefix, handler, customize).await
    }

    /// Like [`Pod::run_with`], in the containerd `ctrd` (e.g. [`containerd_cc`]); `cri` must
    /// be connected to it.
    pub async fn run_in(
        ctrd: &'static Containerd,
        cri: &mut Cri,
        prefix: &str,
        handler: &str,
        customize: impl FnOnce(&mut pb::PodSandboxConfig),
    ) -> Pod {
        Self::run_named(ctrd, cri, &unique_name(prefix), handler, customize).await
    }

    /// Like [`Pod::run_in`] for a pod named exactly `name` (a test that must know the name
    /// beforehand, e.g. for its policy; make it unique with [`unique_name`]).
    pub async fn run_named(
        ctrd: &'static Containerd,
        cri: &mut Cri,
        name: &str,
        handler: &str,
        customize: impl FnOnce(&mut pb::PodSandboxConfig),
    ) -> Pod {
        let name = name.to_string();
        let log_dir = ctrd.pod_log_dir.join(&name);
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut config = Self::config(&name, &log_dir);
        customize(&mut config);
        let req = pb::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let res = within(rpc_timeout(handler), "RunPodSandbox", cri.rt.run_pod_sandbox(req)).await;
        let id = match res {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => {
                // A failed RunPodSandbox cleans up after itself in containerd; find a
                // half-made sandbox by name all the same.
                if let Some(id) = find_pod_by_name(cri, &name).await {
                    drop(Pod {
                        id,
                        name: name.clone(),
                        handler: handler.into(),
                        config,
                        log_dir,
                        ctrd,
                        removed: false,
                    });
                } else {
                    let _ = std::fs::remove_dir_all(&log_dir);
                }
                panic!(
                    "RunPodSandbox {name} ({handler}): {e}\ncontainerd log:\n{}",
                    ctrd.log_tail(40)
                );
            }
        };
        Pod {
            id,
            name,
            handler: handler.into(),
            config,
            log_dir,
            ctrd,
            removed: false,
        }
    }

    /// A container config running `cmd` in the busybox fixture image, logging to
    /// `<log_dir>/<name>.log`.
    pub fn container_config(name: &str, cmd: &[&str]) -> pb::ContainerConfig {
        pb::ContainerConfig {
            metadata: Some(pb::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(pb::ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(pb::LinuxContainerConfig {
                security_context: Some(pb::LinuxContainerSecurityContext {
                    namespace_options: Some(pb::NamespaceOption {
                        network: pb::NamespaceMode::Pod as i32,
                        pid: pb::NamespaceMode::Container as i32,
                        ipc: pb::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer in this pod; returns the container id.
    pub async fn create(&self, cri: &mut Cri, config: pb::ContainerConfig) -> String {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let req = pb::CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        within(
            rpc_timeout(&self.handler),
            "CreateContainer",
            cri.rt.create_container(req),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "CreateContainer {name} in {} ({}): {e}\ncontainerd log:\n{}",
                self.name,
                self.handler,
                self.ctrd.log_tail(40)
            )
        })
        .into_inner()
        .container_id
    }

    /// StartContainer.
    pub async fn start(&self, cri: &mut Cri, id: &str) {
        let req = pb::StartContainerRequest {
            container_id: id.into(),
        };
        within(
            rpc_timeout(&self.handler),
            "StartContainer",
            cri.rt.start_container(req),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "StartContainer {id} in {} ({}): {e}\ncontainerd log:\n{}",
                self.name,
                self.handler,
                self.ctrd.log_tail(40)
            )
        });
    }

    /// CreateContainer (busybox, `cmd`) + StartContainer; returns the container id.
    pub async fn create_start(&self, cri: &mut Cri, name: &str, cmd: &[&str]) -> String {
        let id = self.create(cri, Self::container_config(name, cmd)).await;
        self.start(cri, &id).await;
        id
    }

    /// The CRI log file of container `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Polls container `name`'s log until a line matches `pred`; returns that line.
    pub fn wait_log_line(&self, name: &str, pred: impl Fn(&str) -> bool, limit: Duration) -> String {
        let path = self.log_path(name);
        let deadline = Instant::now() + limit;
        loop {
            let lines = read_cri_log(&path);
            if let Some(l) = lines.iter().find(|l| pred(&l.1)) {
                return l.1.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching line in {} after {limit:?}; log: {lines:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// StopPodSandbox + RemovePodSandbox, panicking on failure (the Drop guard then does
    /// nothing more).
    pub async fn stop_remove(self, cri: &mut Cri) {
        self.stop_remove_inner(cri, false).await
    }

    /// As [`Pod::stop_remove`] for a pod whose shim was killed: a RemovePodSandbox that
    /// fails with "ttrpc: closed" is sent again once, as the kubelet does. containerd 2.x
    /// deletes a dead shim's task from its table but still returns the closed connection's
    /// error on that first delete (core/runtime/v2/shim.go, shimTask.delete); 1.6 and 1.7
    /// return success.
    pub async fn stop_remove_after_shim_death(self, cri: &mut Cri) {
        self.stop_remove_inner(cri, true).await
    }

    async fn stop_remove_inner(mut self, cri: &mut Cri, retry_closed: bool) {
        let limit = rpc_timeout(&self.handler);
        within(
            limit,
            "StopPodSandbox",
            cri.rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            }),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "StopPodSandbox {}: {e}\ncontainerd log:\n{}",
                self.name,
                self.ctrd.log_tail(40)
            )
        });
        let remove = || {
            let mut rt = cri.rt.clone();
            let id = self.id.clone();
            async move {
                within(limit, "RemovePodSandbox", rt.remove_pod_sandbox(pb::RemovePodSandboxRequest { pod_sandbox_id: id }))
                    .await
            }
        };
        let mut res = remove().await;
        if retry_closed && res.as_ref().is_err_and(|e| e.message().contains("ttrpc: closed")) {
            eprintln!("RemovePodSandbox {}: {} (the dead shim's connection); once more", self.name, res.unwrap_err().message());
            res = remove().await;
        }
        res.unwrap_or_else(|e| {
            panic!(
                "RemovePodSandbox {}: {e}\ncontainerd log:\n{}",
                self.name,
                self.ctrd.log_tail(40)
            )
        });
        self.removed = true;
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.log_dir);
        if self.removed {
            return;
        }
        // Async cleanup from a sync Drop (possibly inside a runtime, possibly while
        // panicking): its own thread and runtime.
        let (sock, id, limit) = (self.ctrd.sock.clone(), self.id.clone(), rpc_timeout(&self.handler));
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut cri = Cri::connect(&sock).await;
                let stop = cri.rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                });
                match tokio::time::timeout(limit, stop).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("cleanup: StopPodSandbox {id}: {e}"),
                    Err(_) => eprintln!("cleanup: StopPodSandbox {id}: no answer within {limit:?}"),
                }
                let remove = cri.rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                });
                match tokio::time::timeout(limit, remove).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("cleanup: RemovePodSandbox {id}: {e}"),
                    Err(_) => eprintln!("cleanup: RemovePodSandbox {id}: no answer within {limit:?}"),
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn find_pod_by_name(cri: &mut Cri, name: &str) -> Option<String> {
    let r = cri
        .rt
        .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
        .await
        .ok()?
        .into_inner();
    r.items
        .into_iter()
        .find(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
        .map(|p| p.id)
}

/// Reads a CRI container log (`<time> <stream> <P|F> <text>` lines), joining partial
/// lines; returns (stream, line) pairs. A missing file reads as empty.
pub fn read_cri_log(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut partial: HashMap<String, String> = HashMap::new();
    for l in text.lines() {
        let mut it = l.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag), rest) = (it.next(), it.next(), it.next(), it.next()) else {
            continue;
        };
        let buf = partial.entry(stream.to_string()).or_default();
        buf.push_str(rest.unwrap_or(""));
        if tag == "F" {
            out.push((stream.to_string(), std::mem::take(buf)));
        }
    }
    out
}

/// A host directory with a tmpfs mounted at `tmpfs/` below it, unmounted and removed on
/// drop (critest's `createHostPathForRROMount`).
pub struct HostPathWithTmpfs {
    dir: tempfile::TempDir,
}

impl HostPathWithTmpfs {
    /// Makes it (root only: it mounts).
    pub fn mount() -> HostPathWithTmpfs {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::create_dir(dir.path().join("tmpfs")).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(dir.path().join("tmpfs"))
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs below {}", dir.path().display());
        HostPathWithTmpfs { dir }
    }

    /// The directory (the tmpfs is its `tmpfs/`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HostPathWithTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path().join("tmpfs")).status();
    }
}

/// The host's kernel release (`uname -r`).
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// The host's boot id.
pub fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// A host process.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    /// Its argv.
    pub argv: Vec<String>,
}

impl Proc {
    /// File name of argv[0].
    pub fn program(&self) -> &str {
        self.argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("")
    }

    /// The value after flag `flag` in argv.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        self.argv
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.argv.get(i + 1))
            .map(String::as_str)
    }

    /// Resident memory (VmRSS) in KiB, if the process still exists.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}

/// Every process on the host but this one (zombies and kernel threads have no argv).
pub fn processes() -> Vec<Proc> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let argv = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push(Proc { pid, argv });
    }
    out
}

/// The long-running shim (any `containerd-shim-*`) serving the sandbox `sandbox_id` of
/// the test containerd: containerd 1.6 starts one shim per pod, `-id <sandbox id>`.
pub fn shim_of(sandbox_id: &str) -> Option<Proc> {
    shim_of_in(containerd(), sandbox_id)
}

/// Like [`shim_of`], for the containerd `ctrd`.
pub fn shim_of_in(ctrd: &Containerd, sandbox_id: &str) -> Option<Proc> {
    let sock = ctrd.sock.display().to_string();
    processes().into_iter().find(|p| {
        p.program().starts_with("containerd-shim")
            && p.flag("-id") == Some(sandbox_id)
            && p.flag("-address") == Some(sock.as_str())
            && !p.argv.iter().any(|a| a == "start" || a == "delete")
    })
}

/// Processes whose argv mentions `needle` (a sandbox id: its shim, QEMU, vhost-device-vsock).
pub fn processes_mentioning(needle: &str) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.argv.iter().any(|a| a.contains(needle)))
        .collect()
}

/// Mounts (mount points) whose path mentions `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Polls until no process and no mount mentions `sandbox_id`; panics listing them after
/// `limit`.
pub fn wait_nothing_left(sandbox_id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let procs = processes_mentioning(sandbox_id);
        let mounts = mounts_mentioning(sandbox_id);
        if procs.is_empty() && mounts.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind for pod {sandbox_id} after {limit:?}: processes {procs:?}, mounts {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGKILL to `pid`.
pub fn kill9(pid: u32) {
    let st = Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(st.success(), "kill -9 {pid} failed");
}

/// The phases in `kata-cc timing:` lines of `log` (the shim's log lines, copied into
/// containerd's log), in order. Both forms count: `phase=<name> ms=<n>` and any
/// `<name>_ms=<n>` token. With `pod` set, only lines naming it (`pod=<id>`,
/// `pod_container=<id>`) count.
pub fn timing_phases(log: &str, pod: Option<&str>) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(at) = line.find("kata-cc timing:") else {
            continue;
        };
        let toks: Vec<&str> = line[at..]
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(pod) = pod {
            if !toks
                .iter()
                .any(|t| t.strip_prefix("pod=").or_else(|| t.strip_prefix("pod_container=")) == Some(pod))
            {
                continue;
            }
        }
        let mut phase = None;
        for tok in toks {
            let Some((k, v)) = tok.split_once('=') else { continue };
            match k {
                "phase" => phase = Some(v.to_string()),
                "ms" => {
                    if let (Some(p), Ok(ms)) = (phase.take(), v.parse::<u64>()) {
                        out.push((p, ms));
                    }
                }
                _ => {
                    if let (Some(name), Ok(ms)) = (k.strip_suffix("_ms"), v.parse::<u64>()) {
                        out.push((name.to_string(), ms));
                    }
                }
            }
        }
    }
    out
}

/// The test network's CNI config list (`tests/containerd/start.sh` writes it).
pub fn cni_conflist() -> PathBuf {
    containerd().dir.join("cni/net.d/10-kata-cc-test.conflist")
}

/// Releases what the test network holds for CNI container id `cni_id` when its owner
/// could not (a killed `ctr run --cni`): CNI DEL without a netns (the bridge plugin then
/// releases the IP) and the masquerade rules. Idempotent.
pub fn cni_release(cni_id: &str) {
    let script = r#"jq -c '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$1" |
        CNI_COMMAND=DEL CNI_CONTAINERID="$2" CNI_NETNS='' CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge >/dev/null"#;
    let _ = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(cni_conflist())
        .arg(cni_id)
        .status();
    cni_masq_cleanup(cni_id);
}

/// Removes the CNI bridge plugin's masquerade rules for container `cni_id` of the test
/// network (`ctr run --cni --rm` releases the IP but leaves them: its CNI DEL has no netns).
pub fn cni_masq_cleanup(cni_id: &str) {
    let Ok(out) = Command::new("iptables").args(["-t", "nat", "-S"]).output() else {
        return;
    };
    let comment = format!("id: \\\"{cni_id}\\\"");
    let mut chains = Vec::new();
    for rule in String::from_utf8_lossy(&out.stdout).lines() {
        if !(rule.starts_with("-A POSTROUTING ") && rule.contains(&comment) && rule.contains("kata-cc-test")) {
            continue;
        }
        let Some(chain) = rule.rsplit(' ').next().filter(|c| c.starts_with("CNI-")) else {
            continue;
        };
        chains.push(chain.to_string());
        // Delete the same rule: re-split `-A ...` as iptables would parse it (the comment
        // is quoted).
        let args = shell_words(&rule["-A ".len()..]);
        let mut cmd = Command::new("iptables");
        cmd.args(["-t", "nat", "-D"]).args(&args);
        let _ = cmd.status();
    }
    for c in chains {
        let _ = Command::new("iptables").args(["-t", "nat", "-F", &c]).status();
        let _ = Command::new("iptables").args(["-t", "nat", "-X", &c]).status();
    }
}

/// Splits an `iptables -S` rule into words (double quotes with `\"` escapes).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timing_lines() {
        let log = "time=\"x\" level=info msg=\"kata-cc timing: pod=p1 phase=vm_boot ms=1234\" pid=3\n\
                   other line with phase=x ms=1\n\
                   kata-cc timing: pod=p1 network_ms=5 vm_start_ms=800 agent_ready_ms=300\n\
                   kata-cc timing: pod_container=c1 phase=create_container ms=56\n\
                   kata-cc timing: pod=p2 phase=vm_boot ms=9\n\
                   kata-cc timing: phase=broken\n";
        let all = timing_phases(log, None);
        let p = |n: &str, v: u64| (n.to_string(), v);
        assert_eq!(
            all,
            vec![
                p("vm_boot", 1234),
                p("network", 5),
                p("vm_start", 800),
                p("agent_ready", 300),
                p("create_container", 56),
                p("vm_boot", 9)
            ]
        );
        assert_eq!(
            timing_phases(log, Some("p1")),
            vec![
                p("vm_boot", 1234),
                p("network", 5),
                p("vm_start", 800),
                p("agent_ready", 300)
            ]
        );
    }

    #[test]
    fn joins_partial_cri_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:00.1Z stdout P hel\n2026-01-01T00:00:00.2Z stderr F oops\n\
             2026-01-01T00:00:00.3Z stdout F lo world\n2026-01-01T00:00:00.4Z stdout F \n",
        )
        .unwrap();
        assert_eq!(
            read_cri_log(&p),
            vec![
                ("stderr".to_string(), "oops".to_string()),
                ("stdout".to_string(), "hello world".to_string()),
                ("stdout".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn splits_iptables_rules() {
        let r = r#"POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"kata-cc-test\" id: \"a-b\"" -j CNI-1"#;
        assert_eq!(
            shell_words(r),
            [
                "POSTROUTING",
                "-s",
                "10.88.0.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "kata-cc-test" id: "a-b""#,
                "-j",
                "CNI-1"
            ]
        );
    }
}
