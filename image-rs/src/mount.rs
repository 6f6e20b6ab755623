//! Container rootfs: an overlay of the image's layer directories with a per-container
//! upper and work directory.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::{ImageError, Result};
use crate::store::PulledImage;

/// Longest overlay option string the kernel takes (one page, minus room).
const MAX_MOUNT_DATA: usize = 4000;

/// A mounted container rootfs. Unmount with [`RootfsMount::unmount`]; dropping it without
/// doing so detaches the mount (lazily) and leaves the directories.
#[derive(Debug)]
pub struct RootfsMount {
    rootfs: PathBuf,
    container_dir: PathBuf,
    mounted: bool,
}

impl RootfsMount {
    /// The merged rootfs (`<container_dir>/rootfs`).
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// Unmount the rootfs and remove the container's upper and work directories.
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        let dir = self.container_dir.display().to_string();
        match rustix::mount::unmount(&self.rootfs, UnmountFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(ImageError::io(&dir, "unmounting", &self.rootfs, e.into())),
        }
        for sub in ["upper", "work", "rootfs"] {
            let p = self.container_dir.join(sub);
            if p.exists() {
                crate::unpack::remove_tree(&p)
                    .map_err(|e| ImageError::io(&dir, "removing", &p, e))?;
            }
        }
        Ok(())
    }
}

impl Drop for RootfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.rootfs, UnmountFlags::DETACH);
        }
    }
}

/// Mount `image` for a container whose private directory is `container_dir`
/// (`upper/`, `work/` and `rootfs/` are created in it; it must be on a file system that
/// can be an overlay upper, and not inside the layer cache).
pub fn mount_rootfs(image: &PulledImage, container_dir: &Path) -> Result<RootfsMount> {
    let dir = container_dir.display().to_string();
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    let rootfs = container_dir.join("rootfs");
    for p in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(p)
            .map_err(|e| ImageError::io(&image.reference, "creating", p, e))?;
    }
    let mut lower = Vec::new();
    for d in image.layer_dirs.iter().rev() {
        let s = d
            .to_str()
            .filter(|s| !s.contains([',', ':', '\\']))
            .ok_or_else(|| ImageError::Invalid {
                image: image.reference.clone(),
                what: "layer path".into(),
                reason: format!("{} cannot be named in overlay options", d.display()),
            })?;
        lower.push(s.to_string());
    }
    if lower.is_empty() {
        return Err(ImageError::Invalid {
            image: image.reference.clone(),
            what: "image".into(),
            reason: "no layers".into(),
        });
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(ImageError::Invalid {
            image: image.reference.clone(),
            what: "image".into(),
            reason: format!(
                "{} layers make overlay options longer than a page",
                lower.len()
            ),
        });
    }
    let data_c = std::ffi::CString::new(data).map_err(|_| ImageError::Invalid {
        image: image.reference.clone(),
        what: "layer path".into(),
        reason: "NUL in path".into(),
    })?;
    rustix::mount::mount(
        "overlay",
        &rootfs,
        "overlay",
        MountFlags::empty(),
        Some(data_c.as_c_str()),
    )
    .map_err(|e| {
        ImageError::io(
            &dir,
            format!("mounting overlay of {} for", image.reference),
            &rootfs,
            e.into(),
        )
    })?;
    Ok(RootfsMount {
        rootfs,
        container_dir: container_dir.to_path_buf(),
        mounted: true,
    })
}
