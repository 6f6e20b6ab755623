//! Safe unpacking of one layer tar into its own directory, in overlayfs form.
//!
//! Every entry is created relative to a directory fd of its parent, and parents are
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the layer root, so
//! neither `..`, absolute names, nor symlinks planted by earlier entries can make a write
//! land outside the layer directory. OCI whiteouts become overlayfs whiteouts: `.wh.<name>`
//! a 0/0 character device `<name>`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on
//! its directory. Modes (setuid included), numeric ownership, mtimes and xattrs are kept;
//! `trusted.overlay.*` xattrs from the archive are dropped (only whiteouts may set them).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::limits::{LayerMeter, LimitHit};

/// What the unpacker accepts beyond regular content.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Create character and block device nodes found in layers (refused by default).
    pub allow_devices: bool,
}

/// Why an entry (or the archive) could not be unpacked.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The entry is refused.
    Unsafe { entry: String, reason: String },
    /// A local file-system operation failed.
    Fs {
        entry: String,
        context: &'static str,
        source: io::Error,
    },
    /// Reading the archive stream failed (this includes blob, decryption and
    /// decompression errors from the readers below the tar parser).
    Stream(io::Error),
    /// An entry count or path limit was hit.
    Limit { entry: String, hit: LimitHit },
}

type UResult<T> = Result<T, UnpackError>;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Metadata of one entry, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    meter: &'a LayerMeter<'a>,
    entry: String,
    /// Directories whose mtime is set once all entries are written.
    dirs: Vec<(Vec<OsString>, Timespec)>,
    /// Last parent opened (components, fd); invalidated by removals and new symlinks.
    cached_parent: Option<(Vec<OsString>, OwnedFd)>,
}

