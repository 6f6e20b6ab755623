//! What the runtime tells containerd about itself before any pod exists: the answer to
//! the shim's `-info` action (containerd 2.x asks it when the CRI plugin starts, and
//! again through the introspection service).
//!
//! The answer is containerd's `RuntimeInfo` message whose `features` field is the OCI
//! runtime-spec *features* document (JSON, in a `google.protobuf.Any` under containerd's
//! type URL for it). containerd's CRI reads two things from it: the `rro` mount option
//! (then it reports `recursive_read_only_mounts` for the handler to the kubelet and
//! accepts recursively read-only volume mounts), and user-namespace support (the `user`
//! namespace plus idmap mounts). We list what the guest's container runtime
//! (libcontainer) recognises and what the agent lets through: no user namespace (the
//! policy refuses new user namespaces, so containerd must not offer them to the kubelet),
//! no hooks (the host's hooks never run in the guest).

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use oci_spec::runtime::{Features, LinuxFeature, LinuxNamespaceType};

/// containerd's type URL for the runtime-spec features document (registered by
/// containerd's `core/runtime` package as `opencontainers/runtime-spec/<major>/features/
/// Features` under `types.containerd.io`); the value is its JSON.
pub const FEATURES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The mount options the guest's container runtime (libcontainer 0.7) parses, `rro` and
/// the other recursive (`mount_setattr`) ones among them.
const MOUNT_OPTIONS: &[&str] = &[
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand", "noatime", "nodev",
    "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "ratime", "rbind", "rdev",
    "rdiratime", "relatime", "remount", "rexec", "rnoatime", "rnodev", "rnodiratime", "rnoexec", "rnorelatime",
    "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate", "rrelatime", "rro", "rrw", "rshared", "rslave",
    "rstrictatime", "rsuid", "rsymfollow", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync",
    "unbindable",
];

/// The features document: OCI spec versions, mount options, and the namespaces a
/// container may get in the guest (the user namespace is not among them).
pub fn features() -> Features {
    use LinuxNamespaceType as N;
    let mut linux = LinuxFeature::default();
    linux.set_namespaces(Some(vec![N::Cgroup, N::Ipc, N::Mount, N::Network, N::Pid, N::Uts]));
    let mut f = Features::default();
    f.set_oci_version_min("1.0.0".into());
    f.set_oci_version_max("1.2.1".into());
    f.set_hooks(Some(Vec::new()));
    f.set_mount_options(Some(MOUNT_OPTIONS.iter().map(|s| (*s).to_owned()).collect()));
    f.set_linux(Some(linux));
    f
}

/// The `-info` answer: name, version, and the features document.
pub fn runtime_info(runtime_id: &str) -> Result<RuntimeInfo, serde_json::Error> {
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut any = Any::new();
    any.type_url = FEATURES_TYPE_URL.to_owned();
    any.value = serde_json::to_vec(&features())?;
    let mut info = RuntimeInfo::new();
    info.name = runtime_id.to_owned();
    info.version = Some(version).into();
    info.features = Some(any).into();
    Ok(info)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    /// The bytes decode as containerd decodes them: a RuntimeInfo whose features Any has
    /// containerd's type URL and runtime-spec JSON naming `rro` and no user namespace.
    #[test]
    fn info_carries_the_features_document_as_containerd_reads_it() {
        let bytes = runtime_info("io.containerd.kata-cc.v2").unwrap().write_to_bytes().unwrap();
        let info = RuntimeInfo::parse_from_bytes(&bytes).unwrap();
        assert_eq!(info.name, "io.containerd.kata-cc.v2");
        let any = info.features.as_ref().unwrap();
        assert_eq!(any.type_url, FEATURES_TYPE_URL);
        let json: serde_json::Value = serde_json::from_slice(&any.value).unwrap();
        let opts: Vec<&str> = json["mountOptions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(opts.contains(&"rro") && opts.contains(&"ro") && opts.contains(&"rbind"), "{opts:?}");
        let ns: Vec<&str> = json["linux"]["namespaces"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(ns, ["cgroup", "ipc", "mount", "network", "pid", "uts"]);
        assert!(json["linux"]["mountExtensions"].is_null(), "no idmap mounts: {json}");
        assert_eq!(json["ociVersionMin"], "1.0.0");
    }
}
