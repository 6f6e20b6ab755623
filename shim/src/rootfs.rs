//! What the agent gets in place of the host's rootfs and bind mounts: the image to pull
//! in the guest (Kata's `image_guest_pull` storage), and the host files a CRI spec
//! mounts (hosts, resolv.conf, ConfigMaps, Secrets, ...) copied in with CopyFile.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount as ShimMount;
use oci_spec::runtime::{Mount, Spec};
use protocols::agent as pb;

/// Where the agent keeps per-container files (and requires container rootfs to be).
pub const SHARED_DIR: &str = "/run/kata-containers/shared/containers";
/// Mount option by which the kata-cc snapshotter names the image of a guest-pulled
/// container rootfs (`kata-cc.image-ref=<reference>`, on a read-only bind of an empty
/// directory: the host can mount it, the real rootfs exists only in the guest).
pub const IMAGE_REF_OPTION: &str = "kata-cc.image-ref=";
/// CRI annotations.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod sandbox a CRI container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The image of a CRI container.
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The pod's name, namespace and the container's name, as containerd's CRI passes them
/// (the generated policy checks them).
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// The pod's namespace (containerd).
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// The container's name in the pod (containerd; not on the sandbox).
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// CRI-O's container type (`sandbox` | `container`), as its `internal/annotations`
/// names it.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// CRI-O's pod sandbox id.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
/// CRI-O: some name of the container's image (empty when it was referenced by id).
pub const CRIO_IMAGE_NAME: &str = "io.kubernetes.cri-o.ImageName";
/// CRI-O: the image as the pod spec asked for it.
pub const CRIO_USER_IMAGE: &str = "io.kubernetes.cri-o.Image";
/// CRI-O: the container's CRI labels as a JSON object; the kubelet's labels in it name
/// the pod (`io.kubernetes.pod.name`, `.namespace`) and the container
/// (`io.kubernetes.container.name`; `POD` on the sandbox).
pub const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
/// CRI-O: the pod's namespace.
pub const CRIO_NAMESPACE: &str = "io.kubernetes.cri-o.Namespace";
/// Largest `io.kubernetes.cri-o.Labels` value parsed.
const MAX_CRIO_LABELS: usize = 64 * 1024;

/// What the shim needs to know about a container from its CRI runtime, whichever that
/// is (containerd's `io.kubernetes.cri.*` or CRI-O's `io.kubernetes.cri-o.*`
/// annotations): the one place that reads them ([`cri_view`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriView {
    /// `sandbox`, `container`, or `None` (not a CRI container: `ctr run`).
    pub container_type: Option<String>,
    /// The pod sandbox the container belongs to.
    pub sandbox_id: Option<String>,
    /// The image to pull in the guest.
    pub image_name: Option<String>,
    /// The pod's name.
    pub sandbox_name: Option<String>,
    /// The pod's namespace.
    pub sandbox_namespace: Option<String>,
    /// The container's name in the pod (`None` for the sandbox).
    pub container_name: Option<String>,
}

/// The neutral view of `ann`. A key given by both runtimes with different values is an
/// error naming both.
pub fn cri_view(ann: &std::collections::HashMap<String, String>) -> Result<CriView, String> {
    // CRI-O's kubelet labels, as pseudo-annotations `label:<key>` for `pick`.
    let mut extra = std::collections::HashMap::new();
    if let Some(json) = ann.get(CRIO_LABELS).filter(|v| !v.is_empty()) {
        if json.len() > MAX_CRIO_LABELS {
            return Err(format!("annotation {CRIO_LABELS}: {} bytes, at most {MAX_CRIO_LABELS}", json.len()));
        }
        let labels: std::collections::HashMap<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| format!("annotation {CRIO_LABELS}: not a JSON object of labels: {e}"))?;
        for (k, v) in labels {
            if let serde_json::Value::String(v) = v {
                extra.insert(format!("label:{k}"), v);
            }
        }
    }
    let get = |k: &str| ann.get(k).or_else(|| extra.get(k)).filter(|v| !v.is_empty());
    let pick = |cri: &str, crio: &[&str]| -> Result<Option<String>, String> {
        let a = ann.get(cri).filter(|v| !v.is_empty());
        let b = crio.iter().find_map(|k| get(k).map(|v| (*k, v)));
        match (a, b) {
            (Some(a), Some((k, b))) if a != b => {
                let k = k.strip_prefix("label:").map_or(k.to_string(), |l| format!("{CRIO_LABELS}[{l}]"));
                Err(format!("conflicting annotations {cri} = {a:?} and {k} = {b:?}"))
            }
            (Some(a), _) => Ok(Some(a.clone())),
            (None, Some((_, b))) => Ok(Some(b.clone())),
            (None, None) => Ok(None),
        }
    };
    let container_type = pick(CONTAINER_TYPE, &[CRIO_CONTAINER_TYPE])?;
    // containerd names no container on the sandbox; CRI-O's label there says `POD`.
    let container_name = if container_type.as_deref() == Some("sandbox") {
        ann.get(CONTAINER_NAME).filter(|v| !v.is_empty()).cloned()
    } else {
        pick(CONTAINER_NAME, &["label:io.kubernetes.container.name"])?
    };
    Ok(CriView {
        container_type,
        sandbox_id: pick(SANDBOX_ID, &[CRIO_SANDBOX_ID])?,
        image_name: pick(IMAGE_NAME, &[CRIO_IMAGE_NAME, CRIO_USER_IMAGE])?,
        sandbox_name: pick(SANDBOX_NAME, &["label:io.kubernetes.pod.name"])?,
        sandbox_namespace: pick(SANDBOX_NAMESPACE, &[CRIO_NAMESPACE, "label:io.kubernetes.pod.namespace"])?,
        container_name,
    })
}

