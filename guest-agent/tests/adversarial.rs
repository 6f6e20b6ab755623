//! The host as the adversary (threat model: it may send anything, in any order). The real
//! agent binary enforces the policy generated from a pod YAML (two containers, configMap,
//! secret volumes, exec probes, a full security context); the pod really runs
//! (images pulled in the "guest" from the loopback registry), and every request that
//! deviates from what the YAML says is sent, one RPC of every kind at least.
//!
//! Each case says who must refuse it: the policy (PERMISSION_DENIED, the reason naming the
//! field and the value) or an agent check (another status naming the field), and after
//! each refusal the harness checks that nothing was left behind (mounts, cgroups,
//! processes, files of the agent) and that the agent still answers; after each group the
//! legitimate request for the same thing still succeeds (the policy state did not move).
//! Every wrongly allowed case is reported by name in one failure at the end.
//!
//! Run as root: `cargo test -p guest-agent --test adversarial -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "adversarial/harness.rs"]
mod harness;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{cid, copied, copy_file, needles, Agent, Expect, Got, Pod, Req, Snapshot, Verdict};
use protocols::agent as pb;
use serde_json::{json, Value};

/// One hostile request.
struct Case {
    name: String,
    expect: Expect,
    req: Req,
}

fn policy(list: &[&str]) -> Expect {
    Expect::Policy(needles(list))
}

fn agent(list: &[&str]) -> Expect {
    Expect::Agent(needles(list))
}

fn case(name: impl Into<String>, expect: Expect, req: Req) -> Case {
    Case { name: name.into(), expect, req }
}

/// Results of all cases, reported at the end.
#[derive(Default)]
struct Report {
    lines: Vec<(String, &'static str, String, &'static str, Verdict)>,
    leftovers: Vec<String>,
    /// What a wrongly created container left after its RemoveContainer.
    removed_left: Vec<String>,
    state: Vec<String>,
}

impl Report {
    fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.lines.iter().filter(|l| f(&l.4)).count()
    }
}

/// Runs `cases` against `a`: the verdict, the leftovers, liveness. A wrongly allowed
/// CreateContainer is removed again so that later cases see the same pod.
async fn run(a: &mut Agent, cases: Vec<Case>, report: &mut Report) {
    for c in cases {
        let before = Snapshot::take(a);
        let got = a.send(&c.req).await;
        let mut verdict = c.expect.judge(&got);
        if let Err(e) = a.alive().await {
            verdict = Verdict::Panic(e);
        }
        if verdict == Verdict::WronglyAllowed {
            if let Req::CreateContainer(v) = &c.req {
                let mut r = pb::RemoveContainerRequest::new();
                r.container_id = v["container_id"].as_str().unwrap_or_default().to_owned();
                let _ = a.send(&Req::RemoveContainer(r)).await;
                // RemoveContainer must take everything of it away again.
                let left = Snapshot::take(a).new_since(&before);
                if !left.is_empty() {
                    report.removed_left.push(format!("{}: {left:?}", c.name));
                }
            }
        } else if !matches!(verdict, Verdict::Panic(_)) {
            let left = Snapshot::take(a).new_since(&before);
            if !left.is_empty() {
                report.leftovers.push(format!("{} / {}: left {left:?}", c.req.rpc(), c.name));
            }
        }
        let shown = match &got {
            Got::Status(code, m) => format!("{code:?}: {m}"),
            other => format!("{other:?}"),
        };
        report.lines.push((c.name, c.req.rpc(), shown, c.expect.by(), verdict));
    }
}

fn must(got: Got, what: &str) {
    assert_eq!(got, Got::Ok, "{what} (legitimate) failed");
}

fn start_req(id: &str) -> pb::StartContainerRequest {
    let mut r = pb::StartContainerRequest::new();
    r.container_id = id.into();
    r
}

fn wait_req(id: &str, exec: &str) -> pb::WaitProcessRequest {
    let mut r = pb::WaitProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec.into();
    r
}

fn signal_req(id: &str, exec: &str, sig: u32) -> pb::SignalProcessRequest {
    let mut r = pb::SignalProcessRequest::new();
    r.container_id = id.into();
    r.exec_id = exec.into();
    r.signal = sig;
    r
}

/// `base` changed by `f`, with a fresh container id (so that no case hides behind another
/// one's "already created").
fn variant(base: &Value, n: &Cell<u32>, f: impl FnOnce(&mut Value)) -> Value {
    let mut v = base.clone();
    n.set(n.get() + 1);
    let id = cid(0x1000 + n.get());
    let old = v["container_id"].as_str().unwrap().to_owned();
    let text = serde_json::to_string(&v).unwrap().replace(&old, &id);
    v = serde_json::from_str(&text).unwrap();
    f(&mut v);
    v
}

fn mounts(v: &mut Value) -> &mut Vec<Value> {
    v["OCI"]["Mounts"].as_array_mut().unwrap()
}

fn mount_at<'a>(v: &'a mut Value, dest: &str) -> &'a mut Value {
    mounts(v).iter_mut().find(|m| m["destination"] == dest).unwrap()
}

fn push(v: &mut Value, ptr: &str, x: Value) {
    v.pointer_mut(ptr).unwrap().as_array_mut().unwrap().push(x);
}

