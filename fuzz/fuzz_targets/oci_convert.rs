//! OCI spec conversion of host-sent messages (`protocols::convert`): a decoded wire
//! `Spec`, `Process` or `LinuxResources` goes through `*_from_grpc`; what converts must
//! survive `*_to_grpc` and convert again to the same value (the module's documented
//! round trip), and a converted process goes through the agent's `spec::check_process`.
//!
//! Input: first byte picks the message (0: Spec, 1: Process, 2: LinuxResources), the
//! rest is its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::convert::{
    process_from_grpc, process_to_grpc, resources_from_grpc, resources_to_grpc, spec_from_grpc,
    spec_to_grpc,
};
use protocols::oci as grpc;
use protocols::protobuf::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 => {
            let Ok(w) = grpc::Spec::parse_from_bytes(rest) else { return };
            let Ok(s) = spec_from_grpc(&w) else { return };
            let again = spec_from_grpc(&spec_to_grpc(&s));
            assert_eq!(again.ok().as_ref(), Some(&s), "spec round trip");
            if let Some(p) = s.process() {
                let _ = guest_agent::spec::check_process(p);
            }
        }
        1 => {
            let Ok(w) = grpc::Process::parse_from_bytes(rest) else { return };
            let Ok(p) = process_from_grpc(&w) else { return };
            let again = process_from_grpc(&process_to_grpc(&p));
            assert_eq!(again.ok().as_ref(), Some(&p), "process round trip");
            let _ = guest_agent::spec::check_process(&p);
        }
        _ => {
            let Ok(w) = grpc::LinuxResources::parse_from_bytes(rest) else { return };
            let Ok(r) = resources_from_grpc(&w) else { return };
            let again = resources_from_grpc(&resources_to_grpc(&r));
            assert_eq!(again.ok().as_ref(), Some(&r), "resources round trip");
        }
    }
});