/// Writes the neutral view back under containerd's keys, so that everything after it
/// (the shim, and the guest agent and policy, which see the OCI spec) reads one set of
/// annotations. The CRI-O keys stay as they were.
pub fn normalize_cri_annotations(spec: &mut Spec) -> Result<CriView, String> {
    let mut ann = spec.annotations().clone().unwrap_or_default();
    let view = cri_view(&ann)?;
    for (key, value) in [
        (CONTAINER_TYPE, &view.container_type),
        (SANDBOX_ID, &view.sandbox_id),
        (IMAGE_NAME, &view.image_name),
        (SANDBOX_NAME, &view.sandbox_name),
        (SANDBOX_NAMESPACE, &view.sandbox_namespace),
        (CONTAINER_NAME, &view.container_name),
    ] {
        if let Some(v) = value {
            ann.insert(key.to_string(), v.clone());
        }
    }
    spec.set_annotations(Some(ann));
    Ok(view)
}

/// The guest directory of sandbox storages (Kata's), and the pod's shm in it: an
/// `ephemeral` tmpfs CreateSandbox asks for ([`sandbox_shm_storage`]), which every
/// container's `/dev/shm` binds.
pub const SANDBOX_SHM: &str = "/run/kata-containers/sandbox/shm";
/// Size of the pod's shm (containerd's and Kata's default, 64 MiB).
pub const SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Largest host file copied into the guest for a bind mount.
const MAX_FILE: u64 = 1024 * 1024;
/// Most entries and bytes of a host directory copied into the guest for a bind mount.
const MAX_DIR_ENTRIES: usize = 256;
const MAX_DIR_BYTES: u64 = 8 * 1024 * 1024;

/// Where a container's image comes from, as far as the host can tell.
pub fn image_reference(spec: &Spec, rootfs: &[ShimMount]) -> Result<String, String> {
    let ann = spec.annotations().clone().unwrap_or_default();
    if let Some(image) = cri_view(&ann)?.image_name {
        return Ok(image);
    }
    if let Some(r) = rootfs.iter().flat_map(|m| m.options.iter()).find_map(|o| o.strip_prefix(IMAGE_REF_OPTION)) {
        if r.is_empty() {
            return Err(format!("the rootfs mount option {IMAGE_REF_OPTION} names no image"));
        }
        return Ok(r.to_string());
    }
    Err(format!(
        "no image reference to pull in the guest: the container has no {IMAGE_NAME} annotation (CRI) and its \
         rootfs mount has no {IMAGE_REF_OPTION} option (use the kata-cc snapshotter: `kata-cc-snapshotter pull \
         IMAGE` then `ctr run --snapshotter kata-cc ...`); host rootfs mounts ({}) are not shared into the VM",
        rootfs.iter().map(|m| m.type_.as_str()).collect::<Vec<_>>().join(", ")
    ))
}

/// Kata's guest-pull storage for container `cid`: `source` is the image (ignored by the
/// agent for a sandbox container, which gets the guest image's pause rootfs).
pub fn guest_pull_storage(cid: &str, image: &str, spec: &Spec) -> pb::Storage {
    let mut s = pb::Storage::new();
    s.driver = "image_guest_pull".into();
    s.source = image.into();
    s.fstype = "overlay".into();
    s.mount_point = format!("{SHARED_DIR}/{cid}/rootfs");
    let annotations = spec.annotations().clone().unwrap_or_default();
    let meta = serde_json::json!({ "metadata": annotations });
    s.driver_options = vec![format!("image_guest_pull={meta}")];
    s
}

