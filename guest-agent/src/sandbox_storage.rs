//! CreateSandbox storages: only Kata's `ephemeral` tmpfs, which is how a pod gets one
//! `/dev/shm` for all its containers. Kata's shim sends
//!
//! ```text
//! {driver: "ephemeral", source: "shm", fstype: "tmpfs",
//!  mount_point: "/run/kata-containers/sandbox/shm",
//!  options: ["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"]}
//! ```
//!
//! and every container's `/dev/shm` is a bind mount of that mount point. Everything in the
//! request is checked before anything is mounted: the mount point must lie below
//! [`SANDBOX_DIR`] (plain names, no `.`/`..`), the options come from a short list and the
//! size is required and bounded by [`MAX_SIZE`]. The tmpfs mounts live as long as the
//! sandbox: DestroySandbox unmounts them, and a CreateSandbox that fails unmounts what it
//! mounted.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use protocols::agent as pb;

use crate::error::AgentError;

/// The only storage driver CreateSandbox accepts.
pub const DRIVER: &str = "ephemeral";
/// The guest directory below which sandbox storages are mounted (Kata's).
pub const SANDBOX_DIR: &str = "/run/kata-containers/sandbox";
/// Largest tmpfs size accepted (bytes).
pub const MAX_SIZE: u64 = 1 << 30;
/// Most storages in one CreateSandbox.
const MAX_STORAGES: usize = 8;
/// Deepest mount point below [`SANDBOX_DIR`] (path components).
const MAX_DEPTH: usize = 4;
/// Longest path component / tmpfs source name.
const MAX_NAME: usize = 64;

/// A checked sandbox storage, ready to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsStorage {
    /// The guest path as the request names it (below [`SANDBOX_DIR`]).
    pub mount_point: String,
    /// Its path relative to [`SANDBOX_DIR`].
    pub relative: PathBuf,
    /// The tmpfs' source name (shown in /proc/mounts).
    pub source: String,
    /// `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC` as requested.
    pub flags: MsFlags,
    /// tmpfs data: `size=<bytes>[,mode=<octal>]`.
    pub data: String,
}

