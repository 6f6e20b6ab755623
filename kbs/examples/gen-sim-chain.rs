//! Writes a fresh simulated SNP chain and its private keys to `kbs/trust/sim/`.
//!
//! `cargo run --release -p kbs --features sim --example gen-sim-chain`
//! (release: RSA-4096 key generation is slow in debug builds). The output is public
//! test data: anyone can forge simulated evidence with it, which is why simulated
//! evidence is refused unless `allow_simulated = true`.

use std::path::Path;

use kbs::sim::{SimChain, SimKeys, SIM_TCB};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("trust/sim");
    let keys = SimKeys::generate(4096)?;
    let chain = SimChain::issue(&keys, SIM_TCB)?;
    let [ark, ask, vcek] = keys.to_pkcs8_pem()?;
    std::fs::write(dir.join("ark_key.pem"), ark)?;
    std::fs::write(dir.join("ask_key.pem"), ask)?;
    std::fs::write(dir.join("vcek_key.pem"), vcek)?;
    std::fs::write(dir.join("ask_ark.pem"), chain.ask_ark_pem()?)?;
    std::fs::write(dir.join("vcek.pem"), chain.vcek_pem()?)?;
    println!("wrote {}", dir.display());
    Ok(())
}