/// Unpack the tar stream `reader` into the existing empty directory `dest`, counting
/// entries (and the zeros of sparse holes) on `meter` and checking path limits.
/// Does not read past the archive's end marker: the caller drains the stream.
pub(crate) fn unpack<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
    meter: &LayerMeter<'_>,
) -> UResult<()> {
    let root = rustix::fs::open(dest, dir_flags(), Mode::empty()).map_err(|e| UnpackError::Fs {
        entry: String::new(),
        context: "opening the layer directory",
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root,
        opts,
        meter,
        entry: String::new(),
        dirs: Vec::new(),
        cached_parent: None,
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(UnpackError::Stream)? {
        let mut entry = entry.map_err(UnpackError::Stream)?;
        u.entry(&mut entry)?;
    }
    u.finish_dirs()
}

/// `unpack` for the fuzz targets (`fuzz/`), with the error as text, under the default
/// limits except 8 MiB of decompressed data and sparse holes per layer (the fuzzer's disk).
#[doc(hidden)]
pub fn unpack_for_fuzzing<R: Read>(
    reader: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<(), String> {
    let limits = crate::limits::PullLimits { max_layer_uncompressed_bytes: 8 << 20, ..Default::default() };
    let cache = std::sync::atomic::AtomicU64::new(0);
    let meter = LayerMeter::new(&limits, crate::limits::LayerStats::default(), &cache);
    unpack(reader, dest, opts, &meter).map_err(|e| format!("{e:?}"))
}

fn sanitize(u: &Unpacker<'_>, path: &Path) -> UResult<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(u.unsafe_entry("path contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(u.unsafe_entry("absolute path"))
            }
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, reason: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe {
            entry: self.entry.clone(),
            reason: reason.into(),
        }
    }

    fn limit(&self, hit: LimitHit) -> UnpackError {
        UnpackError::Limit {
            entry: self.entry.clone(),
            hit,
        }
    }

    /// A link target's length against the path limit.
    fn check_link(&self, target: &[u8]) -> UResult<()> {
        self.meter
            .check_path(None, target.len())
            .map_err(|hit| self.limit(hit))
    }

    fn fs(&self, context: &'static str, e: impl Into<io::Error>) -> UnpackError {
        UnpackError::Fs {
            entry: self.entry.clone(),
            context,
            source: e.into(),
        }
    }

    fn resolve_error(&self, e: Errno, context: &'static str) -> UnpackError {
        match e {
            Errno::XDEV | Errno::LOOP => {
                self.unsafe_entry("path leads outside the layer through a symlink")
            }
            Errno::NOTDIR => self.unsafe_entry("a parent of the path is not a directory"),
            e => self.fs(context, e),
        }
    }

    /// The directory `comps` beneath the root, created (0755, root) where missing.
    fn parent(&mut self, comps: &[OsString], create: bool) -> UResult<OwnedFd> {
        if let Some((c, fd)) = &self.cached_parent {
            if c.as_slice() == comps {
                return fd
                    .try_clone()
                    .map_err(|e| self.fs("duplicating a directory fd", e));
            }
        }
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| self.fs("duplicating a directory fd", e))?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            match rustix::fs::openat2(
                &self.root,
                &prefix,
                dir_flags(),
                Mode::empty(),
                resolve_flags(),
            ) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&cur, comps[i].as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.fs("creating a parent directory", e))?;
                    cur = rustix::fs::openat2(
                        &cur,
                        comps[i].as_os_str(),
                        dir_flags() | OFlags::NOFOLLOW,
                        Mode::empty(),
                        resolve_flags() | ResolveFlags::NO_SYMLINKS,
                    )
                    .map_err(|e| self.resolve_error(e, "opening a new parent directory"))?;
                }
                Err(e) => return Err(self.resolve_error(e, "opening a parent directory")),
            }
        }
        if let Ok(dup) = cur.try_clone() {
            self.cached_parent = Some((comps.to_vec(), dup));
        }
        Ok(cur)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> UResult<Meta> {
        let h = entry.header();
        let mode = h.mode().map_err(UnpackError::Stream)? & 0o7777;
        let mut uid = h.uid().map_err(UnpackError::Stream)?;
        let mut gid = h.gid().map_err(UnpackError::Stream)?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(h.mtime().map_err(UnpackError::Stream)?).unwrap_or(0),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Stream)? {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Stream)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                };
                match key {
                    b"uid" => uid = num().ok_or_else(|| self.unsafe_entry("bad PAX uid"))?,
                    b"gid" => gid = num().ok_or_else(|| self.unsafe_entry("bad PAX gid"))?,
                    b"mtime" => {
                        if let Some(t) = parse_pax_time(value) {
                            mtime = t;
                        }
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            if name.starts_with(b"trusted.overlay.") {
                                tracing::warn!(entry = %self.entry, "dropping overlay xattr from layer");
                                continue;
                            }
                            xattrs.push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| self.unsafe_entry("uid out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| self.unsafe_entry("gid out of range"))?;
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Owner, mode, xattrs of an open file or directory (mode after owner: chown clears
    /// setuid bits).
    fn apply_fd(&self, fd: impl AsFd, m: &Meta, times: bool) -> UResult<()> {
        let fd = fd.as_fd();
        rustix::fs::fchown(fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
            .map_err(|e| self.fs("setting ownership", e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode))
            .map_err(|e| self.fs("setting mode", e))?;
        for (name, value) in &m.xattrs {
            rustix::fs::fsetxattr(fd, name.as_os_str(), value, XattrFlags::empty())
                .map_err(|e| self.fs("setting an xattr", e))?;
        }
        if times {
            let ts = Timestamps {
                last_access: m.mtime,
                last_modification: m.mtime,
            };
            rustix::fs::futimens(fd, &ts).map_err(|e| self.fs("setting mtime", e))?;
        }
        Ok(())
    }

    /// Owner and times of a non-openable node (symlink, device, fifo) by name.
    fn apply_at(&self, parent: &OwnedFd, name: &OsStr, m: &Meta, chmod: bool) -> UResult<()> {
        rustix::fs::chownat(
            parent,
            name,
            Some(Uid::from_raw(m.uid)),
            Some(Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.fs("setting ownership", e))?;
        if chmod {
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(m.mode), AtFlags::empty())
                .map_err(|e| self.fs("setting mode", e))?;
        }
        if !m.xattrs.is_empty() {
            let path = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(parent)
            ))
            .join(name);
            for (xname, value) in &m.xattrs {
                rustix::fs::lsetxattr(&path, xname.as_os_str(), value, XattrFlags::empty())
                    .map_err(|e| self.fs("setting an xattr", e))?;
            }
        }
        let ts = Timestamps {
            last_access: m.mtime,
            last_modification: m.mtime,
        };
        rustix::fs::utimensat(parent, name, &ts, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.fs("setting mtime", e))
    }

    /// Remove whatever is at `name` in `parent` (recursively for a directory).
    fn remove(&mut self, parent: &OwnedFd, name: &OsStr) -> UResult<()> {
        self.cached_parent = None;
        remove_all_at(parent, name).map_err(|e| self.fs("removing an earlier entry", e))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> UResult<()> {
        let raw = entry.path_bytes().into_owned();
        self.entry = String::from_utf8_lossy(&raw).into_owned();
        if self.entry.len() > 256 {
            let mut end = 256;
            while !self.entry.is_char_boundary(end) {
                end -= 1;
            }
            self.entry.truncate(end);
            self.entry.push('…');
        }
        self.meter.charge_entry().map_err(|hit| self.limit(hit))?;
        let depth = Path::new(OsStr::from_bytes(&raw))
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        self.meter
            .check_path(Some(depth), raw.len())
            .map_err(|hit| self.limit(hit))?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = sanitize(self, Path::new(OsStr::from_bytes(&raw)))?;
        let meta = self.meta(entry)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            if kind != tar::EntryType::Directory {
                return Err(self.unsafe_entry("non-directory at the layer root"));
            }
            let root = self
                .root
                .try_clone()
                .map_err(|e| self.fs("duplicating a directory fd", e))?;
            self.apply_fd(&root, &meta, false)?;
            self.dirs.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if name_bytes == b"." || name_bytes == b".." {
            return Err(self.unsafe_entry("invalid name"));
        }

        // Whiteouts.
        if name_bytes == OPAQUE_MARKER {
            let parent = self.parent(parent_comps, true)?;
            return rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| self.fs("marking a directory opaque", e));
        }
        if name_bytes.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        if let Some(target) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                return Err(self.unsafe_entry("invalid whiteout"));
            }
            let parent = self.parent(parent_comps, true)?;
            let target = OsStr::from_bytes(target);
            self.remove(&parent, target)?;
            return rustix::fs::mknodat(
                &parent,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| self.fs("creating a whiteout", e));
        }

        let parent = self.parent(parent_comps, true)?;
        let existing =
            match rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(self.fs("looking at an existing entry", e)),
            };
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if existing.is_some_and(|t| t != FileType::Directory) {
                    self.remove(&parent, name)?;
                }
                if existing != Some(FileType::Directory) {
                    rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(|e| self.fs("creating a directory", e))?;
                }
                let fd = rustix::fs::openat2(
                    &parent,
                    name.as_os_str(),
                    dir_flags() | OFlags::NOFOLLOW,
                    Mode::empty(),
                    resolve_flags() | ResolveFlags::NO_SYMLINKS,
                )
                .map_err(|e| self.resolve_error(e, "opening a directory"))?;
                self.apply_fd(&fd, &meta, false)?;
                let mut path = parent_comps.to_vec();
                path.push(name.clone());
                self.dirs.push((path, meta.mtime));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                // A sparse entry expands to more than its archive bytes: the zeros of its
                // holes are written too, so they count like decompressed bytes.
                let archived = entry.header().entry_size().map_err(UnpackError::Stream)?;
                let holes = entry.size().saturating_sub(archived);
                if holes > 0 {
                    self.meter
                        .charge_bytes(holes)
                        .map_err(|hit| self.limit(hit))?;
                }
                if existing.is_some() {
                    self.remove(&parent, name)?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.fs("creating a file", e))?;
                let mut file = File::from(fd);
                copy_entry(entry, &mut file).map_err(|e| match e {
                    CopyError::Read(e) => UnpackError::Stream(e),
                    CopyError::Write(e) => self.fs("writing a file", e),
                })?;
                self.apply_fd(&file, &meta, true)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry("symlink without a target"))?
                    .into_owned();
                self.check_link(&target)?;
                if existing.is_some() {
                    self.remove(&parent, name)?;
                }
                self.cached_parent = None;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| self.fs("creating a symlink", e))?;
                self.apply_at(&parent, name, &meta, false)?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry("hardlink without a target"))?
                    .into_owned();
                self.check_link(&target)?;
                let tcomps = sanitize(self, Path::new(OsStr::from_bytes(&target)))
                    .map_err(|_| self.unsafe_entry("hardlink target outside the layer"))?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry("hardlink to the layer root"));
                };
                let tparent_fd = self.parent(tparent, false).map_err(|e| match e {
                    UnpackError::Unsafe { .. } => {
                        self.unsafe_entry("hardlink target outside the layer")
                    }
                    e => e,
                })?;
                if existing.is_some() {
                    self.remove(&parent, name)?;
                }
                rustix::fs::linkat(
                    &tparent_fd,
                    tname.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| match e {
                    Errno::NOENT => self.unsafe_entry("hardlink target is not in this layer"),
                    e => self.fs("creating a hardlink", e),
                })?;
            }
            T::Char | T::Block | T::Fifo => {
                let ftype = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ftype != FileType::Fifo && !self.opts.allow_devices {
                    return Err(self.unsafe_entry("device node (devices are not allowed)"));
                }
                let h = entry.header();
                let dev = rustix::fs::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                if existing.is_some() {
                    self.remove(&parent, name)?;
                }
                rustix::fs::mknodat(
                    &parent,
                    name.as_os_str(),
                    ftype,
                    Mode::from_raw_mode(0o600),
                    dev,
                )
                .map_err(|e| self.fs("creating a special file", e))?;
                self.apply_at(&parent, name, &meta, true)?;
            }
            other => return Err(self.unsafe_entry(format!("unsupported entry type {other:?}"))),
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> UResult<()> {
        self.entry.clear();
        for (comps, mtime) in self.dirs.iter().rev() {
            let fd = if comps.is_empty() {
                self.root.try_clone()
            } else {
                match rustix::fs::openat2(
                    &self.root,
                    join(comps),
                    dir_flags() | OFlags::NOFOLLOW,
                    Mode::empty(),
                    resolve_flags(),
                ) {
                    Ok(fd) => Ok(fd),
                    // Removed or replaced by a later entry.
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => continue,
                    Err(e) => Err(e.into()),
                }
            }
            .map_err(|e| self.fs("opening a directory", e))?;
            let ts = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            rustix::fs::futimens(&fd, &ts).map_err(|e| self.fs("setting mtime", e))?;
        }
        Ok(())
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_entry(r: &mut impl Read, w: &mut File) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec = secs.parse::<i64>().ok()?;
    let mut nanos = String::from(frac);
    nanos.truncate(9);
    while nanos.len() < 9 {
        nanos.push('0');
    }
    let tv_nsec = nanos.parse::<i64>().ok()?;
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

/// `rm -rf parent/name` without following symlinks. Iterative, holding one directory fd
/// at a time (a layer's real depth is not bounded by its entries' path depth: paths may
/// run through symlinks into deeper directories), so neither the stack nor the fd table
/// grows with the depth: it descends into the first subdirectory found, and climbs back
/// through `..` once a directory is empty.
fn remove_all_at(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?);
    }
    let mut dir = rustix::fs::openat(parent, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty())?;
    // Names of the directories between `parent/name` (exclusive) and `dir`.
    let mut path: Vec<OsString> = Vec::new();
    loop {
        let mut subdir = None;
        for ent in Dir::read_from(&dir)? {
            let ent = ent?;
            let n = OsStr::from_bytes(ent.file_name().to_bytes());
            if n == "." || n == ".." {
                continue;
            }
            let st = rustix::fs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                subdir = Some(n.to_os_string());
                break;
            }
            rustix::fs::unlinkat(&dir, n, AtFlags::empty())?;
        }
        if let Some(n) = subdir {
            dir = rustix::fs::openat(&dir, &n, dir_flags() | OFlags::NOFOLLOW, Mode::empty())?;
            path.push(n);
            continue;
        }
        // `dir` is empty: remove it from its parent and go on there.
        let Some(n) = path.pop() else {
            drop(dir);
            return Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?);
        };
        let up = rustix::fs::openat(&dir, "..", dir_flags() | OFlags::NOFOLLOW, Mode::empty())?;
        drop(dir);
        rustix::fs::unlinkat(&up, &n, AtFlags::REMOVEDIR)?;
        dir = up;
    }
}