/// A host file or directory to copy into the guest before CreateContainer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCopy {
    /// On the host.
    pub src: PathBuf,
    /// In the guest, below [`SHARED_DIR`].
    pub dst: String,
    /// Host directories below `src` whose contents are not copied (only the empty
    /// directory is made): mount points copied on their own (see [`rewrite_spec`]).
    pub skip: Vec<PathBuf>,
}

/// A mount on the host strictly below a bind mount's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSubmount {
    /// Its mount point.
    pub path: PathBuf,
    /// Whether it is mounted read-only.
    pub read_only: bool,
}

/// Most mounts below one bind source that are copied as mounts of their own.
const MAX_SUBMOUNTS: usize = 16;

/// The mounts strictly below `dir` in the shim's mount namespace (containerd's: the one
/// the kubelet's host paths live in), parents before children; of mounts stacked on one
/// point, the visible (last) one. From `/proc/self/mountinfo` (`procfs`); a mount point
/// whose name the kernel escapes (space, tab, newline, backslash) is not matched, and its
/// contents are copied as part of its parent.
pub fn host_submounts(dir: &Path) -> Result<Vec<HostSubmount>, String> {
    let infos = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let mut found = std::collections::BTreeMap::new();
    for m in infos {
        if m.mount_point.starts_with(dir) && m.mount_point != dir {
            found.insert(m.mount_point, m.mount_options.contains_key("ro"));
        }
    }
    Ok(found.into_iter().map(|(path, read_only)| HostSubmount { path, read_only }).collect())
}

/// The storage CreateSandbox carries for the pod's shm (what Kata's shim sends).
pub fn sandbox_shm_storage() -> pb::Storage {
    let mut s = pb::Storage::new();
    s.driver = "ephemeral".into();
    s.source = "shm".into();
    s.fstype = "tmpfs".into();
    s.mount_point = SANDBOX_SHM.into();
    s.options = ["noexec", "nosuid", "nodev", "mode=1777"]
        .into_iter()
        .map(String::from)
        .chain([format!("size={SHM_SIZE}")])
        .collect();
    s
}

/// 16 random lowercase hex characters (from the kernel's CSPRNG), as Kata's shim puts
/// in the guest names of copied files.
fn random_hex16() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The guest name of a copied host file or directory, Kata's:
/// `<SHARED_DIR>/<cid>-<16 random hex>-<basename of the host path>` (characters outside
/// `[A-Za-z0-9._-]` in the basename become `_`).
fn guest_copy_path(cid: &str, src: &Path) -> Result<String, String> {
    let base: String = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "mount".to_string())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    Ok(format!("{SHARED_DIR}/{cid}-{}-{base}", random_hex16()?))
}

/// Rewrites `spec` for the guest: rootfs path, and every bind mount either copied in
/// (files; small directories), turned into a bind of the pod's shm (`/dev/shm`), or
/// refused. Returns the copies to make.
///
/// A recursive bind (`rbind`) of a host directory with mounts below it (a tmpfs in a
/// host path, say) becomes one copy and one bind per mount, each bind right after its
/// parent's, so that in the guest they are mounts again, with the read-only semantics
/// the CRI asked for: below a non-recursive `ro` (or an `rw`) bind each keeps its own
/// host flag, below an `rro` bind each is `rro` too. Generated policies list only the
/// pod's own mounts, so they refuse these extra binds (docs/policy.md).
pub fn rewrite_spec(cid: &str, spec: &mut Spec) -> Result<Vec<HostCopy>, String> {
    rewrite_spec_with(cid, spec, &host_submounts)
}

