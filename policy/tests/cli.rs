//! Generated policies, table-driven: a policy generated from a pod's YAML and its images'
//! configs allows exactly that pod's requests (built the way Kata's shim sends them) and
//! denies changed ones, through the same `PolicyEngine` the agent uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod cli_support;

use cli_support::*;
use policy::gen::{self, GeneratedPolicy, Settings};
use policy::PolicyEngine;
use serde_json::{json, Value};

fn generate(files: &[&str], images: &Images) -> gen::Generated {
    let docs = gen::load_files(&files.iter().map(|f| yaml(f)).collect::<Vec<_>>()).unwrap();
    gen::generate(docs, &images.store(), &Settings::default()).unwrap()
}

fn engine(p: &GeneratedPolicy) -> PolicyEngine {
    PolicyEngine::from_rego(&p.rego, None).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Run `steps` in order; each must be decided as expected; the reason of a denial must
/// contain `reason` when given.
fn run(p: &GeneratedPolicy, label: &str, steps: &[(&str, Value, bool, Option<&str>)]) {
    let mut e = engine(p);
    for (i, (request, input, allowed, reason)) in steps.iter().enumerate() {
        let d = e.evaluate(request, input).unwrap_or_else(|err| panic!("{label} step {i}: {}", error_chain(&err)));
        assert_eq!(d.allowed, *allowed, "{label}: step {i} ({request}): {d}");
        if let Some(want) = reason {
            let got = d.reason.clone().unwrap_or_default();
            assert!(got.contains(want), "{label}: step {i}: reason {got:?} lacks {want:?}");
        }
    }
}

fn sandbox() -> Value {
    read_json("tests/inputs/create-sandbox.json")
}

// ---- the web pod: one container, ConfigMap/Secret env and volume, exec allow-list ------

fn web_pause(images: &Images) -> Create {
    let mut c = Create::container("web", "shop", "pause", &cid('a'), &images.pinned["pause"]);
    c.args = strings(&["/pause"]);
    c.uid = 65535;
    c.gid = 65535;
    c.no_new_privs = true;
    c.read_only_root = true;
    c
}

fn web_nginx(images: &Images) -> Create {
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
    c.env.extend(service_env());
    c.uid = 101;
    c.gid = 101;
    c.no_new_privs = true;
    c.mounts = k8s_mounts(&id, true);
    c.mounts.push(shared(&id, "/etc/nginx/conf.d", "config", "ro"));
    c
}

type Mutation = fn(&mut Value);

#[test]
fn web_pod_allows_its_requests_and_denies_changed_ones() {
    let images = Images::build();
    let out = generate(&["web-pod.yaml"], &images);
    assert_eq!(out.policies.len(), 1);
    let p = &out.policies[0];
    let pause = web_pause(&images).request(true);
    let nginx = web_nginx(&images).request(false);

    // The pod as the shim creates it.
    run(p, "web pod", &[
        ("CreateSandboxRequest", sandbox(), true, None),
        ("CreateContainerRequest", pause.clone(), true, None),
        ("CreateContainerRequest", nginx.clone(), true, None),
        ("StartContainerRequest", json!({"container_id": cid('b')}), true, None),
        ("CreateContainerRequest", nginx.clone(), false, Some("was already created")),
        ("CreateSandboxRequest", sandbox(), false, Some("sandbox already created")),
    ]);

    let cases: &[(&str, Mutation, bool, &str)] = &[
        ("another Kubernetes service's env vars", |r| {
            let env = r["OCI"]["Process"]["Env"].as_array_mut().unwrap();
            env.push(json!("SHOP_DB_SERVICE_HOST=10.96.12.7"));
            env.push(json!("SHOP_DB_PORT_5432_TCP_PORT=5432"));
        }, true, ""),
        ("image with another digest", |r| {
            let other = format!("docker.io/library/nginx@sha256:{}", "0".repeat(64));
            r["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = json!(other);
            r["storages"][0]["source"] = json!(other);
        }, false, "OCI.Annotations[io.kubernetes.cri.image-name]: sent \"docker.io/library/nginx@sha256:0000"),
        ("image by tag", |r| {
            r["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = json!("docker.io/library/nginx:1.25");
            r["storages"][0]["source"] = json!("docker.io/library/nginx:1.25");
        }, false, "image-name"),
        ("image pulled from elsewhere", |r| {
            r["storages"][0]["source"] = json!("evil.io/nginx:latest");
        }, false, "storages: image_guest_pull \"evil.io/nginx:latest\""),
        ("changed command", |r| {
            r["OCI"]["Process"]["Args"] = json!(["sh", "-c", "evil"]);
        }, false, r#"OCI.Process.Args: sent ["sh","-c","evil"], allowed ["/docker-entrypoint.sh","nginx","-g","daemon off;"]"#),
        ("added env var", |r| {
            r["OCI"]["Process"]["Env"].as_array_mut().unwrap().push(json!("LD_PRELOAD=/tmp/x.so"));
        }, false, "OCI.Process.Env: sent \"LD_PRELOAD=/tmp/x.so\", not allowed"),
        ("changed env var", |r| {
            r["OCI"]["Process"]["Env"][2] = json!("LOG_LEVEL=debug");
        }, false, "OCI.Process.Env: missing \"LOG_LEVEL=info\""),
        ("dropped secret env var", |r| {
            r["OCI"]["Process"]["Env"].as_array_mut().unwrap().remove(4);
        }, false, "missing \"API_TOKEN=s3cr3t\""),
        ("HOSTNAME of another pod", |r| {
            r["OCI"]["Process"]["Env"][7] = json!("HOSTNAME=web2");
        }, false, "HOSTNAME=web2"),
        ("added host mount", |r| {
            r["OCI"]["Mounts"].as_array_mut().unwrap().push(json!(
                {"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]}));
        }, false, "OCI.Mounts: sent {\"destination\":\"/host\""),
        ("ConfigMap volume missing", |r| {
            r["OCI"]["Mounts"].as_array_mut().unwrap().pop();
        }, false, "OCI.Mounts: missing /etc/nginx/conf.d"),
        ("ConfigMap volume made writable", |r| {
            let last = r["OCI"]["Mounts"].as_array_mut().unwrap().last_mut().unwrap();
            last["options"] = json!(["rbind", "rprivate", "rw"]);
        }, false, "/etc/nginx/conf.d"),
        ("ConfigMap volume from another source", |r| {
            let last = r["OCI"]["Mounts"].as_array_mut().unwrap().last_mut().unwrap();
            last["source"] = json!(format!("{CPATH}/{}-0123456789abcdef-secrets", cid('b')));
        }, false, "/etc/nginx/conf.d"),
        ("privileged: all capabilities", |r| {
            for kind in ["Bounding", "Effective", "Permitted"] {
                r["OCI"]["Process"]["Capabilities"][kind].as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN"));
            }
        }, false, "OCI.Process.Capabilities.Bounding: sent CAP_SYS_ADMIN, not allowed"),
        ("privileged: nothing masked", |r| {
            r["OCI"]["Linux"]["MaskedPaths"] = json!([]);
            r["OCI"]["Linux"]["ReadonlyPaths"] = json!([]);
        }, false, "OCI.Linux.MaskedPaths: sent []"),
        ("privilege escalation allowed", |r| {
            r["OCI"]["Process"]["NoNewPrivileges"] = json!(false);
        }, false, "OCI.Process.NoNewPrivileges: sent false, allowed true"),
        ("runs as root", |r| {
            r["OCI"]["Process"]["User"]["UID"] = json!(0);
        }, false, "OCI.Process.User.UID: sent 0, allowed 101"),
        ("terminal", |r| {
            r["OCI"]["Process"]["Terminal"] = json!(true);
        }, false, "OCI.Process.Terminal"),
        ("working dir", |r| {
            r["OCI"]["Process"]["Cwd"] = json!("/tmp");
        }, false, "OCI.Process.Cwd: sent \"/tmp\", allowed \"/\""),
        ("host namespace", |r| {
            r["OCI"]["Linux"]["Namespaces"].as_array_mut().unwrap().push(json!({"Type": "network", "Path": "/proc/1/ns/net"}));
        }, false, "OCI.Linux.Namespaces"),
        ("a hook", |r| {
            r["OCI"]["Hooks"] = json!({"Prestart": [{"Path": "/bin/evil"}]});
        }, false, "OCI.Hooks"),
        ("a device", |r| {
            r["devices"] = json!([{"id": "x", "type": "blk", "vm_path": "/dev/vda", "container_path": "/dev/x", "options": []}]);
        }, false, "devices"),
        ("containerd's deny-all device rule", |r| {
            r["OCI"]["Linux"]["Resources"] = json!({"Devices": [{"Allow": false, "Type": "", "Major": 0, "Minor": 0, "Access": "rwm"}]});
        }, true, ""),
        ("a device allow rule", |r| {
            r["OCI"]["Linux"]["Resources"] = json!({"Devices": [{"Allow": true, "Type": "b", "Major": 254, "Minor": 0, "Access": "rwm"}]});
        }, false, "OCI.Linux.Resources.Devices (allow rules)"),
        ("another sysctl", |r| {
            r["OCI"]["Linux"]["Sysctl"] = json!({"kernel.core_pattern": "|/evil"});
        }, false, "OCI.Linux.Sysctl: sent kernel.core_pattern"),
        ("seccomp profile replaced", |r| {
            r["OCI"]["Linux"]["Seccomp"] = json!({"DefaultAction": "SCMP_ACT_ALLOW"});
        }, false, "OCI.Linux.Seccomp"),
        ("another namespace", |r| {
            r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-namespace"] = json!("default");
        }, false, "sandbox-namespace]: sent \"default\", allowed \"shop\""),
        ("another pod name", |r| {
            r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"] = json!("web-2");
        }, false, "sandbox-name]: sent \"web-2\", allowed /^web$/"),
        ("unknown container", |r| {
            r["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = json!("miner");
        }, false, "sent \"miner\", allowed one of [\"nginx\"]"),
        ("malformed Env", |r| {
            r["OCI"]["Process"]["Env"] = json!("PATH=/bin");
        }, false, "OCI.Process.Env: sent \"PATH=/bin\", expected array"),
        ("missing OCI", |r| {
            r.as_object_mut().unwrap().remove("OCI");
        }, false, ""),
    ];
    for (label, mutate, allowed, reason) in cases {
        let mut req = nginx.clone();
        mutate(&mut req);
        let want = if reason.is_empty() { None } else { Some(*reason) };
        run(p, label, &[
            ("CreateSandboxRequest", sandbox(), true, None),
            ("CreateContainerRequest", pause.clone(), true, None),
            ("CreateContainerRequest", req, *allowed, want),
        ]);
    }

    // The pause container is checked too.
    let mut evil_pause = pause.clone();
    evil_pause["OCI"]["Process"]["Args"] = json!(["/bin/sh"]);
    run(p, "pause with another command", &[
        ("CreateSandboxRequest", sandbox(), true, None),
        ("CreateContainerRequest", evil_pause, false, Some("pause: OCI.Process.Args")),
    ]);

    // The pause container runs the guest image's built-in pause rootfs: its CRI image name
    // (the cluster's sandbox_image) is not checked, and its storage may name Kata's
    // placeholder "pause"; any other source is still refused, and so is the placeholder
    // for an ordinary container.
    let mut kata_pause = pause.clone();
    kata_pause["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = json!("10.88.0.1:5000/kata-cc/pause:1");
    kata_pause["storages"][0]["source"] = json!("pause");
    let mut other_source = kata_pause.clone();
    other_source["storages"][0]["source"] = json!("evil.io/pause:1");
    let mut pause_nginx = nginx.clone();
    pause_nginx["storages"][0]["source"] = json!("pause");
    run(p, "pause as Kata and kata-cc send it", &[
        ("CreateSandboxRequest", sandbox(), true, None),
        ("CreateContainerRequest", other_source, false, Some("pause: storages: image_guest_pull \"evil.io/pause:1\"")),
        ("CreateContainerRequest", kata_pause, true, None),
        ("CreateContainerRequest", pause_nginx, false, Some("nginx: storages: image_guest_pull \"pause\"")),
    ]);

    // kata-cc's agent keeps the rootfs below $(cpath): allowed when the root is the pull's
    // mount point; a root elsewhere, or not where the image is mounted, is refused.
    let ours = format!("{CPATH}/{}/rootfs", cid('b'));
    let mut ours_req = nginx.clone();
    ours_req["storages"][0]["mount_point"] = json!(ours);
    ours_req["OCI"]["Root"]["Path"] = json!(ours);
    let mut split = nginx.clone();
    split["storages"][0]["mount_point"] = json!(ours);
    let mut elsewhere = ours_req.clone();
    elsewhere["storages"][0]["mount_point"] = json!("/tmp/rootfs");
    elsewhere["OCI"]["Root"]["Path"] = json!("/tmp/rootfs");
    for (label, req, allowed, reason) in [
        ("rootfs below cpath", ours_req, true, None),
        ("root not the pulled image", split, false, Some("but the image_guest_pull storage is mounted at")),
        ("rootfs elsewhere", elsewhere, false, Some("at \"/tmp/rootfs\", allowed source")),
    ] {
        run(p, label, &[
            ("CreateSandboxRequest", sandbox(), true, None),
            ("CreateContainerRequest", pause.clone(), true, None),
            ("CreateContainerRequest", req, allowed, reason),
        ]);
    }
}

#[test]
fn web_pod_exec_only_from_the_allow_list() {
    let images = Images::build();
    let out = generate(&["web-pod.yaml"], &images);
    let p = &out.policies[0];
    let before = [
        ("CreateSandboxRequest", sandbox(), true, None),
        ("CreateContainerRequest", web_pause(&images).request(true), true, None),
        ("CreateContainerRequest", web_nginx(&images).request(false), true, None),
    ];
    let b = cid('b');
    let cases: &[(&str, Value, bool, Option<&str>)] = &[
        ("annotation command", exec_request(&b, &["nginx", "-t"], &[PATH_ENV], 101), true, None),
        ("exec probe command", exec_request(&b, &["cat", "/tmp/healthy"], &[PATH_ENV], 101), true, None),
        ("unlisted command", exec_request(&b, &["sh"], &[PATH_ENV], 101), false,
            Some(r#"nginx: process.Args: sent ["sh"], allowed one of [["nginx","-t"],["cat","/tmp/healthy"]]"#)),
        ("listed command, extra argument", exec_request(&b, &["nginx", "-t", "-c", "/tmp/x"], &[PATH_ENV], 101), false, None),
        ("listed command with LD_PRELOAD", exec_request(&b, &["nginx", "-t"], &[PATH_ENV, "LD_PRELOAD=/tmp/x.so"], 101), false,
            Some("process.Env: sent \"LD_PRELOAD=/tmp/x.so\"")),
        ("listed command as root", exec_request(&b, &["nginx", "-t"], &[PATH_ENV], 0), false, Some("process.User.UID")),
        ("in the pause container", exec_request(&cid('a'), &["nginx", "-t"], &[PATH_ENV], 101), false, None),
        ("in an unknown container", exec_request(&cid('f'), &["nginx", "-t"], &[PATH_ENV], 101), false,
            Some("was not created under this policy")),
    ];
    for (label, input, allowed, reason) in cases {
        let mut steps = before.to_vec();
        steps.push(("ExecProcessRequest", input.clone(), *allowed, *reason));
        run(p, label, &steps);
    }
}

#[test]
fn web_pod_other_requests() {
    let images = Images::build();
    let p = &generate(&["web-pod.yaml"], &images).policies[0];
    let cases: &[(&str, Value, bool)] = &[
        ("SetPolicyRequest", json!({"policy": "package agent_policy\ndefault CreateContainerRequest := true"}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-hosts", cid('b')), "file_mode": 0o100644}), true),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-x/..data", cid('b')), "file_mode": 0o120777}), true),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-vol", cid('b')), "file_mode": 0o042775}), true),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-hosts", cid('b')), "file_mode": 0o104755}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-hosts", cid('b')), "file_mode": 0o102755}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-vol", cid('b')), "file_mode": 0o044755}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-sda", cid('b')), "file_mode": 0o060660}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-fifo", cid('b')), "file_mode": 0o010644}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-hosts", cid('b'))}), false),
        ("CopyFileRequest", json!({"path": "/etc/passwd"}), false),
        ("CopyFileRequest", json!({"path": format!("{CPATH}/{}-0123456789abcdef-x/../../../etc", cid('b'))}), false),
        ("ReadStreamRequest", json!({"container_id": cid('b'), "exec_id": "", "len": 1024}), false),
        ("UpdateInterfaceRequest", json!({}), true),
        ("GetOOMEventRequest", json!({}), true),
        ("SetIPTablesRequest", json!({}), false),
        ("CreateSandboxRequest", json!({"sandbox_id": "x", "guest_hook_path": "/evil", "storages": [], "kernel_modules": [], "sandbox_pidns": false}), false),
    ];
    for (request, input, allowed) in cases {
        let d = engine(p).evaluate(request, input).unwrap();
        assert_eq!(d.allowed, *allowed, "{request} {input}: {d}");
    }
    // Every agent request has a rule (a default at least).
    let e = engine(p);
    for name in policy::request_names() {
        assert!(e.declares(name), "generated policy has no rule for {name}");
    }
}

// ---- a Deployment: init container, two containers, emptyDir, envFrom, capabilities ----

const API_POD: &str = "api-5d4f8b9c7-x2x9k";

fn api_containers(images: &Images) -> Vec<(Create, bool)> {
    let api_image = &images.pinned["ghcr.io/example/api:2.1"];
    let mut pause = Create::container(API_POD, "default", "pause", &cid('a'), &images.pinned["pause"]);
    pause.args = strings(&["/pause"]);
    pause.uid = 65535;
    pause.gid = 65535;
    pause.no_new_privs = true;
    pause.read_only_root = true;

    let hostname = format!("HOSTNAME={API_POD}");
    let id = cid('1');
    let mut migrate = Create::container(API_POD, "default", "migrate", &id, api_image);
    migrate.args = strings(&["/app/migrate", "--once"]);
    migrate.env = strings(&[PATH_ENV, "APP_HOME=/app", &hostname]);
    migrate.cwd = "/app".into();
    migrate.uid = 1000;
    migrate.gid = 1000;
    migrate.mounts = k8s_mounts(&id, false);

    let scratch_point = format!("{CPATH}/{}/rootfs/local/scratch", cid('a'));
    let id = cid('2');
    let mut api = Create::container(API_POD, "default", "api", &id, api_image);
    api.args = strings(&["/app/server", "--port", "8080"]);
    api.env = strings(&[PATH_ENV, "APP_HOME=/app", "DB_HOST=db.internal", "DB_PORT=5432", &hostname]);
    api.env.extend(service_env());
    api.cwd = "/app".into();
    api.uid = 1000;
    api.gid = 1000;
    api.mounts = k8s_mounts(&id, false);
    api.mounts.push(json!({"destination": "/scratch", "type": "bind", "source": scratch_point,
                           "options": ["rbind", "rprivate", "rw"]}));
    api.storages.push(json!({"driver": "local", "driver_options": [], "source": "local",
                             "fstype": "local", "options": ["mode=0777"],
                             "mount_point": scratch_point, "fs_group": null}));

    let id = cid('3');
    let mut sidecar = Create::container(API_POD, "default", "sidecar", &id, &images.pinned["docker.io/library/busybox:1.36"]);
    sidecar.args = strings(&["sh", "-c", "while true; do sleep 3600; done"]);
    sidecar.env = strings(&[PATH_ENV, &hostname]);
    sidecar.read_only_root = true;
    sidecar.caps = Some(strings(&["CAP_NET_BIND_SERVICE"]));
    sidecar.mounts = k8s_mounts(&id, false);
    sidecar.mounts.push(json!({"destination": "/data", "type": "bind", "source": scratch_point,
                               "options": ["rbind", "rprivate", "ro"]}));
    sidecar.storages.push(json!({"driver": "local", "driver_options": [], "source": "local",
                                 "fstype": "local", "options": ["mode=0777"],
                                 "mount_point": scratch_point, "fs_group": null}));
    vec![(pause, true), (migrate, false), (api, false), (sidecar, false)]
}

#[test]
fn deployment_with_several_containers() {
    let images = Images::build();
    let out = generate(&["api-deployment.yaml"], &images);
    assert_eq!(out.policies.len(), 1);
    let p = &out.policies[0];
    assert_eq!(p.data.sandbox.name_regex, "^api-[a-z0-9]{1,10}-[a-z0-9]{5}$");
    let names: Vec<&str> = p.data.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pause", "migrate", "api", "sidecar"]);

    let containers = api_containers(&images);
    let mut steps = vec![("CreateSandboxRequest", sandbox(), true, None)];
    for (c, is_pause) in &containers {
        steps.push(("CreateContainerRequest", c.request(*is_pause), true, None));
    }
    run(p, "api deployment", &steps);

    let sidecar = &containers[3].0;
    let api = &containers[2].0;
    let mut wrong_pod = api.clone();
    wrong_pod.sandbox_name = "other-5d4f8b9c7-x2x9k".into();
    let mut default_caps = sidecar.clone();
    default_caps.caps = None;
    let mut writable_root = sidecar.clone();
    writable_root.read_only_root = false;
    let mut writable_data = sidecar.clone();
    writable_data.mounts.last_mut().unwrap()["options"] = json!(["rbind", "rprivate", "rw"]);
    let mut stray_storage = api.clone();
    stray_storage.storages[0]["mount_point"] = json!("/run/kata-containers/shared/containers/elsewhere");
    let mut no_env_from = api.clone();
    no_env_from.env.retain(|e| !e.starts_with("DB_HOST="));
    let cases: &[(&str, &Create, &str)] = &[
        ("pod of another deployment", &wrong_pod, "sandbox-name]: sent \"other-5d4f8b9c7-x2x9k\""),
        ("sidecar with the default capabilities", &default_caps, "sidecar: OCI.Process.Capabilities.Bounding: sent CAP_CHOWN"),
        ("sidecar with a writable root", &writable_root, "sidecar: OCI.Root.Readonly: sent false, allowed true"),
        ("sidecar writes the shared volume", &writable_data, "sidecar: OCI.Mounts"),
        ("emptyDir storage elsewhere", &stray_storage, "api: storages: sent"),
        ("envFrom var dropped", &no_env_from, "missing \"DB_HOST=db.internal\""),
    ];
    for (label, c, reason) in cases {
        run(p, label, &[
            ("CreateSandboxRequest", sandbox(), true, None),
            ("CreateContainerRequest", containers[0].0.request(true), true, None),
            ("CreateContainerRequest", c.request(false), false, Some(reason)),
        ]);
    }
}

// ---- a List, the output YAML and initdata ----------------------------------------------

#[test]
fn list_yields_one_policy_per_workload_and_pins_the_yaml() {
    let images = Images::build();
    let out = generate(&["list.yaml"], &images);
    let labels: Vec<&str> = out.policies.iter().map(|p| p.workload.split(' ').next().unwrap()).collect();
    assert_eq!(labels, ["Pod/one", "CronJob/nightly"]);
    let nightly = &out.policies[1];
    assert_eq!(nightly.data.sandbox.namespace, "batch");
    assert_eq!(nightly.data.containers[1].process.Args, ["echo", "hello"]);

    let bb = &images.pinned["docker.io/library/busybox:1.36"];
    let mut job = Create::container("nightly-28999999-abcde", "batch", "job", &cid('4'), bb);
    job.args = strings(&["echo", "hello"]);
    job.env = strings(&[PATH_ENV, "HOSTNAME=nightly-28999999-abcde"]);
    job.mounts = k8s_mounts(&cid('4'), true);
    let mut pause = Create::container("nightly-28999999-abcde", "batch", "pause", &cid('a'), &images.pinned["pause"]);
    pause.args = strings(&["/pause"]);
    pause.uid = 65535;
    pause.gid = 65535;
    pause.no_new_privs = true;
    pause.read_only_root = true;
    run(nightly, "cronjob", &[
        ("CreateSandboxRequest", sandbox(), true, None),
        ("CreateContainerRequest", pause.request(true), true, None),
        ("CreateContainerRequest", job.request(false), true, None),
    ]);

    // The output YAML: images pinned, initdata annotation carrying exactly the policy,
    // runtime class set unless the pod has one.
    let docs = gen::parse_str(std::path::Path::new("out.yaml"), &out.yaml).unwrap();
    assert_eq!(docs.len(), 1);
    let list = serde_json::to_value(&docs[0].value).unwrap();
    let service = &list["items"][0];
    assert_eq!(service["kind"], "Service");
    assert!(service["metadata"].get("annotations").is_none());
    let pod = &list["items"][1];
    assert_eq!(pod["spec"]["runtimeClassName"], "kata-cc-snp");
    assert_eq!(pod["spec"]["containers"][0]["image"], json!(bb));
    let template = &list["items"][2]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(template["spec"]["runtimeClassName"], "kata-cc");
    let annotation = template["metadata"]["annotations"][gen::INITDATA_ANNOTATION].as_str().unwrap();
    let toml = gen::decode_annotation(annotation).unwrap();
    assert!(toml.starts_with("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\n"));
    assert_eq!(toml, nightly.initdata);
    let init = gen::InitData::parse(&toml).unwrap();
    assert_eq!(init.policy(), Some(nightly.rego.as_str()));
}

#[test]
fn regenerating_from_the_pinned_yaml_gives_the_same_policy() {
    let images = Images::build();
    let first = generate(&["web-pod.yaml"], &images);
    let docs = gen::parse_str(std::path::Path::new("pinned.yaml"), &first.yaml).unwrap();
    let second = gen::generate(docs, &images.store(), &Settings::default()).unwrap();
    assert_eq!(first.policies[0].rego, second.policies[0].rego);
    let report = gen::diff(&first.policies[0].rego, &second.policies[0].rego).unwrap();
    assert!(report.is_empty(), "{report}");
}

#[test]
fn diff_speaks_reviewer() {
    let images = Images::build();
    let base = std::fs::read_to_string(yaml("web-pod.yaml")).unwrap();
    let gen_text = |text: &str| {
        let docs = gen::parse_str(std::path::Path::new("x.yaml"), text).unwrap();
        gen::generate(docs, &images.store(), &Settings::default()).unwrap().policies.remove(0).rego
    };
    let a = gen_text(&base);
    let changed = base
        .replace("value: info", "value: debug")
        .replace(r#"'[["nginx", "-t"]]'"#, r#"'[["nginx", "-t"], ["sh"]]'"#)
        .replace("allowPrivilegeEscalation: false", "privileged: true")
        .replace("mountPath: /etc/nginx/conf.d", "mountPath: /etc/nginx/other.d");
    let b = gen_text(&changed);
    let report = gen::diff(&a, &b).unwrap();
    let text = report.to_string();
    for want in [
        "rules: identical",
        "! nginx: env added LOG_LEVEL=debug",
        "- nginx: env removed LOG_LEVEL=info",
        "! nginx: exec allow-list added [\"sh\"]",
        "! nginx: privileges widened: privileged",
        "! nginx: privileges widened: capabilities added",
        "! nginx: mount added /etc/nginx/other.d",
        "- nginx: mount removed /etc/nginx/conf.d",
    ] {
        assert!(text.contains(want), "diff lacks {want:?}:\n{text}");
    }
    assert!(report.widens());

    let mut rules_changed = b.clone();
    rules_changed = rules_changed.replacen("default SetPolicyRequest := false", "default SetPolicyRequest := true", 1);
    let report = gen::diff(&b, &rules_changed).unwrap();
    assert!(report.to_string().contains("! rules differ"), "{report}");
    assert!(gen::diff("package agent_policy", &b).is_err());
}

// ---- errors ------------------------------------------------------------------------------

fn gen_error(files: &[&str], images: &Images) -> String {
    let docs = match gen::load_files(&files.iter().map(|f| yaml(f)).collect::<Vec<_>>()) {
        Ok(d) => d,
        Err(e) => return error_chain(&e),
    };
    match gen::generate(docs, &images.store(), &Settings::default()) {
        Ok(_) => panic!("{files:?} generated a policy"),
        Err(e) => error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[test]
fn clear_errors() {
    let images = Images::build();
    let e = gen_error(&["bad.yaml"], &images);
    assert!(e.contains("bad.yaml:9:1: invalid YAML"), "{e}");
    assert!(e.contains("while parsing a flow sequence at line 8 column 14"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");

    let e = gen_error(&["missing-configmap.yaml"], &images);
    assert!(e.contains("Pod/lonely"), "{e}");
    assert!(e.contains("ConfigMap not-here key mode is not in the input"), "{e}");

    let text = std::fs::read_to_string(yaml("web-pod.yaml")).unwrap().replace("nginx:1.25", "quay.io/nobody/nothing:1");
    let docs = gen::parse_str(std::path::Path::new("x.yaml"), &text).unwrap();
    let e = error_chain(&gen::generate(docs, &images.store(), &Settings::default()).unwrap_err());
    assert!(e.contains("no registry lookup asked for): pass --oci-layout"), "{e}");

    let text = std::fs::read_to_string(yaml("web-pod.yaml"))
        .unwrap()
        .replace("nginx:1.25", &format!("nginx@sha256:{}", "e".repeat(64)));
    let docs = gen::parse_str(std::path::Path::new("x.yaml"), &text).unwrap();
    let e = error_chain(&gen::generate(docs, &images.store(), &Settings::default()).unwrap_err());
    assert!(e.contains("not found in the given OCI layouts"), "{e}");

    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
    let docs = gen::parse_str(std::path::Path::new("x.yaml"), text).unwrap();
    let e = error_chain(&gen::generate(docs, &images.store(), &Settings::default()).unwrap_err());
    assert!(e.contains("no Pod or workload"), "{e}");

    let text = std::fs::read_to_string(yaml("web-pod.yaml"))
        .unwrap()
        .replace(r#"'[["nginx", "-t"]]'"#, r#"'["nginx -t"]'"#);
    let docs = gen::parse_str(std::path::Path::new("x.yaml"), &text).unwrap();
    let e = error_chain(&gen::generate(docs, &images.store(), &Settings::default()).unwrap_err());
    assert!(e.contains("kata-cc.io/exec-allow"), "{e}");
}

#[test]
fn tampered_blob_is_refused() {
    let images = Images::build();
    let blobs = images.layouts_dir().join("main/blobs/sha256");
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("daemon off;") {
            std::fs::write(&path, text.replace("daemon off;", "evil")).unwrap();
        }
    }
    let e = gen_error(&["web-pod.yaml"], &images);
    assert!(e.contains("does not match its digest"), "{e}");
}

// ---- the secure pod: every field its YAML decides, on create, exec and update ----------

/// A label, a change to the request, whether it is allowed, and a part of the reason.
type BoxedCase = (&'static str, Box<dyn Fn(&mut Value)>, bool, &'static str);

fn secure_pause(images: &Images) -> Value {
    let mut c = web_pause(images);
    c.sandbox_name = "vault".into();
    c.namespace = "secure".into();
    let mut r = c.request(true);
    r["OCI"]["Hostname"] = json!("vault-0");
    r["OCI"]["Process"]["User"]["AdditionalGids"] = json!([65535, 3000, 3001, 4000]);
    r["OCI"]["Linux"]["Seccomp"] = runtime_default_seccomp();
    r
}

/// A profile shaped like containerd's RuntimeDefault (abridged allow list).
fn runtime_default_seccomp() -> Value {
    json!({
        "DefaultAction": "SCMP_ACT_ERRNO",
        "Architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "Flags": [],
        "Syscalls": [
            {"Names": ["read", "write", "openat", "close", "execve", "exit_group", "futex"], "Action": "SCMP_ACT_ALLOW", "Args": []},
            {"Names": ["clone"], "Action": "SCMP_ACT_ALLOW",
             "Args": [{"Index": 0, "Value": 2114060288u64, "ValueTwo": 0, "Op": "SCMP_CMP_MASKED_EQ"}]},
            {"Names": ["clone3"], "Action": "SCMP_ACT_ERRNO", "errnoret": 38, "Args": []}
        ]
    })
}

fn secure_server(images: &Images) -> Value {
    let id = cid('c');
    let mut c = Create::container("vault", "secure", "server", &id, &images.pinned["nginx:1.25"]);
    c.args = strings(&["/usr/sbin/nginx", "-g", "daemon off;"]);
    c.env = strings(&[PATH_ENV, "NGINX_VERSION=1.25.5", "HOSTNAME=vault-0"]);
    c.env.extend(service_env());
    c.cwd = "/srv".into();
    c.uid = 1000;
    c.gid = 1000;
    c.no_new_privs = true;
    c.caps = Some(strings(&["CAP_NET_BIND_SERVICE"]));
    c.mounts = k8s_mounts(&id, true);
    let mut r = c.request(false);
    r["OCI"]["Process"]["User"]["AdditionalGids"] = json!([1000, 3000, 3001, 4000]);
    r["OCI"]["Linux"]["Seccomp"] = runtime_default_seccomp();
    r
}

fn secure_exec(args: &[&str]) -> Value {
    let mut r = exec_request(&cid('c'), args, &[PATH_ENV], 1000);
    r["process"]["Cwd"] = json!("/srv");
    r["process"]["User"]["AdditionalGids"] = json!([1000, 3000]);
    r
}

#[test]
fn secure_pod_every_field_its_yaml_decides() {
    let images = Images::build();
    let out = generate(&["secure-pod.yaml"], &images);
    let p = &out.policies[0];
    let before = || {
        vec![
            ("CreateSandboxRequest", sandbox(), true, None),
            ("CreateContainerRequest", secure_pause(&images), true, None),
        ]
    };
    let server = secure_server(&images);
    let mut steps = before();
    steps.push(("CreateContainerRequest", server.clone(), true, None));
    run(p, "secure pod as sent", &steps);

    let seccomp_rule = |names: &[&str], action: &str| json!({"Names": names, "Action": action, "Args": []});
    let cases: Vec<BoxedCase> = vec![
        ("seccomp allows by default", Box::new(|r| r["OCI"]["Linux"]["Seccomp"]["DefaultAction"] = json!("SCMP_ACT_ALLOW")), false,
            "OCI.Linux.Seccomp.DefaultAction: sent \"SCMP_ACT_ALLOW\""),
        ("seccomp only logs", Box::new(|r| r["OCI"]["Linux"]["Seccomp"]["DefaultAction"] = json!("SCMP_ACT_LOG")), false,
            "OCI.Linux.Seccomp.DefaultAction"),
        ("seccomp dropped", Box::new(|r| r["OCI"]["Linux"]["Seccomp"] = Value::Null), false,
            "OCI.Linux.Seccomp: sent null, allowed runtime-default profile"),
        ("seccomp allows mount", Box::new(move |r| {
            r["OCI"]["Linux"]["Seccomp"]["Syscalls"].as_array_mut().unwrap().push(seccomp_rule(&["mount", "read"], "SCMP_ACT_ALLOW"));
        }), false, "SCMP_ACT_ALLOW allows mount, which needs one of [\"CAP_SYS_ADMIN\"]"),
        ("seccomp allows keyctl", Box::new(move |r| {
            r["OCI"]["Linux"]["Seccomp"]["Syscalls"].as_array_mut().unwrap().push(seccomp_rule(&["keyctl"], "SCMP_ACT_LOG"));
        }), false, "allows keyctl, which needs one of []"),
        ("seccomp allows clone without the namespace mask", Box::new(move |r| {
            r["OCI"]["Linux"]["Seccomp"]["Syscalls"].as_array_mut().unwrap().push(seccomp_rule(&["clone"], "SCMP_ACT_ALLOW"));
        }), false, "allows clone"),
        ("seccomp hands decisions to a listener", Box::new(move |r| {
            r["OCI"]["Linux"]["Seccomp"]["Syscalls"].as_array_mut().unwrap().push(seccomp_rule(&["openat"], "SCMP_ACT_NOTIFY"));
        }), false, "SCMP_ACT_NOTIFY for [\"openat\"], not allowed"),
        ("seccomp without speculation mitigations", Box::new(|r| r["OCI"]["Linux"]["Seccomp"]["Flags"] = json!(["SECCOMP_FILTER_FLAG_SPEC_ALLOW"])), false,
            "OCI.Linux.Seccomp.Flags: sent \"SECCOMP_FILTER_FLAG_SPEC_ALLOW\""),
        ("seccomp with a removed allow rule (stricter)", Box::new(|r| {
            r["OCI"]["Linux"]["Seccomp"]["Syscalls"].as_array_mut().unwrap().remove(0);
        }), true, ""),
        ("supplementary group root", Box::new(|r| r["OCI"]["Process"]["User"]["AdditionalGids"].as_array_mut().unwrap().push(json!(0))), false,
            "OCI.Process.User.AdditionalGids: sent 0, allowed [1000,3000,3001,4000]"),
        ("fewer supplementary groups", Box::new(|r| r["OCI"]["Process"]["User"]["AdditionalGids"] = json!([1000])), true, ""),
        ("user name", Box::new(|r| r["OCI"]["Process"]["User"]["Username"] = json!("root")), false, "OCI.Process.User.Username"),
        ("containerd's default rlimit", Box::new(|r| r["OCI"]["Process"]["Rlimits"] = json!([{"Type": "RLIMIT_NOFILE", "Hard": 1024, "Soft": 1024}])), true, ""),
        ("core dumps rlimit", Box::new(|r| r["OCI"]["Process"]["Rlimits"] = json!([{"Type": "RLIMIT_CORE", "Hard": 1u64 << 40, "Soft": 1u64 << 40}])), false,
            "OCI.Process.Rlimits: sent {\"Hard\":1099511627776,\"Soft\":1099511627776,\"Type\":\"RLIMIT_CORE\"}"),
        ("huge NOFILE", Box::new(|r| r["OCI"]["Process"]["Rlimits"] = json!([{"Type": "RLIMIT_NOFILE", "Hard": 1u64 << 40, "Soft": 1024}])), false, "OCI.Process.Rlimits"),
        ("OOM score out of range", Box::new(|r| r["OCI"]["Process"]["OOMScoreAdj"] = json!(-5000)), false, "OCI.Process.OOMScoreAdj: sent -5000"),
        ("another hostname", Box::new(|r| r["OCI"]["Hostname"] = json!("evil")), false, "OCI.Hostname: sent \"evil\""),
        ("the pod's hostname", Box::new(|r| r["OCI"]["Hostname"] = json!("vault-0")), true, ""),
        ("shared root propagation", Box::new(|r| r["OCI"]["Linux"]["RootfsPropagation"] = json!("rshared")), false, "OCI.Linux.RootfsPropagation: sent \"rshared\""),
        ("cache allocation", Box::new(|r| r["OCI"]["Linux"]["IntelRdt"] = json!({"L3CacheSchema": "L3:0=ff"})), false, "OCI.Linux.IntelRdt"),
        ("apparmor profile", Box::new(|r| r["OCI"]["Process"]["ApparmorProfile"] = json!("unconfined")), false, "OCI.Process.ApparmorProfile"),
        ("more memory than the limit", Box::new(|r| r["OCI"]["Linux"]["Resources"]["Memory"]["Limit"] = json!(1u64 << 30)), false,
            "OCI.Linux.Resources.Memory.Limit: sent 1073741824, allowed 1..268435456"),
        ("no memory limit", Box::new(|r| r["OCI"]["Linux"]["Resources"]["Memory"] = Value::Null), false, "Memory.Limit: sent null"),
        ("more CPU than the limit", Box::new(|r| r["OCI"]["Linux"]["Resources"]["CPU"]["Quota"] = json!(200000)), false,
            "OCI.Linux.Resources.CPU: sent"),
        ("pull storage options", Box::new(|r| r["storages"][0]["options"] = json!(["rw"])), false, "storages[image_guest_pull].options"),
        ("pull storage fs_group", Box::new(|r| r["storages"][0]["fs_group"] = json!({"group_id": 0})), false, "fs_group"),
        ("capability beyond the added one", Box::new(|r| r["OCI"]["Process"]["Capabilities"]["Effective"].as_array_mut().unwrap().push(json!("CAP_CHOWN"))), false,
            "OCI.Process.Capabilities.Effective: sent CAP_CHOWN"),
        ("a second sandbox container", Box::new(|r| {
            r["OCI"]["Annotations"]["io.kubernetes.cri.container-type"] = json!("sandbox");
        }), false, "sandbox"),
    ];
    for (label, mutate, allowed, reason) in cases {
        let mut req = server.clone();
        mutate(&mut req);
        let want = if reason.is_empty() { None } else { Some(reason) };
        let mut steps = before();
        steps.push(("CreateContainerRequest", req, allowed, want));
        run(p, label, &steps);
    }
    // The pause container is the pod's first, and only once.
    let mut steps = before();
    let mut second = secure_pause(&images);
    second["container_id"] = json!(cid('d'));
    steps.push(("CreateContainerRequest", second, false, Some("the sandbox container aaaa")));
    run(p, "second pause", &steps);

    // ExecProcess: the probe, with no more than the container's own process.
    let mut with_server = before();
    with_server.push(("CreateContainerRequest", server.clone(), true, None));
    let probe = secure_exec(&["cat", "/srv/ready"]);
    let exec_cases: Vec<BoxedCase> = vec![
        ("the probe", Box::new(|_| {}), true, ""),
        ("the probe with a terminal", Box::new(|r| r["process"]["Terminal"] = json!(true)), true, ""),
        ("the probe with the container's capability", Box::new(|r| r["process"]["Capabilities"] = json!({"Bounding": ["CAP_NET_BIND_SERVICE"], "Effective": ["CAP_NET_BIND_SERVICE"]})), true, ""),
        ("the probe with CAP_SYS_ADMIN", Box::new(|r| r["process"]["Capabilities"] = json!({"Bounding": ["CAP_SYS_ADMIN"], "Effective": ["CAP_SYS_ADMIN"], "Permitted": ["CAP_SYS_ADMIN"]})), false,
            "server: process.Capabilities.Bounding: sent CAP_SYS_ADMIN, not allowed"),
        ("the probe may escalate", Box::new(|r| r["process"]["NoNewPrivileges"] = json!(false)), false, "process.NoNewPrivileges: sent false, allowed true"),
        ("the probe elsewhere", Box::new(|r| r["process"]["Cwd"] = json!("/")), false, "process.Cwd: sent \"/\", allowed \"/srv\""),
        ("the probe in group root", Box::new(|r| r["process"]["User"]["AdditionalGids"] = json!([0])), false, "process.User.AdditionalGids: sent 0"),
        ("the probe with another rlimit", Box::new(|r| r["process"]["Rlimits"] = json!([{"Type": "RLIMIT_MEMLOCK", "Hard": 1, "Soft": 1}])), false, "process.Rlimits"),
        ("the probe unconfined by apparmor", Box::new(|r| r["process"]["ApparmorProfile"] = json!("unconfined")), false, "process.ApparmorProfile"),
        ("the probe with an SELinux label", Box::new(|r| r["process"]["SelinuxLabel"] = json!("system_u:system_r:spc_t:s0")), false, "process.SelinuxLabel"),
        ("the probe as root", Box::new(|r| r["process"]["User"]["UID"] = json!(0)), false, "process.User.UID: sent 0, allowed 1000"),
    ];
    for (label, mutate, allowed, reason) in exec_cases {
        let mut req = probe.clone();
        mutate(&mut req);
        let want = if reason.is_empty() { None } else { Some(reason) };
        let mut steps = with_server.clone();
        steps.push(("ExecProcessRequest", req, allowed, want));
        run(p, label, &steps);
    }

    // UpdateContainer: within the pod spec's limits; device rules never allow.
    let update = |res: Value| json!({"container_id": cid('c'), "resources": res});
    let fits = json!({"Devices": [], "Memory": {"Limit": 134217728}, "CPU": {"Shares": 102, "Quota": 50000, "Period": 100000}});
    let mut more_memory = fits.clone();
    more_memory["Memory"]["Limit"] = json!(1u64 << 33);
    let mut more_cpu = fits.clone();
    more_cpu["CPU"]["Quota"] = json!(400000);
    let mut device = fits.clone();
    device["Devices"] = json!([{"Allow": true, "Type": "c", "Major": 1, "Minor": 1, "Access": "rwm"}]);
    let mut pause_update = update(fits.clone());
    pause_update["container_id"] = json!(cid('a'));
    let mut unknown = update(fits.clone());
    unknown["container_id"] = json!(cid('f'));
    let update_cases: Vec<(&str, Value, bool, &str)> = vec![
        ("within the limits", update(fits.clone()), true, ""),
        ("more memory", update(more_memory), false, "server: resources.Memory.Limit: sent 8589934592, allowed 1..268435456"),
        ("more CPU", update(more_cpu), false, "server: resources.CPU"),
        ("a device allowed", update(device), false, "server: resources.Devices (allow rules)"),
        ("no resources", json!({"container_id": cid('c'), "resources": null}), false, "resources: sent null, expected object"),
        ("the pause container", pause_update, false, "pause: the sandbox container's resources"),
        ("an unknown container", unknown, false, "was not created under this policy"),
    ];
    for (label, req, allowed, reason) in update_cases {
        let want = if reason.is_empty() { None } else { Some(reason) };
        let mut steps = with_server.clone();
        steps.push(("UpdateContainerRequest", req, allowed, want));
        run(p, label, &steps);
    }
}

#[test]
fn quantities() {
    use policy::gen::parse_quantity;
    for (text, milli, want) in [
        ("256Mi", false, Some(268_435_456)),
        ("1G", false, Some(1_000_000_000)),
        ("1.5Gi", false, Some(1_610_612_736)),
        ("500m", true, Some(500)),
        ("2", true, Some(2000)),
        ("0.5", true, Some(500)),
        ("1e3", false, Some(1000)),
        ("100m", false, Some(1)),
        ("", false, None),
        ("1.2.3", false, None),
        ("12Qi", false, None),
        ("99999999999999999999Ei", false, None),
    ] {
        assert_eq!(parse_quantity(text, milli), want, "{text} (milli {milli})");
    }
}

/// `recursiveReadOnly` on a volume mount: `Enabled` allows `rro` only, `IfPossible` `rro`
/// or `ro` (the kubelet sends `ro` where the runtime handler has no recursive read-only
/// support), neither allows `rw`; a value Kubernetes would refuse is an error naming it.
#[test]
fn recursive_read_only_volume_mounts() {
    let images = Images::build();
    let tmp = tempfile::tempdir().unwrap();
    let web = std::fs::read_to_string(yaml("web-pod.yaml")).unwrap();
    let with = |mode: &str, read_only: bool| {
        let text = web.replace(
            "          mountPath: /etc/nginx/conf.d\n",
            &format!("          mountPath: /etc/nginx/conf.d\n          readOnly: {read_only}\n          recursiveReadOnly: {mode}\n"),
        );
        assert_ne!(text, web);
        let path = tmp.path().join(format!("web-{mode}-{read_only}.yaml"));
        std::fs::write(&path, text).unwrap();
        let docs = gen::load_files(&[path]).unwrap();
        gen::generate(docs, &images.store(), &Settings::default())
    };
    let pause = web_pause(&images).request(true);
    let nginx = |flag: &str| {
        let mut c = web_nginx(&images);
        c.mounts.pop();
        c.mounts.push(shared(&cid('b'), "/etc/nginx/conf.d", "config", flag));
        c.request(false)
    };
    for (mode, flag, allowed) in [
        ("Enabled", "rro", true),
        ("Enabled", "ro", false),
        ("Enabled", "rw", false),
        ("IfPossible", "rro", true),
        ("IfPossible", "ro", true),
        ("IfPossible", "rw", false),
        ("Disabled", "ro", true),
        ("Disabled", "rro", false),
    ] {
        let out = with(mode, true).unwrap_or_else(|e| panic!("{mode}: {}", error_chain(&e)));
        let label = format!("{mode} sent {flag}");
        run(&out.policies[0], &label, &[
            ("CreateSandboxRequest", sandbox(), true, None),
            ("CreateContainerRequest", pause.clone(), true, None),
            ("CreateContainerRequest", nginx(flag), allowed, (!allowed).then_some("/etc/nginx/conf.d")),
        ]);
    }
    let err = error_chain(&with("Enabled", false).err().unwrap());
    assert!(err.contains("recursiveReadOnly") && err.contains("Enabled needs readOnly: true"), "{err}");
    let err = error_chain(&with("Always", true).err().unwrap());
    assert!(err.contains("\"Always\" is not Disabled, IfPossible or Enabled"), "{err}");
}
