//! Resource limits of a pull: what a hostile registry may make the guest hold.
//!
//! The layer cache lives in guest RAM (the agent's tmpfs), so every quantity a registry
//! controls is bounded, and every bound is enforced while the bytes stream (a counter in
//! the pipeline, checks per tar entry), never after a layer was written:
//!
//! * declared in the manifest, checked before any layer is fetched: the number of layers,
//!   each layer's compressed size, their sum (the blob reader already refuses a blob
//!   longer than its descriptor, so declared = received);
//! * while a layer streams: its decompressed tar bytes, the image's decompressed bytes
//!   (cached layers included), the layer cache's total, the tar entries of the layer and
//!   of the image, each entry's path depth and length (and a link target's length).
//!
//! Manifests and configs are bounded by [`RegistryConfig`](crate::RegistryConfig)
//! (`max_manifest_size`, `max_config_size`).

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

/// The limits of one pull. The defaults suit an image of a few GiB; the cache total
/// defaults to a share of guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullLimits {
    /// Layers in one image.
    pub max_layers: u64,
    /// Compressed size of one layer blob (as declared in the manifest).
    pub max_layer_compressed_bytes: u64,
    /// Decompressed (tar stream) size of one layer.
    pub max_layer_uncompressed_bytes: u64,
    /// Compressed size of all of an image's layers (as declared).
    pub max_image_compressed_bytes: u64,
    /// Decompressed size of all of an image's layers, cached ones included.
    pub max_image_uncompressed_bytes: u64,
    /// Tar entries in one layer.
    pub max_layer_entries: u64,
    /// Tar entries in all of an image's layers, cached ones included.
    pub max_image_entries: u64,
    /// Components of an entry's path.
    pub max_path_depth: u64,
    /// Bytes of an entry's path, and of a link's target.
    pub max_path_length: u64,
    /// Decompressed bytes of all layers in the store's cache; a layer that would go past
    /// it is refused (nothing is evicted: layers may be in use by running containers).
    pub max_cache_bytes: u64,
}

const GIB: u64 = 1 << 30;

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits {
            max_layers: 128,
            max_layer_compressed_bytes: 4 * GIB,
            max_layer_uncompressed_bytes: 8 * GIB,
            max_image_compressed_bytes: 8 * GIB,
            max_image_uncompressed_bytes: 16 * GIB,
            max_layer_entries: 500_000,
            max_image_entries: 1_000_000,
            max_path_depth: 128,
            max_path_length: 4096,
            max_cache_bytes: default_cache_bytes(),
        }
    }
}