/// [`rewrite_spec`] with the host's mount table as a seam.
pub fn rewrite_spec_with(
    cid: &str,
    spec: &mut Spec,
    submounts: &dyn Fn(&Path) -> Result<Vec<HostSubmount>, String>,
) -> Result<Vec<HostCopy>, String> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from(format!("{SHARED_DIR}/{cid}/rootfs")));
    spec.set_root(Some(root));
    let mut copies = Vec::new();
    let mut mounts = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let dest = m.destination().to_string_lossy().into_owned();
        // Every /dev/shm (containerd's tmpfs, or its bind of the host's pod shm) is the
        // guest pod's shm, as Kata's shim makes it.
        if dest == "/dev/shm" {
            mounts.push(shm_bind());
            continue;
        }
        let is_bind = m.typ().as_deref() == Some("bind")
            || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            mounts.push(m);
            continue;
        }
        let src = m.source().clone().unwrap_or_default();
        let meta = std::fs::metadata(&src)
            .map_err(|e| format!("bind mount {} -> {dest}: {e}", src.display()))?;
        if meta.is_file() {
            if meta.len() > MAX_FILE {
                return Err(format!(
                    "bind mount {} -> {dest}: {} bytes is more than the {MAX_FILE} copied into the VM",
                    src.display(),
                    meta.len()
                ));
            }
        } else if !meta.is_dir() {
            return Err(format!("bind mount {} -> {dest}: only files and directories are copied into the VM", src.display()));
        }
        let options = m.options().clone().unwrap_or_default();
        // A directory is copied from its real path: mount points are real paths.
        let src = if meta.is_dir() {
            src.canonicalize().map_err(|e| format!("bind mount {} -> {dest}: {e}", src.display()))?
        } else {
            src
        };
        let subs = if meta.is_dir() && options.iter().any(|o| o == "rbind") {
            let real = &src;
            let subs = submounts(real).map_err(|e| format!("bind mount {} -> {dest}: {e}", src.display()))?;
            if subs.len() > MAX_SUBMOUNTS {
                return Err(format!(
                    "bind mount {} -> {dest}: {} mounts below it, at most {MAX_SUBMOUNTS} are copied into the VM",
                    src.display(),
                    subs.len()
                ));
            }
            subs.into_iter()
                .filter_map(|s| {
                    let rel = s.path.strip_prefix(real).ok()?.to_path_buf();
                    Some((s.path, rel, s.read_only))
                })
                .collect()
        } else {
            Vec::new()
        };
        let skip: Vec<PathBuf> = subs.iter().map(|(p, _, _)| p.clone()).collect();
        if meta.is_dir() {
            let mut budget = CopyBudget::default();
            for root in std::iter::once(&src).chain(skip.iter()) {
                budget.add_dir(root, &skip).map_err(|e| format!("bind mount {} -> {dest}: {e}", src.display()))?;
            }
        }
        let guest = guest_copy_path(cid, &src)?;
        copies.push(HostCopy { src: src.clone(), dst: guest.clone(), skip: skip.clone() });
        let mut nm = m.clone();
        nm.set_source(Some(PathBuf::from(guest)));
        mounts.push(nm);
        for (host, rel, read_only) in subs {
            let guest = guest_copy_path(cid, &host)?;
            copies.push(HostCopy { src: host.clone(), dst: guest.clone(), skip: skip.clone() });
            let mut sm = m.clone();
            sm.set_source(Some(PathBuf::from(guest)));
            sm.set_destination(Path::new(&dest).join(rel));
            sm.set_options(Some(submount_options(&options, read_only)));
            mounts.push(sm);
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(copies)
}

/// The namespaces as Kata's shim passes them to its agent: no network namespace (the VM's
/// is the pod's), no pid namespace (every container gets its own in the guest), no cgroup
/// namespace, and no paths (host namespace paths mean nothing in the guest). Applied to
/// the spec sent to the agent only: the host side still needs the pod's netns path.
pub fn guest_namespaces(spec: &mut Spec) {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let Some(mut linux) = spec.linux().clone() else { return };
    if let Some(list) = linux.namespaces().clone() {
        let kept = list
            .into_iter()
            .filter(|n| !matches!(n.typ(), T::Network | T::Pid | T::Cgroup))
            .map(|mut n| {
                n.set_path(None);
                n
            })
            .collect();
        linux.set_namespaces(Some(kept));
    }
    spec.set_linux(Some(linux));
}

/// A container's `/dev/shm`: the pod's shm, as Kata binds it.
fn shm_bind() -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from("/dev/shm"));
    m.set_typ(Some("bind".into()));
    m.set_source(Some(PathBuf::from(SANDBOX_SHM)));
    m.set_options(Some(vec!["rbind".to_string()]));
    m
}

/// The options of the bind made for a host mount below a bind with `parent` options:
/// the parent's, with its read-only flag replaced by what a recursive bind gives that
/// mount (`rro` stays `rro`; otherwise the host mount's own `ro`/`rw`).
fn submount_options(parent: &[String], read_only: bool) -> Vec<String> {
    let recursive = parent.iter().any(|o| o == "rro");
    let flag = if recursive {
        "rro"
    } else if read_only {
        "ro"
    } else {
        "rw"
    };
    let mut out: Vec<String> = parent.iter().filter(|o| !matches!(o.as_str(), "ro" | "rw" | "rro")).cloned().collect();
    out.push(flag.to_owned());
    out
}

/// What one bind mount (with its submounts) may copy into the VM.
#[derive(Default)]
struct CopyBudget {
    entries: usize,
    bytes: u64,
}

