//! CRI-O against the shim, replayed: CRI-O is not packaged for this machine, so this test
//! does to our shim binary what CRI-O's `vm` runtime type does, call for call, as read in
//! CRI-O's source (github.com/cri-o/cri-o, main as of this writing):
//!
//! - `internal/oci/runtime_vm.go`, `startRuntimeDaemon`: runs `<shim> -namespace default
//!   -address "" -publish-binary <crio> -id <container id> start` in the container's
//!   bundle with `TTRPC_ADDRESS=""` (containerd's `shim.Command` with an empty address),
//!   after creating the `log` fifo there, and dials the address the shim prints. It does
//!   this for every container: the sandbox's and each later container's `start` must
//!   print the same address (one shim per pod).
//! - `CreateContainer`: `Task.Create{ID, Bundle, Stdin, Stdout, Stderr, Terminal,
//!   Options}` with FIFO paths and `Options` = `runtimeoptions.v1.Options{ConfigPath}`
//!   (`runtime_config_path`), no rootfs mounts; `StartContainer`: `Task.Start`, then a
//!   `Task.Wait` left pending; `UpdateContainerStatus`: `Task.State`; `StopContainer`:
//!   `Task.Kill` (+ Wait); `deleteContainer`: `Task.Delete` then `Task.Shutdown` for every
//!   container, the sandbox's last.
//! - The sandbox's spec annotations: `server/sandbox_run_linux.go`,
//!   `setupSandboxAnnotations` (`io.kubernetes.cri-o.ContainerType = sandbox`, `SandboxID`,
//!   `ImageName`, `LogPath`, ...) and `setupSandboxResources` (`pod-linux-resources.crio.io`,
//!   the pod's `LinuxContainerResources` as JSON); a container's:
//!   `internal/factory/container/container.go`, `SpecAddAnnotations` (`ContainerType =
//!   container`, `SandboxID`, `ImageName`, `Image`, `LogPath`, ...).
//!
//! Not replayed: the pod network namespace (CRI-O's CNI; here the VM gets QEMU user-mode
//! networking through which the guest pulls from the test registry) and CRI-O's own
//! bookkeeping. What it shows: the shim recognises CRI-O's sandbox (it boots the VM,
//! sized from CRI-O's resources annotation: 2 CPUs), groups the later container into the
//! same shim and VM by `io.kubernetes.cri-o.SandboxID`, pulls that container's image by
//! `io.kubernetes.cri-o.ImageName`, and the container runs in the guest.
//!
//! Needs the shim built (`cargo build -p kata-cc-shim`), the test guest image, QEMU and
//! the test registry (started with the test containerd). Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use kata_cc_tests::cri::{containerd, find_binary, processes_mentioning};

const SHIM_BIN: &str = "containerd-shim-kata-cc-v2";

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

/// Reads fifo `p` (as CRI-O's container IO does) into a shared buffer until the writer closes.
fn drain(p: &Path) -> std::sync::Arc<std::sync::Mutex<String>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let o = out.clone();
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::File::open(&p) else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// A bundle with CRI-O's annotations and the runc-default spec running `args`.
fn bundle(dir: &Path, args: &[&str], annotations: HashMap<String, String>) {
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_hostname(Some("crio-pod".into()));
    spec.set_annotations(Some(annotations));
    spec.save(dir.join("config.json")).unwrap();
    mkfifo(&dir.join("log"));
    drain(&dir.join("log"));
}

/// `runtimeoptions.v1.Options{config_path}` as CRI-O marshals it (`typeurl.MarshalAny`).
fn runtime_options(config_path: &str) -> Any {
    let mut value = vec![0x12, u8::try_from(config_path.len()).unwrap()];
    value.extend_from_slice(config_path.as_bytes());
    Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    }
}

