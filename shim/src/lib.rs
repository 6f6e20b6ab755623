//! kata-cc's containerd shim v2 (`containerd-shim-kata-cc-v2`): one VM per pod, the
//! containerd Task API relayed to the guest agent over hybrid vsock. See `docs/shim.md`.

pub mod config;
pub mod features;
pub mod io;
pub mod portforward;
pub mod rootfs;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod stats;
