//! The gate every agent API request passes before its handler.
//!
//! [`Gate::check`] runs an ordered list of [`Check`]s (later: the Rego policy, then the
//! attest-before-run rule) on the endpoint and the decoded request. Today the list is
//! empty, which allows everything; the policy and attestation subsystems plug in here
//! rather than in individual handlers, so no RPC can be forgotten.

use std::sync::Arc;

use crate::endpoints::with_agent_rpcs;

macro_rules! define_endpoints {
    ($(($name:ident, $method:ident, $req:ident, $resp:ident, $kind:ident)),* $(,)?) => {
        /// One variant per RPC of `grpc.AgentService`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Endpoint {
            $(
                #[doc = concat!("`/grpc.AgentService/", stringify!($name), "`")]
                $name,
            )*
        }

        impl Endpoint {
            /// Every endpoint, in proto order.
            pub const ALL: &'static [Endpoint] = &[$(Endpoint::$name),*];

            /// The RPC name as it appears in the proto (`CreateContainer`).
            pub fn rpc_name(self) -> &'static str {
                match self { $(Endpoint::$name => stringify!($name)),* }
            }

            /// The request message name (`CreateContainerRequest`), which is also the
            /// policy rule that decides on it.
            pub fn request_name(self) -> &'static str {
                match self { $(Endpoint::$name => stringify!($req)),* }
            }

            /// Whether the agent implements it (others answer UNIMPLEMENTED).
            pub fn is_handled(self) -> bool {
                match self { $(Endpoint::$name => stringify!($kind) != "unimplemented"),* }
            }
        }
    };
}
with_agent_rpcs!(define_endpoints);

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.rpc_name())
    }
}

/// A refusal by one of the gate's checks.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint} denied by {check}: {reason}")]
pub struct Denied {
    /// The endpoint that was called.
    pub endpoint: Endpoint,
    /// Which check refused (`policy`, `attestation`, ...).
    pub check: &'static str,
    /// Why, in words a person can act on.
    pub reason: String,
}

/// What a check wants done once the request it allowed has been carried out (the
/// policy's state changes); dropped, unapplied, when the handler fails.
pub struct Pending(Box<dyn std::any::Any + Send>);

impl Pending {
    /// Wraps a check's own record.
    pub fn new<T: Send + 'static>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// The record, if it is a `T`.
    pub fn into_inner<T: 'static>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// One rule on the way to the handlers.
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// Allows the request or says why not.
    async fn check(&self, endpoint: Endpoint, request: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied>;

    /// Like [`Check::check`], for a check that keeps state: an allow may come with a
    /// [`Pending`] change, which the gate hands back to [`Check::commit`] only after the
    /// handler succeeded.
    async fn admit(
        &self,
        endpoint: Endpoint,
        request: &(dyn protobuf::MessageDyn + Sync),
    ) -> Result<Option<Pending>, Denied> {
        self.check(endpoint, request).await.map(|()| None)
    }

    /// Applies what [`Check::admit`] deferred. Stateless checks have nothing to apply.
    fn commit(&self, endpoint: Endpoint, pending: Pending) {
        let _ = (endpoint, pending);
    }
}

/// A request the gate let through; [`Admission::commit`] after the handler succeeded.
/// Dropping it discards the checks' deferred state changes.
#[must_use = "commit after the handler succeeded, or drop to discard"]
#[derive(Debug)]
pub struct Admission {
    endpoint: Endpoint,
    pending: Vec<(Arc<dyn Check>, Pending)>,
}

impl Admission {
    /// Applies every check's deferred state change.
    pub fn commit(self) {
        for (check, p) in self.pending {
            check.commit(self.endpoint, p);
        }
    }
}

/// The ordered list of checks.
#[derive(Clone, Default)]
pub struct Gate {
    checks: Vec<Arc<dyn Check>>,
}

impl std::fmt::Debug for dyn Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Check")
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("checks", &self.checks.len()).finish()
    }
}

impl Gate {
    /// A gate with no checks: every request is allowed.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Appends a check; checks run in the order they were added.
    pub fn with_check(mut self, check: Arc<dyn Check>) -> Self {
        self.checks.push(check);
        self
    }

    /// Runs every check; the first refusal wins. The checks' state changes wait in the
    /// returned [`Admission`] until the handler has succeeded.
    pub async fn check(&self, endpoint: Endpoint, request: &(dyn protobuf::MessageDyn + Sync)) -> Result<Admission, Denied> {
        let mut pending = Vec::new();
        for c in &self.checks {
            if let Some(p) = c.admit(endpoint, request).await? {
                pending.push((Arc::clone(c), p));
            }
        }
        Ok(Admission { endpoint, pending })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_proto_rpc_has_an_endpoint_in_order() {
        let ours: Vec<&str> = Endpoint::ALL.iter().map(|e| e.rpc_name()).collect();
        assert_eq!(ours, protocols::AGENT_RPCS);
    }

    #[test]
    fn request_names_agree_with_the_policy_table() {
        for ep in Endpoint::ALL {
            assert_eq!(policy::request_name(ep.rpc_name()), Some(ep.request_name()), "{ep}");
        }
    }

    struct DenyExec;
    #[async_trait::async_trait]
    impl Check for DenyExec {
        async fn check(&self, endpoint: Endpoint, _r: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied> {
            if endpoint == Endpoint::ExecProcess {
                return Err(Denied { endpoint, check: "test", reason: "no exec".into() });
            }
            Ok(())
        }
    }

    /// Counts what it was asked to commit.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);
    #[async_trait::async_trait]
    impl Check for Counting {
        async fn check(&self, _e: Endpoint, _r: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied> {
            Ok(())
        }
        async fn admit(&self, _e: Endpoint, _r: &(dyn protobuf::MessageDyn + Sync)) -> Result<Option<Pending>, Denied> {
            Ok(Some(Pending::new(1usize)))
        }
        fn commit(&self, _e: Endpoint, p: Pending) {
            let n = p.into_inner::<usize>().unwrap();
            self.0.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn state_changes_wait_for_the_commit() {
        let counting = Arc::new(Counting::default());
        let gate = Gate::allow_all().with_check(Arc::clone(&counting) as Arc<dyn Check>);
        let req = protocols::agent::CreateSandboxRequest::new();
        drop(gate.check(Endpoint::CreateSandbox, &req).await.unwrap());
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 0, "a dropped admission committed");
        gate.check(Endpoint::CreateSandbox, &req).await.unwrap().commit();
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn checks_run_and_first_refusal_wins() {
        let gate = Gate::allow_all().with_check(Arc::new(DenyExec));
        let req = protocols::agent::ExecProcessRequest::new();
        let e = gate.check(Endpoint::ExecProcess, &req).await.unwrap_err();
        assert_eq!(e.to_string(), "ExecProcess denied by test: no exec");
        assert!(gate.check(Endpoint::StartContainer, &protocols::agent::StartContainerRequest::new()).await.is_ok());
    }
}
