//! `kata-cc measure` end to end: the binary on real firmware (Debian's OVMF.fd, from
//! `deploy/install-deps.sh`) and on the `sev` crate's firmware vectors, with digests
//! computed independently by virtee's Python `sev-snp-measure` 0.0.13 (PyPI), e.g.
//! `sev-snp-measure --mode snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf ovmf_AmdSev_suffix.bin
//! --kernel /dev/null --initrd /dev/null --append "console=ttyS0 loglevel=7"`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// bookworm `ovmf` 2022.11-6+deb12u2.
const DEBIAN_OVMF_SHA256: &str = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773";

/// A firmware vector shipped in the `sev` crate's own package (`tests/measurement/`):
/// read from the dependency's source as cargo downloaded it, never copied into our tree.
fn fixture(name: &str) -> PathBuf {
    static SEV_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = SEV_DIR.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata");
        assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
        let sev = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| p["name"] == "sev")
            .expect("the sev crate is a dependency");
        let manifest = Path::new(sev["manifest_path"].as_str().expect("manifest_path"));
        manifest.parent().expect("crate dir").to_path_buf()
    });
    let path = dir.join("tests/measurement").join(name);
    assert!(path.is_file(), "{} is missing from the sev crate's package", path.display());
    path
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn kata_cc(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .arg("measure")
        .args(args)
        .output()
        .unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    }
}

fn digest(args: &[&str]) -> String {
    let o = kata_cc(args);
    assert!(o.ok, "kata-cc measure {args:?} failed: {}", o.stderr);
    let d = o.stdout.trim().to_owned();
    assert_eq!(d.len(), 96, "{d}");
    d
}

/// Kernel and initrd files with fixed content.
struct Boot {
    _dir: tempfile::TempDir,
    kernel: String,
    initrd: String,
}

fn boot(kernel: &[u8], initrd: &[u8]) -> Boot {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinuz");
    let i = dir.path().join("initrd");
    std::fs::write(&k, kernel).unwrap();
    std::fs::write(&i, initrd).unwrap();
    Boot {
        kernel: k.to_str().unwrap().to_owned(),
        initrd: i.to_str().unwrap().to_owned(),
        _dir: dir,
    }
}

fn debian_ovmf() -> &'static str {
    let data = std::fs::read(DEBIAN_OVMF).unwrap_or_else(|e| {
        panic!("{DEBIAN_OVMF}: {e} (install Debian's ovmf: deploy/install-deps.sh)")
    });
    use sha2::Digest as _;
    let sum = hex::encode(sha2::Sha256::digest(&data));
    assert_eq!(
        sum, DEBIAN_OVMF_SHA256,
        "{DEBIAN_OVMF} is not the bookworm build these vectors were computed for"
    );
    DEBIAN_OVMF
}

#[test]
fn debian_ovmf_matches_sev_snp_measure() {
    let ovmf = debian_ovmf();
    let b = boot(b"kernel-bytes", b"initrd-bytes");
    // (vcpus, type, digest by sev-snp-measure 0.0.13 --mode snp, no kernel)
    let vectors = [
        (1, "EPYC-v4", "11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75c6ff1703f540bd22a9beede8fe7a97e3"),
        (1, "EPYC-Milan", "80479ca85a2b182c026f6a3a2f2b180ab968d84b17540dd30de39039e70b8c0c33ead2cae6d34e37750035fcff60bfc8"),
        (1, "EPYC-Genoa", "98988ff584a1d2b80cbac0c290d592aec2caf460ca58ec34f13c29d44b84dcc3141a8571bb1747aba84fe30c36b2c757"),
        (2, "EPYC-v4", "a5b54e62ae971b58274dd24cc6c47b842662617036e7bd67d7326c07ac6363f35399ef933330a5ea160cead90a00603f"),
        (4, "EPYC-Milan", "e9c10ab98f8086bf4a4993dcdc1f768b1128bcb02301d1791f1d3274329e790db2d12a301d66d99a462a13b5d87e2840"),
        (4, "EPYC-Genoa", "a509186122f6e4e095ebab39abf4aea568d9949b9e929d0759f45a3983dfc2df71404de97367aba26c08ddeebc3d7ba0"),
    ];
    for (vcpus, t, want) in vectors {
        let v = vcpus.to_string();
        let args = [
            "--ovmf",
            ovmf,
            "--kernel",
            &b.kernel,
            "--initrd",
            &b.initrd,
            "--vcpus",
            &v,
            "--vcpu-type",
            t,
            "--allow-unmeasured-kernel",
        ];
        let o = kata_cc(&args);
        assert!(o.ok, "{}", o.stderr);
        assert_eq!(o.stdout.trim(), want, "{vcpus} x {t}");
        assert!(o.stderr.contains("NOT covered"), "no warning: {}", o.stderr);
        // Deterministic.
        assert_eq!(digest(&args), want);
    }
}

