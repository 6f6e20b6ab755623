//! `kata-cc-snapshotter`: the host half of guest pull.
//!
//! A containerd proxy snapshotter (gRPC on a unix socket) that keeps image layers off the
//! host. When containerd unpacks a pulled image it asks the snapshotter to prepare each
//! layer; we record the layer as a committed snapshot and answer AlreadyExists, so
//! containerd neither fetches nor unpacks it. A container's snapshot then gets one mount
//! the host can mount but that holds nothing: a read-only bind of the empty directory
//! `<root>/guest-pull-rootfs`, with the image reference in the option
//! `kata-cc.image-ref=<image reference>` ([`labels::IMAGE_REF_OPTION`]). The kata-cc shim
//! turns that into an `image_guest_pull` storage: the guest pulls the image itself.
//!
//! Only metadata is kept (`<root>/metadata.json`, written atomically). See
//! `docs/snapshotter.md`.

pub mod containerd_api;
pub mod error;
pub mod filter;
pub mod labels;
pub mod persist;
pub mod pull;
pub mod register;
pub mod rootfs;
pub mod server;
pub mod service;
pub mod store;

pub use error::Error;
pub use service::GuestPullSnapshotter;
