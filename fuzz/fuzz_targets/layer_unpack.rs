//! Image layer unpacking (image-rs `unpack`): a tar stream from a registry blob, written
//! below a fresh temporary directory that is removed after each input. Optionally
//! gunzipped first, as the pull pipeline does for `+gzip` layers.
//!
//! Limits, so the fuzzer cannot fill the disk: the decompressed stream is cut at 8 MiB,
//! and RLIMIT_FSIZE caps any one file at 8 MiB (SIGXFSZ ignored, so an oversized write
//! is an `EFBIG` error the unpacker reports).
//!
//! Input: first byte bit 0 set = the rest is gzip; otherwise a plain tar.
#![no_main]

use std::io::Read;
use std::sync::Once;

use image_rs::unpack::{unpack_for_fuzzing, UnpackOptions};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 8 << 20;

fn limits() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal disposition to SIG_IGN and an rlimit of this process
        // has no memory-safety preconditions.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: LIMIT, rlim_max: LIMIT };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
        }
    });
}

fuzz_target!(|data: &[u8]| {
    limits();
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(dir) = tempfile::Builder::new().prefix("fuzz-unpack").tempdir() else { return };
    let dest = dir.path().join("layer");
    if std::fs::create_dir(&dest).is_err() {
        return;
    }
    let opts = UnpackOptions::default();
    let _ = if sel & 1 == 1 {
        unpack_for_fuzzing(flate2::read::GzDecoder::new(rest).take(LIMIT), &dest, &opts)
    } else {
        unpack_for_fuzzing(rest, &dest, &opts)
    };
    // TempDir's drop removes the tree (as root, whatever modes the layer set).
    drop(dir);
});
