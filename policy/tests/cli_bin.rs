//! The `kata-cc-policy` binary end to end: gen, eval, explain, diff, digest; exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod cli_support;

use std::path::Path;
use std::process::Command;

use cli_support::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_kata-cc-policy")).args(args).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn web_nginx(images: &Images) -> serde_json::Value {
    let id = cid('b');
    let mut c = Create::container("web", "shop", "nginx", &id, &images.pinned["nginx:1.25"]);
    c.args = strings(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
    c.env = strings(&[
        PATH_ENV,
        "NGINX_VERSION=1.25.5",
        "LOG_LEVEL=info",
        "APP_MODE=production",
        "API_TOKEN=s3cr3t",
        "GREETING=mode=production",
        "POD_IP=10.244.1.7",
        "HOSTNAME=web",
    ]);
    c.uid = 101;
    c.gid = 101;
    c.no_new_privs = true;
    c.mounts = k8s_mounts(&id, true);
    c.mounts.push(shared(&id, "/etc/nginx/conf.d", "config", "ro"));
    c.request(false)
}

#[test]
fn gen_eval_explain_diff_digest() {
    let images = Images::build();
    let tmp = tempfile::tempdir().unwrap();
    let out_yaml = tmp.path().join("web.cc.yaml");
    let rego_dir = tmp.path().join("policies");
    let web = yaml("web-pod.yaml");
    let layouts = images.layouts_dir();

    let g = cli(&["gen", p(&web), "--image-config", p(&layouts), "-o", p(&out_yaml), "--rego-dir", p(&rego_dir)]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    assert!(g.stderr.contains("Pod/web"), "{}", g.stderr);
    let rego = rego_dir.join("Pod-web.rego");
    let initdata = rego_dir.join("Pod-web.initdata.toml");
    assert!(rego.is_file() && initdata.is_file());
    let yaml_out = std::fs::read_to_string(&out_yaml).unwrap();
    assert!(yaml_out.contains("io.katacontainers.config.hypervisor.cc_init_data"));
    assert!(yaml_out.contains("runtimeClassName: kata-cc"));
    assert!(yaml_out.contains(&images.pinned["nginx:1.25"]));

    // eval: the shim's requests, then a changed one.
    let write = |name: &str, v: &serde_json::Value| {
        let path = tmp.path().join(name);
        std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
        path
    };
    let sandbox = crate_dir().join("tests/inputs/create-sandbox.json");
    let nginx = web_nginx(&images);
    let good = write("good.json", &nginx);
    let mut evil = nginx.clone();
    evil["OCI"]["Process"]["Args"] = serde_json::json!(["sh", "-c", "evil"]);
    let bad = write("bad.json", &evil);
    let before = format!("CreateSandbox={}", p(&sandbox));

    let e = cli(&["eval", p(&rego), "CreateContainer", p(&good), "--before", &before]);
    assert_eq!(e.code, 0, "{} {}", e.stdout, e.stderr);
    assert!(e.stdout.contains("CreateContainerRequest: allowed"), "{}", e.stdout);
    // The initdata TOML works as the policy file too.
    let e = cli(&["eval", p(&initdata), "CreateContainerRequest", p(&good)]);
    assert_eq!(e.code, 0, "{} {}", e.stdout, e.stderr);

    let e = cli(&["eval", p(&rego), "CreateContainerRequest", p(&bad)]);
    assert_eq!(e.code, 1, "{} {}", e.stdout, e.stderr);
    assert!(e.stdout.contains("denied"), "{}", e.stdout);
    assert!(e.stdout.contains(r#"OCI.Process.Args: sent ["sh","-c","evil"]"#), "{}", e.stdout);

    let x = cli(&["explain", p(&rego), "CreateContainerRequest", p(&bad)]);
    assert_eq!(x.code, 1, "{} {}", x.stdout, x.stderr);
    assert!(
        x.stdout.contains(r#"  nginx: OCI.Process.Args: sent ["sh","-c","evil"], allowed ["/docker-entrypoint.sh","nginx","-g","daemon off;"]"#),
        "{}",
        x.stdout
    );
    let x = cli(&["explain", p(&rego), "CreateContainerRequest", p(&good)]);
    assert_eq!(x.code, 0, "{} {}", x.stdout, x.stderr);

    let e = cli(&["eval", p(&rego), "CreateContainerRequest", p(&tmp.path().join("missing.json"))]);
    assert_eq!(e.code, 2);
    assert!(e.stderr.contains("missing.json"), "{}", e.stderr);

    // digest: from the initdata file and from the YAML annotation, the same values.
    let d1 = cli(&["digest", p(&initdata)]);
    let d2 = cli(&["digest", p(&out_yaml)]);
    assert_eq!(d1.code, 0, "{}", d1.stderr);
    assert_eq!(d2.code, 0, "{}", d2.stderr);
    let digest_line = |s: &str| s.lines().find(|l| l.contains("digest:")).unwrap().to_owned();
    assert_eq!(digest_line(&d1.stdout), digest_line(&d2.stdout));
    let toml = std::fs::read(&initdata).unwrap();
    let expected = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&toml))
    };
    assert!(d1.stdout.contains(&format!("SNP HOST_DATA (32 B):  {expected}")), "{}", d1.stdout);
    assert!(d1.stdout.contains(&format!("TDX MRCONFIGID (48 B): {expected}{}", "0".repeat(32))), "{}", d1.stdout);

    // diff: identical, then a widened policy.
    let same = cli(&["diff", p(&rego), p(&initdata)]);
    assert_eq!(same.code, 0, "{}{}", same.stdout, same.stderr);
    let changed_yaml = tmp.path().join("changed.yaml");
    std::fs::write(&changed_yaml, std::fs::read_to_string(&web).unwrap().replace("value: info", "value: debug")).unwrap();
    let dir2 = tmp.path().join("policies2");
    let g = cli(&["gen", p(&changed_yaml), "--oci-layout", p(&layouts.join("main")), "--rego-dir", p(&dir2)]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    let dd = cli(&["diff", p(&rego), p(&dir2.join("Pod-web.rego"))]);
    assert_eq!(dd.code, 1, "{}{}", dd.stdout, dd.stderr);
    assert!(dd.stdout.contains("! nginx: env added LOG_LEVEL=debug"), "{}", dd.stdout);
}

#[test]
fn gen_errors_exit_2_with_position() {
    let images = Images::build();
    let b = cli(&["gen", p(&yaml("bad.yaml")), "--image-config", p(&images.layouts_dir())]);
    assert_eq!(b.code, 2);
    assert!(b.stderr.contains("bad.yaml:9:1: invalid YAML"), "{}", b.stderr);

    let n = cli(&["gen", p(&yaml("web-pod.yaml"))]);
    assert_eq!(n.code, 2);
    assert!(n.stderr.contains("(and no registry lookup asked for): pass --oci-layout (a layout holding it, tagged with its name) or --registry"), "{}", n.stderr);

    let s = cli(&["settings"]);
    assert_eq!(s.code, 0);
    assert!(s.stdout.contains("\"pause_image\""), "{}", s.stdout);
}
