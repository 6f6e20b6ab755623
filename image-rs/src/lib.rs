//! Container images, opened inside the TEE.
//!
//! The pipeline for one layer, streaming, with no temporary copy of the blob:
//! registry body → blob digest check → [`decrypt`] (ocicrypt) → decompress → diff_id
//! check → unpack into a fresh directory, which joins the content-addressed layer cache
//! only after every check passed at end of stream. Image signatures ([`signature`]) are
//! checked on the manifest digest before any layer is fetched.
//!
//! # Example
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use image_rs::{ImageStore, PullOptions, RegistryConfig, mount_rootfs};
//!
//! let store = ImageStore::new("/run/kata-cc/images", RegistryConfig::default())?;
//! let image = "registry.example/app@sha256:...".parse()?;
//! let pulled = store.pull(&image, &PullOptions::default()).await?;
//! let rootfs = mount_rootfs(&pulled, std::path::Path::new("/run/kata-cc/c1"))?;
//! // ... run the container in rootfs.rootfs() ...
//! rootfs.unmount()?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod decrypt;
pub mod digest;
pub mod error;
pub mod limits;
pub mod mount;
pub mod registry;
pub mod signature;
pub mod store;
pub mod unpack;

pub use config::{merge_image_config, MergeError, UserDb};
pub use error::ImageError;
pub use limits::{Limit, PullLimits};
pub use mount::{mount_rootfs, RootfsMount};
pub use oci_client::secrets::RegistryAuth;
pub use oci_client::Reference;
pub use registry::{RegistryClient, RegistryConfig};
pub use store::{ImageStore, PullOptions, PulledImage};
pub use unpack::UnpackOptions;