#[test]
fn debian_ovmf_is_refused_without_the_flag() {
    let ovmf = debian_ovmf();
    let b = boot(b"k", b"i");
    let o = kata_cc(&["--ovmf", ovmf, "--kernel", &b.kernel, "--initrd", &b.initrd]);
    assert!(!o.ok);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    assert!(
        o.stderr.contains("no SNP_KERNEL_HASHES section")
            && o.stderr.contains("--allow-unmeasured-kernel"),
        "{}",
        o.stderr
    );
}

#[test]
fn debian_ovmf_digest_ignores_kernel_initrd_cmdline_but_not_vcpus() {
    let ovmf = debian_ovmf();
    let a = boot(b"kernel A", b"initrd A");
    let b = boot(b"kernel B", b"initrd B");
    let d = |boot: &Boot, extra: &str, vcpus: &str| {
        digest(&[
            "--ovmf",
            ovmf,
            "--kernel",
            &boot.kernel,
            "--initrd",
            &boot.initrd,
            "--append",
            extra,
            "--vcpus",
            vcpus,
            "--allow-unmeasured-kernel",
        ])
    };
    let base = d(&a, "", "1");
    // Not covered: that is exactly why it is refused by default.
    assert_eq!(d(&b, "", "1"), base);
    assert_eq!(d(&a, "agent.log=debug", "1"), base);
    assert_ne!(d(&a, "", "2"), base);
}

#[test]
fn amdsev_vector_matches_sev_snp_measure_with_the_runtime_cmdline() {
    // sev-snp-measure --mode snp --vcpus 2 --vcpu-type EPYC-Milan
    //   --ovmf ovmf_AmdSev_suffix.bin --kernel K --initrd I
    //   --append "console=ttyS0 quiet reboot=t panic=-1"   (K, I: the bytes below)
    let b = boot(b"kernel-bytes", b"initrd-bytes");
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    let o = kata_cc(&[
        "--ovmf",
        ovmf.to_str().unwrap(),
        "--kernel",
        &b.kernel,
        "--initrd",
        &b.initrd,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
    ]);
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(
        o.stdout.trim(),
        "7f906c5cdb42479c4754f30338d370989456647ca04181ad0782b4461be54cabcacf645c80460ef40142c6e8c1b518a1"
    );
    assert!(!o.stderr.contains("WARNING"), "{}", o.stderr);
}

#[test]
fn amdsev_digest_covers_kernel_initrd_cmdline_and_vcpus() {
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    let ovmf = ovmf.to_str().unwrap();
    let a = boot(b"kernel A", b"initrd A");
    let k2 = boot(b"kernel B", b"initrd A");
    let i2 = boot(b"kernel A", b"initrd B");
    let d = |boot: &Boot, extra: &str, vcpus: &str, t: &str| {
        digest(&[
            "--ovmf",
            ovmf,
            "--kernel",
            &boot.kernel,
            "--initrd",
            &boot.initrd,
            "--append",
            extra,
            "--vcpus",
            vcpus,
            "--vcpu-type",
            t,
        ])
    };
    let base = d(&a, "", "1", "EPYC-v4");
    assert_eq!(d(&a, "", "1", "EPYC-v4"), base, "not deterministic");
    let others = [
        d(&k2, "", "1", "EPYC-v4"),
        d(&i2, "", "1", "EPYC-v4"),
        d(&a, "agent.log=debug", "1", "EPYC-v4"),
        d(&a, "", "2", "EPYC-v4"),
        d(&a, "", "1", "EPYC-Genoa"),
    ];
    for (i, o) in others.iter().enumerate() {
        assert_ne!(o, &base, "change {i} not measured");
        for p in &others[i + 1..] {
            assert_ne!(o, p);
        }
    }
}

