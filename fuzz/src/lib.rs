//! Helpers shared by the fuzz targets in `fuzz_targets/` (see docs/fuzzing.md).
//!
//! Targets panic only on a real bug: a parser that panics, or an invariant the harness
//! states with `assert!` (round trips). Everything else an input can cause is an `Err`.

use std::sync::OnceLock;

use protocols::protobuf::reflect::MessageDescriptor;

/// A current-thread tokio runtime shared by the async targets (built once).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// A multi-thread runtime for targets that serve in the background (a fake or real
/// server) while the fuzz thread acts as the peer.
pub fn background_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// The agent's request messages, one per RPC of `grpc.AgentService`, in `agent.proto`
/// order (the policy crate's RPC table names them).
pub fn agent_requests() -> &'static [MessageDescriptor] {
    static D: OnceLock<Vec<MessageDescriptor>> = OnceLock::new();
    D.get_or_init(|| {
        let fd = protocols::agent::file_descriptor();
        let mut v: Vec<MessageDescriptor> = Vec::new();
        for name in policy::request_names() {
            let d = fd
                .message_by_package_relative_name(name)
                .unwrap_or_else(|| panic!("agent.proto has no message {name}"));
            if !v.contains(&d) {
                v.push(d);
            }
        }
        v
    })
}

/// The request message of `/grpc.AgentService/<method>`, if there is one.
pub fn agent_request_for_method(method: &str) -> Option<MessageDescriptor> {
    let name = policy::request_name(method)?;
    protocols::agent::file_descriptor().message_by_package_relative_name(name)
}

/// Splits `data` at the first occurrence of `sep` (the rest empty without one).
pub fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}

/// Splits `data` on every `sep`.
pub fn split_all<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    loop {
        match data.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                out.push(&data[..i]);
                data = &data[i + sep.len()..];
            }
            None => {
                out.push(data);
                return out;
            }
        }
    }
}

/// Separator between the fields of a multi-part input (seeds use it too).
pub const SEP: &[u8] = b"\n--8<--\n";

/// Reference values that accept any measurement, HOST_DATA, MRTD, MRCONFIGID, debug
/// guests, simulated evidence and every TDX TCB status, so the verifiers' policy code
/// runs past its first check. (`ReferenceValues::default()` accepts nothing.)
pub const OPEN_REFERENCE_TOML: &str = r#"
snp_measurements = "any"
host_data = "any"
tdx_mrtd = "any"
mrconfigid = "any"
tdx_accepted_tcb_status = ["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"]
tdx_allow_service_td = true
allow_debug = true
allow_simulated = true
"#;

/// [`OPEN_REFERENCE_TOML`], parsed (once).
pub fn open_reference() -> &'static kbs::ReferenceValues {
    static R: OnceLock<kbs::ReferenceValues> = OnceLock::new();
    R.get_or_init(|| kbs::ReferenceValues::from_toml_str(OPEN_REFERENCE_TOML).unwrap_or_else(|e| panic!("{e}")))
}
