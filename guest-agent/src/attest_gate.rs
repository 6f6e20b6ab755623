//! The attest-before-run rule as a gate [`Check`].
//!
//! When attestation is required (see [`crate::attestation`]), `CreateContainer` and
//! `ExecProcess` are refused with PERMISSION_DENIED until the attestation agent has
//! attested to the KBS once. Every other request passes (the policy check still
//! applies to all of them).
//!
//! * The first gated request triggers the attempt (not boot: the pod network is set up
//!   by the host after the agent is up). The RCAR client retries connection errors and
//!   5xx answers with backoff within one attempt, which is bounded by [`ATTEMPT_TIMEOUT`].
//! * Success is kept for the life of the VM; a failure is not: the next gated request
//!   tries again.
//! * Concurrent gated requests wait for the attempt in progress and share its outcome
//!   instead of starting their own.
//! * A refusal says what to fix: `attestation required: <the RCAR step and the KBS's
//!   answer>` (or why no attempt is possible: no KBS configured, no TEE).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attestation_agent::{KbsClient, RcarError};

use crate::gate::{Check, Denied, Endpoint};

/// The requests that need a successful attestation first.
pub const GATED: &[Endpoint] = &[Endpoint::CreateContainer, Endpoint::ExecProcess];

/// Longest one attempt may take (retries included) before the gated request is refused:
/// a KBS address that silently drops packets must not hold CreateContainer for the
/// kernel's minutes of TCP retries.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the gate and the workload endpoint need from the KBS: the seam between them
/// and the RCAR client ([`KbsClient`] implements it; tests use a fake).
#[async_trait::async_trait]
pub trait Kbs: Send + Sync {
    /// Attests (RCAR auth + attest, with the client's retries).
    async fn attest(&self) -> Result<(), RcarError>;
    /// Attests and fetches `kbs:///repo/type/tag`, decrypted.
    async fn resource(&self, uri: &str) -> Result<Vec<u8>, RcarError>;
}

#[async_trait::async_trait]
impl Kbs for KbsClient {
    async fn attest(&self) -> Result<(), RcarError> {
        KbsClient::attest(self).await.map(|_token| ())
    }

    async fn resource(&self, uri: &str) -> Result<Vec<u8>, RcarError> {
        self.get_resource(uri).await
    }
}

enum Source {
    /// Attest to this KBS from this TEE (label for logs).
    Kbs(Arc<dyn Kbs>, &'static str),
    /// Attestation is required but cannot happen; why.
    Unavailable(String),
}

/// The attest-before-run check.
pub struct AttestCheck {
    source: Source,
    attested: AtomicBool,
    /// Number of finished attempts (lets a waiter see that one finished meanwhile).
    finished: AtomicU64,
    /// Held for the duration of an attempt; holds the last failure.
    attempt: tokio::sync::Mutex<Option<String>>,
    /// Bound on one attempt.
    timeout: Duration,
    /// How long the successful attempt took.
    took: std::sync::Mutex<Option<Duration>>,
}

impl std::fmt::Debug for AttestCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestCheck").field("attested", &self.is_attested()).finish_non_exhaustive()
    }
}

impl AttestCheck {
    /// Attestation through `kbs`, from the TEE named `tee_label` (for log lines).
    pub fn new(kbs: Arc<dyn Kbs>, tee_label: &'static str) -> Self {
        Self::with_source(Source::Kbs(kbs, tee_label))
    }

