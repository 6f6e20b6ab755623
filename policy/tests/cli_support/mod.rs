//! Shared helpers of the `cli*` tests: OCI image layouts written by hand, and agent
//! requests in the shape Kata's shim sends (based on `tests/inputs/`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)] // test code

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const CPATH: &str = "/run/kata-containers/shared/containers";

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn yaml(name: &str) -> PathBuf {
    crate_dir().join("tests/yaml").join(name)
}

fn blob(root: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = root.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// An OCI image layout under construction.
pub struct Layout {
    pub root: PathBuf,
    entries: Vec<Value>,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self { root, entries: Vec::new() }
    }

    fn manifest(&self, config: &Value) -> (String, usize) {
        let config_blob = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let config_digest = blob(&self.root, &config_blob);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_blob.len()},
            "layers": []
        }))
        .unwrap();
        (blob(&self.root, &manifest), manifest.len())
    }

    /// Add an image manifest tagged `ref_name`; returns its digest.
    pub fn add_image(&mut self, ref_name: &str, config: Value) -> String {
        let (digest, size) = self.manifest(&config);
        self.entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": ref_name}
        }));
        self.write_index();
        digest
    }

    /// Add a multi-platform image index (amd64 gets `config`, arm64 a decoy); returns the
    /// index digest.
    pub fn add_index(&mut self, ref_name: &str, config: Value) -> String {
        let (amd, amd_size) = self.manifest(&config);
        let (arm, arm_size) = self.manifest(&json!({"Cmd": ["/wrong-arch"]}));
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm,
                 "size": arm_size, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd,
                 "size": amd_size, "platform": {"architecture": "amd64", "os": "linux"}}
            ]
        }))
        .unwrap();
        let digest = blob(&self.root, &index);
        self.entries.push(json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name}
        }));
        self.write_index();
        digest
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.entries});
        std::fs::write(self.root.join("index.json"), serde_json::to_vec_pretty(&index).unwrap())
            .unwrap();
    }
}

/// The images every test pod uses, in layouts under one temporary directory.
pub struct Images {
    pub dir: tempfile::TempDir,
    /// Image name as written in the YAML -> pinned normalized reference.
    pub pinned: BTreeMap<&'static str, String>,
}

impl Images {
    pub fn build() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pinned = BTreeMap::new();

        let mut main = Layout::new(dir.path().join("layouts/main"));
        let d = main.add_image(
            "registry.k8s.io/pause:3.10",
            json!({"Entrypoint": ["/pause"], "User": "65535:65535", "Env": [PATH_ENV]}),
        );
        pinned.insert("pause", format!("registry.k8s.io/pause@{d}"));
        let d = main.add_image(
            "docker.io/library/nginx:1.25",
            json!({"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"],
                   "Env": [PATH_ENV, "NGINX_VERSION=1.25.5"], "StopSignal": "SIGQUIT"}),
        );
        pinned.insert("nginx:1.25", format!("docker.io/library/nginx@{d}"));
        let d = main.add_index(
            "ghcr.io/example/api:2.1",
            json!({"Entrypoint": ["/app/server"], "Cmd": ["--port", "80"],
                   "Env": [PATH_ENV, "APP_HOME=/app"], "WorkingDir": "/app", "User": "1000:1000"}),
        );
        pinned.insert("ghcr.io/example/api:2.1", format!("ghcr.io/example/api@{d}"));

        // busybox in a layout of its own, tagged with the bare tag only.
        let mut bb = Layout::new(dir.path().join("layouts/busybox"));
        let d = bb.add_image("1.36", json!({"Cmd": ["sh"], "Env": [PATH_ENV]}));
        pinned.insert("docker.io/library/busybox:1.36", format!("docker.io/library/busybox@{d}"));
        Self { dir, pinned }
    }

    pub fn layouts_dir(&self) -> PathBuf {
        self.dir.path().join("layouts")
    }

    pub fn store(&self) -> policy::gen::ImageStore {
        let mut store = policy::gen::ImageStore::new("linux/amd64");
        store.add_layouts_in(&self.layouts_dir()).unwrap();
        store
    }
}

pub fn read_json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(crate_dir().join(rel)).unwrap()).unwrap()
}