impl CopyBudget {
    /// Counts the tree at `dir` (no symlinks followed, not descending into `skip`)
    /// against the copy limits.
    fn add_dir(&mut self, dir: &Path, skip: &[PathBuf]) -> Result<(), String> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
                let e = e.map_err(|e| e.to_string())?;
                self.entries += 1;
                let md = e.path().symlink_metadata().map_err(|e| e.to_string())?;
                if md.is_dir() {
                    if !skip.contains(&e.path()) {
                        stack.push(e.path());
                    }
                } else {
                    self.bytes += md.len();
                }
                if self.entries > MAX_DIR_ENTRIES || self.bytes > MAX_DIR_BYTES {
                    return Err(format!(
                        "more than {MAX_DIR_ENTRIES} entries or {MAX_DIR_BYTES} bytes to copy into the VM"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// CopyFile requests that recreate `copy` in the guest (directories first, then files
/// in chunks; symlinks as links).
pub fn copy_requests(copy: &HostCopy) -> Result<Vec<pb::CopyFileRequest>, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![(copy.src.clone(), copy.dst.clone())];
    while let Some((src, dst)) = stack.pop() {
        let md = src.symlink_metadata().map_err(|e| format!("{}: {e}", src.display()))?;
        let mut base = pb::CopyFileRequest::new();
        base.path = dst.clone();
        base.file_mode = md.mode();
        base.dir_mode = 0o755;
        base.uid = md.uid() as i32;
        base.gid = md.gid() as i32;
        if md.is_dir() {
            out.push(base);
            if src != copy.src && copy.skip.contains(&src) {
                continue;
            }
            let mut children: Vec<_> = std::fs::read_dir(&src)
                .map_err(|e| format!("{}: {e}", src.display()))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            children.sort();
            for c in children.into_iter().rev() {
                let name = c.to_string_lossy().into_owned();
                stack.push((src.join(&c), format!("{dst}/{name}")));
            }
        } else if md.file_type().is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            base.data = target.to_string_lossy().into_owned().into_bytes();
            base.file_size = base.data.len() as i64;
            out.push(base);
        } else if md.is_file() {
            let data = std::fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            base.file_size = data.len() as i64;
            if data.is_empty() {
                out.push(base.clone());
            }
            for (i, chunk) in data.chunks(256 * 1024).enumerate() {
                let mut r = base.clone();
                r.offset = (i * 256 * 1024) as i64;
                r.data = chunk.to_vec();
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn spec_with(ann: &[(&str, &str)], mounts: Vec<Mount>) -> Spec {
        let mut s = Spec::default();
        s.set_annotations(Some(ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        s.set_mounts(Some(mounts));
        s
    }

    #[test]
    fn crio_annotations_map_to_the_containerd_keys() {
        // What CRI-O puts on a container's spec (server/container_create.go).
        let mut spec = spec_with(
            &[
                (CRIO_CONTAINER_TYPE, "container"),
                (CRIO_SANDBOX_ID, "sb1"),
                (CRIO_IMAGE_NAME, "10.88.0.1:5000/busybox:latest"),
                (CRIO_USER_IMAGE, "busybox"),
                ("io.kubernetes.cri-o.LogPath", "/var/log/pods/x/c/0.log"),
            ],
            vec![],
        );
        let view = normalize_cri_annotations(&mut spec).unwrap();
        assert_eq!(view.container_type.as_deref(), Some("container"));
        let ann = spec.annotations().clone().unwrap();
        assert_eq!(ann[CONTAINER_TYPE], "container");
        assert_eq!(ann[SANDBOX_ID], "sb1");
        assert_eq!(ann[IMAGE_NAME], "10.88.0.1:5000/busybox:latest");
        assert_eq!(ann[CRIO_SANDBOX_ID], "sb1", "CRI-O's keys stay");
        assert_eq!(image_reference(&spec, &[]).unwrap(), "10.88.0.1:5000/busybox:latest");
        // An image referenced by id has an empty ImageName: the requested image.
        let mut s = spec_with(&[(CRIO_CONTAINER_TYPE, "container"), (CRIO_IMAGE_NAME, ""), (CRIO_USER_IMAGE, "r/busybox")], vec![]);
        assert_eq!(normalize_cri_annotations(&mut s).unwrap().image_name.as_deref(), Some("r/busybox"));
        // containerd's keys alone are left as they are; none at all is `ctr run`.
        let mut c = spec_with(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "p")], vec![]);
        assert_eq!(normalize_cri_annotations(&mut c).unwrap().sandbox_id.as_deref(), Some("p"));
        assert_eq!(normalize_cri_annotations(&mut spec_with(&[], vec![])).unwrap(), CriView::default());
        // Both runtimes' keys, disagreeing: refused, naming both.
        let mut bad = spec_with(&[(CONTAINER_TYPE, "container"), (CRIO_CONTAINER_TYPE, "sandbox")], vec![]);
        let e = normalize_cri_annotations(&mut bad).unwrap_err();
        assert!(e.contains(CONTAINER_TYPE) && e.contains(CRIO_CONTAINER_TYPE), "{e}");
    }

    #[test]
    fn crio_pod_and_container_names_map_to_the_containerd_keys() {
        // The kubelet's labels, as CRI-O carries them (sandbox and container).
        let labels = r#"{"io.kubernetes.container.name":"POD","io.kubernetes.pod.namespace":"team","io.kubernetes.pod.name":"web-0","io.kubernetes.pod.uid":"u"}"#;
        let mut sb = spec_with(&[(CRIO_CONTAINER_TYPE, "sandbox"), (CRIO_LABELS, labels), (CRIO_NAMESPACE, "team")], vec![]);
        normalize_cri_annotations(&mut sb).unwrap();
        let ann = sb.annotations().clone().unwrap();
        assert_eq!((ann[SANDBOX_NAME].as_str(), ann[SANDBOX_NAMESPACE].as_str()), ("web-0", "team"));
        assert!(!ann.contains_key(CONTAINER_NAME), "containerd names no container on the sandbox");
        let labels = r#"{"io.kubernetes.container.name":"app","io.kubernetes.pod.namespace":"team","io.kubernetes.pod.name":"web-0"}"#;
        let mut c = spec_with(&[(CRIO_CONTAINER_TYPE, "container"), (CRIO_LABELS, labels)], vec![]);
        let view = normalize_cri_annotations(&mut c).unwrap();
        assert_eq!(view.container_name.as_deref(), Some("app"));
        assert_eq!(c.annotations().clone().unwrap()[CONTAINER_NAME], "app");
        // Disagreeing with containerd's key, or with CRI-O's namespace annotation: refused.
        let mut bad = spec_with(&[(CRIO_CONTAINER_TYPE, "container"), (CRIO_LABELS, labels), (CONTAINER_NAME, "other")], vec![]);
        let e = normalize_cri_annotations(&mut bad).unwrap_err();
        assert!(e.contains(CONTAINER_NAME) && e.contains("io.kubernetes.container.name"), "{e}");
        let mut bad = spec_with(&[(CRIO_LABELS, labels), (SANDBOX_NAMESPACE, "kube-system")], vec![]);
        assert!(normalize_cri_annotations(&mut bad).unwrap_err().contains("kube-system"));
        // Labels that are not a JSON object, or too large: an error naming the annotation.
        let e = normalize_cri_annotations(&mut spec_with(&[(CRIO_LABELS, "[1]")], vec![])).unwrap_err();
        assert!(e.contains(CRIO_LABELS), "{e}");
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_CRIO_LABELS));
        let e = normalize_cri_annotations(&mut spec_with(&[(CRIO_LABELS, big.as_str())], vec![])).unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }

    fn bind(src: &Path, dst: &str) -> Mount {
        MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap()
    }

    #[test]
    fn image_from_cri_annotation_or_snapshotter_mount() {
        let s = spec_with(&[(IMAGE_NAME, "r/busybox:1")], vec![]);
        assert_eq!(image_reference(&s, &[]).unwrap(), "r/busybox:1");
        let s = spec_with(&[], vec![]);
        let mut m = ShimMount::new();
        m.type_ = "bind".into();
        m.source = "/var/lib/kata-cc-snapshotter/guest-pull-rootfs".into();
        m.options = vec!["ro".into(), "rbind".into(), format!("{IMAGE_REF_OPTION}10.0.0.1:5000/x:y")];
        assert_eq!(image_reference(&s, &[m]).unwrap(), "10.0.0.1:5000/x:y");
        let mut o = ShimMount::new();
        o.type_ = "overlay".into();
        let e = image_reference(&s, &[o]).unwrap_err();
        assert!(e.contains("--snapshotter kata-cc") && e.contains("overlay"), "{e}");
        let mut empty = ShimMount::new();
        empty.options = vec![IMAGE_REF_OPTION.into()];
        assert!(image_reference(&s, &[empty]).is_err());
    }

    /// `<SHARED_DIR>/<cid>-<16 hex>-<name>`: the random part, and the name.
    fn kata_name<'a>(path: &'a str, cid: &str) -> (&'a str, &'a str) {
        let rest = path.strip_prefix(&format!("{SHARED_DIR}/{cid}-")).unwrap_or_else(|| panic!("{path}"));
        let (rand, name) = rest.split_at(16);
        assert!(rand.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{path}");
        (rand, name.strip_prefix('-').unwrap_or_else(|| panic!("{path}")))
    }

    #[test]
    fn bind_mounts_are_copied_with_kata_names_shm_binds_the_pod_shm_and_the_rest_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let cm = tmp.path().join("my-config");
        std::fs::create_dir(&cm).unwrap();
        std::fs::write(cm.join("key"), "value").unwrap();
        std::os::unix::fs::symlink("key", cm.join("link")).unwrap();
        let odd = tmp.path().join("a b");
        std::fs::write(&odd, "x").unwrap();
        let proc_m = MountBuilder::default().destination("/proc").typ("proc").source("proc").build().unwrap();
        let mut s = spec_with(
            &[],
            vec![
                proc_m,
                bind(&hosts, "/etc/hosts"),
                bind(Path::new("/nonexistent-shm"), "/dev/shm"),
                bind(&cm, "/etc/cm"),
                bind(&odd, "/odd"),
            ],
        );
        let copies = rewrite_spec("c1", &mut s).unwrap();
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new(&format!("{SHARED_DIR}/c1/rootfs")));
        let ms = s.mounts().clone().unwrap();
        assert_eq!(ms[0].typ().as_deref(), Some("proc"));
        let hosts_dst = ms[1].source().as_ref().unwrap().to_str().unwrap().to_string();
        let (r1, name) = kata_name(&hosts_dst, "c1");
        assert_eq!(name, "hosts");
        assert_eq!(ms[2].typ().as_deref(), Some("bind"));
        assert_eq!(ms[2].source().as_deref(), Some(Path::new(SANDBOX_SHM)));
        assert_eq!(ms[2].options().as_deref(), Some(&["rbind".to_string()][..]));
        assert_eq!(copies.len(), 3);
        assert_eq!(copies[0].dst, hosts_dst);
        let (r2, name) = kata_name(&copies[1].dst, "c1");
        assert_eq!(name, "my-config");
        assert_ne!(r1, r2, "the random parts repeat");
        assert_eq!(kata_name(&copies[2].dst, "c1").1, "a_b");
        let reqs = copy_requests(&copies[1]).unwrap();
        let paths: Vec<_> = reqs.iter().map(|r| r.path.clone()).collect();
        let d = copies[1].dst.clone();
        assert_eq!(paths, [d.clone(), format!("{d}/key"), format!("{d}/link")]);
        assert_eq!(reqs[1].data, b"value");
        assert_eq!(reqs[2].data, b"key");

        let mut tmpfs_shm = spec_with(&[], vec![MountBuilder::default().destination("/dev/shm").typ("tmpfs").source("shm").build().unwrap()]);
        rewrite_spec("c4", &mut tmpfs_shm).unwrap();
        assert_eq!(tmpfs_shm.mounts().as_ref().unwrap()[0].source().as_deref(), Some(Path::new(SANDBOX_SHM)));

        let mut bad = spec_with(&[], vec![bind(Path::new("/nonexistent/x"), "/x")]);
        assert!(rewrite_spec("c2", &mut bad).unwrap_err().contains("/nonexistent/x"));
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![0u8; (MAX_FILE + 1) as usize]).unwrap();
        let mut bad = spec_with(&[], vec![bind(&big, "/big")]);
        assert!(rewrite_spec("c3", &mut bad).unwrap_err().contains("bytes"));
    }

