//! The kata-cc guest agent: PID 1 inside the pod VM.
//!
//! It serves the Kata agent API (`grpc.AgentService`, `grpc.Health`) over ttrpc on vsock
//! port 1024 (or a unix socket when run as a plain process for tests) and runs the pod's
//! containers with real Linux isolation. Every request passes one gate before its handler.
//!
//! Module map:
//! - [`runner`]: the single-threaded per-container helper process that owns youki's
//!   `libcontainer` calls and the waits of the container's processes.
