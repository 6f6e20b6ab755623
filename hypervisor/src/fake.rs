//! A test double for [`Hypervisor`]/[`Vm`]: records every call, injects failures,
//! and lets a test crash a VM. Only built with the `fake` feature (or in this
//! crate's tests); enable it from `[dev-dependencies]` only.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use hypervisor::fake::{Call, FakeHypervisor};
//! use hypervisor::{Hypervisor, VmSpec, VmExit, CrashKind};
//!
//! let hv = FakeHypervisor::new();
//! let vm = hv.start(VmSpec::new("pod", "/k", "/run/pod")).await.unwrap();
//! hv.crash("pod", CrashKind::QemuExited);
//! assert!(vm.wait().await.is_crash());
//! assert!(matches!(hv.calls()[0], Call::Start(_)));
//!
//! hv.fail_next_start("no memory");
//! assert!(hv.start(VmSpec::new("pod2", "/k", "/run/pod2")).await.is_err());
//! # }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::spec::{ResolvedAccel, Vsock, AGENT_VSOCK_PORT};
use crate::{
    AgentAddress, Capabilities, CrashKind, Error, Hypervisor, Machine, Vm, VmExit, VmSpec, VmState,
    VsockKind,
};

/// A recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `Hypervisor::start` with the spec.
    Start(Box<VmSpec>),
    /// `Vm::pause` on the VM with this id.
    Pause(String),
    /// `Vm::resume`.
    Resume(String),
    /// `Vm::shutdown` with the grace period.
    Shutdown(String, Duration),
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    fail_start: Option<String>,
    fail_pause: Option<String>,
    fail_shutdown: Option<String>,
    vms: HashMap<String, Arc<watch::Sender<VmState>>>,
}