    /// Host mounts below an `rbind` source become binds of their own after their parent's,
    /// each copied alone: a non-recursive `ro` keeps each mount's own flag, `rro` makes
    /// them all `rro`; a plain `bind` (not recursive) is copied whole.
    #[test]
    fn mounts_below_a_recursive_bind_are_copied_and_bound_on_their_own() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().canonicalize().unwrap().join("vol");
        std::fs::create_dir_all(vol.join("sub/deeper")).unwrap();
        std::fs::write(vol.join("top"), "t").unwrap();
        std::fs::write(vol.join("sub/inner"), "i").unwrap();
        std::fs::write(vol.join("sub/deeper/x"), "x").unwrap();
        let (sub, deeper) = (vol.join("sub"), vol.join("sub/deeper"));
        let fake = |dir: &Path| -> Result<Vec<HostSubmount>, String> {
            assert_eq!(dir, vol.as_path());
            Ok(vec![
                HostSubmount { path: sub.clone(), read_only: false },
                HostSubmount { path: deeper.clone(), read_only: true },
            ])
        };
        let with_opts = |opts: &[&str]| {
            let mut m = bind(&vol, "/mnt");
            m.set_options(Some(opts.iter().map(|o| o.to_string()).collect()));
            spec_with(&[], vec![m])
        };
        let dests_opts = |s: &Spec| -> Vec<(String, Vec<String>)> {
            s.mounts()
                .iter()
                .flatten()
                .map(|m| (m.destination().display().to_string(), m.options().clone().unwrap()))
                .collect()
        };
        let strs = |v: &[&str]| v.iter().map(|o| o.to_string()).collect::<Vec<_>>();