/// Remove a directory tree (a failed or replaced layer dir) without following symlinks.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no parent"));
    };
    let pfd = rustix::fs::open(parent, dir_flags(), Mode::empty())?;
    remove_all_at(&pfd, name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::limits::{LayerStats, Limit, PullLimits};
    use std::sync::atomic::AtomicU64;

    /// One raw tar entry; names are written verbatim (no validation by the tar crate).
    fn add(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn run(
        entries: &[(tar::EntryType, &str, &str)],
        opts: &UnpackOptions,
    ) -> (tempfile::TempDir, UResult<()>) {
        run_limited(entries, opts, &PullLimits::default())
    }

    fn run_limited(
        entries: &[(tar::EntryType, &str, &str)],
        opts: &UnpackOptions,
        limits: &PullLimits,
    ) -> (tempfile::TempDir, UResult<()>) {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("layer");
        std::fs::create_dir(&dest).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (kind, name, link) in entries {
            add(
                &mut b,
                *kind,
                name,
                link,
                if *kind == tar::EntryType::Regular {
                    b"data"
                } else {
                    b""
                },
            );
        }
        let tar = b.into_inner().unwrap();
        let cache = AtomicU64::new(0);
        let meter = LayerMeter::new(limits, LayerStats::default(), &cache);
        let r = unpack(&tar[..], &dest, opts, &meter);
        (outer, r)
    }

    fn limit_hit(entries: &[(tar::EntryType, &str, &str)], limits: PullLimits, bad: &str) -> Limit {
        let (_outer, r) = run_limited(entries, &UnpackOptions::default(), &limits);
        match r {
            Err(UnpackError::Limit { entry, hit }) => {
                assert_eq!(entry, bad, "{hit}");
                hit.limit
            }
            Err(e) => panic!("{bad}: wrong error {e:?}"),
            Ok(()) => panic!("{bad}: accepted"),
        }
    }

    #[test]
    fn entry_count_and_paths_are_limited() {
        let few = PullLimits {
            max_layer_entries: 2,
            ..PullLimits::default()
        };
        let files = [
            (T::Regular, "a", ""),
            (T::Regular, "b", ""),
            (T::Regular, "c", ""),
        ];
        assert_eq!(limit_hit(&files, few.clone(), "c"), Limit::LayerEntries);
        run_limited(&files[..2], &UnpackOptions::default(), &few)
            .1
            .unwrap();

        let shallow = PullLimits {
            max_path_depth: 3,
            ..PullLimits::default()
        };
        run_limited(
            &[(T::Regular, "a/b/c", "")],
            &UnpackOptions::default(),
            &shallow,
        )
        .1
        .unwrap();
        assert_eq!(
            limit_hit(&[(T::Regular, "./a/b/c/d", "")], shallow, "./a/b/c/d"),
            Limit::PathDepth
        );

        let short = PullLimits {
            max_path_length: 8,
            ..PullLimits::default()
        };
        assert_eq!(
            limit_hit(&[(T::Regular, "123456789", "")], short.clone(), "123456789"),
            Limit::PathLength
        );
        assert_eq!(
            limit_hit(&[(T::Symlink, "s", "/123456789")], short, "s"),
            Limit::PathLength
        );
    }

    fn refused(entries: &[(tar::EntryType, &str, &str)], bad: &str) {
        let (outer, r) = run(entries, &UnpackOptions::default());
        match r {
            Err(UnpackError::Unsafe { entry, reason }) => assert_eq!(entry, bad, "{reason}"),
            Err(e) => panic!("{bad}: wrong error {e:?}"),
            Ok(()) => panic!("{bad}: accepted"),
        }
        // Nothing was written beside the layer directory.
        let names: Vec<_> = std::fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["layer"], "{bad}: wrote outside the layer");
    }

    use tar::EntryType as T;

    #[test]
    fn refuses_parent_components() {
        refused(&[(T::Regular, "../evil", "")], "../evil");
        refused(&[(T::Regular, "a/../../evil", "")], "a/../../evil");
    }

    #[test]
    fn refuses_absolute_paths() {
        refused(&[(T::Regular, "/evil", "")], "/evil");
    }

    #[test]
    fn refuses_writes_through_escaping_symlinks() {
        refused(
            &[(T::Symlink, "up", ".."), (T::Regular, "up/evil", "")],
            "up/evil",
        );
        refused(
            &[(T::Symlink, "abs", "/tmp"), (T::Regular, "abs/evil", "")],
            "abs/evil",
        );
        refused(
            &[
                (T::Directory, "d", ""),
                (T::Symlink, "d/up", "../.."),
                (T::Directory, "d/up/x", ""),
            ],
            "d/up/x",
        );
    }

    #[test]
    fn follows_symlinks_that_stay_inside() {
        let (outer, r) = run(
            &[
                (T::Directory, "usr/lib", ""),
                (T::Symlink, "lib", "usr/lib"),
                (T::Regular, "lib/f", ""),
            ],
            &UnpackOptions::default(),
        );
        r.unwrap();
        assert_eq!(
            std::fs::read(outer.path().join("layer/usr/lib/f")).unwrap(),
            b"data"
        );
    }

    #[test]
    fn refuses_escaping_hardlinks() {
        refused(&[(T::Link, "h", "../../etc/passwd")], "h");
        refused(&[(T::Link, "h", "/etc/passwd")], "h");
        refused(&[(T::Symlink, "up", ".."), (T::Link, "h", "up/x")], "h");
        refused(&[(T::Link, "h", "not-here")], "h");
    }

    #[test]
    fn hardlinks_inside_work() {
        let (outer, r) = run(
            &[(T::Regular, "a", ""), (T::Link, "b", "a")],
            &UnpackOptions::default(),
        );
        r.unwrap();
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(outer.path().join("layer/a")).unwrap();
        let b = std::fs::metadata(outer.path().join("layer/b")).unwrap();
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn refuses_devices_unless_allowed() {
        refused(&[(T::Char, "dev/null", "")], "dev/null");
        refused(&[(T::Block, "dev/sda", "")], "dev/sda");
        let (outer, r) = run(
            &[(T::Char, "null", "")],
            &UnpackOptions {
                allow_devices: true,
            },
        );
        r.unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(outer.path().join("layer/null"))
            .unwrap()
            .file_type()
            .is_char_device());
        let (_o, r) = run(&[(T::Fifo, "fifo", "")], &UnpackOptions::default());
        r.unwrap();
    }

    #[test]
    fn refuses_bad_whiteouts() {
        refused(&[(T::Regular, ".wh...", "")], ".wh...");
        refused(
            &[(T::Symlink, "up", ".."), (T::Regular, "up/.wh.x", "")],
            "up/.wh.x",
        );
    }

    #[test]
    fn removal_does_not_recurse_with_the_depth() {
        let outer = tempfile::tempdir().unwrap();
        let top = outer.path().join("layer");
        std::fs::create_dir(&top).unwrap();
        let mut fd = rustix::fs::open(&top, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..5000 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            std::fs::write(
                format!("/proc/self/fd/{}/f", std::os::fd::AsRawFd::as_raw_fd(&fd)),
                b"x",
            )
            .unwrap();
            rustix::fs::symlinkat("f", &fd, "s").unwrap();
            fd = rustix::fs::openat(&fd, "d", dir_flags(), Mode::empty()).unwrap();
        }
        drop(fd);
        // A recursive removal needs far more than 64 KiB of stack for 5000 levels.
        let t = top.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_tree(&t).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read_dir(outer.path()).unwrap().count(), 0);
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let (outer, r) = run(
            &[
                (T::Directory, "x", ""),
                (T::Regular, "x/inner", ""),
                (T::Regular, "x", ""),
                (T::Symlink, "s", "x"),
                (T::Regular, "s", ""),
            ],
            &UnpackOptions::default(),
        );
        r.unwrap();
        let l = outer.path().join("layer");
        assert!(std::fs::symlink_metadata(l.join("x")).unwrap().is_file());
        assert!(std::fs::symlink_metadata(l.join("s")).unwrap().is_file());
    }
}
