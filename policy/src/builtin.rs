//! Policies shipped with kata-cc (the files in `policy/rego/`).

/// Allows every agent request (all 42 RPCs). For non-confidential pods and debugging.
pub const ALLOW_ALL: &str = include_str!("../rego/allow-all.rego");

/// Denies every agent request.
pub const DENY_ALL: &str = include_str!("../rego/deny-all.rego");

/// For a TEE pod whose initdata carries no policy: allows only what a sandbox needs to start
/// and stop, so no container can run. The file's comment lists the requests and why.
pub const DEFAULT_TEE: &str = include_str!("../rego/default-tee.rego");

/// The built-in policies by file name.
pub const ALL: &[(&str, &str)] = &[
    ("allow-all.rego", ALLOW_ALL),
    ("deny-all.rego", DENY_ALL),
    ("default-tee.rego", DEFAULT_TEE),
];