        let mut s = with_opts(&["rbind", "rprivate", "ro"]);
        let copies = rewrite_spec_with("c1", &mut s, &fake).unwrap();
        assert_eq!(
            dests_opts(&s),
            [
                ("/mnt".to_string(), strs(&["rbind", "rprivate", "ro"])),
                ("/mnt/sub".to_string(), strs(&["rbind", "rprivate", "rw"])),
                ("/mnt/sub/deeper".to_string(), strs(&["rbind", "rprivate", "ro"])),
            ]
        );
        assert_eq!(copies.len(), 3);
        for (c, m) in copies.iter().zip(s.mounts().as_ref().unwrap()) {
            assert_eq!(m.source().as_deref(), Some(Path::new(&c.dst)));
        }
        let names = |c: &HostCopy| -> Vec<String> {
            copy_requests(c).unwrap().iter().map(|r| r.path.strip_prefix(&c.dst).unwrap().to_string()).collect()
        };
        assert_eq!(names(&copies[0]), ["", "/sub", "/top"], "the parent copy leaves the mounts' contents out");
        assert_eq!(names(&copies[1]), ["", "/deeper", "/inner"]);
        assert_eq!(names(&copies[2]), ["", "/x"]);

        let mut s = with_opts(&["rbind", "rro", "rprivate"]);
        rewrite_spec_with("c2", &mut s, &fake).unwrap();
        let opts: Vec<_> = dests_opts(&s).into_iter().map(|(_, o)| o).collect();
        assert_eq!(opts, [strs(&["rbind", "rro", "rprivate"]), strs(&["rbind", "rprivate", "rro"]), strs(&["rbind", "rprivate", "rro"])]);