fn bad(field: &'static str, i: usize, why: impl std::fmt::Display) -> AgentError {
    AgentError::invalid(field, format!("storages[{i}]: {why}"))
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A size as tmpfs takes it: bytes, or with a `k`/`m`/`g` suffix.
fn parse_size(v: &str) -> Option<u64> {
    let (digits, mult) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Checks CreateSandbox's storages; nothing is mounted.
pub fn parse(storages: &[pb::Storage]) -> Result<Vec<TmpfsStorage>, AgentError> {
    if storages.len() > MAX_STORAGES {
        return Err(AgentError::invalid("storages", format!("{} storages, at most {MAX_STORAGES}", storages.len())));
    }
    let mut out: Vec<TmpfsStorage> = Vec::new();
    for (i, s) in storages.iter().enumerate() {
        if s.driver != DRIVER {
            return Err(bad(
                "storages.driver",
                i,
                format!("driver {:?} is not supported in CreateSandbox (only {DRIVER:?}, a tmpfs)", s.driver),
            ));
        }
        if s.fstype != "tmpfs" {
            return Err(bad("storages.fstype", i, format!("{:?}: the {DRIVER} driver mounts only \"tmpfs\"", s.fstype)));
        }
        if !plain_name(&s.source) {
            return Err(bad("storages.source", i, format!("{:?} must match [A-Za-z0-9._-]{{1,{MAX_NAME}}}", s.source)));
        }
        if !s.driver_options.is_empty() {
            return Err(bad("storages.driver_options", i, "must be empty for the ephemeral driver"));
        }
        if s.fs_group.is_some() {
            return Err(bad("storages.fs_group", i, "is not supported"));
        }
        let rel = s
            .mount_point
            .strip_prefix(SANDBOX_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| bad("storages.mount_point", i, format!("{:?} is not below {SANDBOX_DIR}/", s.mount_point)))?;
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.len() > MAX_DEPTH || !parts.iter().all(|p| plain_name(p)) {
            return Err(bad(
                "storages.mount_point",
                i,
                format!("{:?}: below {SANDBOX_DIR}/ only up to {MAX_DEPTH} plain names ([A-Za-z0-9._-], not . or ..) are allowed", s.mount_point),
            ));
        }
        if let Some(o) = out.iter().find(|o| {
            let (a, b) = (Path::new(&o.mount_point), Path::new(&s.mount_point));
            a.starts_with(b) || b.starts_with(a)
        }) {
            return Err(bad("storages.mount_point", i, format!("{:?} overlaps {:?}", s.mount_point, o.mount_point)));
        }
        let mut flags = MsFlags::empty();
        let (mut size, mut mode) = (None, None);
        for o in &s.options {
            match o.as_str() {
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                _ => {
                    if let Some(v) = o.strip_prefix("size=") {
                        let n = parse_size(v)
                            .ok_or_else(|| bad("storages.options", i, format!("{o:?}: size must be bytes or <n>k/m/g")))?;
                        if n == 0 || n > MAX_SIZE {
                            return Err(bad(
                                "storages.options",
                                i,
                                format!("{o:?}: size must be more than 0 and at most {MAX_SIZE} bytes"),
                            ));
                        }
                        size = Some(n);
                    } else if let Some(v) = o.strip_prefix("mode=") {
                        let m = (!v.is_empty() && v.len() <= 4)
                            .then(|| u32::from_str_radix(v, 8).ok())
                            .flatten()
                            .ok_or_else(|| bad("storages.options", i, format!("{o:?}: mode must be 1 to 4 octal digits")))?;
                        mode = Some(m);
                    } else {
                        return Err(bad(
                            "storages.options",
                            i,
                            format!("{o:?} is not allowed (allowed: nosuid, nodev, noexec, mode=<octal>, size=<n>[k|m|g])"),
                        ));
                    }
                }
            }
        }
        let size = size.ok_or_else(|| bad("storages.options", i, "no size=: a sandbox tmpfs needs an explicit size"))?;
        let mut data = format!("size={size}");
        if let Some(m) = mode {
            data.push_str(&format!(",mode={m:o}"));
        }
        out.push(TmpfsStorage {
            mount_point: s.mount_point.clone(),
            relative: PathBuf::from(rel),
            source: s.source.clone(),
            flags,
            data,
        });
    }
    Ok(out)
}

/// Unmounts `path` (lazily) and removes its directory; an unmounted path is no error.
pub fn unmount(path: &Path) -> Result<(), AgentError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(AgentError::io(format!("unmount {}", path.display()))(e.into())),
    }
    let _ = std::fs::remove_dir(path);
    Ok(())
}

/// Undoes a failed CreateSandbox: unmounts `mounted` in reverse order, logging (not
/// returning) what cannot be unmounted, so the caller reports the original failure.
pub fn undo(mounted: &[PathBuf]) {
    for p in mounted.iter().rev() {
        if let Err(e) = unmount(p) {
            tracing::warn!("CreateSandbox failed; undoing: {}", crate::error::chain(&e));
        }
    }
}

