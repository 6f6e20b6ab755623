//! The attestation side of the end-to-end suites: the KBS (`kbs::server`, the code behind
//! `kata-cc-kbs`) over HTTPS with a throw-away CA, trusting the simulated TEE with the
//! pristine test guest image's launch measurement, and the pods' initdata.

use std::path::Path;

use hypervisor::{Confidential, ResolvedAccel, SimTeeConfig, VmSpec};
use kbs::server::{KbsServer, ServerConfig};
use protocols::initdata::{self, Algorithm, InitData};

use crate::guest_image;

/// The KBS's resource `default/key/k1`.
pub const SECRET: &str = "the-k1-secret-for-attested-pods";

/// The sim TEE's launch measurement of a pod VM of these tests booting `initramfs` with
/// the test image's kernel (1 vCPU, no extra kernel parameters: as `boot_custom` and
/// `sim_spec` launch it). The QEMU backend computes the same when it starts the VM.
pub fn measurement_with(initramfs: &Path) -> [u8; 48] {
    let mut spec = VmSpec::new("measure", guest_image().kernel, "/run/kata-cc/measure");
    spec.initramfs = Some(initramfs.to_path_buf());
    spec.confidential = Confidential::Sim(SimTeeConfig::default());
    // On q35 the accelerator does not change the kernel command line.
    hypervisor::qemu::sim_launch_measurement(&spec, ResolvedAccel::Tcg).unwrap()
}

/// The pristine test guest image's launch measurement: what the KBS expects.
pub fn pristine_measurement() -> [u8; 48] {
    measurement_with(&guest_image().initramfs)
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running KBS (stops with the test runtime).
pub struct Kbs {
    /// `https://IP:PORT`.
    pub url: String,
    /// The CA that signed its certificate (PEM).
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

/// The KBS over HTTPS on `ip`, trusting simulated evidence with the pristine image's
/// launch measurement and HOST_DATA produced by `host_data` from the KBS URL and CA (the
/// initdata that names the KBS is only known once the KBS listens).
pub async fn start_kbs(ip: &str, host_data: impl FnOnce(&str, &str) -> [u8; 32]) -> Kbs {
    start_kbs_with(ip, &[], host_data).await
}

/// [`start_kbs`] with extra resources (`repo/type/tag`, bytes).
pub async fn start_kbs_with(ip: &str, extra: &[(&str, &[u8])], host_data: impl FnOnce(&str, &str) -> [u8; 32]) -> Kbs {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "kata-cc e2e KBS CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![ip.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();

    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let url = format!("https://{ip}:{}", listener.local_addr().unwrap().port());
    let ca_pem = ca_cert.pem();
    let expected = host_data(&url, &ca_pem);
    std::fs::write(
        dir.path().join("reference.toml"),
        format!("snp_measurements = [\"{}\"]\nhost_data = [\"{}\"]\n", hex(&pristine_measurement()), hex(&expected)),
    )
    .unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir_all(res.join("default/key")).unwrap();
    std::fs::write(res.join("default/key/k1"), SECRET).unwrap();
    for (path, bytes) in extra {
        let p = res.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let mut cfg = ServerConfig::new(res);
    cfg.reference_values = Some(dir.path().join("reference.toml"));
    cfg.allow_simulated = true;
    cfg.tls_cert = Some(dir.path().join("cert.pem"));
    cfg.tls_key = Some(dir.path().join("key.pem"));
    let server = KbsServer::new(cfg).unwrap();
    tokio::spawn(async move {
        if let Err(e) = server.serve(listener).await {
            eprintln!("KBS stopped: {e}");
        }
    });
    Kbs { url, ca_pem, _dir: dir }
}

/// The pod's initdata: allow-all policy (plus `tenant`, which changes the digest) and an
/// `aa.toml` naming the KBS and its CA, as CoCo writes it.
pub fn initdata_toml(kbs_url: &str, ca_pem: &str, tenant: &str) -> String {
    initdata_toml_with(kbs_url, ca_pem, tenant, None)
}

/// [`initdata_toml`] plus a `cdh.toml`.
pub fn initdata_toml_with(kbs_url: &str, ca_pem: &str, tenant: &str, cdh: Option<&str>) -> String {
    let policy = format!("{}\n# tenant: {tenant}\n", include_str!("../../policy/rego/allow-all.rego"));
    initdata_toml_policy(&policy, kbs_url, ca_pem, cdh)
}

/// The pod's initdata with `policy` (Rego), an `aa.toml` naming the KBS and its CA, and
/// optionally a `cdh.toml`.
pub fn initdata_toml_policy(policy: &str, kbs_url: &str, ca_pem: &str, cdh: Option<&str>) -> String {
    let aa = format!("[token_configs.kbs]\nurl = \"{kbs_url}\"\ncert = \"\"\"\n{ca_pem}\"\"\"\n");
    let mut init = InitData::with_policy(Algorithm::Sha256, policy);
    init.data.insert("aa.toml".into(), aa);
    if let Some(cdh) = cdh {
        init.data.insert("cdh.toml".into(), cdh.to_string());
    }
    init.to_toml()
}

/// The sim TEE / SNP HOST_DATA of an initdata TOML (sha256 digest).
pub fn host_data_of(toml: &str) -> [u8; 32] {
    initdata::host_data(&initdata::digest(Algorithm::Sha256, toml.as_bytes()))
}

