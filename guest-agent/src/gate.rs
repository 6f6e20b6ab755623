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

/// One rule on the way to the handlers.
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// Allows the request or says why not.
    async fn check(&self, endpoint: Endpoint, request: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied>;
}

/// The ordered list of checks.
#[derive(Clone, Default)]
pub struct Gate {
    checks: Vec<Arc<dyn Check>>,
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

    /// Runs every check; the first refusal wins.
    pub async fn check(&self, endpoint: Endpoint, request: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied> {
        for c in &self.checks {
            c.check(endpoint, request).await?;
        }
        Ok(())
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

    #[tokio::test]
    async fn checks_run_and_first_refusal_wins() {
        let gate = Gate::allow_all().with_check(Arc::new(DenyExec));
        let req = protocols::agent::ExecProcessRequest::new();
        let e = gate.check(Endpoint::ExecProcess, &req).await.unwrap_err();
        assert_eq!(e.to_string(), "ExecProcess denied by test: no exec");
        assert!(gate.check(Endpoint::StartContainer, &protocols::agent::StartContainerRequest::new()).await.is_ok());
    }
}