#[test]
fn kbs_format_is_read_by_kata_cc_kbs() {
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    let b = boot(b"kernel-bytes", b"initrd-bytes");
    let dir = tempfile::tempdir().unwrap();
    let initdata = dir.path().join("initdata.toml");
    let toml = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\\ndefault allow := true\\n\"\n";
    std::fs::write(&initdata, toml).unwrap();
    let common = [
        "--ovmf",
        ovmf.to_str().unwrap(),
        "--kernel",
        &b.kernel,
        "--initrd",
        &b.initrd,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--format",
        "kbs",
    ];
    let o = kata_cc(&[&common[..], &["--initdata", initdata.to_str().unwrap()]].concat());
    assert!(o.ok, "{}", o.stderr);
    let r = kbs::ReferenceValues::from_toml_str(&o.stdout).unwrap();
    let want = "7f906c5cdb42479c4754f30338d370989456647ca04181ad0782b4461be54cabcacf645c80460ef40142c6e8c1b518a1";
    assert!(r
        .snp_measurements
        .check(&kbs::HexBytes::from_hex(want).unwrap())
        .is_ok());
    // HOST_DATA = sha384(raw TOML) truncated to 32 bytes.
    use sha2::Digest as _;
    let d = sha2::Sha384::digest(toml.as_bytes());
    let hd: [u8; 32] = d[..32].try_into().unwrap();
    assert!(r.host_data.check(&kbs::HexBytes(hd)).is_ok());
    assert!(r.host_data.check(&kbs::HexBytes([0; 32])).is_err());
    assert!(
        o.stdout
            .contains("cmdline: \"console=ttyS0 quiet reboot=t panic=-1\""),
        "{}",
        o.stdout
    );

    // Without initdata: HOST_DATA zero, as the runtime launches it.
    let o = kata_cc(&common);
    let r = kbs::ReferenceValues::from_toml_str(&o.stdout).unwrap();
    assert!(r.host_data.check(&kbs::HexBytes([0; 32])).is_ok());

    // A broken initdata is an error, not a silent zero.
    std::fs::write(&initdata, "version = \"9\"\n").unwrap();
    let o = kata_cc(&[&common[..], &["--initdata", initdata.to_str().unwrap()]].concat());
    assert!(!o.ok && o.stderr.contains("initdata"), "{}", o.stderr);
}

#[test]
fn bad_inputs_have_clear_errors() {
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    let ovmf = ovmf.to_str().unwrap();
    let b = boot(b"k", b"i");
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--ovmf",
                "/nonexistent/OVMF.fd",
                "--kernel",
                &b.kernel,
                "--initrd",
                &b.initrd,
            ],
            "cannot read the firmware /nonexistent/OVMF.fd",
        ),
        (
            &[
                "--ovmf",
                ovmf,
                "--kernel",
                "/nonexistent/vmlinuz",
                "--initrd",
                &b.initrd,
            ],
            "cannot read the kernel /nonexistent/vmlinuz",
        ),
        (
            &[
                "--ovmf",
                ovmf,
                "--kernel",
                &b.kernel,
                "--initrd",
                "/nonexistent/initrd",
            ],
            "cannot read the initrd /nonexistent/initrd",
        ),
        (
            &[
                "--ovmf",
                ovmf,
                "--kernel",
                &b.kernel,
                "--initrd",
                &b.initrd,
                "--vcpu-type",
                "host",
            ],
            "unknown vCPU type \"host\"",
        ),
        (
            &[
                "--ovmf", ovmf, "--kernel", &b.kernel, "--initrd", &b.initrd, "--vcpus", "0",
            ],
            "vcpus must be between 1",
        ),
        (
            &[
                "--ovmf", ovmf, "--kernel", &b.kernel, "--initrd", &b.initrd, "--append", "quiet ",
            ],
            "whitespace",
        ),
        (
            &[
                "--ovmf", &b.kernel, "--kernel", &b.kernel, "--initrd", &b.initrd,
            ],
            "not a firmware image size",
        ),
        (
            &["--image-dir", "/nonexistent/image", "--ovmf", ovmf],
            "manifest",
        ),
    ];
    for (args, want) in cases {
        let o = kata_cc(args);
        assert!(!o.ok, "{args:?} succeeded");
        assert!(
            o.stderr.contains(want),
            "{args:?}: want {want:?} in {}",
            o.stderr
        );
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    }
}

