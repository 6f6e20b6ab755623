//! kata-cc-snapshotter under a real containerd (the host's `containerd` and `ctr`, 1.6 on
//! Debian bookworm): a private containerd with its own root, state and socket, the
//! snapshotter as proxy plugin `kata-cc`, images from the loopback test registry
//! (`tests/registry/start.sh`). Needs root. Every process started here is killed, and
//! every mount below the temporary directory unmounted, even when a step fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REGISTRY: &str = "127.0.0.1:5000";
const SNAPSHOTTER_BIN: &str = env!("CARGO_BIN_EXE_kata-cc-snapshotter");
/// Generous: a loaded 2-core CI machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// A child process killed (and reaped) on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child }
    }

    /// SIGTERM, then SIGKILL after a grace period.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The temporary directory; unmounts whatever is mounted below it before removal.
struct Workdir(Option<tempfile::TempDir>);

impl Workdir {
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        let prefix = dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        if std::env::var_os("KATA_CC_KEEP_TEST_DIR").is_some() {
            eprintln!("keeping {}", dir.keep().display());
        }
    }
}

/// Everything one test runs against.
struct Env {
    dir: Workdir,
    snapshotter: Option<Proc>,
    containerd: Option<Proc>,
}

impl Env {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
    fn snap_sock(&self) -> PathBuf {
        self.dir.path().join("snapshotter.sock")
    }
    fn snap_root(&self) -> PathBuf {
        self.dir.path().join("snapshotter-root")
    }
    /// The empty directory every mount binds, as the snapshotter names it (absolute,
    /// symlinks resolved).
    fn rootfs(&self) -> String {
        let p = std::fs::canonicalize(self.snap_root().join("guest-pull-rootfs")).unwrap();
        p.to_str().unwrap().to_owned()
    }