        let mut s = with_opts(&["bind", "ro"]);
        let copies = rewrite_spec_with("c3", &mut s, &fake).unwrap();
        assert_eq!((copies.len(), s.mounts().as_ref().unwrap().len()), (1, 1), "a non-recursive bind carries no submounts");
        assert_eq!(names(&copies[0]), ["", "/sub", "/sub/deeper", "/sub/deeper/x", "/sub/inner", "/top"]);

        let many = |_: &Path| Ok((0..=MAX_SUBMOUNTS).map(|i| HostSubmount { path: vol.join(format!("m{i}")), read_only: false }).collect());
        let err = rewrite_spec_with("c4", &mut with_opts(&["rbind", "ro"]), &many).unwrap_err();
        assert!(err.contains("17 mounts below it, at most 16"), "{err}");
    }

    #[test]
    fn namespaces_as_kata_passes_them() {
        use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType as T};
        let ns = |t: T, path: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = path {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        let mut s = spec_with(&[], vec![]);
        let linux = LinuxBuilder::default()
            .namespaces(vec![
                ns(T::Pid, None),
                ns(T::Ipc, Some("/proc/1/ns/ipc")),
                ns(T::Uts, None),
                ns(T::Mount, None),
                ns(T::Network, Some("/var/run/netns/cni-1")),
                ns(T::Cgroup, None),
            ])
            .build()
            .unwrap();
        s.set_linux(Some(linux));
        guest_namespaces(&mut s);
        let got: Vec<_> = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(got, vec![ns(T::Ipc, None), ns(T::Uts, None), ns(T::Mount, None)]);
    }

    #[test]
    fn sandbox_shm_storage_as_kata_sends_it() {
        let s = sandbox_shm_storage();
        assert_eq!((s.driver.as_str(), s.source.as_str(), s.fstype.as_str()), ("ephemeral", "shm", "tmpfs"));
        assert_eq!(s.mount_point, "/run/kata-containers/sandbox/shm");
        assert_eq!(s.options, ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"]);
    }

    #[test]
    fn guest_pull_storage_as_kata_sends_it() {
        let s = spec_with(&[(CONTAINER_TYPE, "sandbox")], vec![]);
        let st = guest_pull_storage("p", "pause", &s);
        assert_eq!(st.driver, "image_guest_pull");
        assert_eq!(st.mount_point, format!("{SHARED_DIR}/p/rootfs"));
        assert!(st.driver_options[0].starts_with("image_guest_pull={\"metadata\":{"), "{:?}", st.driver_options);
        assert!(st.driver_options[0].contains("\"io.kubernetes.cri.container-type\":\"sandbox\""));
    }
}
