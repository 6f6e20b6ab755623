//! `CopyFile`: the host writes files (config maps, secrets, resolv.conf, ...) into the
//! guest's shared directory. The path comes from the untrusted host, so every component
//! is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` below the shared
//! root: `..`, absolute escapes and symlinks (including ones planted by an earlier
//! request) can never take a write outside it.
//!
//! What it may create is limited, whatever the policy allows (Kata's runtime sends
//! `file_mode` as the host file's `st_mode`: regular files, directories, and the
//! symlinks of a config map's `..data` layout):
//! - only regular files, directories and symlinks: device nodes, fifos and sockets are
//!   refused;
//! - no setuid, setgid or sticky bit on a file or symlink (Kubernetes' `defaultMode`/
//!   `mode` cannot set them); a directory may carry setgid and sticky, which grant no
//!   privilege (the kubelet sets setgid on volume directories for `fsGroup`), not setuid;
//!   `dir_mode` for created parents keeps its permission bits only;
//! - a symlink's target, absolute or relative (resolved lexically from the link's
//!   directory), must stay below the shared root: `..data -> ..2024_01_01_00_00_00.1`
//!   and `key -> ..data/key` work, `x -> /` or `x -> ../../..` do not.
//!
//! `uid`/`gid` are applied as sent (non-negative): files only become readable by the
//! containers that bind them, and ownership is what Kubernetes' `fsGroup` asks for.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode, SFlag};
use nix::fcntl::AtFlags;
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Longest path accepted (bytes).
const MAX_PATH: usize = 4096;

/// What the host asked for, independent of the wire type.
#[derive(Debug, Clone)]
pub struct CopyFileArgs<'a> {
    /// Absolute destination path; must lie below the shared root.
    pub path: &'a str,
    /// Final size of a regular file (chunks are sent with increasing offsets).
    pub file_size: i64,
    /// `st_mode` of the destination: type bits (regular, directory, symlink) + permissions.
    pub file_mode: u32,
    /// Permissions of parent directories that have to be created.
    pub dir_mode: u32,
    /// Owner of the destination and of its immediate parent.
    pub uid: i32,
    /// Group of the destination and of its immediate parent.
    pub gid: i32,
    /// Offset of this chunk in the file.
    pub offset: i64,
    /// The chunk (for a symlink: the link target).
    pub data: &'a [u8],
}

/// Why a `CopyFile` request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyFileError {
    /// The path is not an absolute, normalised path below the shared root.
    #[error("copy_file: path {path:?} is not allowed: {why}")]
    PathNotAllowed {
        /// The path as sent.
        path: String,
        /// What was wrong with it.
        why: &'static str,
    },
    /// Offsets, sizes or ids out of range.
    #[error("copy_file {path:?}: {why}")]
    BadRequest {
        /// The path as sent.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// A component of the path is a symlink or would leave the root.
    #[error("copy_file {path:?}: component {component:?} is a symlink or escapes the shared root")]
    Escape {
        /// The path as sent.
        path: String,
        /// The offending component.
        component: String,
    },
    /// A system call failed.
    #[error("copy_file {path:?}: {op}")]
    Io {
        /// The path as sent.
        path: String,
        /// The operation that failed.
        op: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
}

const FILE_PERM_MASK: u32 = 0o777;
const DIR_PERM_MASK: u32 = 0o777;
/// setuid, setgid, sticky.
const SPECIAL_BITS: u32 = 0o7000;
/// What a directory may carry besides its permissions: setgid, sticky.
const DIR_SPECIAL_BITS: u32 = 0o3000;

/// The file type and permissions of a request, checked: refused unless a regular file
/// (or no type bits, as a regular file), a directory or a symlink, and refused with a
/// setuid, setgid or sticky bit (a directory may have setgid and sticky).
pub fn check_mode(path: &str, file_mode: u32) -> Result<(SFlag, Mode), CopyFileError> {
    let bad = |why: String| CopyFileError::BadRequest { path: path.to_string(), why };
    let kind = SFlag::from_bits_truncate(file_mode) & SFlag::S_IFMT;
    let known = kind.is_empty() || kind == SFlag::S_IFREG || kind == SFlag::S_IFDIR || kind == SFlag::S_IFLNK;
    if !known || file_mode & !(SFlag::S_IFMT.bits() | FILE_PERM_MASK | SPECIAL_BITS) != 0 {
        return Err(bad(format!(
            "file_mode {file_mode:#o}: only regular files, directories and symlinks may be copied"
        )));
    }
    let allowed_special = if kind == SFlag::S_IFDIR { DIR_SPECIAL_BITS } else { 0 };
    if file_mode & SPECIAL_BITS & !allowed_special != 0 {
        return Err(bad(format!(
            "file_mode {file_mode:#o}: setuid, setgid and sticky bits are refused (a directory may have setgid and sticky)"
        )));
    }
    Ok((kind, Mode::from_bits_truncate(file_mode & (FILE_PERM_MASK | allowed_special))))
}

/// Checks that a symlink at `link_dir` (relative to the shared root) pointing at
/// `target` resolves, lexically, to a path below the root (`root` names the root for an
/// absolute target).
pub fn check_symlink_target(root: &Path, path: &str, link_dir: &Path, target: &[u8]) -> Result<(), CopyFileError> {
    let bad = |why: &str| CopyFileError::BadRequest {
        path: path.to_string(),
        why: format!("symlink target {:?} {why}", String::from_utf8_lossy(target)),
    };
    if target.is_empty() {
        return Err(bad("is empty"));
    }
    if target.contains(&0) || target.len() > MAX_PATH {
        return Err(bad("contains a NUL byte or is longer than 4096 bytes"));
    }
    let t = Path::new(OsStr::from_bytes(target));
    let (mut depth, rest): (Vec<&OsStr>, &Path) = if t.is_absolute() {
        match t.strip_prefix(root) {
            Ok(r) => (Vec::new(), r),
            Err(_) => return Err(bad("leaves the shared directory")),
        }
    } else {
        (link_dir.iter().collect(), t)
    };
    for seg in rest.as_os_str().as_bytes().split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if depth.pop().is_none() {
                    return Err(bad("leaves the shared directory"));
                }
            }
            s => depth.push(OsStr::from_bytes(s)),
        }
    }
    if depth.is_empty() {
        return Err(bad("names the shared directory itself"));
    }
    Ok(())
}