fn create_cases(pod: &Pod, state_dir: &str) -> Vec<Case> {
    let web = pod.container("web", &cid(0x3000));
    let helper = pod.container("helper", &cid(0x3001));
    let n = Cell::new(0);
    let v = |f: &dyn Fn(&mut Value)| variant(&web, &n, f);
    let mut out = Vec::new();
    let mut add = |name: &str, e: Expect, r: Value| out.push(case(name, e, Req::CreateContainer(r)));

    // process
    add("args replaced by a shell", policy(&["OCI.Process.Args", "\"sh\""]), v(&|r| r["OCI"]["Process"]["Args"] = json!(["/bin/busybox", "sh", "-c", "id"])));
    add("args: one argument appended", policy(&["OCI.Process.Args", "9999"]), v(&|r| push(r, "/OCI/Process/Args", json!("9999"))));
    add("env: LD_PRELOAD added", policy(&["OCI.Process.Env", "LD_PRELOAD=/tmp/x.so"]), v(&|r| push(r, "/OCI/Process/Env", json!("LD_PRELOAD=/tmp/x.so"))));
    add("env: configMap MODE removed", policy(&["OCI.Process.Env", "MODE=production"]), v(&|r| r["OCI"]["Process"]["Env"].as_array_mut().unwrap().retain(|e| e != "MODE=production")));
    add("env: GREETING changed", policy(&["OCI.Process.Env", "GREETING=evil"]), v(&|r| r["OCI"]["Process"]["Env"][3] = json!("GREETING=evil")));
    add("env: HOSTNAME of another pod", policy(&["OCI.Process.Env", "HOSTNAME=other"]), v(&|r| r["OCI"]["Process"]["Env"][4] = json!("HOSTNAME=other")));
    add("cwd changed", policy(&["OCI.Process.Cwd", "/etc"]), v(&|r| r["OCI"]["Process"]["Cwd"] = json!("/etc")));
    add("user: uid 0", policy(&["OCI.Process.User.UID", "sent 0"]), v(&|r| r["OCI"]["Process"]["User"]["UID"] = json!(0)));
    add("user: gid 0", policy(&["OCI.Process.User.GID", "sent 0"]), v(&|r| r["OCI"]["Process"]["User"]["GID"] = json!(0)));
    add("user: AdditionalGids gains 0", policy(&["OCI.Process.User.AdditionalGids", "0"]), v(&|r| push(r, "/OCI/Process/User/AdditionalGids", json!(0))));
    // (Fewer supplementary groups than the YAML's are allowed: they only take access away.)
    add("user: AdditionalGids gains 65534", policy(&["OCI.Process.User.AdditionalGids", "65534"]), v(&|r| push(r, "/OCI/Process/User/AdditionalGids", json!(65534))));
    add("user: string_user root", policy(&["string_user"]), v(&|r| r["string_user"] = json!({"uid": "0", "gid": "0", "additionalGids": []})));
    for set in ["Bounding", "Effective", "Permitted", "Inheritable", "Ambient"] {
        add(&format!("capabilities.{set} + CAP_SYS_ADMIN"), policy(&[&format!("OCI.Process.Capabilities.{set}"), "CAP_SYS_ADMIN"]),
            v(&|r| push(r, &format!("/OCI/Process/Capabilities/{set}"), json!("CAP_SYS_ADMIN"))));
    }
    add("capabilities: dropped CAP_NET_RAW back", policy(&["OCI.Process.Capabilities.Bounding", "CAP_NET_RAW"]), v(&|r| push(r, "/OCI/Process/Capabilities/Bounding", json!("CAP_NET_RAW"))));
    add("NoNewPrivileges false", policy(&["OCI.Process.NoNewPrivileges", "false"]), v(&|r| r["OCI"]["Process"]["NoNewPrivileges"] = json!(false)));
    add("terminal true", policy(&["OCI.Process.Terminal", "true"]), v(&|r| r["OCI"]["Process"]["Terminal"] = json!(true)));
    add("rlimits: RLIMIT_CORE", policy(&["OCI.Process.Rlimits", "RLIMIT_CORE"]), v(&|r| r["OCI"]["Process"]["Rlimits"] = json!([{"Type": "RLIMIT_CORE", "Hard": 1u64 << 40, "Soft": 1u64 << 40}])));
    add("rlimits: NOFILE above the allowed", policy(&["OCI.Process.Rlimits", "RLIMIT_NOFILE"]), v(&|r| r["OCI"]["Process"]["Rlimits"] = json!([{"Type": "RLIMIT_NOFILE", "Hard": 1u64 << 32, "Soft": 1024}])));
    add("OOMScoreAdj out of range", policy(&["OCI.Process.OOMScoreAdj", "-5000"]), v(&|r| r["OCI"]["Process"]["OOMScoreAdj"] = json!(-5000)));
    add("apparmor: unconfined", policy(&["OCI.Process.ApparmorProfile", "unconfined"]), v(&|r| r["OCI"]["Process"]["ApparmorProfile"] = json!("unconfined")));
    add("selinux process label", policy(&["OCI.Process.SelinuxLabel", "spc_t"]), v(&|r| r["OCI"]["Process"]["SelinuxLabel"] = json!("system_u:system_r:spc_t:s0"))); 
    add("selinux mount label", policy(&["OCI.Linux.MountLabel", "s0"]), v(&|r| r["OCI"]["Linux"]["MountLabel"] = json!("system_u:object_r:container_file_t:s0")));
    // root
    add("readOnlyRootFilesystem dropped", policy(&["OCI.Root.Readonly", "false"]), v(&|r| r["OCI"]["Root"]["Readonly"] = json!(false)));
    let pause_rootfs = pod.rootfs(&pod.sandbox_id);
    add("root: the pause container's rootfs", policy(&["OCI.Root.Path", &pause_rootfs]), v(&|r| r["OCI"]["Root"]["Path"] = json!(pause_rootfs.clone())));
    // mounts
    add("mount: bind of / added", policy(&["OCI.Mounts", "\"/host\""]), v(&|r| push(r, "/OCI/Mounts", json!({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]}))));
    add("mount: the agent's state dir", policy(&["OCI.Mounts", state_dir]), v(&|r| push(r, "/OCI/Mounts", json!({"destination": "/state", "type": "bind", "source": state_dir, "options": ["rbind", "ro"]}))));
    let other_root = pod.rootfs(&pod.sandbox_id);
    add("mount: another container's rootfs", policy(&["OCI.Mounts", "/other"]), v(&|r| push(r, "/OCI/Mounts", json!({"destination": "/other", "type": "bind", "source": other_root.clone(), "options": ["rbind", "rw"]}))));
    add("mount: configMap made writable", policy(&["OCI.Mounts", "/etc/shop"]), v(&|r| mount_at(r, "/etc/shop")["options"] = json!(["rbind", "rprivate", "rw"])));
    add("mount: secret made writable", policy(&["OCI.Mounts", "/etc/secret"]), v(&|r| mount_at(r, "/etc/secret")["options"] = json!(["rbind", "rprivate", "rw"])));
    let secret_src = copied(&pod.cpath, &pod.files_owner, "secret");
    add("mount: configMap path shows the secret", policy(&["OCI.Mounts", "/etc/shop"]), v(&|r| mount_at(r, "/etc/shop")["source"] = json!(secret_src.clone())));
    add("mount: configMap volume removed", policy(&["OCI.Mounts", "missing /etc/shop"]), v(&|r| mounts(r).retain(|m| m["destination"] != "/etc/shop")));
    add("mount: /proc without nosuid", policy(&["OCI.Mounts", "/proc"]), v(&|r| mount_at(r, "/proc")["options"] = json!(["noexec", "nodev"])));
    add("mount: /sys without ro", policy(&["OCI.Mounts", "/sys\""]), v(&|r| mount_at(r, "/sys")["options"] = json!(["nosuid", "noexec", "nodev"])));
    add("mount: /dev/shm from /", policy(&["OCI.Mounts", "/dev/shm"]), v(&|r| mount_at(r, "/dev/shm")["source"] = json!("/")));
    add("mount: ConfigMap volume from /etc", policy(&["OCI.Mounts", "/etc/shop"]), v(&|r| mount_at(r, "/etc/shop")["source"] = json!("/etc")));
    add("mount: tmpfs over /etc/shop", policy(&["OCI.Mounts", "tmpfs"]), v(&|r| push(r, "/OCI/Mounts", json!({"destination": "/etc/shop", "type": "tmpfs", "source": "tmpfs", "options": ["rw"]}))));
    add("mount: proc at /hostproc", policy(&["OCI.Mounts", "/hostproc"]), v(&|r| push(r, "/OCI/Mounts", json!({"destination": "/hostproc", "type": "proc", "source": "proc", "options": []}))));
    add("mount: /etc/hosts made a device bind", policy(&["OCI.Mounts", "/dev/sda"]), v(&|r| mount_at(r, "/etc/hosts")["source"] = json!("/dev/sda")));
    // linux
    add("masked paths emptied", policy(&["OCI.Linux.MaskedPaths", "/proc/kcore"]), v(&|r| r["OCI"]["Linux"]["MaskedPaths"] = json!([])));
    add("masked path /proc/kcore removed", policy(&["OCI.Linux.MaskedPaths", "/proc/kcore"]), v(&|r| r["OCI"]["Linux"]["MaskedPaths"].as_array_mut().unwrap().retain(|p| p != "/proc/kcore")));
    add("read-only path /proc/sys removed", policy(&["OCI.Linux.ReadonlyPaths", "/proc/sys"]), v(&|r| r["OCI"]["Linux"]["ReadonlyPaths"].as_array_mut().unwrap().retain(|p| p != "/proc/sys")));
    add("namespace: network of pid 1", policy(&["OCI.Linux.Namespaces", "/proc/1/ns/net"]), v(&|r| push(r, "/OCI/Linux/Namespaces", json!({"Type": "network", "Path": "/proc/1/ns/net"}))));
    add("namespace: pid of pid 1", policy(&["OCI.Linux.Namespaces", "/proc/1/ns/pid"]), v(&|r| push(r, "/OCI/Linux/Namespaces", json!({"Type": "pid", "Path": "/proc/1/ns/pid"}))));
    add("namespace: mount ns with a path", policy(&["OCI.Linux.Namespaces", "/proc/1/ns/mnt"]), v(&|r| r["OCI"]["Linux"]["Namespaces"][2]["Path"] = json!("/proc/1/ns/mnt")));
    add("namespace: user namespace", policy(&["OCI.Linux.Namespaces", "user"]), v(&|r| push(r, "/OCI/Linux/Namespaces", json!({"Type": "user", "Path": ""}))));
    // (A dropped ipc/uts/mount namespace is harmless: the agent always creates them.)
    add("uid mappings", policy(&["OCI.Linux.UIDMappings"]), v(&|r| r["OCI"]["Linux"]["UIDMappings"] = json!([{"HostID": 0, "ContainerID": 0, "Size": 1}])));
    add("gid mappings", policy(&["OCI.Linux.GIDMappings"]), v(&|r| r["OCI"]["Linux"]["GIDMappings"] = json!([{"HostID": 0, "ContainerID": 0, "Size": 1}])));
    add("sysctl kernel.core_pattern", policy(&["OCI.Linux.Sysctl", "kernel.core_pattern"]), v(&|r| r["OCI"]["Linux"]["Sysctl"] = json!({"kernel.core_pattern": "|/tmp/x"})));
    add("sysctl net.ipv4.ip_forward", policy(&["OCI.Linux.Sysctl", "net.ipv4.ip_forward"]), v(&|r| r["OCI"]["Linux"]["Sysctl"] = json!({"net.ipv4.ip_forward": "1"})));
    // The agent writes net.* sysctls below /proc/sys/net itself: a name that climbs out.
    add("sysctl net.* name climbing out of /proc/sys/net", policy(&["OCI.Linux.Sysctl", "net.ipv4/../../kernel.core_pattern"]), v(&|r| r["OCI"]["Linux"]["Sysctl"] = json!({"net.ipv4/../../kernel.core_pattern": "|/tmp/x"})));
    add("seccomp: null", policy(&["OCI.Linux.Seccomp", "null"]), v(&|r| r["OCI"]["Linux"]["Seccomp"] = Value::Null));
    add("seccomp: default action SCMP_ACT_LOG", policy(&["OCI.Linux.Seccomp", "SCMP_ACT_LOG"]), v(&|r| r["OCI"]["Linux"]["Seccomp"]["DefaultAction"] = json!("SCMP_ACT_LOG")));
    add("seccomp: kexec_load allowed", policy(&["OCI.Linux.Seccomp", "kexec_load"]), v(&|r| {
        push(r, "/OCI/Linux/Seccomp/Syscalls", json!({"Names": ["kexec_load"], "Action": "SCMP_ACT_ALLOW", "Args": []}));
    }));
    add("seccomp: mount allowed without CAP_SYS_ADMIN", policy(&["OCI.Linux.Seccomp", "mount"]), v(&|r| {
        push(r, "/OCI/Linux/Seccomp/Syscalls", json!({"Names": ["mount", "umount2"], "Action": "SCMP_ACT_ALLOW", "Args": []}));
    }));
    add("seccomp: unshare logged, not refused", policy(&["OCI.Linux.Seccomp", "unshare"]), v(&|r| {
        push(r, "/OCI/Linux/Seccomp/Syscalls", json!({"Names": ["unshare"], "Action": "SCMP_ACT_LOG", "Args": []}));
    }));
    add("seccomp: clone without the namespace mask", policy(&["OCI.Linux.Seccomp", "clone"]), v(&|r| {
        r["OCI"]["Linux"]["Seccomp"]["Syscalls"][1]["Args"] = json!([]);
    }));
    add("seccomp: openat handed to a listener", policy(&["OCI.Linux.Seccomp", "SCMP_ACT_NOTIFY"]), v(&|r| {
        push(r, "/OCI/Linux/Seccomp/Syscalls", json!({"Names": ["openat"], "Action": "SCMP_ACT_NOTIFY", "Args": []}));
    }));
    add("seccomp: speculation mitigations off", policy(&["OCI.Linux.Seccomp.Flags", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]), v(&|r| {
        r["OCI"]["Linux"]["Seccomp"]["Flags"] = json!(["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
    }));
    for kind in ["Prestart", "Poststart", "CreateRuntime", "StartContainer"] {
        add(&format!("hooks: {kind}"), policy(&["OCI.Hooks", "/bin/evil"]),
            v(&|r| r["OCI"]["Hooks"] = json!({kind: [{"Path": "/bin/evil", "Args": [], "Env": [], "Timeout": 0}]})));
    }
    add("linux device /dev/kmsg", policy(&["OCI.Linux.Devices", "/dev/kmsg"]), v(&|r| r["OCI"]["Linux"]["Devices"] = json!([{"Path": "/dev/kmsg", "Type": "c", "Major": 1, "Minor": 11, "FileMode": 0o666, "UID": 0, "GID": 0}])));
    add("request devices", policy(&["devices", "/dev/vdb"]), v(&|r| r["devices"] = json!([{"id": "0000:00:05.0", "type": "blk", "vm_path": "/dev/vdb", "container_path": "/dev/xvda", "options": []}])));
    add("device cgroup allows everything", policy(&["OCI.Linux.Resources.Devices", "rwm"]), v(&|r| push(r, "/OCI/Linux/Resources/Devices", json!({"Allow": true, "Type": "a", "Major": -1, "Minor": -1, "Access": "rwm"}))));
    add("resources: memory limit removed", policy(&["OCI.Linux.Resources.Memory.Limit", "0"]), v(&|r| r["OCI"]["Linux"]["Resources"]["Memory"]["Limit"] = json!(0)));
    add("resources: memory above the YAML's limit", policy(&["OCI.Linux.Resources.Memory.Limit", "1073741824"]), v(&|r| r["OCI"]["Linux"]["Resources"]["Memory"]["Limit"] = json!(1u64 << 30)));
    add("resources: CPU quota unlimited", policy(&["OCI.Linux.Resources.CPU", "Quota"]), v(&|r| r["OCI"]["Linux"]["Resources"]["CPU"]["Quota"] = json!(-1)));
    add("resources: CPU above the YAML's limit", policy(&["OCI.Linux.Resources.CPU", "Quota"]), v(&|r| r["OCI"]["Linux"]["Resources"]["CPU"]["Quota"] = json!(400000)));
    // (Pids, blkio, hugepages: the pod's own availability, which the host holds anyway.)
    add("hostname set by the host", policy(&["OCI.Hostname", "evil"]), v(&|r| r["OCI"]["Hostname"] = json!("evil")));
    // image and storages
    let other = format!("127.0.0.1:5000/busybox@sha256:{}", "0".repeat(64));
    add("image: another digest", policy(&["io.kubernetes.cri.image-name", &other]), v(&|r| {
        r["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = json!(other.clone());
        r["storages"][0]["source"] = json!(other.clone());
    }));
    add("image: by tag", policy(&["io.kubernetes.cri.image-name", "busybox:latest"]), v(&|r| {
        r["OCI"]["Annotations"]["io.kubernetes.cri.image-name"] = json!("127.0.0.1:5000/busybox:latest");
        r["storages"][0]["source"] = json!("127.0.0.1:5000/busybox:latest");
    }));
    add("storage pulls another image than the annotation", policy(&["storages", "multi:latest"]), v(&|r| r["storages"][0]["source"] = json!("127.0.0.1:5000/multi:latest")));
    add("storage: pause placeholder on an app container", policy(&["storages", "\"pause\""]), v(&|r| r["storages"][0]["source"] = json!("pause")));
    add("storage metadata says sandbox on an app container", agent(&["storages.driver_options", "sandbox"]), v(&|r| {
        let opt = r["storages"][0]["driver_options"][0].as_str().unwrap().replace("\"container\"", "\"sandbox\"");
        r["storages"][0]["driver_options"] = json!([opt]);
    }));
    add("storage: a second image pull", policy(&["storages (image_guest_pull count)", "2"]), v(&|r| {
        let mut s = r["storages"][0].clone();
        s["mount_point"] = json!(format!("{}/x", s["mount_point"].as_str().unwrap()));
        push(r, "/storages", s);
    }));
    add("storage: extra local storage", policy(&["storages", "/etc"]), v(&|r| push(r, "/storages", json!({"driver": "local", "driver_options": [], "source": "local", "fstype": "local", "options": ["mode=0777"], "mount_point": "/etc", "fs_group": null}))));
    add("storage: extra block device", policy(&["storages", "/dev/vdb"]), v(&|r| push(r, "/storages", json!({"driver": "blk", "driver_options": [], "source": "/dev/vdb", "fstype": "ext4", "options": [], "mount_point": "/run/x", "fs_group": null}))));
    add("storage mounted elsewhere than the root", policy(&["storages", "other/rootfs"]), v(&|r| {
        let mp = format!("{}/other/rootfs", r["storages"][0]["mount_point"].as_str().unwrap().rsplit_once("/rootfs").unwrap().0);
        r["storages"][0]["mount_point"] = json!(mp);
    }));
    add("no storage: a host-provided rootfs", policy(&["storages (image_guest_pull count)", "0"]), v(&|r| r["storages"] = json!([])));
    add("storage fs_group chown", policy(&["storages", "fs_group"]), v(&|r| r["storages"][0]["fs_group"] = json!({"group_id": 0, "group_change_policy": 0})));
    // annotations
    add("type swapped: web as the sandbox", policy(&["pause: OCI.Process.Args"]), v(&|r| r["OCI"]["Annotations"]["io.kubernetes.cri.container-type"] = json!("sandbox")));
    add("sandbox name of another pod", policy(&["io.kubernetes.cri.sandbox-name", "shop-2"]), v(&|r| r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-name"] = json!("shop-2")));
    add("sandbox namespace of another pod", policy(&["io.kubernetes.cri.sandbox-namespace", "kube-system"]), v(&|r| r["OCI"]["Annotations"]["io.kubernetes.cri.sandbox-namespace"] = json!("kube-system")));
    add("container name unknown", policy(&["io.kubernetes.cri.container-name", "debug"]), v(&|r| r["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = json!("debug")));
    add("web's spec under helper's name", policy(&["helper:", "OCI.Process.User.UID"]), v(&|r| r["OCI"]["Annotations"]["io.kubernetes.cri.container-name"] = json!("helper")));
    add("helper with web's volumes", policy(&["helper:", "OCI.Mounts", "/etc/secret"]), variant(&helper, &n, |r| {
        let m = web["OCI"]["Mounts"].clone();
        r["OCI"]["Mounts"] = m;
    }));
    add("container_id not a CRI id", policy(&["container_id", "../evil"]), v(&|r| r["container_id"] = json!("../evil")));
    add("shared_mounts", policy(&["shared_mounts"]), v(&|r| r["shared_mounts"] = json!([{"name": "x", "src_ctr": "web", "src_path": "/", "dst_ctr": "helper", "dst_path": "/x"}])));
    add("sandbox_pidns: join the sandbox pid ns", policy(&["sandbox_pidns", "true"]), v(&|r| r["sandbox_pidns"] = json!(true)));
    add("passfd stdin port", agent(&["stdin_port"]), v(&|r| r["stdin_port"] = json!(1025)));
    // the sandbox container
    let mut pause = pod.pause();
    add("a second sandbox container", policy(&["sandbox", "already"]), variant(&pause, &n, |_| {}));
    add("sandbox container pulls an app image", policy(&["storages", "multi:latest"]), variant(&pause, &n, |r| r["storages"][0]["source"] = json!("127.0.0.1:5000/multi:latest")));
    pause["OCI"]["Annotations"]["io.kubernetes.cri.container-type"] = json!("container");
    add("pause typed as a container", policy(&["io.kubernetes.cri.container-name", "pause"]), variant(&pause, &n, |_| {}));
    out
}

fn exec_cases(pod: &Pod, web: &str, helper: &str) -> Vec<Case> {
    let probe = ["/bin/busybox", "cat", "/etc/shop/mode"];
    let mut n = 0;
    let mut e = |cid: &str, f: &dyn Fn(&mut Value)| {
        n += 1;
        let mut v = pod.exec(cid, &format!("e{n:063}"), &probe);
        f(&mut v);
        Req::ExecProcess(v)
    };
    vec![
        case("argv not allowed: a shell", policy(&["process.Args", "\"sh\""]), e(web, &|v| v["process"]["Args"] = json!(["/bin/busybox", "sh"]))),
        case("argv: probe with one more argument", policy(&["process.Args", "/etc/shadow"]), e(web, &|v| push(v, "/process/Args", json!("/etc/shadow")))),
        case("probe of web in the pause container", policy(&["pause: process.Args"]), e(&pod.sandbox_id, &|_| {})),
        case("probe of web in helper", policy(&["helper: process.Args"]), e(helper, &|_| {})),
        case("unknown container", policy(&["container_id", "dddd"]), e(&"d".repeat(64), &|_| {})),
        case("capabilities added", policy(&["process.Capabilities", "CAP_SYS_ADMIN"]), e(web, &|v| v["process"]["Capabilities"] = json!({"Bounding": ["CAP_SYS_ADMIN"], "Effective": ["CAP_SYS_ADMIN"], "Permitted": ["CAP_SYS_ADMIN"], "Inheritable": [], "Ambient": []}))),
        case("NoNewPrivileges false", policy(&["process.NoNewPrivileges", "false"]), e(web, &|v| v["process"]["NoNewPrivileges"] = json!(false))),
        case("user: root", policy(&["process.User.UID", "sent 0"]), e(web, &|v| v["process"]["User"]["UID"] = json!(0))),
        case("user: gid 0", policy(&["process.User.GID", "sent 0"]), e(web, &|v| v["process"]["User"]["GID"] = json!(0))),
        case("user: AdditionalGids 0", policy(&["process.User.AdditionalGids", "0"]), e(web, &|v| push(v, "/process/User/AdditionalGids", json!(0)))),
        case("string_user root", policy(&["string_user"]), e(web, &|v| v["string_user"] = json!({"uid": "0", "gid": "0", "additionalGids": []}))),
        case("cwd changed", policy(&["process.Cwd", "/etc"]), e(web, &|v| v["process"]["Cwd"] = json!("/etc"))),
        // (A terminal is allowed: it changes how output is carried; reading it is ReadStdout's decision.)
        case("env: LD_PRELOAD", policy(&["process.Env", "LD_PRELOAD"]), e(web, &|v| push(v, "/process/Env", json!("LD_PRELOAD=/tmp/x.so")))),
        case("rlimits: RLIMIT_MEMLOCK", policy(&["process.Rlimits", "RLIMIT_MEMLOCK"]), e(web, &|v| v["process"]["Rlimits"] = json!([{"Type": "RLIMIT_MEMLOCK", "Hard": 1u64 << 40, "Soft": 1u64 << 40}]))),
        case("OOMScoreAdj out of range", policy(&["process.OOMScoreAdj", "-5000"]), e(web, &|v| v["process"]["OOMScoreAdj"] = json!(-5000))),
        case("apparmor unconfined", policy(&["process.ApparmorProfile", "unconfined"]), e(web, &|v| v["process"]["ApparmorProfile"] = json!("unconfined"))),
        case("selinux label", policy(&["process.SelinuxLabel", "spc_t"]), e(web, &|v| v["process"]["SelinuxLabel"] = json!("system_u:system_r:spc_t:s0"))),
        case("exec_id of the container's init", agent(&["process", "already exists"]), e(web, &|v| v["exec_id"] = json!(v["container_id"].clone()))),
        case("exec_id with a path", agent(&["../x"]), e(web, &|v| v["exec_id"] = json!("../x"))),
        case("passfd stdout port", agent(&["stdout_port"]), e(web, &|v| v["stdout_port"] = json!(1026))),
    ]
}

fn copy_cases(pod: &Pod) -> Vec<Case> {
    let cp = &pod.cpath;
    let good = |name: &str| copied(cp, &cid(0xf), name);
    let f = |path: &str, mode: u32| Req::CopyFile(copy_file(path, b"x", mode));
    let mut symlink = copy_file(&good("config"), b"/", 0o120777);
    symlink.file_size = 1;
    let mut rel_link = copy_file(&good("evil2"), b"../../..", 0o120777);
    rel_link.file_size = 8;
    let mut neg = copy_file(&good("neg"), b"x", 0o100644);
    neg.uid = -1;
    let mut off = copy_file(&good("off"), b"x", 0o100644);
    off.offset = -4096;
    vec![
        case("path outside the pattern: /etc/passwd", policy(&["path", "/etc/passwd"]), f("/etc/passwd", 0o100644)),
        case("relative path", policy(&["path", "x-0123456789abcdef-hosts"]), f("x-0123456789abcdef-hosts", 0o100644)),
        case("`..` out of the shared dir", policy(&["path", "/../"]), f(&format!("{}/../../../../etc/x", good("hosts")), 0o100644)),
        case("into another container's rootfs", policy(&["path", "/rootfs/"]), f(&format!("{}/{}/rootfs/bin/sh", cp.display(), pod.files_owner), 0o100755)),
        case("no container prefix", policy(&["path", "hosts"]), f(&format!("{}/hosts", cp.display()), 0o100644)),
        case("symlink to /", agent(&["symlink target", "\"/\"", "leaves the shared directory"]), Req::CopyFile(symlink)),
        case("symlink out through ..", agent(&["symlink target", "leaves the shared directory"]), Req::CopyFile(rel_link)),
        // Modes: the policy refuses them first (the agent refuses the same on its own).
        case("setuid file", policy(&["file_mode", "35309"]), f(&good("suid"), 0o104755)),
        case("setgid file", policy(&["file_mode", "34285"]), f(&good("sgid"), 0o102755)),
        case("character device", policy(&["file_mode", "8630"]), f(&good("dev"), 0o020666)),
        case("block device", policy(&["file_mode", "25014"]), f(&good("blk"), 0o060666)),
        case("fifo", policy(&["file_mode", "4534"]), f(&good("fifo"), 0o010666)),
        case("negative uid", agent(&["uid", "-1"]), Req::CopyFile(neg)),
        case("negative offset", agent(&["offset", "-4096"]), Req::CopyFile(off)),
    ]
}

fn other_cases(pod: &Pod, web: &str, helper: &str, helper_exec: &str, probe_exec: &str) -> Vec<Case> {
    let unknown = "d".repeat(64);
    let update = |id: &str, res: Value| {
        Req::UpdateContainer(json!({"container_id": id, "resources": res}))
    };
    let mut remove_bad = pb::RemoveContainerRequest::new();
    remove_bad.container_id = "../../etc".into();
    let mut remove_unknown = pb::RemoveContainerRequest::new();
    remove_unknown.container_id = unknown.clone();
    let mut remove_empty = pb::RemoveContainerRequest::new();
    remove_empty.container_id = String::new();
    let stats = |id: &str| {
        let mut r = pb::StatsContainerRequest::new();
        r.container_id = id.into();
        r
    };
    let mut pause = pb::PauseContainerRequest::new();
    pause.container_id = web.into();
    let mut resume = pb::ResumeContainerRequest::new();
    resume.container_id = web.into();
    let mut diag = pb::GetDiagnosticDataRequest::new();
    diag.container_id = web.into();
    diag.log_type = "all".into();
    let mut write = pb::WriteStreamRequest::new();
    write.container_id = web.into();
    write.exec_id = web.into();
    write.data = b"id\n".to_vec();
    let read = |id: &str, exec: &str| {
        let mut r = pb::ReadStreamRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.len = 1024;
        r
    };
    let mut close = pb::CloseStdinRequest::new();
    close.container_id = web.into();
    close.exec_id = web.into();
    let tty = |id: &str, exec: &str| {
        let mut r = pb::TtyWinResizeRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.row = 24;
        r.column = 80;
        r
    };
    let mut set_ipt = pb::SetIPTablesRequest::new();
    set_ipt.data = b"*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n".to_vec();
    let mut memcg = pb::MemAgentMemcgConfig::new();
    memcg.disabled = Some(true);
    let mut compact = pb::MemAgentCompactConfig::new();
    compact.disabled = Some(true);
    let mut online = pb::OnlineCPUMemRequest::new();
    online.nb_cpus = 64;
    let mut reseed = pb::ReseedRandomDevRequest::new();
    reseed.data = vec![0; 64];
    let mut hotplug = pb::MemHotplugByProbeRequest::new();
    hotplug.memHotplugProbeAddr = vec![0x1_0000_0000];
    let mut date = pb::SetGuestDateTimeRequest::new();
    date.Sec = 0;
    let mut swap = pb::AddSwapRequest::new();
    swap.PCIPath = vec![5];
    let mut swap_path = pb::AddSwapPathRequest::new();
    swap_path.path = "/dev/vdb".into();
    let mut vol = pb::VolumeStatsRequest::new();
    vol.volume_guest_path = "/etc".into();
    let mut resize = pb::ResizeVolumeRequest::new();
    resize.volume_guest_path = "/etc".into();
    resize.size = 1 << 30;
    let set_policy = |text: &str| {
        let mut r = pb::SetPolicyRequest::new();
        r.policy = text.into();
        Req::SetPolicy(r)
    };
    let iface = json!({"interface": {"device": "kccadv404", "name": "kccadv404", "hwAddr": "02:00:00:de:ad:04", "mtu": 1500,
        "IPAddresses": [{"family": 0, "address": "10.99.0.2", "mask": "24"}]}});
    let bad_ip = json!({"interface": {"device": "kccadv405", "name": "kccadv405", "hwAddr": "02:00:00:de:ad:05", "mtu": 1500,
        "IPAddresses": [{"family": 0, "address": "999.1.1.1", "mask": "24"}]}});
    let routes = json!({"routes": {"Routes": [{"dest": "10.99.0.0/24", "gateway": "", "device": "kccadv404", "source": "", "scope": 0, "family": 0}]}});
    let arp = json!({"neighbors": {"ARPNeighbors": [{"toIPAddress": {"family": 0, "address": "10.99.0.9", "mask": ""}, "device": "kccadv404", "lladdr": "02:00:00:de:ad:09", "state": 128, "flags": 0}]}});
    let eph = json!({"storages": [{"driver": "ephemeral", "driver_options": [], "source": "tmpfs", "fstype": "tmpfs", "options": [], "mount_point": "/run/kata-containers/sandbox/ephemeral/x", "fs_group": null}]});
    vec![
        case("start an unknown container", policy(&["container_id", &unknown]), Req::StartContainer(start_req(&unknown))),
        case("start a container id with a path", policy(&["container_id", "../../etc"]), Req::StartContainer(start_req("../../etc"))),
        case("start web a second time", agent(&[web, "Running"]), Req::StartContainer(start_req(web))),
        case("remove an unknown container", agent(&["container", &unknown]), Req::RemoveContainer(remove_unknown)),
        case("remove a container id with a path", agent(&["container", "../../etc"]), Req::RemoveContainer(remove_bad)),
        case("remove the empty container id", agent(&["container", "\"\""]), Req::RemoveContainer(remove_empty)),
        case("signal an unknown container", agent(&["container", &unknown]), Req::SignalProcess(signal_req(&unknown, "", 9))),
        case("signal helper's process through web", agent(&["process", helper_exec]), Req::SignalProcess(signal_req(web, helper_exec, 9))),
        case("signal helper's init through web", agent(&["process", helper]), Req::SignalProcess(signal_req(web, helper, 9))),
        case("signal number 0", agent(&["signal", "0"]), Req::SignalProcess(signal_req(web, web, 0))),
        case("signal number 1000", agent(&["signal", "1000"]), Req::SignalProcess(signal_req(web, web, 1000))),
        case("signal exec_id with a path", agent(&["process", "../../x"]), Req::SignalProcess(signal_req(web, "../../x", 9))),
        case("wait on an unknown container", agent(&["container", &unknown]), Req::WaitProcess(wait_req(&unknown, &unknown))),
        case("wait on helper's process through web", agent(&["process", helper_exec]), Req::WaitProcess(wait_req(web, helper_exec))),
        case("wait exec_id with a path", agent(&["process", "../../x"]), Req::WaitProcess(wait_req(web, "../../x"))),
        case("update: device cgroup allows all", policy(&["Devices (allow rules)", "rwm"]), update(web, json!({"Devices": [{"Allow": true, "Type": "a", "Major": -1, "Minor": -1, "Access": "rwm"}]}))),
        case("update: memory limit raised", policy(&["resources.Memory.Limit", "1099511627776"]), update(web, json!({"Memory": {"Limit": 1099511627776i64}, "CPU": {"Quota": 50000, "Period": 100000}}))),
        case("update: CPU quota unlimited", policy(&["resources.CPU", "Quota"]), update(web, json!({"Memory": {"Limit": 134217728}, "CPU": {"Quota": -1, "Period": 100000, "Shares": 1024}}))),
        case("update: the pause container", policy(&["sandbox container's resources"]), update(&pod.sandbox_id, json!({"Memory": {"Limit": 134217728}}))),
        case("update: unknown container", policy(&["container_id", &unknown]), update(&unknown, json!({"Pids": {"Limit": 10}}))),
        case("ephemeral mounts", policy(&["UpdateEphemeralMountsRequest"]), Req::UpdateEphemeralMounts(eph)),
        case("stats of an unknown container", agent(&["container", &unknown]), Req::StatsContainer(stats(&unknown))),
        case("stats of a container id with a path", agent(&["container", "../.."]), Req::StatsContainer(stats("../.."))),
        case("freeze web", policy(&["PauseContainerRequest"]), Req::PauseContainer(pause)),
        case("thaw web", policy(&["ResumeContainerRequest"]), Req::ResumeContainer(resume)),
        case("remove stale virtiofs mounts", Expect::Unimplemented, Req::RemoveStaleVirtiofsShareMounts),
        case("diagnostic data of web", policy(&["GetDiagnosticDataRequest"]), Req::GetDiagnosticData(diag)),
        case("write web's stdin", policy(&["WriteStreamRequest"]), Req::WriteStdin(write)),
        case("read web's probe output (the configMap)", Expect::Redacted, Req::ReadStdout(read(web, probe_exec))),
        case("read web's probe errors", Expect::Redacted, Req::ReadStderr(read(web, probe_exec))),
        case("read helper's probe output", Expect::Redacted, Req::ReadStdout(read(helper, helper_exec))),
        case("close web's stdin", policy(&["CloseStdinRequest"]), Req::CloseStdin(close)),
        case("resize an unknown process", agent(&["process", "ffff"]), Req::TtyWinResize(tty(web, &"f".repeat(64)))),
        case("resize a process without a terminal", agent(&["terminal"]), Req::TtyWinResize(tty(web, web))),
        case("interface: unknown device", agent(&["hwAddr", "02:00:00:de:ad:04"]), Req::UpdateInterface(iface)),
        case("interface: bad address", agent(&["999.1.1.1"]), Req::UpdateInterface(bad_ip)),
        case("routes via an unknown device", agent(&["kccadv404"]), Req::UpdateRoutes(routes)),
        case("ARP neighbour on an unknown device", agent(&["kccadv404"]), Req::AddARPNeighbors(arp)),
        case("read iptables", policy(&["GetIPTablesRequest"]), Req::GetIPTables(pb::GetIPTablesRequest::new())),
        case("replace iptables", policy(&["SetIPTablesRequest"]), Req::SetIPTables(set_ipt)),
        case("metrics", policy(&["GetMetricsRequest"]), Req::GetMetrics),
        case("memcg agent off", policy(&["MemAgentMemcgConfig"]), Req::MemAgentMemcgSet(memcg)),
        case("compaction agent off", policy(&["MemAgentCompactConfig"]), Req::MemAgentCompactSet(compact)),
        case("online 64 CPUs", Expect::Unimplemented, Req::OnlineCPUMem(online)),
        case("reseed the RNG with zeros", policy(&["ReseedRandomDevRequest"]), Req::ReseedRandomDev(reseed)),
        case("memory hotplug probe", Expect::Unimplemented, Req::MemHotplugByProbe(hotplug)),
        case("clock set to 1970", policy(&["SetGuestDateTimeRequest"]), Req::SetGuestDateTime(date)),
        case("swap on a PCI device", policy(&["AddSwapRequest"]), Req::AddSwap(swap)),
        case("swap on a path", policy(&["AddSwapPathRequest"]), Req::AddSwapPath(swap_path)),
        case("volume stats of /etc", Expect::Unimplemented, Req::GetVolumeStats(vol)),
        case("resize a volume", policy(&["ResizeVolumeRequest"]), Req::ResizeVolume(resize)),
        case("set an allow-all policy", policy(&["SetPolicyRequest"]), set_policy("package agent_policy\ndefault CreateContainerRequest := true\ndefault ExecProcessRequest := true\n")),
        case("set an empty policy", policy(&["SetPolicyRequest"]), set_policy("")),
        case("after SetPolicy: exec of a shell still denied", policy(&["process.Args"]), Req::ExecProcess(pod.exec(web, &"9".repeat(64), &["/bin/busybox", "sh"]))),
    ]
}

fn sandbox_cases(sandbox_id: &str) -> Vec<Case> {
    let base = harness::create_sandbox(sandbox_id);
    let v = |f: &dyn Fn(&mut Value)| {
        let mut x = base.clone();
        f(&mut x);
        Req::CreateSandbox(x)
    };
    vec![
        case("DNS: a line with a newline", agent(&["dns", "evil"]), v(&|x| x["dns"] = json!(["nameserver 10.96.0.10\nnameserver 6.6.6.6 # evil"]))),
        case("DNS: not a resolv.conf line", agent(&["dns", "sortlist"]), v(&|x| x["dns"] = json!(["sortlist 0.0.0.0/0", "nameserver 10.96.0.10"]))),
        case("DNS: 10000 lines", agent(&["dns"]), v(&|x| x["dns"] = json!(vec!["nameserver 10.96.0.10"; 10000]))),
        case("hostname with a slash", agent(&["hostname", "../etc"]), v(&|x| x["hostname"] = json!("../etc"))),
        case("hostname of 300 characters", agent(&["hostname"]), v(&|x| x["hostname"] = json!("h".repeat(300)))),
        case("kernel modules", policy(&["kernel_modules", "evil"]), v(&|x| x["kernel_modules"] = json!([{"name": "evil", "parameters": []}]))),
        case("guest hook path", policy(&["guest_hook_path", "/usr/share/oci/hooks"]), v(&|x| x["guest_hook_path"] = json!("/usr/share/oci/hooks"))),
        case("sandbox pid namespace", policy(&["sandbox_pidns", "true"]), v(&|x| x["sandbox_pidns"] = json!(true))),
        case("storage: the shm at /etc", policy(&["storages", "/etc"]), v(&|x| x["storages"][0]["mount_point"] = json!("/etc"))),
        case("storage: a block device", policy(&["storages", "/dev/vdb"]), v(&|x| push(x, "/storages", json!({"driver": "blk", "driver_options": [], "source": "/dev/vdb", "fstype": "ext4", "options": [], "mount_point": "/run/kata-containers/sandbox/disk", "fs_group": null})))),
        case("storage: shm of 64 GiB", agent(&["size"]), v(&|x| x["storages"][0]["options"] = json!(["noexec", "nosuid", "nodev", "mode=1777", "size=68719476736"]))),
        case("sandbox_id not a CRI id", policy(&["sandbox_id", "../x"]), v(&|x| x["sandbox_id"] = json!("../x"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_is_refused_and_leaves_nothing() {
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let adir = || {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("shared")).unwrap();
        d
    };
    // The policy names the agent's shared dir as $(cpath): one dir per agent, so one
    // policy per agent.
    let mut report = Report::default();
    let sandbox_id = cid(0xa);

    // 1. CreateSandbox deviations, each on a fresh agent whose sandbox does not exist yet
    //    (a wrongly allowed one would make every later one "already created").
    let mut fresh: Option<Agent> = None;
    for c in sandbox_cases(&sandbox_id) {
        let mut a = match fresh.take() {
            Some(a) => a,
            None => {
                let d = adir();
                let g = harness::generate(work.path(), &d.path().join("shared"));
                Agent::start(d, &g.rego).await
            }
        };
        let before = Snapshot::take(&a);
        let got = a.send(&c.req).await;
        let mut verdict = c.expect.judge(&got);
        if let Err(e) = a.alive().await {
            verdict = Verdict::Panic(e);
        }
        let left = Snapshot::take(&a).new_since(&before);
        if verdict != Verdict::WronglyAllowed && !left.is_empty() {
            report.leftovers.push(format!("CreateSandbox / {}: left {left:?}", c.name));
        }
        if matches!(&got, Got::Status(code, _) if *code == ttrpc::Code::PERMISSION_DENIED) {
            fresh = Some(a);
        } else if verdict == Verdict::Refused {
            // Refused by the agent after the policy allowed it: the legitimate request
            // must still pass (the policy's state did not record the refused sandbox).
            if let Got::Status(_, m) = a.send(&Req::CreateSandbox(harness::create_sandbox(&sandbox_id))).await {
                report.state.push(format!("CreateSandbox after the agent refused \"{}\": {m}", c.name));
            }
        }
        report.lines.push((c.name, "CreateSandbox", format!("{got:?}"), c.expect.by(), verdict));
    }
    drop(fresh);

    // 2. The pod's agent: the legitimate sandbox, the files the shim copies, the pause.
    let d = adir();
    let g = harness::generate(work.path(), &d.path().join("shared"));
    let mut a = Agent::start(d, &g.rego).await;
    let pod = Pod { cpath: a.shared(), image: g.image.clone(), sandbox_id: sandbox_id.clone(), files_owner: cid(0xb) };
    must(a.send(&Req::CreateSandbox(harness::create_sandbox(&sandbox_id))).await, "CreateSandbox after the refused ones");
    run(&mut a, vec![case("CreateSandbox a second time", policy(&["sandbox already created"]), Req::CreateSandbox(harness::create_sandbox(&sandbox_id)))], &mut report).await;
    for (path, data) in pod.files() {
        must(a.send(&Req::CopyFile(copy_file(&path, data, 0o100644))).await, &path);
    }
    let ctx = || protocols::context_with(Duration::from_secs(120));
    a.client.agent().create_container(ctx(), &common::wire::to_proto(&pod.pause())).await.expect("the pause container");

    // 3. CopyFile, then CreateContainer field by field, then the legitimate containers.
    run(&mut a, copy_cases(&pod), &mut report).await;
    must(a.send(&Req::CopyFile(copy_file(&copied(&pod.cpath, &cid(0xf), "ok"), b"ok", 0o100644))).await, "CopyFile after the refused ones");
    let state_dir = a.dir.path().join("state").display().to_string();
    let mut cases = create_cases(&pod, &state_dir);
    // CopyFile can no longer plant it (refused above); a symlink could still appear in
    // the shared dir through a container that writes there: plant one on disk.
    let planted = copied(&pod.cpath, &cid(0xf), "config");
    std::os::unix::fs::symlink("/", &planted).unwrap();
    let mut through_link = pod.container("web", &cid(0x2000));
    mount_at(&mut through_link, "/etc/shop")["source"] = json!(planted);
    cases.push(case("bind source is the planted symlink", agent(&["OCI.Mounts", "symlink"]), Req::CreateContainer(through_link)));
    run(&mut a, cases, &mut report).await;

    // The policy allowed it, the agent refused it (passfd): the id must still be usable.
    let web = cid(0xb);
    let mut refused = pod.container("web", &web);
    refused["stdin_port"] = json!(1025);
    let got = a.send(&Req::CreateContainer(refused)).await;
    assert_ne!(got, Got::Ok, "passfd create of web");
    let got = a.client.agent().create_container(ctx(), &common::wire::to_proto(&pod.container("web", &web))).await;
    if let Err(e) = got {
        report.state.push(format!("CreateContainer web after an agent-refused create of the same id: {e}"));
        // Go on with a new id so that the rest of the suite still runs.
    }
    let web = if report.state.is_empty() {
        web
    } else {
        let id = cid(0xbb);
        a.client.agent().create_container(ctx(), &common::wire::to_proto(&pod.container("web", &id))).await.expect("create web");
        id
    };
    let helper = cid(0xc);
    a.client.agent().create_container(ctx(), &common::wire::to_proto(&pod.container("helper", &helper))).await.expect("create helper");
    for id in [&web, &helper] {
        must(a.send(&Req::StartContainer(start_req(id))).await, "StartContainer");
    }
    Snapshot::take(&a).assert_sees(&web);

    // 4. ExecProcess: the probes run, the deviations do not.
    let probe = |exec: &str| Req::ExecProcess(pod.exec(&web, exec, &["/bin/busybox", "cat", "/etc/shop/mode"]));
    must(a.send(&probe(&"1".repeat(64))).await, "the liveness probe");
    let status = a.client.agent().wait_process(ctx(), &wait_req(&web, &"1".repeat(64))).await.expect("wait probe").status;
    assert_eq!(status, 0, "the liveness probe (cat of the configMap) failed");
    let mut hexec = pod.exec(&helper, &"2".repeat(64), &["/bin/busybox", "true"]);
    hexec["process"]["User"] = json!({"UID": 2000, "GID": 1000, "AdditionalGids": [1000, 2000, 3000], "Username": ""});
    hexec["process"]["Env"] = json!([harness::PATH_ENV, "HELLO=world", "HOSTNAME=shop"]);
    must(a.send(&Req::ExecProcess(hexec)).await, "helper's readiness probe");
    run(&mut a, exec_cases(&pod, &web, &helper), &mut report).await;
    must(a.send(&probe(&"3".repeat(64))).await, "the liveness probe after the refused execs");

    // 5. Every other RPC.
    run(&mut a, other_cases(&pod, &web, &helper, &"2".repeat(64), &"1".repeat(64)), &mut report).await;
    // Allowed by design (read-only, or the host's right): they must answer. GetGuestDetails
    // is also the liveness check after every case.
    let mut controls = vec!["GetGuestDetails"];
    for rpc in [Req::ListInterfaces, Req::ListRoutes, Req::GetOOMEvent] {
        assert_eq!(a.send(&rpc).await, Got::Ok, "{}", rpc.rpc());
        controls.push(rpc.rpc());
    }
    let mut w = pb::WaitProcessRequest::new();
    w.container_id = web.clone();
    w.exec_id = "3".repeat(64);
    a.client.agent().wait_process(ctx(), &w).await.expect("wait for the last probe");

    // 6. The end of the pod: DestroySandbox is the host's right; a new sandbox in this
    //    VM afterwards is not.
    must(a.send(&Req::DestroySandbox).await, "DestroySandbox");
    controls.push("DestroySandbox");
    run(&mut a, vec![case("CreateSandbox after DestroySandbox", policy(&["sandbox already created"]), Req::CreateSandbox(harness::create_sandbox(&cid(0xe))))], &mut report).await;

    // ---- the report ----
    let total = report.lines.len();
    let refused = report.count(|v| *v == Verdict::Refused);
    let allowed = report.count(|v| *v == Verdict::WronglyAllowed);
    let other = report.count(|v| matches!(v, Verdict::RefusedOtherwise(_)));
    let panics = report.count(|v| matches!(v, Verdict::Panic(_)));
    let mut per_rpc: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &report.lines {
        *per_rpc.entry(l.1).or_default() += 1;
    }
    println!("cases per RPC: {per_rpc:?}; allowed by design and answered: {controls:?}");
    for (name, rpc, got, by, verdict) in &report.lines {
        let tag = match verdict {
            Verdict::Refused => "refused",
            Verdict::WronglyAllowed => "WRONGLY ALLOWED",
            Verdict::RefusedOtherwise(_) => "REFUSED OTHERWISE",
            Verdict::Panic(_) => "PANIC",
        };
        let got: String = got.chars().take(160).collect();
        println!("{tag:>17} | {rpc} / {name} | expected: refused by the {by} | got {got}");
    }
    let mut failures = Vec::new();
    for (name, rpc, got, by, verdict) in &report.lines {
        match verdict {
            Verdict::Refused => {}
            Verdict::WronglyAllowed => failures.push(format!("WRONGLY ALLOWED {rpc} / {name} (expected: refused by the {by}); got {got}")),
            Verdict::RefusedOtherwise(why) => failures.push(format!("REFUSED OTHERWISE {rpc} / {name} (expected: the {by}): {why}")),
            Verdict::Panic(e) => failures.push(format!("PANIC {rpc} / {name}: {e}")),
        }
    }
    failures.extend(report.leftovers.iter().map(|l| format!("LEFT BEHIND {l}")));
    if let Some(first) = report.removed_left.first() {
        failures.push(format!(
            "LEFT BEHIND by RemoveContainer of {} wrongly created containers, e.g. {first}",
            report.removed_left.len()
        ));
    }
    failures.extend(report.state.iter().map(|l| format!("POLICY STATE MOVED ON {l}")));
    println!(
        "adversarial: {total} cases, {refused} refused as expected, {allowed} wrongly allowed, {other} refused otherwise, {panics} panics, {} left something behind ({:.1} s)",
        report.leftovers.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(per_rpc.len() + controls.len(), 42, "RPCs covered: {per_rpc:?} + {controls:?}");
    assert!(failures.is_empty(), "{} problems in {total} cases:\n{}", failures.len(), failures.join("\n"));
}
