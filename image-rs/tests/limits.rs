//! Pull limits against a hostile registry: a loopback registry serving crafted images
//! (gzip bombs, many tiny files, deep and long paths, too many layers, manifests declaring
//! huge sizes, a full cache). Each is refused with the limit named, and leaves the store
//! as it was: no temporary dir, no layer, no image metadata, nothing charged to the cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use image_rs::{ImageError, ImageStore, Limit, PullLimits, PullOptions, RegistryConfig};
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A layer as served: blob bytes, the diff_id the config gives, and the size the
/// manifest declares (normally the blob's).
#[derive(Clone)]
struct Layer {
    blob: Bytes,
    diff_id: String,
    declared: Option<u64>,
}

/// Writes to a gzip encoder and a diff_id hasher at once: a layer of any decompressed
/// size is made without ever holding its tar.
struct LayerWriter {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    hash: Sha256,
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.gz.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A gzip layer built by `fill` through a tar builder.
fn layer(fill: impl FnOnce(&mut tar::Builder<&mut LayerWriter>)) -> Layer {
    let mut w = LayerWriter {
        gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best()),
        hash: Sha256::new(),
    };
    {
        let mut b = tar::Builder::new(&mut w);
        fill(&mut b);
        b.finish().unwrap();
    }
    let diff_id = format!("sha256:{}", hex::encode(w.hash.finalize()));
    Layer {
        blob: Bytes::from(w.gz.finish().unwrap()),
        diff_id,
        declared: None,
    }
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// `files` files of `size` bytes each (zeros), streamed.
fn files(prefix: &str, count: usize, size: u64) -> Layer {
    layer(|b| {
        for i in 0..count {
            let mut h = header(size);
            let zeros = std::io::Read::take(std::io::repeat(0), size);
            b.append_data(&mut h, format!("{prefix}{i}"), zeros)
                .unwrap();
        }
    })
}

/// One file at `path` (GNU long names as needed).
fn one_file(path: &str) -> Layer {
    layer(|b| {
        let mut h = header(1);
        b.append_data(&mut h, path, &b"x"[..]).unwrap();
    })
}

struct Registry {
    addr: SocketAddr,
    content: Mutex<HashMap<String, (String, Bytes)>>,
    blob_gets: AtomicUsize,
}

impl Registry {
    /// Serve an image `name:latest` made of `layers`.
    fn add_image(&self, name: &str, layers: &[Layer]) {
        let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {}
        }))
        .unwrap();
        let descs: Vec<_> = layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": TAR_GZIP,
                    "digest": sha256(&l.blob),
                    "size": l.declared.unwrap_or(l.blob.len() as u64),
                })
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": descs,
        }))
        .unwrap();
        let mut c = self.content.lock().unwrap();
        let blob = |d: &str| format!("/v2/{name}/blobs/{d}");
        for l in layers {
            c.insert(
                blob(&sha256(&l.blob)),
                ("application/octet-stream".into(), l.blob.clone()),
            );
        }
        c.insert(
            blob(&sha256(&config)),
            ("application/octet-stream".into(), Bytes::from(config)),
        );
        c.insert(
            format!("/v2/{name}/manifests/latest"),
            (OCI_MANIFEST.into(), Bytes::from(manifest)),
        );
    }

    fn image(&self, name: &str) -> image_rs::Reference {
        format!("{}/{name}:latest", self.addr).parse().unwrap()
    }
}

async fn handle(
    reg: Arc<Registry>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path.contains("/blobs/") {
        reg.blob_gets.fetch_add(1, Ordering::SeqCst);
    }
    let found = reg.content.lock().unwrap().get(&path).cloned();
    Ok(match found {
        Some((ct, body)) => Response::builder()
            .status(200)
            .header("content-type", ct)
            .body(Full::new(body))
            .unwrap(),
        None => Response::builder()
            .status(if path == "/v2/" { 200 } else { 404 })
            .body(Full::new(Bytes::new()))
            .unwrap(),
    })
}

async fn registry() -> (Arc<Registry>, tempfile::TempDir, ImageStore) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reg = Arc::new(Registry {
        addr: listener.local_addr().unwrap(),
        content: Mutex::default(),
        blob_gets: AtomicUsize::new(0),
    });
    let r = reg.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(r.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::Builder::new()
        .prefix("image-rs-limits")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cfg = RegistryConfig {
        insecure_registries: vec![reg.addr.to_string()],
        ..Default::default()
    };
    let store = ImageStore::new(dir.path().join("store"), cfg).unwrap();
    (reg, dir, store)
}

fn with(limits: PullLimits) -> PullOptions {
    PullOptions {
        limits,
        ..Default::default()
    }
}

/// The limits with a roomy cache (the default depends on this machine's RAM).
fn limits() -> PullLimits {
    PullLimits {
        max_cache_bytes: 1 << 30,
        ..PullLimits::default()
    }
}