/// `startRuntimeDaemon`: the shim's `start` in `bundle`, as CRI-O runs it.
fn shim_start(shim: &Path, id: &str, bundle: &Path) -> String {
    let out = Command::new(shim)
        .args([
            "-namespace",
            "default",
            "-address",
            "",
            "-publish-binary",
            "/usr/bin/crio",
            "-id",
            id,
            "start",
        ])
        .current_dir(bundle)
        .env("GOMAXPROCS", "2")
        .env("MAX_SHIM_VERSION", "2")
        .env("TTRPC_ADDRESS", "")
        .env("GRPC_ADDRESS", "")
        .env("NAMESPACE", "default")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shim start {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn crio_common(
    kind: &str,
    sandbox_id: &str,
    image: &str,
    log_path: &Path,
) -> HashMap<String, String> {
    [
        ("io.kubernetes.cri-o.ContainerType", kind),
        ("io.kubernetes.cri-o.SandboxID", sandbox_id),
        (
            "io.kubernetes.cri-o.SandboxName",
            "k8s_crio-pod_default_uid_0",
        ),
        ("io.kubernetes.cri-o.ImageName", image),
        ("io.kubernetes.cri-o.Image", image),
        ("io.kubernetes.cri-o.LogPath", log_path.to_str().unwrap()),
        (
            "io.kubernetes.cri-o.Created",
            "2026-12-07T17:00:00.000000000Z",
        ),
        (
            "io.kubernetes.cri-o.Labels",
            "{\"io.kubernetes.pod.name\":\"crio-pod\"}",
        ),
        ("io.kubernetes.cri-o.Annotations", "{}"),
        ("io.container.manager", "cri-o"),
        ("io.kubernetes.pod.name", "crio-pod"),
        ("io.kubernetes.pod.namespace", "default"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn create_req(
    id: &str,
    bundle: &Path,
    out: &Path,
    err: &Path,
    cfg: &Path,
) -> api::CreateTaskRequest {
    api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle.to_str().unwrap().into(),
        stdout: out.to_str().unwrap().into(),
        stderr: err.to_str().unwrap().into(),
        terminal: false,
        options: containerd_shim_protos::protobuf::MessageField::some(runtime_options(
            cfg.to_str().unwrap(),
        )),
        ..Default::default()
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(300).as_nanos() as i64)
}

async fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Task `Start` of `id`, as CRI-O sends it, then its `Wait` left pending (CRI-O learns of
/// the exit from it); the handle yields `Wait`'s reply.
async fn start_then_wait(
    task: &TaskClient,
    id: &str,
) -> tokio::task::JoinHandle<ttrpc::Result<api::WaitResponse>> {
    task.start(
        ctx(),
        &api::StartRequest {
            id: id.to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("Start {id}: {e}"));
    let (task, id) = (task.clone(), id.to_string());
    tokio::spawn(async move {
        task.wait(
            ttrpc::context::with_timeout(0),
            &api::WaitRequest {
                id,
                ..Default::default()
            },
        )
        .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crio_task_sequence_runs_a_pod() {
    let ctrd = containerd(); // the test registry (and its busybox) comes with it
    let shim: PathBuf =
        find_binary(SHIM_BIN, "KATA_CC_SHIM").expect("build the shim: cargo build -p kata-cc-shim");
    let guest = kata_cc_tests::guest_image();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Short: QEMU's sockets live below it (108-byte limit).
    let state = PathBuf::from(format!("/run/kccr-{}", std::process::id()));
    let cfg = root.join("configuration.toml");
    std::fs::write(
        &cfg,
        format!(
            "[hypervisor]\nkernel = {:?}\ninitramfs = {:?}\nboot_timeout_secs = 180\n\
             [agent]\ninsecure_registries = [{:?}]\ntimeout_secs = 300\n\
             [runtime]\nstate_dir = {:?}\nstandalone_network = \"user\"\n",
            guest.kernel, guest.initramfs, ctrd.registry, state
        ),
    )
    .unwrap();

    let sb_id = format!("c0{:062x}", std::process::id());
    let ctr_id = format!("c1{:062x}", std::process::id());
    let sb_bundle = root.join("bundles").join(&sb_id);
    let ctr_bundle = root.join("bundles").join(&ctr_id);
    let fifos = root.join("fifos");
    std::fs::create_dir_all(&fifos).unwrap();

    // RunPodSandbox: the infra container, with the pod's resources (limits cpu 2, memory 1Gi).
    let mut ann = crio_common(
        "sandbox",
        &sb_id,
        "registry.k8s.io/pause:3.10",
        &root.join("logs/sb.log"),
    );
    ann.insert(
        "pod-linux-resources.crio.io".into(),
        r#"{"cpu_period":100000,"cpu_quota":200000,"cpu_shares":2048,"memory_limit_in_bytes":1073741824}"#.into(),
    );
    ann.insert("pod-linux-overhead.crio.io".into(), "{}".into());
    ann.insert("io.kubernetes.cri-o.ContainerID".into(), sb_id.clone());
    bundle(&sb_bundle, &["/pause"], ann);
    let address = shim_start(&shim, &sb_id, &sb_bundle);
    let client = Client::connect(&address)
        .await
        .unwrap_or_else(|e| panic!("dial {address}: {e}"));
    let task = TaskClient::new(client);
    let (so, se) = (fifos.join("sb-stdout"), fifos.join("sb-stderr"));
    mkfifo(&so);
    mkfifo(&se);
    drain(&so);
    drain(&se);
    let t = Instant::now();
    let r = task
        .create(ctx(), &create_req(&sb_id, &sb_bundle, &so, &se, &cfg))
        .await;
    let r = r.unwrap_or_else(|e| panic!("Create sandbox: {e}"));
    let boot = t.elapsed();
    assert!(r.pid > 0, "the sandbox's pid is QEMU's");
    let sb_wait = start_then_wait(&task, &sb_id).await;

    // CreateContainer: another `start` in the container's bundle answers with the pod's shim.
    let image = ctrd.busybox_image.clone();
    let mut ann = crio_common("container", &sb_id, &image, &root.join("logs/c.log"));
    ann.insert("io.kubernetes.cri-o.ContainerID".into(), ctr_id.clone());
    ann.insert("io.kubernetes.cri-o.TTY".into(), "false".into());
    bundle(
        &ctr_bundle,
        &[
            "/bin/sh",
            "-c",
            "echo hello-from-crio; echo kernel=$(uname -r); echo nproc=$(nproc); exec sleep 600",
        ],
        ann,
    );
    let again = shim_start(&shim, &ctr_id, &ctr_bundle);
    assert_eq!(
        again, address,
        "the container's `start` must return its sandbox's shim"
    );
    let (co, ce) = (fifos.join("c-stdout"), fifos.join("c-stderr"));
    mkfifo(&co);
    mkfifo(&ce);
    let stdout = drain(&co);
    let stderr = drain(&ce);
    task.create(ctx(), &create_req(&ctr_id, &ctr_bundle, &co, &ce, &cfg))
        .await
        .unwrap_or_else(|e| panic!("Create container: {e}"));
    let ctr_wait = start_then_wait(&task, &ctr_id).await;
    wait_for("the container's output", Duration::from_secs(60), || {
        stdout.lock().unwrap().contains("nproc=")
    })
    .await;
    let out = stdout.lock().unwrap().clone();
    eprintln!(
        "CRI-O replay: sandbox Create (VM boot) {boot:?}; container stdout: {out:?}; stderr: {:?}",
        stderr.lock().unwrap()
    );
    assert!(out.contains("hello-from-crio"), "{out}");
    assert!(
        out.contains(&format!("kernel={}", guest.kernel_release)),
        "not the guest kernel: {out}"
    );
    assert!(
        out.contains("nproc=2"),
        "the VM is sized from pod-linux-resources.crio.io (2 CPUs): {out}"
    );

    // UpdateContainerStatus.
    let st = task
        .state(
            ctx(),
            &api::StateRequest {
                id: ctr_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        st.status.enum_value_or_default(),
        containerd_shim_protos::types::task::Status::RUNNING,
        "{st:?}"
    );

    // StopContainer (the timeout elapsed: SIGKILL), DeleteContainer (Delete + Shutdown).
    task.kill(
        ctx(),
        &api::KillRequest {
            id: ctr_id.clone(),
            signal: 9,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let w = tokio::time::timeout(Duration::from_secs(60), ctr_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(w.exit_status, 137);
    task.delete(
        ctx(),
        &api::DeleteRequest {
            id: ctr_id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    task.shutdown(
        ctx(),
        &api::ShutdownRequest {
            id: ctr_id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // StopPodSandbox + RemovePodSandbox: the infra container the same way; the shim exits.
    task.kill(
        ctx(),
        &api::KillRequest {
            id: sb_id.clone(),
            signal: 9,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(60), sb_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    task.delete(
        ctx(),
        &api::DeleteRequest {
            id: sb_id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _ = task
        .shutdown(
            ctx(),
            &api::ShutdownRequest {
                id: sb_id.clone(),
                ..Default::default()
            },
        )
        .await;
    wait_for("the pod's processes to go", Duration::from_secs(30), || {
        processes_mentioning(&sb_id).is_empty() && !state.join(&sb_id).exists()
    })
    .await;
    let _ = std::fs::remove_dir_all(&state);
}
