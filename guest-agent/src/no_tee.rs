//! Fail closed without a TEE: the gate [`Check`] of a `release-tee` agent that found no
//! TEE.
//!
//! Without a TEE nothing in the VM is protected from the host and initdata is not bound
//! (the host could have written any policy into it), so no configuration inside the VM
//! can make running workloads safe, and none read there may switch this off: the kernel
//! command line and initdata are both the host's to write. The rule is therefore fixed
//! at build time: **the `release-tee` build never runs workloads without a TEE**; a
//! non-TEE VM (development, CI, `tee.kind = "none"`) uses the dev/test guest image,
//! built without that feature, which falls back to the allow-all policy.
//!
//! Such an agent still answers `grpc.Health` Check/Version (not gated) and
//! `GetGuestDetails` (the shim's start-up handshake), so the host learns why: every other
//! request is refused with PERMISSION_DENIED [`REASON`].

use crate::gate::{Check, Denied, Endpoint};

/// Why every request is refused.
pub const REASON: &str = "no TEE found: this agent (release-tee build) serves only health checks \
                          (and GetGuestDetails); run pods without a TEE with the dev/test guest image";

/// The requests still served.
pub const ALLOWED: &[Endpoint] = &[Endpoint::GetGuestDetails];

/// Refuses every request but [`ALLOWED`].
#[derive(Debug, Default)]
pub struct NoTee;

impl NoTee {
    /// The check the agent must put first in its gate, if any: one for a `release-tee`
    /// build that found no TEE.
    pub fn required(release_tee_build: bool, tee_found: bool) -> Option<NoTee> {
        (release_tee_build && !tee_found).then_some(NoTee)
    }
}

#[async_trait::async_trait]
impl Check for NoTee {
    async fn check(&self, endpoint: Endpoint, _request: &(dyn protobuf::MessageDyn + Sync)) -> Result<(), Denied> {
        if ALLOWED.contains(&endpoint) {
            return Ok(());
        }
        Err(Denied { endpoint, check: "no-tee", reason: REASON.to_string() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::gate::Gate;

    #[test]
    fn only_a_release_tee_build_without_a_tee_gets_it() {
        assert!(NoTee::required(true, false).is_some());
        assert!(NoTee::required(true, true).is_none());
        assert!(NoTee::required(false, false).is_none());
        assert!(NoTee::required(false, true).is_none());
    }

    /// Every RPC of the proto but GetGuestDetails is refused, naming why.
    #[tokio::test]
    async fn every_rpc_but_guest_details_is_refused() {
        let gate = Gate::allow_all().with_check(Arc::new(NoTee::required(true, false).unwrap()));
        let req = protocols::empty::Empty::new();
        for ep in Endpoint::ALL {
            let r = gate.check(*ep, &req).await;
            if *ep == Endpoint::GetGuestDetails {
                assert!(r.is_ok(), "{ep}");
                continue;
            }
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(&format!("{ep} denied by no-tee: no TEE found: this agent (release-tee build)")), "{e}");
        }
    }
}
