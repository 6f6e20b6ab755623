//! Guest pull through the real agent binary: CreateContainer with Kata's
//! `image_guest_pull` storage pulls the image from a real registry (Debian's
//! docker-registry on loopback, fixtures from `tests/registry/start.sh`), decrypts it,
//! mounts it as the container's rootfs and runs the container in it; failures leave no
//! container, mount or rootfs behind. Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use oci_spec::runtime::Spec;
use protocols::agent as pb;
use protocols::protobuf::MessageField;
use protocols::{context_with, AgentClient};

const REGISTRY: &str = "127.0.0.1:5000";

/// Starts the loopback registry with its fixtures (once per binary; the script locks).
fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/start.sh");
        let out = Command::new("bash").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        PathBuf::from(std::env::var("KATA_CC_REGISTRY_DIR").unwrap_or("/var/tmp/kata-cc-registry".into()))
    })
    .clone()
}

struct PullAgent {
    child: Child,
    dir: tempfile::TempDir,
    client: AgentClient,
}

impl PullAgent {
    async fn start(with_key: bool) -> PullAgent {
        let fixtures = fixtures();
        let dir = tempfile::tempdir().unwrap();
        let cgroup_parent = format!("/kata-cc-pull-{}-{}", std::process::id(), dir.path().display().to_string().len());
        let mut cmd = Command::new(common::AGENT_BIN);
        cmd.args(common::agent_args(dir.path(), &cgroup_parent)).args(["--insecure-registry", REGISTRY]);
        if with_key {
            cmd.arg("--image-key").arg(fixtures.join("keys/priv.pem"));
        }
        let child = cmd.spawn().unwrap();
        let client = common::agent_client(dir.path()).await;
        PullAgent { child, dir, client }
    }

    fn rootfs(&self, cid: &str) -> PathBuf {
        self.dir.path().join("shared").join(cid).join("rootfs")
    }