/// 40 % of guest RAM (`MemTotal`), or 1 GiB when it cannot be read: the guest's root
/// tmpfs holds at most half of RAM, and container upper dirs share it with the cache.
pub fn default_cache_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .map_or(GIB, |total| total / 10 * 4)
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Which limit was hit; displayed as its `[image.limits]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`PullLimits::max_layers`].
    Layers,
    /// [`PullLimits::max_layer_compressed_bytes`].
    LayerCompressed,
    /// [`PullLimits::max_layer_uncompressed_bytes`].
    LayerUncompressed,
    /// [`PullLimits::max_image_compressed_bytes`].
    ImageCompressed,
    /// [`PullLimits::max_image_uncompressed_bytes`].
    ImageUncompressed,
    /// [`PullLimits::max_layer_entries`].
    LayerEntries,
    /// [`PullLimits::max_image_entries`].
    ImageEntries,
    /// [`PullLimits::max_path_depth`].
    PathDepth,
    /// [`PullLimits::max_path_length`].
    PathLength,
    /// [`PullLimits::max_cache_bytes`].
    CacheBytes,
}

impl Limit {
    /// The limit's name (its key in `[image.limits]` and its field in [`PullLimits`]).
    pub fn name(self) -> &'static str {
        match self {
            Limit::Layers => "max_layers",
            Limit::LayerCompressed => "max_layer_compressed_bytes",
            Limit::LayerUncompressed => "max_layer_uncompressed_bytes",
            Limit::ImageCompressed => "max_image_compressed_bytes",
            Limit::ImageUncompressed => "max_image_uncompressed_bytes",
            Limit::LayerEntries => "max_layer_entries",
            Limit::ImageEntries => "max_image_entries",
            Limit::PathDepth => "max_path_depth",
            Limit::PathLength => "max_path_length",
            Limit::CacheBytes => "max_cache_bytes",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A limit hit while streaming; carried inside an `io::Error` (kind `InvalidData`) from
/// the counting reader, or returned by the unpacker.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{value} exceeds {limit} = {max}")]
pub(crate) struct LimitHit {
    pub(crate) limit: Limit,
    pub(crate) max: u64,
    pub(crate) value: u64,
}

impl LimitHit {
    /// The limit hit inside `e`, if `e` carries one.
    pub(crate) fn from_io(e: &io::Error) -> Option<&LimitHit> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<LimitHit>())
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

fn check(limit: Limit, max: u64, value: u64) -> Result<(), LimitHit> {
    if value > max {
        Err(LimitHit { limit, max, value })
    } else {
        Ok(())
    }
}

/// Size and entry count of one unpacked layer, as charged to the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LayerStats {
    /// Decompressed tar bytes (plus the zeros of sparse-file holes).
    pub(crate) bytes: u64,
    /// Tar entries.
    pub(crate) entries: u64,
}

/// The counters of one layer being unpacked: the layer's own totals against the layer
/// limits, the image's totals before this layer against the image limits, and the
/// store-wide cache total (shared with concurrent pulls) against the cache limit.
pub(crate) struct LayerMeter<'a> {
    limits: &'a PullLimits,
    image_before: LayerStats,
    cache: &'a AtomicU64,
    bytes: Cell<u64>,
    entries: Cell<u64>,
}

impl<'a> LayerMeter<'a> {
    /// A meter for a layer of an image that already holds `image_before`; charges
    /// go to `cache` (which the caller refunds with [`LayerMeter::bytes`] on failure).
    pub(crate) fn new(
        limits: &'a PullLimits,
        image_before: LayerStats,
        cache: &'a AtomicU64,
    ) -> Self {
        LayerMeter {
            limits,
            image_before,
            cache,
            bytes: Cell::new(0),
            entries: Cell::new(0),
        }
    }

    /// What was charged so far.
    pub(crate) fn stats(&self) -> LayerStats {
        LayerStats {
            bytes: self.bytes.get(),
            entries: self.entries.get(),
        }
    }

    /// Charge `n` decompressed bytes to the layer, the image and the cache.
    pub(crate) fn charge_bytes(&self, n: u64) -> Result<(), LimitHit> {
        let layer = self.bytes.get().saturating_add(n);
        // Charged to the cache first, so a refusal refunds exactly what `bytes` says.
        self.bytes.set(layer);
        let cache = self.cache.fetch_add(n, Ordering::SeqCst).saturating_add(n);
        let l = self.limits;
        check(
            Limit::LayerUncompressed,
            l.max_layer_uncompressed_bytes,
            layer,
        )?;
        check(
            Limit::ImageUncompressed,
            l.max_image_uncompressed_bytes,
            self.image_before.bytes.saturating_add(layer),
        )?;
        check(Limit::CacheBytes, l.max_cache_bytes, cache)
    }

    /// Count one tar entry.
    pub(crate) fn charge_entry(&self) -> Result<(), LimitHit> {
        let n = self.entries.get().saturating_add(1);
        self.entries.set(n);
        let l = self.limits;
        check(Limit::LayerEntries, l.max_layer_entries, n)?;
        check(
            Limit::ImageEntries,
            l.max_image_entries,
            self.image_before.entries.saturating_add(n),
        )
    }

    /// Check an entry's path (components, bytes) or a link target (bytes).
    pub(crate) fn check_path(&self, depth: Option<usize>, len: usize) -> Result<(), LimitHit> {
        let l = self.limits;
        check(Limit::PathLength, l.max_path_length, len as u64)?;
        match depth {
            Some(d) => check(Limit::PathDepth, l.max_path_depth, d as u64),
            None => Ok(()),
        }
    }
}

/// Charges every byte read through it to a [`LayerMeter`] and fails (with a
/// [`LimitHit`] inside the `io::Error`) once a limit is passed.
pub(crate) struct MeteredReader<'m, R> {
    inner: R,
    meter: &'m LayerMeter<'m>,
}

impl<'m, R: Read> MeteredReader<'m, R> {
    pub(crate) fn new(inner: R, meter: &'m LayerMeter<'m>) -> Self {
        MeteredReader { inner, meter }
    }
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter
            .charge_bytes(n as u64)
            .map_err(LimitHit::into_io)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn small() -> PullLimits {
        PullLimits {
            max_layer_uncompressed_bytes: 100,
            max_image_uncompressed_bytes: 150,
            max_cache_bytes: 1000,
            max_layer_entries: 3,
            max_image_entries: 4,
            ..PullLimits::default()
        }
    }

    #[test]
    fn meter_charges_layer_image_and_cache() {
        let limits = small();
        let cache = AtomicU64::new(0);
        let m = LayerMeter::new(&limits, LayerStats::default(), &cache);
        let mut out = Vec::new();
        let e = MeteredReader::new(&[0u8; 101][..], &m)
            .read_to_end(&mut out)
            .unwrap_err();
        let hit = LimitHit::from_io(&e).unwrap();
        assert_eq!(
            (hit.limit, hit.max, hit.value),
            (Limit::LayerUncompressed, 100, 101)
        );
        assert_eq!(cache.load(Ordering::SeqCst), m.stats().bytes);

        let before = LayerStats {
            bytes: 100,
            entries: 3,
        };
        let m = LayerMeter::new(&limits, before, &cache);
        let hit = m.charge_bytes(51).unwrap_err();
        assert_eq!((hit.limit, hit.value), (Limit::ImageUncompressed, 151));
        let hit = m
            .charge_entry()
            .and_then(|()| m.charge_entry())
            .unwrap_err();
        assert_eq!((hit.limit, hit.value), (Limit::ImageEntries, 5));

        let full = AtomicU64::new(990);
        let m = LayerMeter::new(&limits, LayerStats::default(), &full);
        let hit = m.charge_bytes(11).unwrap_err();
        assert_eq!((hit.limit, hit.value), (Limit::CacheBytes, 1001));
    }

    #[test]
    fn paths_are_bounded() {
        let limits = PullLimits {
            max_path_depth: 2,
            max_path_length: 5,
            ..PullLimits::default()
        };
        let cache = AtomicU64::new(0);
        let m = LayerMeter::new(&limits, LayerStats::default(), &cache);
        assert!(m.check_path(Some(2), 5).is_ok());
        assert_eq!(
            m.check_path(Some(3), 5).unwrap_err().limit,
            Limit::PathDepth
        );
        assert_eq!(m.check_path(None, 6).unwrap_err().limit, Limit::PathLength);
    }

    #[test]
    fn cache_default_follows_guest_memory() {
        assert_eq!(
            mem_total("MemTotal:        2048000 kB\nMemFree: 1 kB\n"),
            Some(2048000 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
        let d = default_cache_bytes();
        assert!(d > 0);
        assert!(PullLimits::default().max_layer_uncompressed_bytes >= 4 * GIB);
    }
}