#[test]
fn guest_image_defaults_are_checked_against_the_manifest() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = (b"kernel-bytes".as_slice(), b"initrd-bytes".as_slice());
    std::fs::write(dir.path().join("vmlinuz"), k).unwrap();
    std::fs::write(dir.path().join("initramfs.cpio.gz"), i).unwrap();
    let manifest = format!(
        "variant=test\nkernel_package=linux-image-test=1\nvmlinuz_sha256={}\ninitramfs.cpio.gz_sha256={}\n",
        hex::encode(sha2::Sha256::digest(k)),
        hex::encode(sha2::Sha256::digest(i))
    );
    std::fs::write(dir.path().join("manifest.txt"), &manifest).unwrap();
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    let args = [
        "--image-dir",
        dir.path().to_str().unwrap(),
        "--ovmf",
        ovmf.to_str().unwrap(),
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
    ];
    assert_eq!(
        digest(&args),
        "7f906c5cdb42479c4754f30338d370989456647ca04181ad0782b4461be54cabcacf645c80460ef40142c6e8c1b518a1"
    );
    // A file that no longer matches its manifest is refused.
    std::fs::write(dir.path().join("initramfs.cpio.gz"), b"other").unwrap();
    let o = kata_cc(&args);
    assert!(!o.ok && o.stderr.contains("stale image"), "{}", o.stderr);
}

#[test]
fn plain_ovmf_vector_matches_and_kernel_is_refused() {
    // sev-snp-measure --mode snp --vcpus 1 --vcpu-type EPYC-v4 --ovmf ovmf_OvmfX64_suffix.bin
    let ovmf = fixture("ovmf_OvmfX64_suffix.bin");
    let b = boot(b"k", b"i");
    let args = [
        "--ovmf",
        ovmf.to_str().unwrap(),
        "--kernel",
        &b.kernel,
        "--initrd",
        &b.initrd,
    ];
    let o = kata_cc(&args);
    assert!(
        !o.ok && o.stderr.contains("SNP_KERNEL_HASHES"),
        "{}",
        o.stderr
    );
    assert_eq!(
        digest(&[&args[..], &["--allow-unmeasured-kernel"]].concat()),
        "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"
    );
}

/// `measure --tee sim` for `kernel-bytes`/`initrd-bytes`, 1 vCPU, no `--append`, by the
/// definition in docs/attestation.md, computed independently:
/// `python3 -c 'import hashlib as h, struct; s=lambda b: h.sha256(b).digest();
/// print(h.sha384(b"kata-cc sim-tee launch measurement v1\0" + s(b"kernel-bytes") + b"\1"
/// + s(b"initrd-bytes") + s(b"console=ttyS0 quiet reboot=t panic=-1")
/// + struct.pack("<I", 1)).hexdigest())'`
const SIM_VECTOR: &str = "a7d9d14c266c812cbfd23d850c08d74125358372475cc98860f7c4ab2563c42a10ad5e57ab7aa72f7847d2cedddb990a";

/// What the QEMU backend hands a sim VM booting these files.
fn backend_sim(kernel: &str, initrd: &str, append: &str, vcpus: u32) -> String {
    let mut spec = hypervisor::VmSpec::new("m", kernel, "/run/kata-cc/vm/m");
    spec.initramfs = Some(initrd.into());
    spec.cmdline = append.into();
    spec.vcpus = vcpus;
    spec.confidential = hypervisor::Confidential::Sim(hypervisor::SimTeeConfig::default());
    hex::encode(
        hypervisor::qemu::sim_launch_measurement(&spec, hypervisor::ResolvedAccel::Tcg).unwrap(),
    )
}