    /// CreateContainer as Kata sends it for a guest-pulled image; `args` empty: the
    /// image's own entrypoint/cmd.
    async fn create(&self, cid: &str, image: &str, args: &[&str]) -> ttrpc::Result<()> {
        let mut spec = Spec::default();
        spec.set_hostname(None);
        let mut root = spec.root().clone().unwrap();
        root.set_path(self.rootfs(cid));
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let mut process = spec.process().clone().unwrap();
        process.set_args((!args.is_empty()).then(|| args.iter().map(|s| s.to_string()).collect()));
        process.set_terminal(Some(false));
        spec.set_process(Some(process));

        let mut storage = pb::Storage::new();
        storage.driver = "image_guest_pull".into();
        storage.source = format!("{REGISTRY}/{image}");
        storage.fstype = "overlay".into();
        storage.mount_point = self.rootfs(cid).display().to_string();
        storage.driver_options =
            vec![r#"image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}"#.into()];
        let mut r = pb::CreateContainerRequest::new();
        r.container_id = cid.into();
        r.exec_id = cid.into();
        r.storages = vec![storage];
        r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&spec));
        let ctx = context_with(Duration::from_secs(120));
        self.client.agent().create_container(ctx, &r).await.map(|_| ())
    }

    /// Starts `cid` and returns its stdout and exit status.
    async fn run(&self, cid: &str) -> (String, i32) {
        let mut s = pb::StartContainerRequest::new();
        s.container_id = cid.into();
        self.client.agent().start_container(self.client.context(), &s).await.unwrap();
        let mut out = Vec::new();
        loop {
            let mut r = pb::ReadStreamRequest::new();
            r.container_id = cid.into();
            r.exec_id = cid.into();
            r.len = 4096;
            let chunk = self.client.agent().read_stdout(context_with(Duration::from_secs(30)), &r).await.unwrap().data;
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        let mut w = pb::WaitProcessRequest::new();
        w.container_id = cid.into();
        w.exec_id = cid.into();
        let status = self.client.agent().wait_process(context_with(Duration::from_secs(30)), &w).await.unwrap().status;
        (String::from_utf8_lossy(&out).into_owned(), status)
    }

    async fn remove(&self, cid: &str) {
        let mut r = pb::RemoveContainerRequest::new();
        r.container_id = cid.into();
        self.client.agent().remove_container(self.client.context(), &r).await.unwrap();
    }

    /// Mount points at or below `<shared>/<cid>`.
    fn mounts_under(&self, cid: &str) -> Vec<String> {
        let root = self.dir.path().join("shared").join(cid).display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    /// Asserts CreateContainer failed and left nothing: no container, no mount, no rootfs.
    async fn assert_nothing_left(&self, cid: &str) {
        assert!(self.mounts_under(cid).is_empty(), "mounts left: {:?}", self.mounts_under(cid));
        let rootfs = self.rootfs(cid);
        let empty = std::fs::read_dir(&rootfs).map(|mut d| d.next().is_none()).unwrap_or(true);
        assert!(empty, "{} is not empty", rootfs.display());
        let mut s = pb::StartContainerRequest::new();
        s.container_id = cid.into();
        let e = self.client.agent().start_container(self.client.context(), &s).await.unwrap_err();
        assert!(format!("{e:?}").contains("not found"), "{e:?}");
    }
}

impl Drop for PullAgent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_encrypted_images_run_and_are_unmounted_on_removal() {
    let agent = PullAgent::start(true).await;

    agent.create("plain", "busybox:latest", &["/bin/busybox", "ls", "/bin/busybox"]).await.unwrap();
    assert_eq!(agent.mounts_under("plain").len(), 1, "the rootfs overlay is mounted");
    let (out, status) = agent.run("plain").await;
    assert_eq!((out.trim(), status), ("/bin/busybox", 0));

    // The encrypted image carries its own /secret.txt; it is decrypted in the agent with
    // the private key it was given, and its layer on top of nothing else.
    agent.create("enc", "encrypted:latest", &["/bin/busybox", "cat", "/secret.txt"]).await.unwrap();
    let (out, status) = agent.run("enc").await;
    assert!(out.starts_with("encrypted fixture "), "{out:?}");
    assert_eq!(status, 0);

    agent.remove("plain").await;
    agent.remove("enc").await;
    assert!(agent.mounts_under("plain").is_empty() && agent.mounts_under("enc").is_empty());
    assert!(!agent.rootfs("plain").join("bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pulls_leave_nothing_behind() {
    let agent = PullAgent::start(false).await;

    // No key for an encrypted image.
    let e = agent.create("nokey", "encrypted:latest", &["/bin/busybox", "true"]).await.unwrap_err();
    let msg = format!("{e:?}");
    assert!(msg.contains("encrypted:latest") && msg.contains("sha256:"), "{msg}");
    agent.assert_nothing_left("nokey").await;

    // A layer blob changed in the registry: digest mismatch.
    let e = agent.create("tampered", "tampered:latest", &["/bin/busybox", "true"]).await.unwrap_err();
    let msg = format!("{e:?}");
    assert!(msg.contains("tampered:latest") && msg.contains("digest"), "{msg}");
    agent.assert_nothing_left("tampered").await;

    // An image the registry does not have.
    let e = agent.create("missing", "no-such-image:latest", &["/bin/busybox", "true"]).await.unwrap_err();
    assert!(format!("{e:?}").contains("no-such-image"), "{e:?}");
    agent.assert_nothing_left("missing").await;

    // A rootfs mount point elsewhere than <shared>/<cid>/rootfs.
    let mut r = pb::CreateContainerRequest::new();
    r.container_id = "elsewhere".into();
    let mut s = pb::Storage::new();
    s.driver = "image_guest_pull".into();
    s.source = format!("{REGISTRY}/busybox:latest");
    s.mount_point = "/tmp/elsewhere".into();
    r.storages = vec![s];
    r.OCI = MessageField::some(protocols::convert::spec_to_grpc(&Spec::default()));
    let e = agent.client.agent().create_container(agent.client.context(), &r).await.unwrap_err();
    assert!(format!("{e:?}").contains("mount_point"), "{e:?}");

    // The agent still serves: a good image works afterwards.
    agent.create("ok", "busybox:latest", &["/bin/busybox", "true"]).await.unwrap();
    assert_eq!(agent.run("ok").await.1, 0);
    agent.remove("ok").await;
}

/// A rootfs still busy when its container is torn down (here: the test holds a directory
/// of it open, so a plain unmount fails with EBUSY) used to stay mounted after
/// DestroySandbox; now it is detached, and no mount below the agent's shared and state
/// directories remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_sandbox_leaves_no_mount_even_when_a_teardown_fails() {
    let agent = PullAgent::start(false).await;
    agent.create("busy", "busybox:latest", &["/bin/busybox", "sleep", "1000"]).await.unwrap();
    agent.create("idle", "busybox:latest", &["/bin/busybox", "true"]).await.unwrap();
    assert_eq!(agent.mounts_under("busy").len(), 1);
    let holder = std::fs::File::open(agent.rootfs("busy").join("bin")).unwrap();

    let r = agent.client.agent().destroy_sandbox(agent.client.context(), &pb::DestroySandboxRequest::new()).await;
    let root = agent.dir.path().display().to_string();
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect();
    assert!(left.is_empty(), "mounts left after DestroySandbox ({r:?}): {left:?}");
    drop(holder);
}