/// Performs one `CopyFile` request below `root` (created if missing).
pub fn copy_file(root: &Path, args: &CopyFileArgs<'_>) -> Result<(), CopyFileError> {
    let rel = relative_below(root, args.path)?;
    let (kind, perms) = check_mode(args.path, args.file_mode)?;
    if kind == SFlag::S_IFLNK {
        check_symlink_target(root, args.path, rel.parent().unwrap_or(Path::new("")), args.data)?;
    }
    let io = |op: &'static str| {
        let path = args.path.to_string();
        move |source: Errno| CopyFileError::Io { path, op, source }
    };
    let bad = |why: String| CopyFileError::BadRequest { path: args.path.to_string(), why };
    if args.uid < 0 || args.gid < 0 {
        return Err(bad(format!("negative uid {} or gid {}", args.uid, args.gid)));
    }
    let uid = Some(Uid::from_raw(args.uid as u32));
    let gid = Some(Gid::from_raw(args.gid as u32));

    std::fs::create_dir_all(root).map_err(|e| CopyFileError::Io {
        path: args.path.to_string(),
        op: "create the shared root",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let mut dir = open_beneath(None, root.as_os_str(), OFlag::O_PATH | OFlag::O_DIRECTORY, 0, false)
        .map_err(io("open the shared root"))?;

    let components: Vec<&OsStr> = rel.iter().collect();
    let (name, parents) = match components.split_last() {
        Some(split) => split,
        None => {
            return Err(CopyFileError::PathNotAllowed {
                path: args.path.to_string(),
                why: "it names the shared root itself",
            })
        }
    };
    for (i, comp) in parents.iter().enumerate() {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        dir = match open_beneath(Some(&dir), comp, flags, 0, true) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let mode = Mode::from_bits_truncate(args.dir_mode & DIR_PERM_MASK);
                match mkdirat(Some(dir.as_raw_fd()), *comp, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io("create a parent directory")(e)),
                }
                open_beneath(Some(&dir), comp, flags, 0, true).map_err(|e| escape_or(args, comp, e, "open a parent directory"))?
            }
            Err(e) => return Err(escape_or(args, comp, e, "open a parent directory")),
        };
        if i + 1 == parents.len() {
            // The immediate parent is owned like the file (Kata does the same).
            fchownat(Some(dir.as_raw_fd()), "", uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .or_else(|_| chown_fd_path(&dir, uid, gid))
                .map_err(io("chown the parent directory"))?;
        }
    }

    if kind == SFlag::S_IFDIR {
        match mkdirat(Some(dir.as_raw_fd()), *name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io("create the directory")(e)),
        }
        let d = open_beneath(Some(&dir), name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0, true)
            .map_err(|e| escape_or(args, name, e, "open the directory"))?;
        fchmod(d.as_raw_fd(), perms).map_err(io("chmod the directory"))?;
        nix::unistd::fchown(d.as_raw_fd(), uid, gid).map_err(io("chown the directory"))?;
        return Ok(());
    }

    if args.offset < 0 || args.file_size < 0 {
        return Err(bad(format!("negative offset {} or file_size {}", args.offset, args.file_size)));
    }
    let end = args.offset.checked_add(args.data.len() as i64).ok_or_else(|| bad("offset overflows".into()))?;
    if kind != SFlag::S_IFLNK && end > args.file_size {
        return Err(bad(format!("chunk ends at {end}, past file_size {}", args.file_size)));
    }
    if args.offset == 0 {
        match unlinkat(Some(dir.as_raw_fd()), *name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => return Err(bad("a directory exists at the destination".into())),
            Err(e) => return Err(io("remove the old file")(e)),
        }
    }
    if kind == SFlag::S_IFLNK {
        nix::unistd::symlinkat(OsStr::from_bytes(args.data), Some(dir.as_raw_fd()), *name)
            .map_err(io("create the symlink"))?;
        fchownat(Some(dir.as_raw_fd()), *name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io("chown the symlink"))?;
        return Ok(());
    }
    let f = open_beneath(
        Some(&dir),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT,
        args.file_mode & FILE_PERM_MASK,
        true,
    )
    .map_err(|e| escape_or(args, name, e, "open the file"))?;
    let mut written = 0usize;
    while written < args.data.len() {
        let n = nix::sys::uio::pwrite(f.as_fd(), &args.data[written..], args.offset + written as i64)
            .map_err(io("write the file"))?;
        written += n;
    }
    fchmod(f.as_raw_fd(), perms).map_err(io("chmod the file"))?;
    nix::unistd::fchown(f.as_raw_fd(), uid, gid).map_err(io("chown the file"))?;
    Ok(())
}