/// Mounts `storages` below `sandbox_dir` (the guest's [`SANDBOX_DIR`]; another directory
/// when the agent runs as a plain process). Returns the mounted paths; on failure
/// unmounts what it mounted and returns the error.
pub fn mount_all(sandbox_dir: &Path, storages: &[TmpfsStorage]) -> Result<Vec<PathBuf>, AgentError> {
    let mut done: Vec<PathBuf> = Vec::new();
    for s in storages {
        let path = sandbox_dir.join(&s.relative);
        let r = std::fs::create_dir_all(&path)
            .map_err(AgentError::io(format!("create {}", path.display())))
            .and_then(|()| {
                nix::mount::mount(Some(s.source.as_str()), &path, Some("tmpfs"), s.flags, Some(s.data.as_str()))
                    .map_err(|e| AgentError::io(format!("mount tmpfs at {} ({})", path.display(), s.mount_point))(e.into()))
            });
        if let Err(e) = r {
            undo(&done);
            return Err(e);
        }
        done.push(path);
    }
    Ok(done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shm(opts: &[&str]) -> pb::Storage {
        let mut s = pb::Storage::new();
        s.driver = DRIVER.into();
        s.source = "shm".into();
        s.fstype = "tmpfs".into();
        s.mount_point = format!("{SANDBOX_DIR}/shm");
        s.options = opts.iter().map(|o| (*o).to_string()).collect();
        s
    }

    fn err_of(s: pb::Storage) -> String {
        parse(&[s]).unwrap_err().to_string()
    }

    #[test]
    fn kata_shm_storage_is_accepted() {
        let got = parse(&[shm(&["noexec", "nosuid", "nodev", "mode=1777", "size=67108864"])]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].relative, PathBuf::from("shm"));
        assert_eq!(got[0].data, "size=67108864,mode=1777");
        assert_eq!(got[0].flags, MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(parse(&[shm(&["size=64m"])]).unwrap()[0].data, "size=67108864");
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let cases: Vec<(pb::Storage, &str)> = vec![
            ({ let mut s = shm(&["size=1m"]); s.driver = "local".into(); s }, "storages.driver"),
            ({ let mut s = shm(&["size=1m"]); s.driver = "image_guest_pull".into(); s }, "storages.driver"),
            ({ let mut s = shm(&["size=1m"]); s.fstype = "ext4".into(); s }, "storages.fstype"),
            ({ let mut s = shm(&["size=1m"]); s.source = "/dev/vda".into(); s }, "storages.source"),
            ({ let mut s = shm(&["size=1m"]); s.source = String::new(); s }, "storages.source"),
            ({ let mut s = shm(&["size=1m"]); s.driver_options = vec!["x".into()]; s }, "storages.driver_options"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = "/run/kata-containers/shared/x".into(); s }, "storages.mount_point"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = SANDBOX_DIR.into(); s }, "storages.mount_point"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = format!("{SANDBOX_DIR}/"); s }, "storages.mount_point"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = format!("{SANDBOX_DIR}/../shared"); s }, "storages.mount_point"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = format!("{SANDBOX_DIR}/a//b"); s }, "storages.mount_point"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = format!("{SANDBOX_DIR}shm"); s }, "storages.mount_point"),
            ({ let mut s = shm(&["size=1m"]); s.mount_point = format!("{SANDBOX_DIR}/a/b/c/d/e"); s }, "storages.mount_point"),
            (shm(&[]), "no size="),
            (shm(&["size=2g"]), "at most"),
            (shm(&["size=0"]), "more than 0"),
            (shm(&["size=99999999999999999999999g"]), "size must be"),
            (shm(&["size=-1"]), "size must be"),
            (shm(&["size=1m", "mode=99"]), "mode must be"),
            (shm(&["size=1m", "mode=17777"]), "mode must be"),
            (shm(&["size=1m", "exec"]), "not allowed"),
            (shm(&["size=1m", "uid=0,nr_inodes=0"]), "not allowed"),
        ];
        for (s, want) in cases {
            let e = err_of(s.clone());
            assert!(e.contains(want), "{s:?}: {e}");
        }
        let e = parse(&[shm(&["size=1m"]), shm(&["size=1m"])]).unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
        let many: Vec<_> = (0..9)
            .map(|i| {
                let mut s = shm(&["size=1m"]);
                s.mount_point = format!("{SANDBOX_DIR}/s{i}");
                s
            })
            .collect();
        assert!(parse(&many).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn parse_never_panics_on_odd_input() {
        for o in ["size=", "size=k", "mode=", "size=\u{e9}", "size=1\u{e9}", "", "size=18446744073709551615", "size=17179869184k"] {
            let _ = parse(&[shm(&[o])]);
        }
        let mut s = shm(&["size=1m"]);
        s.mount_point = format!("{SANDBOX_DIR}/\u{e9}");
        assert!(parse(&[s]).is_err());
    }

    #[test]
    fn mounts_and_unmounts_a_tmpfs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = parse(&[shm(&["nosuid", "nodev", "noexec", "mode=1777", "size=1m"])]).unwrap();
        let paths = mount_all(dir.path(), &st).unwrap();
        assert_eq!(paths, vec![dir.path().join("shm")]);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(paths[0].to_str().unwrap())).unwrap();
        assert!(line.starts_with("shm ") && line.contains(" tmpfs ") && line.contains("size=1024k"), "{line}");
        for p in &paths {
            unmount(p).unwrap();
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(paths[0].to_str().unwrap()));
        assert!(!paths[0].exists());
    }
}
