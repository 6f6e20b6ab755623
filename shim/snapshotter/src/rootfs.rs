//! The host side of a guest-pull rootfs: one empty, read-only directory
//! (`<root>/`[`ROOTFS_DIR`], mode 0555) that every mount handed out binds. The real rootfs
//! only exists in the guest; whatever mounts a container's snapshot on the host (containerd
//! reading `/etc/group` for `ctr run`, CRI resolving a user name) sees an empty directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount;

use crate::error::{Error, Result};
use crate::labels::{IMAGE_REF_OPTION, ROOTFS_DIR};

/// Mode of the directory.
pub const ROOTFS_MODE: u32 = 0o555;

/// The one mount of an active or view snapshot whose image is `image_ref`: a read-only
/// recursive bind of the empty directory `rootfs`, the image reference in an option
/// ([`IMAGE_REF_OPTION`]). The same for active and view snapshots.
pub fn mount(rootfs: &str, image_ref: &str) -> Mount {
    Mount {
        r#type: "bind".to_owned(),
        source: rootfs.to_owned(),
        target: String::new(),
        options: vec![
            "ro".to_owned(),
            "rbind".to_owned(),
            format!("{IMAGE_REF_OPTION}{image_ref}"),
        ],
    }
}

/// Makes sure `<root>/`[`ROOTFS_DIR`] is an empty directory with mode 0555 (creating it,
/// or fixing its mode) and returns its absolute path. Refuses a symlink, a non-directory,
/// a non-empty directory or a path that is not UTF-8 (containerd's mount source is a
/// string) rather than hand out something that is not an empty directory as a rootfs.
pub fn prepare(root: &Path) -> Result<String> {
    let path = root.join(ROOTFS_DIR);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let refuse = |reason: &str| Error::Rootfs {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(&path).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
        Ok(meta) if meta.file_type().is_symlink() => return Err(refuse("it is a symlink")),
        Ok(meta) if !meta.is_dir() => return Err(refuse("it is not a directory")),
        Ok(_) => {
            if std::fs::read_dir(&path).map_err(io)?.next().is_some() {
                return Err(refuse(
                    "it is not empty (it is handed to containerd as an empty rootfs; \
                     nothing may be put there)",
                ));
            }
        }
    }
    let meta = std::fs::metadata(&path).map_err(io)?;
    if meta.permissions().mode() & 0o7777 != ROOTFS_MODE {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(ROOTFS_MODE))
            .map_err(io)?;
    }
    let abs: PathBuf = std::fs::canonicalize(&path).map_err(io)?;
    abs.into_os_string()
        .into_string()
        .map_err(|_| refuse("the path is not UTF-8"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn mount_is_a_read_only_bind_carrying_the_image_ref() {
        let m = mount(
            "/var/lib/kata-cc-snapshotter/guest-pull-rootfs",
            "r.example/a:1",
        );
        assert_eq!(m.r#type, "bind");
        assert_eq!(m.source, "/var/lib/kata-cc-snapshotter/guest-pull-rootfs");
        assert_eq!(m.target, "");
        assert_eq!(
            m.options,
            ["ro", "rbind", "kata-cc.image-ref=r.example/a:1"]
        );
        let image = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix(IMAGE_REF_OPTION));
        assert_eq!(image, Some("r.example/a:1"));
    }

    #[test]
    fn creates_an_empty_0555_dir_and_fixes_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = prepare(dir.path()).unwrap();
        let expected = std::fs::canonicalize(dir.path()).unwrap().join(ROOTFS_DIR);
        assert_eq!(Path::new(&path), expected);
        assert!(Path::new(&path).is_absolute());
        assert_eq!(mode(&expected), 0o555);
        assert_eq!(std::fs::read_dir(&expected).unwrap().count(), 0);
        // Again (a restart): same path; a wrong mode is put back.
        std::fs::set_permissions(&expected, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(prepare(dir.path()).unwrap(), path);
        assert_eq!(mode(&expected), 0o555);
    }

    #[test]
    fn refuses_non_empty_dirs_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROOTFS_DIR);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("etc-group"), b"x").unwrap();
        let err = prepare(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not empty") && err.contains(ROOTFS_DIR),
            "{err}"
        );
        // Left as it was.
        assert!(path.join("etc-group").exists());

        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        let err = prepare(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");

        std::fs::remove_file(&path).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &path).unwrap();
        let err = prepare(dir.path()).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
    }
}