/// Checks that `path` is absolute, normalised and strictly below `root`, and returns the
/// part below `root`.
fn relative_below<'p>(root: &Path, path: &'p str) -> Result<&'p Path, CopyFileError> {
    let deny = |why| CopyFileError::PathNotAllowed { path: path.to_string(), why };
    if path.len() > MAX_PATH {
        return Err(deny("it is longer than 4096 bytes"));
    }
    if path.as_bytes().contains(&0) {
        return Err(deny("it contains a NUL byte"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(deny("it is relative"));
    }
    // Path::components() folds "." away, so look at the raw segments.
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(deny("it contains '..' or '.'"));
    }
    p.strip_prefix(root).map_err(|_| deny("it is outside the shared directory"))
}

fn escape_or(args: &CopyFileArgs<'_>, comp: &OsStr, e: Errno, op: &'static str) -> CopyFileError {
    match e {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => CopyFileError::Escape {
            path: args.path.to_string(),
            component: comp.to_string_lossy().into_owned(),
        },
        source => CopyFileError::Io { path: args.path.to_string(), op, source },
    }
}

fn open_beneath(
    dir: Option<&OwnedFd>,
    name: &OsStr,
    flags: OFlag,
    mode: u32,
    beneath: bool,
) -> Result<OwnedFd, Errno> {
    let mut resolve = ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if beneath {
        resolve |= ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
    }
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(resolve);
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let fd = openat2(dirfd, name, how)?;
    // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// `fchown` on an `O_PATH` descriptor goes through its /proc/self/fd entry.
fn chown_fd_path(fd: &OwnedFd, uid: Option<Uid>, gid: Option<Gid>) -> Result<(), Errno> {
    let p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    nix::unistd::chown(&p, uid, gid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn args<'a>(path: &'a str, data: &'a [u8]) -> CopyFileArgs<'a> {
        CopyFileArgs {
            path,
            file_size: data.len() as i64,
            file_mode: 0o100640,
            dir_mode: 0o750,
            uid: 0,
            gid: 0,
            offset: 0,
            data,
        }
    }

    #[test]
    fn writes_file_in_chunks_and_creates_parents() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("shared");
        let path = format!("{}/a/b/c.txt", root.display());
        let mut a = args(&path, b"hello ");
        a.file_size = 11;
        copy_file(&root, &a).unwrap();
        let mut b = args(&path, b"world");
        b.file_size = 11;
        b.offset = 6;
        copy_file(&root, &b).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("a/b/c.txt")).unwrap(), "hello world");
        let m = std::fs::metadata(root.join("a/b/c.txt")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::metadata(root.join("a")).unwrap().mode() & 0o777, 0o750);
    }

    #[test]
    fn refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("shared");
        std::fs::create_dir_all(&root).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let cases = [
            "relative/path".to_string(),
            format!("{}/../outside/x", root.display()),
            format!("{}/./x", root.display()),
            "/etc/passwd".to_string(),
            format!("{}", root.display()),
        ];
        for p in &cases {
            let e = copy_file(&root, &args(p, b"x")).unwrap_err();
            assert!(matches!(e, CopyFileError::PathNotAllowed { .. }), "{p}: {e}");
        }
        let through_link = format!("{}/link/x", root.display());
        let e = copy_file(&root, &args(&through_link, b"x")).unwrap_err();
        assert!(matches!(e, CopyFileError::Escape { .. }), "{e}");
        // A symlink as the final component is replaced, never followed.
        std::os::unix::fs::symlink(outside.join("victim"), root.join("leaf")).unwrap();
        let leaf = format!("{}/leaf", root.display());
        copy_file(&root, &args(&leaf, b"x")).unwrap();
        assert!(!outside.join("victim").exists());
        assert!(std::fs::symlink_metadata(root.join("leaf")).unwrap().is_file());
    }

    /// Device nodes, fifos, sockets and setuid/setgid/sticky modes used to be created
    /// (or written as a regular file with the bits set); now refused, with nothing made.
    #[test]
    fn refuses_special_files_and_modes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let path = format!("{}/f", root.display());
        for mode in [0o104755, 0o102755, 0o101644, 0o020666, 0o060660, 0o010644, 0o140755, 0o104000, 0o1_000_644] {
            let mut a = args(&path, b"x");
            a.file_mode = mode;
            let e = copy_file(&root, &a).unwrap_err();
            assert!(matches!(e, CopyFileError::BadRequest { .. }), "{mode:o}: {e}");
            assert!(e.to_string().contains("file_mode"), "{mode:o}: {e}");
            assert!(std::fs::symlink_metadata(root.join("f")).is_err(), "{mode:o} created something");
        }
        // A setuid directory is refused; setgid and sticky (fsGroup volumes) are kept.
        let d = format!("{}/d", root.display());
        let mut a = args(&d, b"");
        a.file_mode = 0o044755;
        assert!(copy_file(&root, &a).is_err());
        assert!(!root.join("d").exists());
        a.file_mode = 0o043775;
        copy_file(&root, &a).unwrap();
        assert_eq!(std::fs::metadata(root.join("d")).unwrap().mode() & 0o7777, 0o3775);
        // Plain modes pass.
        for mode in [0o100644, 0o644, 0o100400] {
            let mut a = args(&path, b"x");
            a.file_mode = mode;
            copy_file(&root, &a).unwrap();
        }
    }

    /// Kata's config map layout (relative links inside the volume) keeps working; a link
    /// out of the shared directory is refused, which used to be created.
    #[test]
    fn symlink_targets_stay_below_the_shared_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("shared");
        let vol = format!("{}/c1-0123456789abcdef-config", root.display());
        let link = |name: &str, target: &str| {
            let p = format!("{vol}/{name}");
            let mut a = args(&p, target.as_bytes());
            a.file_mode = 0o120777;
            copy_file(&root, &a).map(|()| p)
        };
        let dp = format!("{vol}/..2024_01_01_00_00_00.123");
        let mut d = args(&dp, b"");
        d.file_mode = 0o040755;
        copy_file(&root, &d).unwrap();
        link("..data", "..2024_01_01_00_00_00.123").unwrap();
        link("key", "..data/key").unwrap();
        link("abs", &format!("{}/other/file", root.display())).unwrap();
        link("up", "../c1-0123456789abcdef-hosts").unwrap();
        assert_eq!(std::fs::read_link(root.join("c1-0123456789abcdef-config/key")).unwrap(), Path::new("..data/key"));
        for bad in ["/", "/etc/shadow", "../..", "../../x", "a/../../../x", "..", "./..//../state"] {
            let e = link("evil", bad).unwrap_err();
            assert!(e.to_string().contains("symlink target"), "{bad}: {e}");
            assert!(std::fs::symlink_metadata(root.join("c1-0123456789abcdef-config/evil")).is_err(), "{bad}");
        }
        let outside = format!("{}x/y", root.display());
        assert!(link("evil", &outside).is_err());
    }

    #[test]
    fn refuses_bad_sizes_and_makes_dirs_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let path = format!("{}/f", root.display());
        let mut a = args(&path, b"toolong");
        a.file_size = 3;
        assert!(matches!(copy_file(&root, &a).unwrap_err(), CopyFileError::BadRequest { .. }));
        a.offset = -1;
        assert!(matches!(copy_file(&root, &a).unwrap_err(), CopyFileError::BadRequest { .. }));

        let d = format!("{}/dir", root.display());
        let mut a = args(&d, b"");
        a.file_mode = 0o040755;
        copy_file(&root, &a).unwrap();
        assert!(root.join("dir").is_dir());

        let l = format!("{}/dir/ln", root.display());
        let mut a = args(&l, b"../target");
        a.file_mode = 0o120777;
        copy_file(&root, &a).unwrap();
        assert_eq!(std::fs::read_link(root.join("dir/ln")).unwrap(), Path::new("../target"));
    }
}