#[test]
fn sim_measurement_is_the_backends_and_follows_the_definition() {
    let b = boot(b"kernel-bytes", b"initrd-bytes");
    let sim = |extra: &[&str]| {
        digest(&[&["--tee", "sim", "--kernel", &b.kernel, "--initrd", &b.initrd], extra].concat())
    };
    let base = sim(&[]);
    assert_eq!(base, SIM_VECTOR);
    assert_eq!(base, backend_sim(&b.kernel, &b.initrd, "", 1));
    // --vcpus and --append are measured, as the backend measures them.
    let two = sim(&["--vcpus", "2"]);
    assert_eq!(two, backend_sim(&b.kernel, &b.initrd, "", 2));
    let debug = sim(&["--append", "agent.log=debug"]);
    assert_eq!(debug, backend_sim(&b.kernel, &b.initrd, "agent.log=debug", 1));
    let k2 = boot(b"kernel-bytes!", b"initrd-bytes");
    let i2 = boot(b"kernel-bytes", b"initrd-bytes!");
    let other_kernel =
        digest(&["--tee", "sim", "--kernel", &k2.kernel, "--initrd", &k2.initrd]);
    let other_initrd =
        digest(&["--tee", "sim", "--kernel", &i2.kernel, "--initrd", &i2.initrd]);
    let all = [&base, &two, &debug, &other_kernel, &other_initrd];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y);
        }
    }
    // Relative paths are the files the runtime would be given as absolute paths.
    let dir = Path::new(&b.kernel).parent().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(["measure", "--tee", "sim", "--kernel", "vmlinuz", "--initrd", "initrd"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), SIM_VECTOR);
}

#[test]
fn sim_uses_the_guest_image_and_its_manifest() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = (b"kernel-bytes".as_slice(), b"initrd-bytes".as_slice());
    std::fs::write(dir.path().join("vmlinuz"), k).unwrap();
    std::fs::write(dir.path().join("initramfs.cpio.gz"), i).unwrap();
    let manifest = format!(
        "variant=test\nagent_features=sim\nvmlinuz_sha256={}\ninitramfs.cpio.gz_sha256={}\n",
        hex::encode(sha2::Sha256::digest(k)),
        hex::encode(sha2::Sha256::digest(i))
    );
    std::fs::write(dir.path().join("manifest.txt"), &manifest).unwrap();
    let args = ["--tee", "sim", "--image-dir", dir.path().to_str().unwrap()];
    assert_eq!(digest(&args), SIM_VECTOR);
    // A modified initramfs no longer matches its manifest: refused, not measured.
    std::fs::write(dir.path().join("initramfs.cpio.gz"), b"initrd-bytes, modified").unwrap();
    let o = kata_cc(&args);
    assert!(!o.ok && o.stderr.contains("stale image") && o.stdout.is_empty(), "{}", o.stderr);
    // The default image directory is the SNP path's (the prod image).
    let o = Command::new(env!("CARGO_BIN_EXE_kata-cc"))
        .args(["measure", "--tee", "sim"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("target/guest-image/prod/manifest.txt"),
        "{stderr}"
    );
}

#[test]
fn sim_kbs_format_is_read_by_kata_cc_kbs() {
    let b = boot(b"kernel-bytes", b"initrd-bytes");
    let dir = tempfile::tempdir().unwrap();
    let initdata = dir.path().join("initdata.toml");
    let toml = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\\ndefault allow := true\\n\"\n";
    std::fs::write(&initdata, toml).unwrap();
    let common = ["--tee", "sim", "--kernel", &b.kernel, "--initrd", &b.initrd, "--format", "kbs"];
    let o = kata_cc(&[&common[..], &["--initdata", initdata.to_str().unwrap()]].concat());
    assert!(o.ok, "{}", o.stderr);
    let r = kbs::ReferenceValues::from_toml_str(&o.stdout).unwrap();
    let want = kbs::HexBytes::from_hex(SIM_VECTOR).unwrap();
    assert!(r.snp_measurements.check(&want).is_ok(), "{}", o.stdout);
    assert!(r
        .snp_measurements
        .check(&kbs::HexBytes::from_hex(&backend_sim(&b.kernel, &b.initrd, "", 2)).unwrap())
        .is_err());
    // HOST_DATA = sha256(raw TOML), as the runtime launches the sim with this initdata.
    use sha2::Digest as _;
    let hd: [u8; 32] = sha2::Sha256::digest(toml.as_bytes()).into();
    assert!(r.host_data.check(&kbs::HexBytes(hd)).is_ok());
    assert!(r.host_data.check(&kbs::HexBytes([0; 32])).is_err());
    assert!(o.stdout.contains("SIMULATED") && o.stdout.contains("allow_simulated = true"), "{}", o.stdout);
    assert!(
        o.stdout.contains("cmdline: \"console=ttyS0 quiet reboot=t panic=-1\""),
        "{}",
        o.stdout
    );
    // The fragment itself does not switch simulated evidence on.
    assert!(!r.allow_simulated);
    // Without initdata: HOST_DATA zero, as the runtime launches it.
    let o = kata_cc(&common);
    let r = kbs::ReferenceValues::from_toml_str(&o.stdout).unwrap();
    assert!(r.host_data.check(&kbs::HexBytes([0; 32])).is_ok());
}

