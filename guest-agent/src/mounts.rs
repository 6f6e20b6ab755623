//! The last line of clean-up: unmounting whatever is still mounted below the agent's
//! directories, from `/proc/self/mountinfo`, so that a teardown step that failed (an
//! image rootfs still busy when it was unmounted, a container whose runner could not
//! be destroyed) leaves no mount behind.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MntFlags;

use crate::error::AgentError;

/// Rounds of unmounting (mounts stacked on one path need one each).
const MAX_ROUNDS: usize = 8;

/// Mount points strictly below one of `roots` (real paths), most recent first.
pub fn mounted_below(roots: &[PathBuf]) -> Result<Vec<PathBuf>, AgentError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(AgentError::io("read /proc/self/mountinfo"))?;
    Ok(parse_below(&info, roots))
}

fn parse_below(mountinfo: &str, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| roots.iter().any(|r| p.starts_with(r) && p != r))
        .collect();
    found.reverse();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The real path of an agent directory (the configured one may contain symlinks), or
/// the path itself when it does not exist.
pub fn real(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Detaches every mount strictly below `roots` (real paths); fails naming the mount
/// points that stay.
pub fn unmount_below(roots: &[PathBuf]) -> Result<(), AgentError> {
    for _ in 0..MAX_ROUNDS {
        let found = mounted_below(roots)?;
        if found.is_empty() {
            return Ok(());
        }
        for p in &found {
            match nix::mount::umount2(p, MntFlags::MNT_DETACH) {
                Ok(()) => tracing::info!("unmounted leftover {}", p.display()),
                Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(e) => tracing::warn!("unmount leftover {}: {e}", p.display()),
            }
        }
    }
    let left = mounted_below(roots)?;
    if left.is_empty() {
        return Ok(());
    }
    Err(AgentError::io(format!("unmount {left:?}"))(std::io::Error::other("still mounted")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_and_filtered_strictly_below() {
        let info = "\
22 1 0:21 / / rw - ext4 /dev/vda rw
30 22 0:40 / /run/s rw - tmpfs s rw
31 30 0:41 / /run/s/c1/rootfs rw - overlay overlay rw
32 30 0:42 / /run/s/with\\040space rw - tmpfs x rw
33 22 0:43 / /run/sother rw - tmpfs x rw
";
        let got = parse_below(info, &[PathBuf::from("/run/s")]);
        assert_eq!(got, vec![PathBuf::from("/run/s/with space"), PathBuf::from("/run/s/c1/rootfs")]);
        assert_eq!(unescape("a\\134b\\011"), PathBuf::from("a\\b\t"));
        assert_eq!(unescape("trail\\04"), PathBuf::from("trail\\04"));
    }

    /// Stacked and nested mounts all go (runs as root).
    #[test]
    fn unmounts_nested_and_stacked_mounts() {
        let t = tempfile::tempdir().unwrap();
        let root = real(t.path());
        let a = root.join("a");
        std::fs::create_dir_all(&a).unwrap();
        let tmpfs = |p: &Path| {
            nix::mount::mount(Some("t"), p, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap()
        };
        tmpfs(&a);
        tmpfs(&a);
        std::fs::create_dir_all(a.join("b")).unwrap();
        tmpfs(&a.join("b"));
        assert_eq!(mounted_below(std::slice::from_ref(&root)).unwrap().len(), 3);
        unmount_below(std::slice::from_ref(&root)).unwrap();
        assert!(mounted_below(&[root]).unwrap().is_empty());
    }
}
