//! Pull throughput from the loopback registry, side by side with the floor.
//!
//! `cargo bench -p image-rs --bench pull` builds the ~200 MB fixtures once
//! (tests/registry/bench-fixture.sh; `BENCH_IMAGE_MB` changes the size), then for the plain
//! and the encrypted image times, best of `BENCH_ITERS` (default 3) runs, each in a fresh
//! store:
//! * image-rs: `ImageStore::pull` (registry → digest → [decrypt] → gunzip → diff_id →
//!   unpack) into an empty cache;
//! * the floor: `skopeo copy` (with `--decryption-key` for the encrypted image) to an OCI
//!   layout, then `umoci unpack` of it.
//!
//! Figures are MB/s of compressed blob bytes and of unpacked file bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image_rs::{ImageStore, PullOptions, RegistryConfig};

const REGISTRY: &str = "127.0.0.1:5000";

fn fixture_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("KATA_CC_REGISTRY_DIR")
            .unwrap_or_else(|_| "/var/tmp/kata-cc-registry".into()),
    )
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn tree_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        if md.is_dir() {
            total += tree_bytes(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("image-rs-bench")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// One image-rs pull into a fresh store: (seconds, compressed bytes, unpacked bytes).
fn ours(
    rt: &tokio::runtime::Runtime,
    name: &str,
    encrypted: bool,
) -> Result<(Duration, u64, u64), String> {
    let dir = scratch();
    let store = ImageStore::new(
        dir.path().join("store"),
        RegistryConfig {
            insecure_registries: vec![REGISTRY.into()],
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut opts = PullOptions::default();
    if encrypted {
        let key = std::fs::read(fixture_dir().join("keys/priv.pem")).map_err(|e| e.to_string())?;
        opts.keys = Some(Arc::new(
            image_rs::decrypt::LocalKeys::new().with_private_key(key),
        ));
    }
    let image: image_rs::Reference = format!("{REGISTRY}/{name}:latest")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let start = Instant::now();
    let pulled = rt.block_on(store.pull(&image, &opts)).map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        s
    })?;
    let elapsed = start.elapsed();
    let unpacked = pulled.layer_dirs.iter().map(|d| tree_bytes(d)).sum();
    let client = image_rs::RegistryClient::new(
        Arc::new(RegistryConfig {
            insecure_registries: vec![REGISTRY.into()],
            ..Default::default()
        }),
        image_rs::RegistryAuth::Anonymous,
    )
    .map_err(|e| e.to_string())?;
    let resolved = rt
        .block_on(client.resolve(&image))
        .map_err(|e| e.to_string())?;
    let compressed = resolved
        .manifest
        .layers
        .iter()
        .map(|l| l.size.max(0) as u64)
        .sum();
    Ok((elapsed, compressed, unpacked))
}

/// skopeo copy to an OCI layout + umoci unpack.
fn floor(name: &str, encrypted: bool) -> Result<Duration, String> {
    let dir = scratch();
    let layout = format!("oci:{}:img", dir.path().join("oci").display());
    let start = Instant::now();
    let mut copy = Command::new("skopeo");
    copy.args(["--insecure-policy", "copy", "-q", "--src-tls-verify=false"]);
    if encrypted {
        copy.arg("--decryption-key")
            .arg(fixture_dir().join("keys/priv.pem"));
    }
    copy.arg(format!("docker://{REGISTRY}/{name}:latest"))
        .arg(&layout);
    run(&mut copy)?;
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:img", dir.path().join("oci").display()))
        .arg(dir.path().join("bundle")))?;
    Ok(start.elapsed())
}

fn best<T>(
    iters: usize,
    mut f: impl FnMut() -> Result<T, String>,
    key: impl Fn(&T) -> Duration,
) -> Result<T, String> {
    let mut best: Option<T> = None;
    for _ in 0..iters {
        let r = f()?;
        if best.as_ref().is_none_or(|b| key(&r) < key(b)) {
            best = Some(r);
        }
    }
    best.ok_or_else(|| "no iterations".into())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: only run when asked.
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/bench-fixture.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "bench fixtures could not be built");
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mb = |b: u64, d: Duration| b as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{:<10} {:>9} {:>9} | {:>8} {:>12} {:>12} | {:>8} {:>12} {:>12}",
        "image",
        "blobs MB",
        "files MB",
        "image-rs",
        "MB/s blobs",
        "MB/s files",
        "floor",
        "MB/s blobs",
        "MB/s files"
    );
    for (name, encrypted) in [("bench", false), ("bench-enc", true)] {
        let ours = best(iters, || ours(&rt, name, encrypted), |r| r.0);
        let floor = best(iters, || floor(name, encrypted), |d| *d);
        match (ours, floor) {
            (Ok((d, c, u)), Ok(f)) => println!(
                "{name:<10} {:>9.1} {:>9.1} | {:>7.2}s {:>12.1} {:>12.1} | {:>7.2}s {:>12.1} {:>12.1}",
                c as f64 / 1e6,
                u as f64 / 1e6,
                d.as_secs_f64(),
                mb(c, d),
                mb(u, d),
                f.as_secs_f64(),
                mb(c, f),
                mb(u, f)
            ),
            (ours, floor) => {
                println!("{name:<10} image-rs: {}", ours.map_or_else(|e| format!("unavailable: {e}"), |r| format!("{:.2}s", r.0.as_secs_f64())));
                println!("{name:<10} floor:    {}", floor.map_or_else(|e| format!("unavailable: {e}"), |d| format!("{:.2}s", d.as_secs_f64())));
            }
        }
    }
}
