//! Snapshot labels and the mount this snapshotter hands out.

/// Set by containerd's unpacker on the Prepare of an image layer: the name (chain ID) the
/// layer's committed snapshot will have. Its presence is what marks a layer Prepare.
pub const TARGET_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

/// The image reference (`registry/repo:tag` or `@digest`). The CRI plugin sets it on
/// every layer it pulls (containerd's `AppendInfoHandlerWrapper`); a client may also
/// set it on a container snapshot (`ctr run --snapshotter-label ...`).
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";

/// Prefix of the mount option that carries the image reference. Every active and view
/// snapshot gets one mount, `type = "bind"`, `source = <root>/`[`ROOTFS_DIR`],
/// `options = ["ro", "rbind", "kata-cc.image-ref=<image reference>"]`: the host can mount
/// it (containerd does, e.g. to read `/etc/group` for `ctr run`) and sees an empty
/// read-only directory; the kata-cc shim finds this option and sends the reference to the
/// guest, which pulls the image itself. The kernel ignores the option (bind mounts take no
/// data).
pub const IMAGE_REF_OPTION: &str = "kata-cc.image-ref=";

/// Name, below the snapshotter's root, of the empty read-only (0555) directory that is the
/// `source` of every mount handed out. Created at start, never written to.
pub const ROOTFS_DIR: &str = "guest-pull-rootfs";

/// Longest label key plus value accepted, the same bound containerd's metadata store
/// applies.
pub const MAX_LABEL_LEN: usize = 4096;

/// Longest snapshot key or name accepted.
pub const MAX_KEY_LEN: usize = 4096;
