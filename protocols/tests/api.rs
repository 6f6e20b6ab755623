//! The generated API matches the Kata agent API: method lists, field numbers, bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::sync::Arc;

use protobuf::{Message, MessageFull};
use protocols::{agent, agent_ttrpc, health_ttrpc, oci, types, AGENT_RPCS, HEALTH_RPCS};

/// The 42 methods of Kata's `grpc.AgentService`, in proto order.
const KATA_AGENT_RPCS: [&str; 42] = [
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "GetDiagnosticData",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
    "GetMetrics",
    "MemAgentMemcgSet",
    "MemAgentCompactSet",
    "CreateSandbox",
    "DestroySandbox",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "AddSwap",
    "AddSwapPath",
    "GetVolumeStats",
    "ResizeVolume",
    "SetPolicy",
];

#[test]
fn agent_rpcs_are_exactly_the_42_kata_methods_in_order() {
    assert_eq!(AGENT_RPCS.len(), 42);
    assert_eq!(AGENT_RPCS, KATA_AGENT_RPCS.as_slice());
}

#[test]
fn health_rpcs_are_check_and_version() {
    assert_eq!(HEALTH_RPCS, ["Check", "Version"].as_slice());
}

struct NoAgent;
impl agent_ttrpc::AgentService for NoAgent {}
struct NoHealth;
impl health_ttrpc::Health for NoHealth {}

/// The list parsed by build.rs and the server the code generator built agree.
#[test]
fn rpc_lists_match_generated_servers() {
    let services = agent_ttrpc::create_agent_service(Arc::new(NoAgent));
    let svc = services
        .get(protocols::AGENT_SERVICE)
        .expect("service registered under grpc.AgentService");
    let generated: BTreeSet<&str> = svc.methods.keys().map(String::as_str).collect();
    assert_eq!(
        generated,
        AGENT_RPCS.iter().copied().collect::<BTreeSet<_>>()
    );
    assert!(svc.streams.is_empty());

    let services = health_ttrpc::create_health(Arc::new(NoHealth));
    let svc = services
        .get(protocols::HEALTH_SERVICE)
        .expect("service registered under grpc.Health");
    let generated: BTreeSet<&str> = svc.methods.keys().map(String::as_str).collect();
    assert_eq!(
        generated,
        HEALTH_RPCS.iter().copied().collect::<BTreeSet<_>>()
    );
}

/// (field name, number) as Kata's protos declare them, checked through reflection.
fn assert_fields<M: MessageFull>(expected: &[(&str, u32)]) {
    let desc = M::descriptor();
    for (name, number) in expected {
        let field = desc
            .field_by_name(name)
            .unwrap_or_else(|| panic!("{} has no field {name}", desc.full_name()));
        assert_eq!(
            field.number() as u32,
            *number,
            "{}.{name}",
            desc.full_name()
        );
    }
}

#[test]
fn field_numbers_match_kata() {
    assert_eq!(
        agent::CreateContainerRequest::descriptor().full_name(),
        "grpc.CreateContainerRequest"
    );
    assert_eq!(
        types::Interface::descriptor().full_name(),
        "types.Interface"
    );
    assert_fields::<agent::CreateContainerRequest>(&[
        ("container_id", 1),
        ("exec_id", 2),
        ("string_user", 3),
        ("devices", 4),
        ("storages", 5),
        ("OCI", 6),
        ("sandbox_pidns", 7),
        ("shared_mounts", 8),
        ("stdin_port", 9),
        ("stdout_port", 10),
        ("stderr_port", 11),
    ]);
    assert_fields::<agent::Storage>(&[
        ("driver", 1),
        ("driver_options", 2),
        ("source", 3),
        ("fstype", 4),
        ("options", 5),
        ("mount_point", 6),
        ("fs_group", 7),
        ("shared", 8),
    ]);
    assert_fields::<agent::ExecProcessRequest>(&[
        ("process", 4),
        ("stdin_port", 5),
        ("stderr_port", 7),
    ]);
    assert_fields::<agent::ReseedRandomDevRequest>(&[("data", 2)]);
    assert_fields::<agent::FSGroup>(&[("group_id", 2), ("group_change_policy", 3)]);
    assert_fields::<agent::SetGuestDateTimeRequest>(&[("Sec", 1), ("Usec", 2)]);
    assert_fields::<agent::SetPolicyRequest>(&[("policy", 1)]);
    assert_fields::<oci::Spec>(&[
        ("Version", 1),
        ("Process", 2),
        ("Annotations", 7),
        ("Linux", 8),
        ("Windows", 10),
    ]);
    assert_fields::<oci::Process>(&[("Args", 4), ("OOMScoreAdj", 11), ("SelinuxLabel", 12)]);
    assert_fields::<oci::LinuxSyscall>(&[("errnoret", 3), ("Args", 4)]);
    assert_fields::<types::Interface>(&[("IPAddresses", 3), ("devicePath", 6), ("raw_flags", 8)]);
}

#[test]
fn create_container_request_bytes() {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c1".into();
    req.exec_id = "e".into();
    let mut storage = agent::Storage::new();
    storage.driver = "image_guest_pull".into();
    req.storages.push(storage);
    req.sandbox_pidns = true;
    req.stderr_port = 300;

    let bytes = req.write_to_bytes().unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x0a, 2, b'c', b'1',                 // field 1 (container_id), length-delimited
        0x12, 1, b'e',                       // field 2 (exec_id)
        0x2a, 18,                            // field 5 (storages), 18-byte Storage
            0x0a, 16, b'i', b'm', b'a', b'g', b'e', b'_', b'g', b'u', b'e', b's', b't', b'_',
            b'p', b'u', b'l', b'l',          //   Storage field 1 (driver)
        0x38, 1,                             // field 7 (sandbox_pidns), varint true
        0x58, 0xac, 0x02,                    // field 11 (stderr_port), varint 300
    ];
    assert_eq!(bytes, expected);

    let back = agent::CreateContainerRequest::parse_from_bytes(expected).unwrap();
    assert_eq!(back, req);
}

#[test]
fn decodes_hand_written_bytes() {
    // OCI (field 6) holding Spec{Hostname (field 4) = "h"}, then devices (field 4)
    // holding Device{type (field 2) = "blk"}.
    let bytes = [0x32, 3, 0x22, 1, b'h', 0x22, 5, 0x12, 3, b'b', b'l', b'k'];
    let req = agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(req.OCI.Hostname, "h");
    assert_eq!(req.devices.len(), 1);
    assert_eq!(req.devices[0].type_, "blk");
}

#[test]
fn proto3_optional_fields_keep_presence() {
    let mut cfg = agent::MemAgentMemcgConfig::new();
    assert_eq!(cfg.write_to_bytes().unwrap(), Vec::<u8>::new());
    cfg.disabled = Some(false);
    // Explicit presence: a false value is still written (field 1, varint 0).
    assert_eq!(cfg.write_to_bytes().unwrap(), vec![0x08, 0x00]);
}