    /// Attestation is required but impossible: every gated request is refused with
    /// `why`.
    pub fn unavailable(why: impl Into<String>) -> Self {
        Self::with_source(Source::Unavailable(why.into()))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            attested: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            attempt: tokio::sync::Mutex::new(None),
            timeout: ATTEMPT_TIMEOUT,
            took: std::sync::Mutex::new(None),
        }
    }

    /// Bounds one attempt to `timeout` instead of [`ATTEMPT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether attestation has succeeded.
    pub fn is_attested(&self) -> bool {
        self.attested.load(Ordering::Acquire)
    }

    /// How long the successful attempt took (from the request that triggered it).
    pub fn attested_after(&self) -> Option<Duration> {
        self.took.lock().ok().and_then(|t| *t)
    }

    /// Attests unless already attested; the error is the reason to give the caller.
    pub async fn ensure(&self, endpoint: Endpoint) -> Result<(), String> {
        if self.is_attested() {
            return Ok(());
        }
        let (kbs, tee) = match &self.source {
            Source::Kbs(k, t) => (k, *t),
            Source::Unavailable(why) => return Err(why.clone()),
        };
        let seen = self.finished.load(Ordering::Acquire);
        let mut last = self.attempt.lock().await;
        if self.is_attested() {
            return Ok(());
        }
        if self.finished.load(Ordering::Acquire) != seen {
            // An attempt finished while this request waited: it failed (success was
            // checked above); share its outcome rather than start another at once.
            return Err(last.clone().unwrap_or_else(|| "attestation failed".into()));
        }
        tracing::info!("attestation: {endpoint} needs it; attesting from {tee} to the KBS");
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, kbs.attest()).await;
        let took = started.elapsed();
        let outcome = match result {
            Ok(Ok(())) => {
                if let Ok(mut t) = self.took.lock() {
                    *t = Some(took);
                }
                self.attested.store(true, Ordering::Release);
                tracing::info!("attestation: attested from {tee} in {} ms (triggered by {endpoint})", took.as_millis());
                *last = None;
                Ok(())
            }
            Ok(Err(e)) => self.failed(tee, took, crate::error::chain(&e), &mut last),
            Err(_) => self.failed(tee, took, format!("no answer from the KBS within {} s", self.timeout.as_secs_f32()), &mut last),
        };
        self.finished.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    /// Logs a failed attempt and keeps its reason for the requests waiting on it.
    fn failed(&self, tee: &str, took: Duration, why: String, last: &mut Option<String>) -> Result<(), String> {
        tracing::warn!("attestation from {tee} failed after {} ms: {why}", took.as_millis());
        *last = Some(why.clone());
        Err(why)
    }
}