#[test]
fn sim_refuses_snp_only_options_and_bad_inputs() {
    let b = boot(b"k", b"i");
    let base = ["--tee", "sim", "--kernel", &b.kernel, "--initrd", &b.initrd];
    let cases: &[(&[&str], &str)] = &[
        (&["--ovmf", "/usr/share/ovmf/OVMF.fd"], "--ovmf is not used with --tee sim"),
        (&["--vcpu-type", "EPYC-v4"], "--vcpu-type is not used with --tee sim"),
        (&["--guest-features", "0x1"], "--guest-features is not used with --tee sim"),
        (&["--allow-unmeasured-kernel"], "--allow-unmeasured-kernel is not used with --tee sim"),
        (&["--vcpus", "0"], "vcpus must be between 1"),
        (&["--append", "quiet "], "whitespace"),
    ];
    for (extra, want) in cases {
        let o = kata_cc(&[&base[..], extra].concat());
        assert!(!o.ok && o.stdout.is_empty(), "{extra:?} succeeded: {}", o.stdout);
        assert!(o.stderr.contains(want), "{extra:?}: want {want:?} in {}", o.stderr);
    }
    for (args, want) in [
        (
            ["--tee", "sim", "--kernel", "/nonexistent/vmlinuz", "--initrd", &b.initrd],
            "cannot read the kernel /nonexistent/vmlinuz",
        ),
        (
            ["--tee", "sim", "--kernel", &b.kernel, "--initrd", "/nonexistent/initrd"],
            "cannot read the initrd /nonexistent/initrd",
        ),
    ] {
        let o = kata_cc(&args);
        assert!(!o.ok && o.stderr.contains(want), "{args:?}: {}", o.stderr);
    }
}

/// The vCPU count of a pod sized by its limits is the shim's (`hypervisor::sizing`), and
/// reaches the digest: `--pod-cpu 3` measures what `--vcpus 3` does, a configuration with
/// `overhead_vcpus = 1` what `--vcpus 4` does, and `max_vcpus` caps it.
#[test]
fn pod_limits_size_the_measured_vcpus_as_the_shim_does() {
    let b = boot(b"kernel-bytes", b"initrd-bytes");
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    let base = [
        "--ovmf",
        ovmf.to_str().unwrap(),
        "--kernel",
        &b.kernel,
        "--initrd",
        &b.initrd,
    ];
    let d = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = kata_cc(&args);
        assert!(o.ok, "{extra:?}: {}", o.stderr);
        o.stdout.trim().to_string()
    };
    let three = d(&["--vcpus", "3"]);
    assert_eq!(d(&["--pod-cpu", "3", "--pod-memory", "3Gi"]), three);
    assert_eq!(d(&["--pod-cpu", "2500m"]), three);
    assert_eq!(d(&[]), d(&["--vcpus", "1"]), "no limits: the default size");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("configuration.toml");
    std::fs::write(
        &cfg,
        "[hypervisor]\nkernel = \"/k\"\ninitramfs = \"/i\"\noverhead_vcpus = 1\nmax_vcpus = 6\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    assert_eq!(d(&["--config", c, "--pod-cpu", "3"]), d(&["--vcpus", "4"]));
    assert_eq!(d(&["--config", c, "--pod-cpu", "64"]), d(&["--vcpus", "6"]));
    // Bad quantities and conflicting options are refused, naming the value.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--pod-cpu", "three"]);
    let o = kata_cc(&args);
    assert!(!o.ok && o.stderr.contains("\"three\""), "{}", o.stderr);
    let mut args = base.to_vec();
    args.extend_from_slice(&["--pod-cpu", "3", "--vcpus", "3"]);
    assert!(!kata_cc(&args).ok);
}
