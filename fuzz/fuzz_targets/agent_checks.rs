//! The guest agent's pure checks of host requests (no mount, no netlink): CreateSandbox
//! storages (`sandbox_storage::parse`, the pod's `ephemeral` tmpfs list) and the
//! network requests UpdateInterface, UpdateRoutes and AddARPNeighbors (the validation
//! `net` runs before talking to the kernel).
//!
//! Input: first byte picks the request (0: CreateSandboxRequest, 1: UpdateInterface,
//! 2: UpdateRoutes, 3: AddARPNeighbors), the rest is its protobuf encoding.
#![no_main]

use guest_agent::{net, sandbox_storage};
use libfuzzer_sys::fuzz_target;
use protocols::agent as pb;
use protocols::protobuf::Message as _;
use protocols::types::Interface;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            let Ok(r) = pb::CreateSandboxRequest::parse_from_bytes(rest) else { return };
            if let Ok(s) = sandbox_storage::parse(&r.storages) {
                assert!(s.len() <= r.storages.len());
            }
        }
        1 => {
            let Ok(r) = pb::UpdateInterfaceRequest::parse_from_bytes(rest) else { return };
            let _ = net::check_for_fuzzing(&r.interface, &[], &[]);
        }
        2 => {
            let Ok(r) = pb::UpdateRoutesRequest::parse_from_bytes(rest) else { return };
            let _ = net::check_for_fuzzing(&Interface::new(), &r.routes.Routes, &[]);
        }
        _ => {
            let Ok(r) = pb::AddARPNeighborsRequest::parse_from_bytes(rest) else { return };
            let _ = net::check_for_fuzzing(&Interface::new(), &[], &r.neighbors.ARPNeighbors);
        }
    }
});