#[async_trait::async_trait]
impl Check for AttestCheck {
    async fn check(&self, endpoint: Endpoint, _request: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied> {
        if !GATED.contains(&endpoint) {
            return Ok(());
        }
        self.ensure(endpoint).await.map_err(|why| Denied {
            endpoint,
            check: "attestation",
            reason: format!("attestation required: {why}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::gate::Gate;
    use protocols::agent as pb;
    use std::sync::atomic::AtomicUsize;

    /// A KBS that fails the first `fail` attests with a 401, then succeeds; each
    /// attempt takes `delay`.
    struct FakeKbs {
        fail: usize,
        delay: Duration,
        calls: AtomicUsize,
    }

    impl FakeKbs {
        fn new(fail: usize, delay_ms: u64) -> Arc<Self> {
            Arc::new(Self { fail, delay: Duration::from_millis(delay_ms), calls: AtomicUsize::new(0) })
        }
    }

    #[async_trait::async_trait]
    impl Kbs for FakeKbs {
        async fn attest(&self) -> Result<(), RcarError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if n < self.fail {
                return Err(RcarError::Attest {
                    status: 401,
                    detail: format!("attestation failed: HOST_DATA {n} is not one of [..]"),
                });
            }
            Ok(())
        }
        async fn resource(&self, _uri: &str) -> Result<Vec<u8>, RcarError> {
            Ok(b"k".to_vec())
        }
    }

    fn create() -> pb::CreateContainerRequest {
        pb::CreateContainerRequest::new()
    }

    #[tokio::test]
    async fn only_create_and_exec_are_gated_and_the_refusal_names_the_step() {
        let kbs = FakeKbs::new(usize::MAX, 0);
        let check = Arc::new(AttestCheck::new(kbs.clone(), "sim"));
        for ep in Endpoint::ALL {
            let r = check.check(*ep, &pb::StartContainerRequest::new()).await;
            assert_eq!(r.is_err(), GATED.contains(ep), "{ep}");
        }
        let e = check.check(Endpoint::CreateContainer, &create()).await.unwrap_err();
        assert_eq!(e.check, "attestation");
        assert_eq!(e.reason, "attestation required: attest: KBS answered 401: attestation failed: HOST_DATA 2 is not one of [..]");
        assert!(!check.is_attested());
        assert_eq!(kbs.calls.load(Ordering::SeqCst), 3, "one attempt per gated request");
    }

    #[tokio::test]
    async fn success_is_cached_and_failures_are_retried_on_the_next_request() {
        let kbs = FakeKbs::new(1, 0);
        let check = AttestCheck::new(kbs.clone(), "SEV-SNP");
        assert!(check.check(Endpoint::ExecProcess, &pb::ExecProcessRequest::new()).await.is_err());
        check.check(Endpoint::CreateContainer, &create()).await.unwrap();
        assert!(check.is_attested() && check.attested_after().is_some());
        for _ in 0..5 {
            check.check(Endpoint::ExecProcess, &pb::ExecProcessRequest::new()).await.unwrap();
        }
        assert_eq!(kbs.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_wait_for_one_attempt() {
        // Success: ten requests, one attempt.
        let kbs = FakeKbs::new(0, 100);
        let check = Arc::new(AttestCheck::new(kbs.clone(), "TDX"));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let c = check.clone();
                tokio::spawn(async move { c.check(Endpoint::CreateContainer, &create()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(kbs.calls.load(Ordering::SeqCst), 1);

        // Failure: the waiters share the failed attempt's reason.
        let kbs = FakeKbs::new(usize::MAX, 100);
        let check = Arc::new(AttestCheck::new(kbs.clone(), "TDX"));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let c = check.clone();
                tokio::spawn(async move { c.check(Endpoint::ExecProcess, &pb::ExecProcessRequest::new()).await })
            })
            .collect();
        for t in tasks {
            let e = t.await.unwrap().unwrap_err();
            assert!(e.reason.contains("HOST_DATA 0 is not one of"), "{e}");
        }
        assert_eq!(kbs.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_hanging_kbs_is_given_up_on_and_retried_later() {
        let kbs = FakeKbs::new(0, 500);
        let check = AttestCheck::new(kbs.clone(), "sim").with_timeout(Duration::from_millis(50));
        let e = check.check(Endpoint::CreateContainer, &create()).await.unwrap_err();
        assert_eq!(e.reason, "attestation required: no answer from the KBS within 0.05 s");
        assert!(!check.is_attested());
        let check = check.with_timeout(Duration::from_secs(5));
        check.check(Endpoint::CreateContainer, &create()).await.unwrap();
        assert_eq!(kbs.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unavailable_refuses_with_its_reason() {
        let check = AttestCheck::unavailable("no KBS is configured");
        let e = check.check(Endpoint::CreateContainer, &create()).await.unwrap_err();
        assert_eq!(e.to_string(), "CreateContainer denied by attestation: attestation required: no KBS is configured");
        assert!(check.check(Endpoint::StartContainer, &pb::StartContainerRequest::new()).await.is_ok());
    }

    #[tokio::test]
    async fn policy_and_attestation_must_both_pass() {
        let rego = "package agent_policy\ndefault CreateContainerRequest := true\ndefault ExecProcessRequest := false\n";
        let policy = Arc::new(crate::policy_gate::PolicyCheck::new(rego).unwrap());
        let kbs = FakeKbs::new(1, 0);
        let gate = Gate::allow_all().with_check(policy).with_check(Arc::new(AttestCheck::new(kbs.clone(), "sim")));
        // Policy allows, attestation refuses (first attempt fails).
        let e = gate.check(Endpoint::CreateContainer, &create()).await.unwrap_err();
        assert_eq!(e.check, "attestation");
        // Both allow.
        gate.check(Endpoint::CreateContainer, &create()).await.unwrap().commit();
        // Attested, but the policy refuses: no attempt is made for a request the policy denies.
        let e = gate.check(Endpoint::ExecProcess, &pb::ExecProcessRequest::new()).await.unwrap_err();
        assert_eq!(e.check, "policy");
        assert_eq!(kbs.calls.load(Ordering::SeqCst), 2);
    }
}
