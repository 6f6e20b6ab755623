//! The agent RPCs and the Rego entry point each one is checked against.
//!
//! Kata's agent names the policy rule after the protobuf *message* of the request, not after
//! the RPC: `data.agent_policy.<MessageName>`. Most RPCs take `<Rpc>Request`, but a few share
//! or rename their message (checked against Kata's `agent.proto`):
//!
//! | RPC | request message |
//! |---|---|
//! | `WriteStdin` | `WriteStreamRequest` |
//! | `ReadStdout`, `ReadStderr` | `ReadStreamRequest` |
//! | `GetGuestDetails` | `GuestDetailsRequest` |
//! | `GetVolumeStats` | `VolumeStatsRequest` |
//! | `MemAgentMemcgSet` | `MemAgentMemcgConfig` |
//! | `MemAgentCompactSet` | `MemAgentCompactConfig` |
//!
//! [`RPCS`] is the single table; the agent's policy gate and the tests both read it.

use std::fmt;
use std::str::FromStr;

/// Declares [`Rpc`] and the table from one list, so the enum and the table cannot drift.
macro_rules! rpc_table {
    ($($variant:ident => $request:literal),+ $(,)?) => {
        /// One RPC of `grpc.AgentService`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rpc {
            $(
                #[doc = concat!("`/grpc.AgentService/", stringify!($variant), "`, checked as `", $request, "`.")]
                $variant,
            )+
        }

        /// Every agent RPC with its method name and request message name, in `agent.proto` order.
        pub const RPCS: &[(Rpc, &str, &str)] = &[
            $((Rpc::$variant, stringify!($variant), $request),)+
        ];
    };
}

rpc_table! {
    CreateContainer => "CreateContainerRequest",
    StartContainer => "StartContainerRequest",
    RemoveContainer => "RemoveContainerRequest",
    ExecProcess => "ExecProcessRequest",
    SignalProcess => "SignalProcessRequest",
    WaitProcess => "WaitProcessRequest",
    UpdateContainer => "UpdateContainerRequest",
    UpdateEphemeralMounts => "UpdateEphemeralMountsRequest",
    StatsContainer => "StatsContainerRequest",
    PauseContainer => "PauseContainerRequest",
    ResumeContainer => "ResumeContainerRequest",
    RemoveStaleVirtiofsShareMounts => "RemoveStaleVirtiofsShareMountsRequest",
    GetDiagnosticData => "GetDiagnosticDataRequest",
    WriteStdin => "WriteStreamRequest",
    ReadStdout => "ReadStreamRequest",
    ReadStderr => "ReadStreamRequest",
    CloseStdin => "CloseStdinRequest",
    TtyWinResize => "TtyWinResizeRequest",
    UpdateInterface => "UpdateInterfaceRequest",
    UpdateRoutes => "UpdateRoutesRequest",
    ListInterfaces => "ListInterfacesRequest",
    ListRoutes => "ListRoutesRequest",
    AddARPNeighbors => "AddARPNeighborsRequest",
    GetIPTables => "GetIPTablesRequest",
    SetIPTables => "SetIPTablesRequest",
    GetMetrics => "GetMetricsRequest",
    MemAgentMemcgSet => "MemAgentMemcgConfig",
    MemAgentCompactSet => "MemAgentCompactConfig",
    CreateSandbox => "CreateSandboxRequest",
    DestroySandbox => "DestroySandboxRequest",
    OnlineCPUMem => "OnlineCPUMemRequest",
    ReseedRandomDev => "ReseedRandomDevRequest",
    GetGuestDetails => "GuestDetailsRequest",
    MemHotplugByProbe => "MemHotplugByProbeRequest",
    SetGuestDateTime => "SetGuestDateTimeRequest",
    CopyFile => "CopyFileRequest",
    GetOOMEvent => "GetOOMEventRequest",
    AddSwap => "AddSwapRequest",
    AddSwapPath => "AddSwapPathRequest",
    GetVolumeStats => "VolumeStatsRequest",
    ResizeVolume => "ResizeVolumeRequest",
    SetPolicy => "SetPolicyRequest",
}

impl Rpc {
    /// All RPCs, in `agent.proto` order.
    pub fn all() -> impl Iterator<Item = Rpc> {
        RPCS.iter().map(|(rpc, _, _)| *rpc)
    }

    /// The method name, e.g. `"ReadStdout"`.
    pub fn method(self) -> &'static str {
        self.entry().1
    }

    /// The request message name, which is the Rego rule the request is checked against,
    /// e.g. `"ReadStreamRequest"` for [`Rpc::ReadStdout`].
    pub fn request_name(self) -> &'static str {
        self.entry().2
    }

    /// The full ttrpc path, e.g. `"/grpc.AgentService/ReadStdout"`.
    pub fn path(self) -> String {
        format!("/grpc.AgentService/{}", self.method())
    }

    fn entry(self) -> &'static (Rpc, &'static str, &'static str) {
        // The table is built from the same list as the enum, in the same order, so the
        // discriminant is the index; `RPCS[0]` is only reached if that invariant broke.
        RPCS.get(self as usize).unwrap_or(&RPCS[0])
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method())
    }
}

/// The method name given to [`Rpc::from_str`] is not an agent RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a grpc.AgentService RPC")]
pub struct UnknownRpc(pub String);

impl FromStr for Rpc {
    type Err = UnknownRpc;

    /// Accepts the method name (`"ReadStdout"`) or the ttrpc path
    /// (`"/grpc.AgentService/ReadStdout"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let method = s.strip_prefix("/grpc.AgentService/").unwrap_or(s);
        RPCS.iter()
            .find(|(_, name, _)| *name == method)
            .map(|(rpc, _, _)| *rpc)
            .ok_or_else(|| UnknownRpc(s.to_owned()))
    }
}

/// The request message name (the Rego rule) for an RPC method name, if it is an agent RPC.
pub fn request_name(method: &str) -> Option<&'static str> {
    method.parse::<Rpc>().ok().map(Rpc::request_name)
}

/// The distinct request message names, sorted (`ReadStdout`/`ReadStderr` share one).
pub fn request_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = RPCS.iter().map(|(_, _, req)| *req).collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_42_rpcs_in_enum_order() {
        assert_eq!(RPCS.len(), 42);
        for (i, (rpc, name, _)) in RPCS.iter().enumerate() {
            assert_eq!(*rpc as usize, i);
            assert_eq!(rpc.method(), *name);
            assert_eq!(name.parse::<Rpc>(), Ok(*rpc));
        }
    }

    #[test]
    fn shared_and_renamed_messages() {
        assert_eq!(Rpc::ReadStdout.request_name(), "ReadStreamRequest");
        assert_eq!(Rpc::ReadStderr.request_name(), "ReadStreamRequest");
        assert_eq!(Rpc::WriteStdin.request_name(), "WriteStreamRequest");
        assert_eq!(Rpc::GetGuestDetails.request_name(), "GuestDetailsRequest");
        assert_eq!(Rpc::GetVolumeStats.request_name(), "VolumeStatsRequest");
        assert_eq!(Rpc::MemAgentMemcgSet.request_name(), "MemAgentMemcgConfig");
        assert_eq!(Rpc::MemAgentCompactSet.request_name(), "MemAgentCompactConfig");
        assert_eq!(request_name("/grpc.AgentService/CreateContainer"), Some("CreateContainerRequest"));
        assert_eq!(request_name("PullImage"), None);
        assert_eq!(request_names().len(), 41);
    }
}