/// The fake backend. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeHypervisor {
    inner: Arc<Mutex<Inner>>,
    caps: Capabilities,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHypervisor {
    /// A fake that can do everything but TEEs and hot-plug.
    pub fn new() -> Self {
        Self::with_capabilities(Capabilities {
            backend: "fake",
            vsock: vec![VsockKind::Hybrid, VsockKind::Kernel],
            tee: Vec::new(),
            accels: vec![ResolvedAccel::Tcg, ResolvedAccel::Kvm],
            machines: vec![Machine::Q35, Machine::Microvm],
            pause: true,
            hotplug: false,
        })
    }

    /// A fake with the given capabilities (to test callers' `Unsupported` paths).
    pub fn with_capabilities(caps: Capabilities) -> Self {
        Self {
            inner: Arc::default(),
            caps,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The next `start` fails with this message.
    pub fn fail_next_start(&self, msg: impl Into<String>) {
        self.lock().fail_start = Some(msg.into());
    }

    /// The next `pause` fails.
    pub fn fail_next_pause(&self, msg: impl Into<String>) {
        self.lock().fail_pause = Some(msg.into());
    }

    /// The next `shutdown` fails.
    pub fn fail_next_shutdown(&self, msg: impl Into<String>) {
        self.lock().fail_shutdown = Some(msg.into());
    }

    /// Makes the VM `id` crash; returns false if there is no such running VM.
    pub fn crash(&self, id: &str, kind: CrashKind) -> bool {
        self.stop(
            id,
            VmExit::Crashed {
                kind,
                detail: "injected by FakeHypervisor".into(),
            },
        )
    }

    /// Makes the VM `id` power off by itself.
    pub fn poweroff(&self, id: &str) -> bool {
        self.stop(id, VmExit::GuestPoweroff)
    }

    fn stop(&self, id: &str, exit: VmExit) -> bool {
        let Some(state) = self.lock().vms.get(id).cloned() else {
            return false;
        };
        state.send_if_modified(|s| {
            if matches!(s, VmState::Stopped(_)) {
                return false;
            }
            *s = VmState::Stopped(exit);
            true
        })
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, Error> {
        let mut inner = self.lock();
        inner.calls.push(Call::Start(Box::new(spec.clone())));
        if let Some(msg) = inner.fail_start.take() {
            return Err(Error::Injected(msg));
        }
        spec.validate().map_err(Error::Spec)?;
        self.caps.check(&spec)?;
        let agent = match &spec.vsock {
            Vsock::Hybrid { dir } => AgentAddress::Hybrid {
                path: dir.join("vm.vsock"),
                port: AGENT_VSOCK_PORT,
            },
            Vsock::Kernel { cid } => AgentAddress::Vsock {
                cid: *cid,
                port: AGENT_VSOCK_PORT,
            },
        };
        let (tx, _) = watch::channel(VmState::Running);
        let state = Arc::new(tx);
        inner.vms.insert(spec.id.clone(), state.clone());
        Ok(Box::new(FakeVm {
            id: spec.id,
            agent,
            console_log: spec.console_log,
            state,
            hv: self.clone(),
        }))
    }
}

/// A VM of the fake backend.
#[derive(Debug)]
pub struct FakeVm {
    id: String,
    agent: AgentAddress,
    console_log: Option<std::path::PathBuf>,
    state: Arc<watch::Sender<VmState>>,
    hv: FakeHypervisor,
}

impl FakeVm {
    fn running(&self) -> Result<(), Error> {
        match &*self.state.borrow() {
            VmState::Stopped(e) => Err(Error::NotRunning(e.clone())),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent_address(&self) -> &AgentAddress {
        &self.agent
    }

    fn console_log(&self) -> Option<&Path> {
        self.console_log.as_deref()
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn state(&self) -> VmState {
        self.state.borrow().clone()
    }

    async fn wait(&self) -> VmExit {
        let mut rx = self.state.subscribe();
        let state = match rx.wait_for(|s| matches!(s, VmState::Stopped(_))).await {
            Ok(s) => s.clone(),
            Err(_) => VmState::Running,
        };
        match state {
            VmState::Stopped(e) => e,
            _ => VmExit::Crashed {
                kind: CrashKind::Lost,
                detail: String::new(),
            },
        }
    }

    async fn pause(&self) -> Result<(), Error> {
        let fail = {
            let mut inner = self.hv.lock();
            inner.calls.push(Call::Pause(self.id.clone()));
            inner.fail_pause.take()
        };
        if let Some(msg) = fail {
            return Err(Error::Injected(msg));
        }
        self.running()?;
        self.state.send_replace(VmState::Paused);
        Ok(())
    }

    async fn resume(&self) -> Result<(), Error> {
        self.hv.lock().calls.push(Call::Resume(self.id.clone()));
        self.running()?;
        self.state.send_replace(VmState::Running);
        Ok(())
    }

    async fn shutdown(&self, grace: Duration) -> Result<VmExit, Error> {
        let fail = {
            let mut inner = self.hv.lock();
            inner.calls.push(Call::Shutdown(self.id.clone(), grace));
            inner.fail_shutdown.take()
        };
        if let Some(msg) = fail {
            return Err(Error::Injected(msg));
        }
        if let VmState::Stopped(e) = &*self.state.borrow() {
            return Ok(e.clone());
        }
        let exit = VmExit::Shutdown { forced: false };
        self.state.send_replace(VmState::Stopped(exit.clone()));
        Ok(exit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_and_injects() {
        let hv = FakeHypervisor::new();
        let vm = hv.start(VmSpec::new("a", "/k", "/run/a")).await.unwrap();
        assert_eq!(
            vm.agent_address().to_string(),
            "hvsock:///run/a/vm.vsock:1024"
        );
        vm.pause().await.unwrap();
        assert_eq!(vm.state(), VmState::Paused);
        vm.resume().await.unwrap();
        hv.fail_next_pause("boom");
        assert!(matches!(vm.pause().await, Err(Error::Injected(_))));
        assert_eq!(
            vm.shutdown(Duration::from_secs(1)).await.unwrap(),
            VmExit::Shutdown { forced: false }
        );
        assert!(matches!(vm.pause().await, Err(Error::NotRunning(_))));
        // Idempotent.
        assert_eq!(
            vm.shutdown(Duration::ZERO).await.unwrap(),
            VmExit::Shutdown { forced: false }
        );
        let calls = hv.calls();
        assert_eq!(calls.len(), 7);
        assert_eq!(calls[1], Call::Pause("a".into()));
    }

    #[tokio::test]
    async fn crash_wakes_waiters_and_failures_are_injected() {
        let hv = FakeHypervisor::new();
        let vm = hv.start(VmSpec::new("b", "/k", "/run/b")).await.unwrap();
        let waiter = tokio::spawn({
            let hv = hv.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                hv.crash("b", CrashKind::VsockDaemonExited)
            }
        });
        let exit = vm.wait().await;
        assert!(waiter.await.unwrap());
        assert!(matches!(
            exit,
            VmExit::Crashed {
                kind: CrashKind::VsockDaemonExited,
                ..
            }
        ));
        assert!(!hv.crash("nope", CrashKind::QemuExited));

        hv.fail_next_start("no");
        assert!(matches!(
            hv.start(VmSpec::new("c", "/k", "/run/c")).await,
            Err(Error::Injected(_))
        ));
        // Capabilities are enforced like a real backend.
        let mut spec = VmSpec::new("d", "/k", "/run/d");
        spec.confidential = crate::Confidential::Snp(crate::SnpConfig::default());
        assert!(matches!(
            hv.start(spec).await,
            Err(Error::Unsupported { .. })
        ));
    }
}
