//! ttrpc frames and agent request messages, as the guest agent receives them from the
//! host: a frame (header + payload) read with ttrpc's own reader, the ttrpc `Request`
//! envelope, the agent request message its method names, then the policy input the
//! agent builds from it (`policy_gate::request_to_json`).
//!
//! Input: first byte < 0x80 picks a request message type (its index modulo the number
//! of agent request messages) and the rest is that message's protobuf encoding; a
//! first byte >= 0x80 means the rest is a whole ttrpc frame stream.
#![no_main]

use guest_agent::policy_gate::request_to_json;
use kata_cc_fuzz::{agent_request_for_method, agent_requests, runtime};
use libfuzzer_sys::fuzz_target;
use protocols::protobuf::{Message as _, MessageDyn};
use protocols::ttrpc;

fn check(m: &dyn MessageDyn) {
    let json = request_to_json(m).to_string();
    // The policy input is always JSON text the engine can read back.
    assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
}

fn frames(mut data: &[u8]) {
    runtime().block_on(async {
        // A connection carries several frames; stop at the first that does not read.
        for _ in 0..4 {
            let Ok(msg) = ttrpc::proto::GenMessage::read_from(&mut data).await else { return };
            if msg.check().is_err() || msg.header.type_ != ttrpc::proto::MESSAGE_TYPE_REQUEST {
                continue;
            }
            let Ok(req) = ttrpc::Request::parse_from_bytes(&msg.payload) else { continue };
            if req.service != "grpc.AgentService" {
                continue;
            }
            if let Some(d) = agent_request_for_method(&req.method) {
                if let Ok(m) = d.parse_from_bytes(&req.payload) {
                    check(&*m);
                }
            }
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel >= 0x80 {
        frames(rest);
        return;
    }
    let reqs = agent_requests();
    let d = &reqs[usize::from(sel) % reqs.len()];
    if let Ok(m) = d.parse_from_bytes(rest) {
        check(&*m);
    }
});