/// Names under `dir` (recursively for layers/ and images/).
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in [
        "tmp",
        "layers/sha256",
        "layers/sha512",
        "images/sha256",
        "images/sha512",
    ] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            out.push(format!(
                "{sub}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

fn assert_clean(store: &ImageStore) {
    assert_eq!(names(store.root()), Vec::<String>::new(), "store not clean");
    assert_eq!(store.cache_bytes(), 0, "bytes still charged to the cache");
}

/// The error is LimitExceeded for `limit` on `what` `digest`, and says so.
fn assert_limit(err: &ImageError, limit: Limit, what: &str, digest: &str) -> (u64, u64) {
    let msg = err.to_string();
    match err {
        ImageError::LimitExceeded {
            limit: l,
            what: w,
            digest: d,
            max,
            value,
            ..
        } => {
            assert_eq!((*l, w.as_str(), d.as_str()), (limit, what, digest), "{msg}");
            assert!(value > max, "{msg}");
            assert!(msg.contains(limit.name()) && msg.contains(digest), "{msg}");
            assert!(msg.contains(&value.to_string()), "{msg}");
            (*max, *value)
        }
        e => panic!("expected {limit} exceeded, got {e}"),
    }
}

#[tokio::test]
async fn gzip_bomb_is_refused_while_streaming() {
    let (reg, _d, store) = registry().await;
    // 64 MiB of zeros in one file: about 64 KiB of gzip, never held decompressed.
    let bomb = files("zeros", 1, 64 << 20);
    assert!(bomb.blob.len() < 1 << 20);
    reg.add_image("bomb", std::slice::from_ref(&bomb));
    let l = PullLimits {
        max_layer_uncompressed_bytes: 4 << 20,
        ..limits()
    };
    let err = store.pull(&reg.image("bomb"), &with(l)).await.unwrap_err();
    let (max, value) = assert_limit(&err, Limit::LayerUncompressed, "layer", &sha256(&bomb.blob));
    // Refused at the limit, not after the whole stream.
    assert!(value <= max + (1 << 20), "{err}");
    assert_clean(&store);
}

#[tokio::test]
async fn image_uncompressed_total_counts_every_layer_and_leaves_nothing() {
    let (reg, _d, store) = registry().await;
    let (a, b) = (files("a", 1, 3 << 20), files("b", 1, 3 << 20));
    reg.add_image("two", &[a.clone(), b.clone()]);
    let l = PullLimits {
        max_image_uncompressed_bytes: 5 << 20,
        ..limits()
    };
    let err = store
        .pull(&reg.image("two"), &with(l.clone()))
        .await
        .unwrap_err();
    assert_limit(&err, Limit::ImageUncompressed, "layer", &sha256(&b.blob));
    // The first layer was complete, but the failed pull does not keep it.
    assert_clean(&store);

    // A cached layer counts too: with `a` cached by another image, the total is
    // checked without streaming it again.
    reg.add_image("a", std::slice::from_ref(&a));
    store.pull(&reg.image("a"), &with(limits())).await.unwrap();
    let cached = store.cache_bytes();
    assert!(cached > 3 << 20);
    let two = PullLimits {
        max_image_uncompressed_bytes: 5 << 20,
        max_layer_uncompressed_bytes: 4 << 20,
        ..limits()
    };
    let reg_b_first = [b.clone(), a.clone()];
    reg.add_image("ba", &reg_b_first);
    let err = store.pull(&reg.image("ba"), &with(two)).await.unwrap_err();
    // `b` streams first (3 MiB), then the cached `a` pushes the image over.
    let manifest = match &err {
        ImageError::LimitExceeded { what, digest, .. } if what == "image" => digest.clone(),
        e => panic!("{e}"),
    };
    assert_limit(&err, Limit::ImageUncompressed, "image", &manifest);
    // `a` belongs to the stored image `a` and stays; `b` is gone.
    assert_eq!(store.cache_bytes(), cached);
    assert_eq!(
        names(store.root())
            .iter()
            .filter(|n| n.starts_with("layers/"))
            .count(),
        1
    );
}

#[tokio::test]
async fn many_tiny_files_are_refused() {
    let (reg, _d, store) = registry().await;
    let many = files("f", 2000, 0);
    reg.add_image("many", std::slice::from_ref(&many));
    let l = PullLimits {
        max_layer_entries: 1000,
        ..limits()
    };
    let err = store.pull(&reg.image("many"), &with(l)).await.unwrap_err();
    assert_limit(&err, Limit::LayerEntries, "layer", &sha256(&many.blob));
    assert!(err.to_string().contains("entry \"f1000\""), "{err}");
    assert_clean(&store);

    let (x, y) = (files("x", 600, 0), files("y", 600, 0));
    reg.add_image("xy", &[x, y.clone()]);
    let l = PullLimits {
        max_image_entries: 1000,
        ..limits()
    };
    let err = store.pull(&reg.image("xy"), &with(l)).await.unwrap_err();
    assert_limit(&err, Limit::ImageEntries, "layer", &sha256(&y.blob));
    assert_clean(&store);
}

#[tokio::test]
async fn deep_and_long_paths_are_refused() {
    let (reg, _d, store) = registry().await;
    let deep = one_file(&format!("{}f", "d/".repeat(200)));
    reg.add_image("deep", std::slice::from_ref(&deep));
    let err = store
        .pull(&reg.image("deep"), &with(limits()))
        .await
        .unwrap_err();
    let (max, value) = assert_limit(&err, Limit::PathDepth, "layer", &sha256(&deep.blob));
    assert_eq!((max, value), (128, 201));
    assert_clean(&store);

    let name = "n".repeat(250);
    let long = one_file(&vec![name.as_str(); 20].join("/"));
    reg.add_image("long", std::slice::from_ref(&long));
    let err = store
        .pull(&reg.image("long"), &with(limits()))
        .await
        .unwrap_err();
    let (max, value) = assert_limit(&err, Limit::PathLength, "layer", &sha256(&long.blob));
    assert_eq!((max, value), (4096, 20 * 251 - 1));
    assert_clean(&store);
}

#[tokio::test]
async fn too_many_layers_are_refused_before_any_fetch() {
    let (reg, _d, store) = registry().await;
    let layers: Vec<_> = (0..129).map(|i| files(&format!("l{i}-"), 1, 0)).collect();
    reg.add_image("tall", &layers);
    let err = store
        .pull(&reg.image("tall"), &with(limits()))
        .await
        .unwrap_err();
    let manifest = match &err {
        ImageError::LimitExceeded { digest, .. } => digest.clone(),
        e => panic!("{e}"),
    };
    let (max, value) = assert_limit(&err, Limit::Layers, "image", &manifest);
    assert_eq!((max, value), (128, 129));
    assert_eq!(
        reg.blob_gets.load(Ordering::SeqCst),
        0,
        "a blob was fetched"
    );
    assert_clean(&store);
}

#[tokio::test]
async fn huge_declared_sizes_are_refused_before_any_fetch() {
    let (reg, _d, store) = registry().await;
    let mut huge = files("h", 1, 1);
    huge.declared = Some(1 << 40);
    reg.add_image("huge", std::slice::from_ref(&huge));
    let err = store
        .pull(&reg.image("huge"), &with(limits()))
        .await
        .unwrap_err();
    let (max, value) = assert_limit(&err, Limit::LayerCompressed, "layer", &sha256(&huge.blob));
    assert_eq!((max, value), (4 << 30, 1 << 40));

    // Three layers of 3 GiB each: each under the layer limit, 9 GiB over the image's.
    let big: Vec<_> = (0..3)
        .map(|i| {
            let mut l = files(&format!("b{i}"), 1, 1);
            l.declared = Some(3 << 30);
            l
        })
        .collect();
    reg.add_image("big", &big);
    let err = store
        .pull(&reg.image("big"), &with(limits()))
        .await
        .unwrap_err();
    let manifest = match &err {
        ImageError::LimitExceeded { digest, .. } => digest.clone(),
        e => panic!("{e}"),
    };
    assert_limit(&err, Limit::ImageCompressed, "image", &manifest);
    assert_eq!(
        reg.blob_gets.load(Ordering::SeqCst),
        0,
        "a blob was fetched"
    );
    assert_clean(&store);
}

#[tokio::test]
async fn a_pull_that_would_overfill_the_cache_is_refused() {
    let (reg, _d, store) = registry().await;
    let (a, b) = (files("a", 1, 2 << 20), files("b", 1, 2 << 20));
    reg.add_image("a", std::slice::from_ref(&a));
    reg.add_image("b", std::slice::from_ref(&b));
    let l = PullLimits {
        max_cache_bytes: 3 << 20,
        ..limits()
    };
    store.pull(&reg.image("a"), &with(l.clone())).await.unwrap();
    let before = store.cache_bytes();
    let listing = names(store.root());
    let err = store
        .pull(&reg.image("b"), &with(l.clone()))
        .await
        .unwrap_err();
    assert_limit(&err, Limit::CacheBytes, "layer", &sha256(&b.blob));
    assert_eq!(store.cache_bytes(), before);
    assert_eq!(
        names(store.root()),
        listing,
        "the refused pull left something"
    );
    // The cached image is still usable, and a reopened store counts it again.
    store.pull(&reg.image("a"), &with(l.clone())).await.unwrap();
    let reopened = ImageStore::new(
        store.root(),
        RegistryConfig {
            insecure_registries: vec![reg.addr.to_string()],
            ..Default::default()
        },
    )
    .unwrap();
    let measured = reopened.cache_bytes();
    assert!(measured.abs_diff(before) <= 4096, "{measured} vs {before}");
    let err = reopened.pull(&reg.image("b"), &with(l)).await.unwrap_err();
    assert_limit(&err, Limit::CacheBytes, "layer", &sha256(&b.blob));
}
