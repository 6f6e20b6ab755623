//! The kata-cc agent API: wire types, agent addresses and the host's async client.
//!
//! The guest agent serves ttrpc on vsock port 1024 (by default). This crate holds
//! everything both ends share:
//!
//! * our own `proto/*.proto` files, wire-compatible with the Kata Containers agent
//!   API (service `grpc.AgentService` with 42 methods, and `grpc.Health`), compiled
//!   at build time into [`agent`], [`oci`], [`types`], [`csi`], [`health`] (messages)
//!   and [`agent_ttrpc`], [`health_ttrpc`] (async clients, server traits and the
//!   `create_*` registration helpers);
//! * [`AGENT_RPCS`] and [`HEALTH_RPCS`], the method names read from the proto files,
//!   so a test elsewhere can prove that every method passes the agent's policy gate;
//! * [`AgentAddr`], the `vsock://CID:PORT`, `hvsock://PATH:PORT` and `unix://PATH`
//!   addresses, and [`AgentClient`], which dials one of them;
//! * [`initdata`], the measured pod configuration: TOML, annotation, block device, digests.
//!
//! # Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use protocols::{agent, AgentAddr, AgentClient, ConnectOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let addr: AgentAddr = "hvsock:///run/kata-cc/pod1/vm.vsock:1024".parse()?;
//! // Keep trying while the VM boots, until the agent reports SERVING.
//! let deadline = Instant::now() + Duration::from_secs(30);
//! let client = AgentClient::wait_ready(&addr, ConnectOptions::default(), deadline).await?;
//! println!("agent {}", client.version().await?.agent_version);
//!
//! let mut req = agent::StartContainerRequest::new();
//! req.container_id = "c1".into();
//! client.agent().start_container(client.context(), &req).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The generated modules are produced by `build.rs` into `OUT_DIR` and attached here
//! through `#[path]` module declarations (see `build.rs`); nothing is generated into
//! the source tree.

pub mod addr;
pub mod client;
pub mod initdata;
/// Conversion between the wire spec ([`oci`]) and the `oci-spec` runtime types.
pub mod convert;

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

pub use addr::{AddrError, AgentAddr, DEFAULT_AGENT_PORT};
pub use client::{context_with, AgentClient, ClientError, ConnectOptions};

/// The ttrpc runtime the generated code is built against, for callers that need
/// its types (`Server`, `Error`, `Code`, `TtrpcContext`) at the matching version.
pub use ttrpc;

/// The protobuf runtime of the generated messages (`Message`, `MessageField`, ...).
pub use protobuf;

/// `google.protobuf.Empty`, the reply of most agent methods (`empty::Empty`).
pub use protobuf::well_known_types::empty;

/// Fully-qualified name of the agent service, as it appears in ttrpc method paths.
pub const AGENT_SERVICE: &str = "grpc.AgentService";

/// Fully-qualified name of the health service.
pub const HEALTH_SERVICE: &str = "grpc.Health";
