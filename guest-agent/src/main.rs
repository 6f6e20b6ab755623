//! `kata-cc-agent`: entry point. The real agent lives in the library; this only dispatches.
fn main() {}
