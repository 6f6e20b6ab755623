//! The guest agent's CopyFile (`copy_file::copy_file`): a host-chosen path, mode, owner,
//! offset and data written below a fresh temporary shared directory, which is removed
//! after each input. The host can only ever write below that root: after every request
//! nothing may exist outside it (checked on a sentinel directory beside the root).
//!
//! Sizes are bounded by the harness (offsets and file sizes are taken modulo 1 MiB) so
//! the fuzzer cannot fill the disk; the agent's own bounds are not what is fuzzed here.
//! Symlink targets that are absolute or contain `..` are pointed into the sentinel
//! directory, so that a bug that follows a planted link is caught there instead of
//! writing to the fuzzing machine's own files.
//!
//! Input: a protobuf `CopyFileRequest`, or several separated by `SEP` (a later request
//! can meet what an earlier one created, e.g. a planted symlink).
#![no_main]

use guest_agent::copy_file::{copy_file, CopyFileArgs};
use kata_cc_fuzz::{split_all, SEP};
use libfuzzer_sys::fuzz_target;
use protocols::agent::CopyFileRequest;
use protocols::protobuf::Message as _;

const ROOT: &str = "/run/kata-containers/shared/containers";
const BOUND: i64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::Builder::new().prefix("fuzz-copyfile").tempdir() else { return };
    let root = dir.path().join("shared");
    let outside = dir.path().join("outside");
    if std::fs::create_dir(&outside).is_err() {
        return;
    }
    for part in split_all(data, SEP).into_iter().take(4) {
        let Ok(r) = CopyFileRequest::parse_from_bytes(part) else { continue };
        // Paths are sent relative to the guest's shared directory; map them below ours.
        let path = match r.path.strip_prefix(ROOT) {
            Some(rest) => format!("{}{rest}", root.display()),
            None => r.path.clone(),
        };
        let mut data = r.data.clone();
        if r.file_mode & 0o170000 == 0o120000 && (data.starts_with(b"/") || data.windows(2).any(|w| w == b"..")) {
            data = outside.join("target").into_os_string().into_encoded_bytes();
        }
        let args = CopyFileArgs {
            path: &path,
            file_size: r.file_size % BOUND,
            file_mode: r.file_mode,
            dir_mode: r.dir_mode,
            uid: r.uid,
            gid: r.gid,
            offset: r.offset % BOUND,
            data: &data,
        };
        let _ = copy_file(&root, &args);
        let escaped = std::fs::read_dir(&outside).map(|d| d.count()).unwrap_or(0);
        assert_eq!(escaped, 0, "CopyFile wrote outside the shared root: {path:?}");
    }
    drop(dir);
});