pub fn cid(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// A Kubernetes-file bind mount as the shim shares it: `<cpath>/<cid>-<16>-<name>`.
pub fn shared(cid: &str, dest: &str, name: &str, mode: &str) -> Value {
    json!({"destination": dest, "type": "bind",
           "source": format!("{CPATH}/{cid}-0123456789abcdef-{name}"),
           "options": ["rbind", "rprivate", mode]})
}

/// The mounts the kubelet gives every container (containerd: hosts/hostname/resolv rw).
pub fn k8s_mounts(cid: &str, service_account: bool) -> Vec<Value> {
    let mut m = vec![
        shared(cid, "/etc/hosts", "hosts", "rw"),
        shared(cid, "/dev/termination-log", "termination-log", "rw"),
        shared(cid, "/etc/hostname", "hostname", "rw"),
        shared(cid, "/etc/resolv.conf", "resolv.conf", "rw"),
    ];
    if service_account {
        m.push(shared(
            cid,
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "kube-api-access-x7k2p",
            "ro",
        ));
    }
    m
}

/// The service env vars Kubernetes injects.
pub fn service_env() -> Vec<String> {
    [
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "KUBERNETES_SERVICE_PORT=443",
        "KUBERNETES_SERVICE_PORT_HTTPS=443",
        "KUBERNETES_PORT=tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP_PROTO=tcp",
        "KUBERNETES_PORT_443_TCP_PORT=443",
        "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// What a CreateContainerRequest asks for.
#[derive(Clone)]
pub struct Create {
    pub cid: String,
    pub sandbox_name: String,
    pub namespace: String,
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    pub caps: Option<Vec<String>>,
    pub mounts: Vec<Value>,
    pub storages: Vec<Value>,
}

pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl Create {
    pub fn container(sandbox: &str, ns: &str, name: &str, cid: &str, image: &str) -> Self {
        Self {
            cid: cid.to_owned(),
            sandbox_name: sandbox.to_owned(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            image: image.to_owned(),
            args: Vec::new(),
            env: vec![PATH_ENV.to_owned()],
            cwd: "/".to_owned(),
            uid: 0,
            gid: 0,
            no_new_privs: false,
            read_only_root: false,
            caps: None,
            mounts: Vec::new(),
            storages: Vec::new(),
        }
    }

    /// The JSON the agent's policy sees, built on `tests/inputs/create-app.json` (or
    /// `create-pause.json` for the sandbox container).
    pub fn request(&self, sandbox_container: bool) -> Value {
        let template =
            if sandbox_container { "tests/inputs/create-pause.json" } else { "tests/inputs/create-app.json" };
        let mut r = read_json(template);
        let rootfs = format!("/run/kata-containers/{}/rootfs", self.cid);
        r["container_id"] = json!(self.cid);
        r["exec_id"] = json!(self.cid);
        let mut storages = vec![json!({
            "driver": "image_guest_pull",
            "driver_options": [format!("image_guest_pull={{\"metadata\": {{\"io.kubernetes.cri.image-name\": \"{}\"}}}}", self.image)],
            "source": self.image, "fstype": "overlay", "options": [],
            "mount_point": rootfs, "fs_group": null
        })];
        storages.extend(self.storages.iter().cloned());
        r["storages"] = json!(storages);
        let oci = &mut r["OCI"];
        oci["Root"] = json!({"Path": rootfs, "Readonly": self.read_only_root});
        // containerd gives the sandbox the pod's hostname; containers share it.
        oci["Hostname"] = json!(if sandbox_container { self.sandbox_name.as_str() } else { "" });
        let a = &mut oci["Annotations"];
        a["io.kubernetes.cri.sandbox-name"] = json!(self.sandbox_name);
        a["io.kubernetes.cri.sandbox-namespace"] = json!(self.namespace);
        a["io.kubernetes.cri.container-name"] = json!(self.name);
        a["io.kubernetes.cri.image-name"] = json!(self.image);
        let p = &mut oci["Process"];
        p["Args"] = json!(self.args);
        p["Env"] = json!(self.env);
        p["Cwd"] = json!(self.cwd);
        p["User"] = json!({"UID": self.uid, "GID": self.gid, "AdditionalGids": [self.gid], "Username": ""});
        p["NoNewPrivileges"] = json!(self.no_new_privs);
        if let Some(caps) = &self.caps {
            for kind in ["Bounding", "Effective", "Permitted"] {
                p["Capabilities"][kind] = json!(caps);
            }
        }
        let defaults: Vec<Value> = oci["Mounts"].as_array().unwrap()[..7].to_vec();
        let mut mounts = defaults;
        mounts.extend(self.mounts.iter().cloned());
        oci["Mounts"] = json!(mounts);
        r
    }
}

/// An ExecProcessRequest for container `cid`.
pub fn exec_request(cid: &str, args: &[&str], env: &[&str], uid: u32) -> Value {
    let mut r = read_json("tests/inputs/exec-app.json");
    r["container_id"] = json!(cid);
    r["process"]["Args"] = json!(args);
    r["process"]["Env"] = json!(env);
    r["process"]["User"]["UID"] = json!(uid);
    r["process"]["User"]["GID"] = json!(uid);
    // containerd execs with the container's process as the base: its working dir.
    r["process"]["Cwd"] = json!("/");
    r
}
