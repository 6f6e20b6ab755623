//! The kata-cc guest agent: PID 1 inside the pod VM.
//!
//! It serves the Kata agent API (`grpc.AgentService`, `grpc.Health`) over ttrpc on vsock
//! port 1024 (or a unix socket when run as a plain process for tests) and runs the pod's
//! containers with real Linux isolation. Every request passes one gate before its handler.
//!
//! Module map:
//! - [`service`]: the ttrpc services, generated from the single endpoint list in
//!   `endpoints.rs`; every method passes [`gate::Gate::check`] first;
//! - [`agent`]: state (sandbox, containers, processes, streams) and the handlers;
//! - [`runner`]: the single-threaded per-container helper process that owns youki's
//!   `libcontainer` calls and the waits of the container's processes;
//! - [`policy_gate`]: the Rego agent API policy as a gate check;
//! - [`no_tee`]: a `release-tee` agent without a TEE serves nothing but health checks;
//! - [`tee`]: which TEE the VM runs in (SEV-SNP, TDX, the simulated one) and its attester;
//! - [`initdata`]: the initdata disk and its binding to the TEE;
//! - [`attestation`], [`attest_gate`]: `aa.toml`, the attest-before-run check;
//! - [`api_server`]: the workload endpoint on `127.0.0.1:8006` (CoCo's paths);
//! - [`spec`]: what the agent enforces on a host-supplied OCI spec;
//! - [`copy_file`]: `CopyFile` confined to the shared directory;
//! - [`dns`]: CreateSandbox's `dns` lines, checked before they become resolv.conf;
//! - [`sandbox_storage`]: CreateSandbox's `ephemeral` tmpfs (the pod's shared /dev/shm);
//! - [`mounts`]: the sweep that leaves no agent mount behind a failed teardown;
//! - [`init`]: PID 1 duties (kernel filesystems, modules, reaping orphans).
//!
//! # Example: serve on a unix socket
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use guest_agent::agent::{Agent, AgentConfig};
//! let agent = Arc::new(Agent::new(AgentConfig {
//!     shared_dir: "/run/kata-containers/shared/containers".into(),
//!     state_dir: "/run/kata-cc".into(),
//!     cgroup_parent: "/kata-cc".into(),
//!     helper_exe: std::env::current_exe()?,
//!     init_mode: false,
//!     sandbox_dir: "/run/kata-cc/sandbox".into(),
//! }));
//! guest_agent::server::serve("unix:///tmp/agent.sock", agent, guest_agent::gate::Gate::allow_all(), false).await
//! # }
//! ```

pub mod agent;
pub mod api_server;
pub mod attest_gate;
pub mod attestation;
pub mod copy_file;
pub mod dns;
mod endpoints;
pub mod error;
pub mod gate;
pub mod image_pull;
pub mod init;
pub mod initdata;
pub mod mounts;
pub mod policy_gate;
pub mod net;
pub mod no_tee;
pub mod runner;
pub mod sandbox_storage;
pub mod server;
pub mod service;
pub mod spec;
pub mod stats;
pub mod stream;
pub mod tee;
