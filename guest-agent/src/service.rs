//! The ttrpc services. `grpc.AgentService` is generated from the single endpoint list
//! ([`crate::endpoints`]): every method first passes [`Gate::check`], then goes to its
//! handler on [`Agent`] or answers UNIMPLEMENTED. Errors become ttrpc statuses here and
//! nowhere else.

use std::collections::HashMap;
use std::sync::Arc;

use protocols::agent::*;
use protocols::csi::VolumeStatsResponse;
use protocols::health::{CheckRequest, HealthCheckResponse, VersionCheckResponse};
use protocols::protobuf::well_known_types::empty::Empty;
use protocols::types::Interface;
use ttrpc::r#async::TtrpcContext;

use crate::agent::Agent;
use crate::endpoints::with_agent_rpcs;
use crate::error::AgentError;
use crate::gate::{Endpoint, Gate};

/// `grpc.AgentService`: the gate in front of the agent.
#[derive(Debug, Clone)]
pub struct AgentService {
    agent: Arc<Agent>,
    gate: Gate,
}

impl AgentService {
    /// Serves `agent` behind `gate`.
    pub fn new(agent: Arc<Agent>, gate: Gate) -> Self {
        Self { agent, gate }
    }
}

macro_rules! dispatch {
    (handled, $self:ident, $name:ident, $method:ident, $req:ident) => {
        $self.agent.$method($req).await.map_err(ttrpc::Error::from)
    };
    (unimplemented, $self:ident, $name:ident, $method:ident, $req:ident) => {{
        let _ = $req;
        Err(ttrpc::Error::from(AgentError::Unimplemented(stringify!($name))))
    }};
}

/// What a denied ReadStdout/ReadStderr returns in place of the process's output.
pub const REDACTED: &[u8] = b"[kata-cc: output redacted by policy]\n";

macro_rules! gated {
    (redacted, $self:ident, $name:ident, $method:ident, $req:ident) => {{
        // Read anyway, so the container never blocks on a full pipe, and redact.
        let verdict = $self.gate.check(Endpoint::$name, &$req).await;
        let mut r = dispatch!(handled, $self, $name, $method, $req);
        match (verdict, &mut r) {
            (Err(d), Ok(resp)) => {
                if !resp.data.is_empty() {
                    tracing::debug!("{d}: output redacted");
                    resp.data = REDACTED.to_vec();
                }
            }
            (Ok(admitted), Ok(_)) => admitted.commit(),
            (_, Err(_)) => {}
        }
        r
    }};
    ($kind:ident, $self:ident, $name:ident, $method:ident, $req:ident) => {{
        let admitted = $self.gate.check(Endpoint::$name, &$req).await.map_err(|d| ttrpc::Error::from(AgentError::from(d)))?;
        let r = dispatch!($kind, $self, $name, $method, $req);
        // The policy's state records only what was done: a refused request leaves it.
        if r.is_ok() {
            admitted.commit();
        }
        r
    }};
}

macro_rules! impl_agent_service {
    ($(($name:ident, $method:ident, $req:ident, $resp:ident, $kind:ident)),* $(,)?) => {
        #[async_trait::async_trait]
        impl protocols::agent_ttrpc::AgentService for AgentService {
            $(
                async fn $method(&self, _ctx: &TtrpcContext, req: $req) -> ttrpc::Result<$resp> {
                    tracing::debug!(rpc = stringify!($name), "request");
                    let r = gated!($kind, self, $name, $method, req);
                    if let Err(e) = &r {
                        tracing::info!(rpc = stringify!($name), "failed: {e:?}");
                    }
                    r
                }
            )*
        }
    };
}
with_agent_rpcs!(impl_agent_service);

/// `grpc.Health`: answers while the agent serves. Not gated: the host must be able to
/// tell a booting VM from a dead one whatever the policy says, and these calls carry
/// no data and change nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthService;

#[async_trait::async_trait]
impl protocols::health_ttrpc::Health for HealthService {
    async fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        let mut r = HealthCheckResponse::new();
        r.status = protocols::health::health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<VersionCheckResponse> {
        let mut r = VersionCheckResponse::new();
        r.grpc_version = "0.0.1".into();
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }
}

/// Both services, ready to register on a ttrpc server.
pub fn services(agent: Arc<Agent>, gate: Gate) -> Vec<HashMap<String, ttrpc::r#async::Service>> {
    vec![
        protocols::agent_ttrpc::create_agent_service(Arc::new(AgentService::new(agent, gate))),
        protocols::health_ttrpc::create_health(Arc::new(HealthService)),
    ]
}
