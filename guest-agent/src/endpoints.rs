//! The single list of agent API endpoints. Both the gate's [`Endpoint`](crate::gate::Endpoint)
//! enum and the ttrpc service implementation are generated from it, so no RPC can reach
//! a handler without passing the gate, and a test checks the list against the proto.
//!
//! Each entry: `(RpcName, trait_method, RequestType, ResponseType, kind)`, where `kind`
//! is `handled` (the agent implements it), `redacted` (implemented; a gate refusal
//! redacts the output instead of failing, so a denied log reader cannot stall the
//! container on a full pipe) or `unimplemented` (answers UNIMPLEMENTED after the gate).

/// Calls `$m!` with every RPC of `grpc.AgentService`, in proto order.
macro_rules! with_agent_rpcs {
    ($m:ident) => {
        $m! {
            (CreateContainer, create_container, CreateContainerRequest, Empty, handled),
            (StartContainer, start_container, StartContainerRequest, Empty, handled),
            (RemoveContainer, remove_container, RemoveContainerRequest, Empty, handled),
            (ExecProcess, exec_process, ExecProcessRequest, Empty, handled),
            (SignalProcess, signal_process, SignalProcessRequest, Empty, handled),
            (WaitProcess, wait_process, WaitProcessRequest, WaitProcessResponse, handled),
            (UpdateContainer, update_container, UpdateContainerRequest, Empty, handled),
            (UpdateEphemeralMounts, update_ephemeral_mounts, UpdateEphemeralMountsRequest, Empty, unimplemented),
            (StatsContainer, stats_container, StatsContainerRequest, StatsContainerResponse, handled),
            (PauseContainer, pause_container, PauseContainerRequest, Empty, handled),
            (ResumeContainer, resume_container, ResumeContainerRequest, Empty, handled),
            (RemoveStaleVirtiofsShareMounts, remove_stale_virtiofs_share_mounts, RemoveStaleVirtiofsShareMountsRequest, Empty, unimplemented),
            (GetDiagnosticData, get_diagnostic_data, GetDiagnosticDataRequest, GetDiagnosticDataResponse, unimplemented),
            (WriteStdin, write_stdin, WriteStreamRequest, WriteStreamResponse, handled),
            (ReadStdout, read_stdout, ReadStreamRequest, ReadStreamResponse, redacted),
            (ReadStderr, read_stderr, ReadStreamRequest, ReadStreamResponse, redacted),
            (CloseStdin, close_stdin, CloseStdinRequest, Empty, handled),
            (TtyWinResize, tty_win_resize, TtyWinResizeRequest, Empty, handled),
            (UpdateInterface, update_interface, UpdateInterfaceRequest, Interface, handled),
            (UpdateRoutes, update_routes, UpdateRoutesRequest, Routes, handled),
            (ListInterfaces, list_interfaces, ListInterfacesRequest, Interfaces, handled),
            (ListRoutes, list_routes, ListRoutesRequest, Routes, handled),
            (AddARPNeighbors, add_arp_neighbors, AddARPNeighborsRequest, Empty, handled),
            (GetIPTables, get_ip_tables, GetIPTablesRequest, GetIPTablesResponse, unimplemented),
            (SetIPTables, set_ip_tables, SetIPTablesRequest, SetIPTablesResponse, unimplemented),
            (GetMetrics, get_metrics, GetMetricsRequest, Metrics, unimplemented),
            (MemAgentMemcgSet, mem_agent_memcg_set, MemAgentMemcgConfig, Empty, unimplemented),
            (MemAgentCompactSet, mem_agent_compact_set, MemAgentCompactConfig, Empty, unimplemented),
            (CreateSandbox, create_sandbox, CreateSandboxRequest, Empty, handled),
            (DestroySandbox, destroy_sandbox, DestroySandboxRequest, Empty, handled),
            (OnlineCPUMem, online_cpu_mem, OnlineCPUMemRequest, Empty, unimplemented),
            (ReseedRandomDev, reseed_random_dev, ReseedRandomDevRequest, Empty, unimplemented),
            (GetGuestDetails, get_guest_details, GuestDetailsRequest, GuestDetailsResponse, handled),
            (MemHotplugByProbe, mem_hotplug_by_probe, MemHotplugByProbeRequest, Empty, unimplemented),
            (SetGuestDateTime, set_guest_date_time, SetGuestDateTimeRequest, Empty, handled),
            (CopyFile, copy_file, CopyFileRequest, Empty, handled),
            (GetOOMEvent, get_oom_event, GetOOMEventRequest, OOMEvent, handled),
            (AddSwap, add_swap, AddSwapRequest, Empty, unimplemented),
            (AddSwapPath, add_swap_path, AddSwapPathRequest, Empty, unimplemented),
            (GetVolumeStats, get_volume_stats, VolumeStatsRequest, VolumeStatsResponse, unimplemented),
            (ResizeVolume, resize_volume, ResizeVolumeRequest, Empty, unimplemented),
            (SetPolicy, set_policy, SetPolicyRequest, Empty, handled),
        }
    };
}
pub(crate) use with_agent_rpcs;