    fn start() -> Env {
        assert!(
            nix_is_root(),
            "this test drives a private containerd and must run as root (CI does)"
        );
        registry_up();
        let dir = Workdir(Some(
            tempfile::Builder::new()
                .prefix("kcs-")
                .tempdir_in("/tmp")
                .unwrap(),
        ));
        let mut env = Env {
            dir,
            snapshotter: None,
            containerd: None,
        };
        env.start_snapshotter();
        let d = env.dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "debug"
[proxy_plugins.kata-cc]
  type = "snapshot"
  address = "{snap}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = env.sock().display(),
            snap = env.snap_sock().display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        env.containerd = Some(Proc::spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("config.toml")),
            &d.join("containerd.log"),
        ));
        poll("containerd to answer", || {
            ctr_raw(&env, &["version"]).status.success()
        });
        env
    }

    fn start_snapshotter(&mut self) {
        let d = self.dir.path().to_owned();
        self.snapshotter = Some(Proc::spawn(
            "kata-cc-snapshotter",
            Command::new(SNAPSHOTTER_BIN)
                .arg("--address")
                .arg(self.snap_sock())
                .arg("--root")
                .arg(self.snap_root())
                .args(["--log-level", "debug"]),
            &d.join(format!("snapshotter-{}.log", unique())),
        ));
        let sock = self.snap_sock();
        poll("the snapshotter socket", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    fn restart_snapshotter(&mut self) {
        if let Some(p) = self.snapshotter.take() {
            p.stop();
        }
        assert!(
            !self.snap_sock().exists(),
            "the snapshotter removes its socket on SIGTERM"
        );
        self.start_snapshotter();
    }

    /// The snapshotter's persisted snapshots.
    fn metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        let path = self.snap_root().join("metadata.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return Default::default();
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["snapshots"].as_object().cloned().unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out += &format!("--- {} (last lines)\n", e.path().display());
                for l in tail.into_iter().rev() {
                    out += l;
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // containerd first (it talks to the snapshotter), then the snapshotter; the
        // work directory (field order) last.
        self.containerd.take();
        self.snapshotter.take();
    }
}

/// Mount points of this mount namespace (`findmnt`), sorted.
fn mounted_targets() -> Vec<String> {
    let out = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET"])
        .output()
        .unwrap();
    assert!(out.status.success(), "findmnt failed");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// [`mounted_targets`] under /tmp.
fn host_tmp_mounts() -> Vec<String> {
    mounted_targets()
        .into_iter()
        .filter(|t| t.starts_with("/tmp/"))
        .collect()
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn nix_is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn poll(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {TIMEOUT:?} waiting for {what}");
}

fn registry_up() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/registry/start.sh");
    let st = Command::new("bash").arg(&script).status().unwrap();
    assert!(st.success(), "{} failed", script.display());
}

fn ctr_raw(env: &Env, args: &[&str]) -> Output {
    Command::new("ctr")
        .arg("--address")
        .arg(env.sock())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ctr must be installed (deploy/install-deps.sh)")
}

/// Runs ctr; panics with its output unless it succeeds. Returns stdout.
fn ctr(env: &Env, args: &[&str]) -> String {
    let out = ctr_raw(env, args);
    assert!(
        out.status.success(),
        "ctr {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs ctr expecting failure. Returns stderr.
fn ctr_fails(env: &Env, args: &[&str]) -> String {
    let out = ctr_raw(env, args);
    assert!(
        !out.status.success(),
        "ctr {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn snap_pull(env: &Env, image: &str) -> String {
    let out = Command::new(SNAPSHOTTER_BIN)
        .args(["pull", "--plain-http", "--containerd"])
        .arg(env.sock())
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kata-cc-snapshotter pull {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The registry's manifest of `repo:latest` for linux/amd64 (following an index).
fn registry_manifest(repo: &str) -> serde_json::Value {
    let get = |reference: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            ])
            .arg(format!("http://{REGISTRY}/v2/{repo}/manifests/{reference}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {repo}:{reference} failed");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let root = get("latest");
    match root["manifests"].as_array() {
        None => root,
        Some(list) => {
            let amd64 = list
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .expect("an amd64 manifest");
            get(amd64["digest"].as_str().unwrap())
        }
    }
}

/// The digests (first column) of `ctr content ls` in `namespace`.
fn blobs(env: &Env, namespace: &str) -> Vec<String> {
    ctr(env, &["-n", namespace, "content", "ls", "-q"])
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn guest_pull_under_real_containerd() {
    let mut env = Env::start();
    let image = format!("{REGISTRY}/busybox:latest");

    // containerd 1.6's `ctr image pull` downloads every layer and then asks for a
    // host-side unpack without labels: the snapshotter refuses that with a pointer to
    // `kata-cc-snapshotter pull`. (Own namespace: its downloaded blobs stay out of the
    // checks below.)
    let err = ctr_fails(
        &env,
        &[
            "-n",
            "ctr-pull",
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "kata-cc",
            &format!("{REGISTRY}/multi:latest"),
        ],
    );
    assert!(err.contains("kata-cc-snapshotter pull"), "{err}");
    assert!(err.contains("failed precondition"), "{err}");
    assert!(
        env.metadata().is_empty(),
        "a refused unpack records nothing"
    );

    // (1) Pull: manifest and config into containerd, layers recorded, no layer blob.
    let out = snap_pull(&env, &image);
    let top = out.lines().last().unwrap().trim().to_owned();
    assert!(top.starts_with("sha256:"), "{out}");
    let manifest = registry_manifest("busybox");
    let layers = layer_digests(&manifest);
    assert!(!layers.is_empty());
    let content = blobs(&env, "default");
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert!(
        content.iter().any(|d| d == config_digest),
        "config missing: {content:?}"
    );
    assert_eq!(content.len(), 2, "manifest and config only: {content:?}");
    for l in &layers {
        assert!(
            !content.contains(l),
            "layer {l} was downloaded: {content:?}"
        );
    }
    let check = ctr(&env, &["images", "check", "--snapshotter", "kata-cc"]);
    let line = check
        .lines()
        .find(|l| l.starts_with(&image))
        .expect("image listed");
    assert!(
        line.trim_end().ends_with("true"),
        "not unpacked for kata-cc: {line}"
    );
    let snaps = ctr(&env, &["snapshots", "--snapshotter", "kata-cc", "ls"]);
    assert!(
        snaps.contains(&top) && snaps.contains("Committed"),
        "{snaps}"
    );
    let md = env.metadata();
    assert_eq!(md.len(), layers.len());
    assert_eq!(
        md[&top]["labels"]["containerd.io/snapshot/cri.image-ref"],
        image.as_str()
    );
    // Pulling again is harmless.
    snap_pull(&env, &image);
    assert_eq!(env.metadata().len(), layers.len());

    // (2) A container snapshot on top of the image: one read-only bind of the empty
    // `<root>/guest-pull-rootfs`, the image reference in the kata-cc.image-ref= option,
    // the same for active and view snapshots.
    let rootfs = env.rootfs();
    let option = format!("kata-cc.image-ref={image}");
    let mounts = ctr(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "prepare",
            "--mounts",
            "c1",
            &top,
        ],
    );
    let mounts: serde_json::Value = serde_json::from_str(&mounts).unwrap();
    assert_eq!(
        mounts,
        serde_json::json!([{"Type": "bind", "Source": rootfs, "Options": ["ro", "rbind", option]}])
    );
    let line = ctr(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "mounts",
            "/target",
            "c1",
        ],
    );
    assert_eq!(
        line.trim(),
        format!("mount -t bind {rootfs} /target -o ro,rbind,{option}")
    );
    // What ctr prints is a mount(8) command the host can run: an empty read-only dir.
    let target = env.dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let target_s = target.to_str().unwrap();
    let cmd = line.trim().replace(" /target ", &format!(" {target_s} "));
    let st = Command::new("sh").args(["-c", &cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
    assert!(mounted_targets().iter().any(|t| t == target_s));
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    let write = std::fs::write(target.join("x"), b"x").unwrap_err();
    assert_eq!(write.raw_os_error(), Some(30), "EROFS expected: {write}");
    let st = Command::new("umount").arg(&target).status().unwrap();
    assert!(st.success());
    assert!(!mounted_targets().iter().any(|t| t == target_s));
    let view = ctr(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "view",
            "--mounts",
            "v1",
            &top,
        ],
    );
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view, mounts);
    // (Nothing references ctr's view: containerd's garbage collector removes it at its
    // next run, at the latest with the removals below.)
    // Errors reach the client with their code and the key.
    let err = ctr_fails(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "prepare",
            "c1",
            &top,
        ],
    );
    assert!(err.contains("already exists"), "{err}");
    let err = ctr_fails(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "mounts",
            "/t",
            &top,
        ],
    );
    assert!(
        err.contains("committed") && err.contains("failed precondition"),
        "{err}"
    );

    // (2b) `ctr containers create` (and so `ctr run`) mounts the container's rootfs on
    // the host to read /etc/group (oci.WithAdditionalGIDs): with the bind mount that
    // works, containerd mounts and unmounts it by itself and finds no /etc/group. The
    // container's snapshot has the same mount. `--snapshotter-label` overrides the
    // reference.
    let before = host_tmp_mounts();
    ctr(
        &env,
        &[
            "containers",
            "create",
            "--snapshotter",
            "kata-cc",
            &image,
            "ctr1",
        ],
    );
    ctr(
        &env,
        &[
            "containers",
            "create",
            "--snapshotter",
            "kata-cc",
            "--snapshotter-label",
            "containerd.io/snapshot/cri.image-ref=other.example/app:2",
            &image,
            "ctr2",
        ],
    );
    // (Compared with before rather than required empty: other things on the machine may
    // have mounts under /tmp.)
    let left: Vec<String> = host_tmp_mounts()
        .into_iter()
        .filter(|t| !before.contains(t))
        .collect();
    assert!(left.is_empty(), "mounts left under /tmp: {left:?}");
    let line = ctr(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "mounts",
            "/r",
            "ctr1",
        ],
    );
    assert_eq!(
        line.trim(),
        format!("mount -t bind {rootfs} /r -o ro,rbind,{option}")
    );
    let line = ctr(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "mounts",
            "/r",
            "ctr2",
        ],
    );
    assert_eq!(
        line.trim(),
        format!("mount -t bind {rootfs} /r -o ro,rbind,kata-cc.image-ref=other.example/app:2")
    );
    let info = ctr(&env, &["containers", "info", "ctr1"]);
    assert!(info.contains("\"Snapshotter\": \"kata-cc\""), "{info}");
    assert_eq!(
        std::fs::read_dir(&rootfs).unwrap().count(),
        0,
        "nothing is ever written to the rootfs dir"
    );

    // (4, before removal so there is state to reload) Restart the snapshotter:
    // containerd reconnects and everything is still there.
    env.restart_snapshotter();
    let mut line = String::new();
    poll("containerd to reach the restarted snapshotter", || {
        let out = ctr_raw(
            &env,
            &[
                "snapshots",
                "--snapshotter",
                "kata-cc",
                "mounts",
                "/target",
                "c1",
            ],
        );
        line = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert_eq!(
        line.trim(),
        format!("mount -t bind {rootfs} /target -o ro,rbind,{option}")
    );
    let info = ctr(
        &env,
        &["snapshots", "--snapshotter", "kata-cc", "info", &top],
    );
    assert!(info.contains("cri.image-ref"), "{info}");

    // (3) Remove: the layer cannot go while a container snapshot is on it; then image
    // and snapshots go and the snapshotter's metadata is empty.
    let err = ctr_fails(&env, &["snapshots", "--snapshotter", "kata-cc", "rm", &top]);
    assert!(err.contains("child"), "{err}");
    ctr(&env, &["snapshots", "--snapshotter", "kata-cc", "rm", "c1"]);
    // (Removes the containers' snapshots too.)
    ctr(&env, &["containers", "rm", "ctr1", "ctr2"]);
    ctr(&env, &["image", "rm", "--sync", &image]);
    let _ = ctr_raw(
        &env,
        &[
            "-n",
            "ctr-pull",
            "image",
            "rm",
            "--sync",
            &format!("{REGISTRY}/multi:latest"),
        ],
    );
    poll("the layer snapshots to be garbage-collected", || {
        env.metadata().is_empty()
    });
    assert!(
        ctr(&env, &["snapshots", "--snapshotter", "kata-cc", "ls"])
            .lines()
            .count()
            <= 1
    );

    // Restart with the empty state.
    env.restart_snapshotter();
    poll("an empty listing after restart", || {
        let out = ctr_raw(&env, &["snapshots", "--snapshotter", "kata-cc", "ls"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() <= 1
    });
}

#[test]
fn multi_layer_index_image_records_the_whole_chain() {
    let env = Env::start();
    let image = format!("{REGISTRY}/index:latest");
    let out = snap_pull(&env, &image);
    let top = out.lines().last().unwrap().trim().to_owned();
    let manifest = registry_manifest("index");
    let layers = layer_digests(&manifest);
    let md = env.metadata();
    assert_eq!(md.len(), layers.len());
    // The chain from the top layer down has every layer, the root with no parent.
    let mut cur = top.clone();
    let mut depth = 0;
    while !cur.is_empty() {
        let rec = &md[&cur];
        assert_eq!(rec["kind"], "committed");
        assert_eq!(
            rec["labels"]["containerd.io/snapshot/cri.image-ref"],
            image.as_str()
        );
        cur = rec["parent"].as_str().unwrap_or_default().to_owned();
        depth += 1;
    }
    assert_eq!(depth, layers.len());
    let content = blobs(&env, "default");
    for l in &layers {
        assert!(
            !content.contains(l),
            "layer {l} was downloaded: {content:?}"
        );
    }
    // The same image the other way, in another namespace: ctr's metadata-only fetch
    // (which skips layers only below an index) plus `register-image`.
    ctr(
        &env,
        &[
            "-n",
            "meta",
            "content",
            "fetch",
            "--plain-http",
            "--metadata-only",
            &image,
        ],
    );
    let out = Command::new(SNAPSHOTTER_BIN)
        .args(["register-image", "-n", "meta", "--containerd"])
        .arg(env.sock())
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out_top(&String::from_utf8_lossy(&out.stdout)), top);
    let content = blobs(&env, "meta");
    assert!(!content.is_empty());
    for l in &layers {
        assert!(
            !content.contains(l),
            "layer {l} was downloaded: {content:?}"
        );
    }
    let check = ctr(
        &env,
        &["-n", "meta", "images", "check", "--snapshotter", "kata-cc"],
    );
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&image) && l.trim_end().ends_with("true")),
        "{check}"
    );

    // The three-layer fixture too; a container on it gets its reference.
    let multi = format!("{REGISTRY}/multi:latest");
    let multi_top = out_top(&snap_pull(&env, &multi));
    let md = env.metadata();
    let mut depth = 0;
    let mut cur = multi_top.clone();
    while !cur.is_empty() {
        cur = md[&cur]["parent"].as_str().unwrap_or_default().to_owned();
        depth += 1;
    }
    assert_eq!(depth, layer_digests(&registry_manifest("multi")).len());
    let mounts = ctr(
        &env,
        &[
            "snapshots",
            "--snapshotter",
            "kata-cc",
            "prepare",
            "--mounts",
            "m1",
            &multi_top,
        ],
    );
    assert!(mounts.contains(&multi), "{mounts}");
    // containerd names the backend key `<namespace>/<id>/<key>`.
    let md = env.metadata();
    let m1 = md
        .iter()
        .find(|(k, _)| k.starts_with("default/") && k.ends_with("/m1"));
    assert_eq!(m1.expect("m1 recorded").1["kind"], "active");
}

fn out_top(out: &str) -> String {
    out.lines().last().unwrap().trim().to_owned()
}
