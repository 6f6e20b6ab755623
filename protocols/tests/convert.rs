//! Round trips and host-input hardening of `protocols::convert`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use oci_spec::runtime as oci;
use protobuf::{Message, MessageField};
use protocols::convert::{
    process_from_grpc, process_to_grpc, resources_from_grpc, resources_to_grpc, spec_from_grpc,
    spec_to_grpc, ConvertError,
};
use protocols::oci as grpc;

/// A runc-style `config.json` that sets every field the wire carries.
const RICH_CONFIG: &str = r#"{
  "ociVersion": "1.2.0",
  "process": {
    "terminal": true,
    "consoleSize": { "height": 24, "width": 80 },
    "user": { "uid": 1000, "gid": 1000, "additionalGids": [5, 10, 1000], "username": "app" },
    "args": ["/bin/server", "--port", "8080"],
    "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "TERM=xterm", "EMPTY="],
    "cwd": "/srv",
    "capabilities": {
      "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"],
      "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "inheritable": ["CAP_AUDIT_WRITE"],
      "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID"],
      "ambient": ["CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [
      { "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024 },
      { "type": "RLIMIT_NPROC", "hard": 18446744073709551615, "soft": 512 }
    ],
    "noNewPrivileges": true,
    "apparmorProfile": "cri-containerd.apparmor.d",
    "oomScoreAdj": -998,
    "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2"
  },
  "root": { "path": "/run/kata-cc/c1/rootfs", "readonly": true },
  "hostname": "web-0",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
      "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { "destination": "/etc/hosts", "type": "bind", "source": "/run/kata-cc/shared/hosts",
      "options": ["rbind", "rprivate", "ro"] },
    { "destination": "/data", "source": "vm:/dev/vdb", "options": ["rw"] }
  ],
  "hooks": {
    "prestart": [ { "path": "/usr/bin/old-hook", "args": ["old-hook", "prestart"] } ],
    "createRuntime": [ { "path": "/usr/bin/net-setup", "args": ["net-setup", "-v"],
                         "env": ["NS=1"], "timeout": 10 } ],
    "createContainer": [ { "path": "/usr/bin/cc" } ],
    "startContainer": [ { "path": "/usr/bin/sc", "timeout": 3 } ],
    "poststart": [ { "path": "/usr/bin/notify", "args": ["notify", "up"] },
                   { "path": "/usr/bin/log" } ],
    "poststop": [ { "path": "/usr/bin/cleanup", "env": ["A=b", "C=d"] } ]
  },
  "annotations": {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": "abc123",
    "empty.value": ""
  },
  "linux": {
    "uidMappings": [ { "hostID": 100000, "containerID": 0, "size": 65536 } ],
    "gidMappings": [ { "hostID": 100000, "containerID": 0, "size": 65536 } ],
    "sysctl": { "net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1" },
    "resources": {
      "devices": [
        { "allow": false, "access": "rwm" },
        { "allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm" },
        { "allow": true, "type": "c", "major": 136, "access": "rw" },
        { "allow": true, "type": "b", "minor": 7, "access": "r" },
        { "allow": false, "type": "a" }
      ],
      "memory": { "limit": 536870912, "reservation": 268435456, "swap": -1,
                  "kernel": 67108864, "kernelTCP": 16777216, "swappiness": 10,
                  "disableOOMKiller": true },
      "cpu": { "shares": 1024, "quota": 50000, "period": 100000,
               "realtimeRuntime": 950000, "realtimePeriod": 1000000,
               "cpus": "0-3", "mems": "0" },
      "pids": { "limit": 1024 },
      "blockIO": {
        "weight": 500, "leafWeight": 300,
        "weightDevice": [ { "major": 8, "minor": 0, "weight": 600, "leafWeight": 200 },
                          { "major": 8, "minor": 16, "weight": 100 } ],
        "throttleReadBpsDevice": [ { "major": 8, "minor": 0, "rate": 104857600 } ],
        "throttleWriteBpsDevice": [ { "major": 8, "minor": 0, "rate": 52428800 } ],
        "throttleReadIOPSDevice": [ { "major": 8, "minor": 0, "rate": 1000 } ],
        "throttleWriteIOPSDevice": [ { "major": 8, "minor": 16, "rate": 500 } ]
      },
      "hugepageLimits": [ { "pageSize": "2MB", "limit": 209715200 },
                          { "pageSize": "1GB", "limit": 0 } ],
      "network": { "classID": 1048577,
                   "priorities": [ { "name": "eth0", "priority": 500 },
                                   { "name": "lo", "priority": 0 } ] }
    },
    "cgroupsPath": "/kubepods/besteffort/pod123/c1",
    "namespaces": [
      { "type": "pid" },
      { "type": "network", "path": "/var/run/netns/cni-1234" },
      { "type": "ipc" },
      { "type": "uts" },
      { "type": "mount" },
      { "type": "cgroup" },
      { "type": "user" },
      { "type": "time" }
    ],
    "devices": [
      { "path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
        "fileMode": 438, "uid": 0, "gid": 0 },
      { "path": "/dev/sda", "type": "b", "major": 8, "minor": 0,
        "fileMode": 432, "uid": 1000, "gid": 6 },
      { "path": "/run/fifo", "type": "p", "major": 0, "minor": 0,
        "uid": 0, "gid": 0 }
    ],
    "seccomp": {
      "defaultAction": "SCMP_ACT_ERRNO",
      "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                        "SCMP_ARCH_AARCH64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_MIPS64N32"],
      "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
      "syscalls": [
        { "names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW" },
        { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
          "args": [ { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" },
                    { "index": 0, "value": 8, "op": "SCMP_CMP_EQ" },
                    { "index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ" } ] },
        { "names": ["clone"], "action": "SCMP_ACT_ALLOW",
          "args": [ { "index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ" } ] },
        { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
          "args": [ { "index": 0, "value": 16, "valueTwo": 7, "op": "SCMP_CMP_NE" } ] },
        { "names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0 },
        { "names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS" },
        { "names": ["kexec_load"], "action": "SCMP_ACT_LOG" }
      ]
    },
    "rootfsPropagation": "rslave",
    "maskedPaths": ["/proc/acpi", "/proc/kcore", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/sys"],
    "mountLabel": "system_u:object_r:container_file_t:s0:c1,c2",
    "intelRdt": { "l3CacheSchema": "L3:0=ffff0;1=3ff" }
  }
}"#;

fn rich_spec() -> oci::Spec {
    serde_json::from_str(RICH_CONFIG).unwrap()
}

fn round_trip(spec: &oci::Spec) -> oci::Spec {
    let wire = spec_to_grpc(spec);
    // Through the bytes too, to be sure nothing rides on in-memory state.
    let bytes = wire.write_to_bytes().unwrap();
    let parsed = grpc::Spec::parse_from_bytes(&bytes).unwrap();
    assert_eq!(parsed, wire);
    spec_from_grpc(&parsed).unwrap()
}

#[test]
fn default_spec_round_trips() {
    let spec = oci::Spec::default();
    assert_eq!(round_trip(&spec), spec);
}

#[test]
fn rootless_spec_round_trips() {
    let spec = oci::Spec::rootless(1000, 1000);
    assert_eq!(round_trip(&spec), spec);
}

#[test]
fn rich_spec_round_trips() {
    let spec = rich_spec();
    let back = round_trip(&spec);
    assert_eq!(back, spec);
}

#[test]
fn rich_spec_uses_kata_wire_names() {
    let wire = spec_to_grpc(&rich_spec());
    let linux = wire.Linux.as_ref().unwrap();
    let ns: Vec<&str> = linux.Namespaces.iter().map(|n| n.Type.as_str()).collect();
    assert_eq!(
        ns,
        ["pid", "network", "ipc", "uts", "mount", "cgroup", "user", "time"]
    );
    assert_eq!(linux.Namespaces[1].Path, "/var/run/netns/cni-1234");

    let process = wire.Process.as_ref().unwrap();
    let caps = process.Capabilities.as_ref().unwrap();
    assert_eq!(
        caps.Bounding,
        [
            "CAP_CHOWN",
            "CAP_KILL",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_ADMIN"
        ]
    );
    assert_eq!(process.Rlimits[0].Type, "RLIMIT_NOFILE");
    assert_eq!(process.OOMScoreAdj, -998);
    assert_eq!(process.ConsoleSize.Height, 24);
    assert_eq!(process.ConsoleSize.Width, 80);
    assert_eq!(process.User.AdditionalGids, [5, 10, 1000]);

    // Every seccomp string is the one config.json uses.
    let json: serde_json::Value = serde_json::from_str(RICH_CONFIG).unwrap();
    let jsec = &json["linux"]["seccomp"];
    let seccomp = linux.Seccomp.as_ref().unwrap();
    assert_eq!(seccomp.DefaultAction, jsec["defaultAction"]);
    assert_eq!(
        serde_json::to_value(&seccomp.Architectures).unwrap(),
        jsec["architectures"]
    );
    assert_eq!(serde_json::to_value(&seccomp.Flags).unwrap(), jsec["flags"]);
    for (sc, jsc) in seccomp
        .Syscalls
        .iter()
        .zip(jsec["syscalls"].as_array().unwrap())
    {
        assert_eq!(sc.Action, jsc["action"]);
        assert_eq!(sc.has_errnoret(), jsc.get("errnoRet").is_some());
        for (arg, jarg) in sc
            .Args
            .iter()
            .zip(jsc["args"].as_array().into_iter().flatten())
        {
            assert_eq!(arg.Op, jarg["op"]);
        }
    }

    let devs: Vec<&str> = linux.Devices.iter().map(|d| d.Type.as_str()).collect();
    assert_eq!(devs, ["c", "b", "p"]);
    let res = linux.Resources.as_ref().unwrap();
    let rules: Vec<(&str, i64, i64)> = res
        .Devices
        .iter()
        .map(|d| (d.Type.as_str(), d.Major, d.Minor))
        .collect();
    // A wildcard is 0 on the wire, as Kata's Go runtime writes it.
    assert_eq!(
        rules,
        [
            ("", 0, 0),
            ("c", 1, 3),
            ("c", 136, 0),
            ("b", 0, 7),
            ("a", 0, 0)
        ]
    );
    assert_eq!(res.Memory.Swap, -1);
    assert_eq!(wire.Mounts[3].type_, "");
    assert_eq!(wire.Mounts[3].source, "vm:/dev/vdb");
}

#[test]
fn every_capability_round_trips_with_its_config_json_name() {
    const ALL: &[&str] = &[
        "CAP_AUDIT_CONTROL",
        "CAP_AUDIT_READ",
        "CAP_AUDIT_WRITE",
        "CAP_BLOCK_SUSPEND",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_KILL",
        "CAP_LEASE",
        "CAP_LINUX_IMMUTABLE",
        "CAP_MAC_ADMIN",
        "CAP_MAC_OVERRIDE",
        "CAP_MKNOD",
        "CAP_NET_ADMIN",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_RAW",
        "CAP_PERFMON",
        "CAP_SETGID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_CHROOT",
        "CAP_SYS_MODULE",
        "CAP_SYS_NICE",
        "CAP_SYS_PACCT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
    ];
    let mut sorted: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    let wire = grpc::Process {
        Capabilities: MessageField::some(grpc::LinuxCapabilities {
            Bounding: sorted.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let process = process_from_grpc(&wire).unwrap();
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), ALL.len());
    // The names agree with oci-spec's serde names (config.json).
    let json = serde_json::to_value(caps.bounding()).unwrap();
    let mut json: Vec<String> = serde_json::from_value(json).unwrap();
    json.sort();
    assert_eq!(json, sorted);
    assert_eq!(process_to_grpc(&process).Capabilities.Bounding, sorted);
}

#[test]
fn kata_variants_of_names_are_accepted() {
    let wire = grpc::Spec {
        Process: MessageField::some(grpc::Process {
            Capabilities: MessageField::some(grpc::LinuxCapabilities {
                Bounding: vec![
                    "SYS_ADMIN".into(),
                    "\"CAP_MKNOD\"".into(),
                    "CAP_KILL".into(),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }),
        Linux: MessageField::some(grpc::Linux {
            Namespaces: vec![ns("net"), ns("mnt")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = spec_from_grpc(&wire).unwrap();
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let bounding = caps.bounding().clone().unwrap();
    assert!(bounding.contains(&oci::Capability::SysAdmin));
    assert!(bounding.contains(&oci::Capability::Mknod));
    assert!(bounding.contains(&oci::Capability::Kill));
    let types: Vec<_> = spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(
        types,
        [
            oci::LinuxNamespaceType::Network,
            oci::LinuxNamespaceType::Mount
        ]
    );
}

#[test]
fn zero_values_from_the_wire_mean_unset() {
    // What Kata's Go runtime sends for a process and resources with nil pointers.
    let process = process_from_grpc(&grpc::Process {
        Cwd: "/".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(process.oom_score_adj(), None);
    assert_eq!(process.apparmor_profile(), &None);
    assert_eq!(process.args(), &None);
    assert_eq!(process.env(), &None);
    assert_eq!(process.rlimits(), &None);
    assert_eq!(process.capabilities(), &None);
    assert_eq!(process.console_size(), None);
    assert_eq!(process.terminal(), Some(false));
    assert_eq!(process.no_new_privileges(), Some(false));
    assert_eq!(process.user(), &oci::User::default());

    let res = resources_from_grpc(&grpc::LinuxResources {
        Devices: vec![grpc::LinuxDeviceCgroup {
            Allow: false,
            Major: -1,
            Minor: 0,
            Access: "rwm".into(),
            ..Default::default()
        }],
        Memory: MessageField::some(grpc::LinuxMemory {
            Limit: 0,
            Swap: -1,
            Swappiness: 0,
            ..Default::default()
        }),
        CPU: MessageField::some(grpc::LinuxCPU {
            Quota: -1,
            ..Default::default()
        }),
        Pids: MessageField::some(grpc::LinuxPids::default()),
        ..Default::default()
    })
    .unwrap();
    let rule = &res.devices().as_ref().unwrap()[0];
    assert_eq!((rule.typ(), rule.major(), rule.minor()), (None, None, None));
    let mem = res.memory().unwrap();
    assert_eq!(mem.limit(), None);
    assert_eq!(mem.swap(), Some(-1));
    assert_eq!(mem.swappiness(), None);
    assert_eq!(mem.disable_oom_killer(), None);
    let cpu = res.cpu().clone().unwrap();
    assert_eq!(cpu.quota(), Some(-1));
    assert_eq!(cpu.shares(), None);
    assert_eq!(cpu.cpus(), &None);
    assert_eq!(res.pids().unwrap().limit(), 0);
    assert_eq!(res.block_io(), &None);
    assert_eq!(res.network(), &None);
    assert_eq!(res.hugepage_limits(), &None);
}

#[test]
fn resources_and_process_round_trip_alone() {
    let spec = rich_spec();
    let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(resources_from_grpc(&resources_to_grpc(&res)).unwrap(), res);
    let process = spec.process().clone().unwrap();
    assert_eq!(
        process_from_grpc(&process_to_grpc(&process)).unwrap(),
        process
    );
}

#[test]
fn value_two_zero_reads_back_as_absent() {
    // Same meaning for libseccomp; proto3 cannot tell them apart.
    let arg: oci::LinuxSeccompArg =
        serde_json::from_str(r#"{"index": 1, "value": 2, "valueTwo": 0, "op": "SCMP_CMP_EQ"}"#)
            .unwrap();
    let mut syscall = oci::LinuxSyscall::default();
    syscall.set_names(vec!["clone".into()]);
    syscall.set_args(Some(vec![arg]));
    let mut seccomp = oci::LinuxSeccomp::default();
    seccomp.set_syscalls(Some(vec![syscall]));
    let mut spec = oci::Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(seccomp));
    let back = round_trip(&spec);
    let args = back
        .linux()
        .as_ref()
        .unwrap()
        .seccomp()
        .as_ref()
        .unwrap()
        .syscalls()
        .as_ref()
        .unwrap()[0]
        .args()
        .clone()
        .unwrap();
    assert_eq!(args[0].value_two(), None);
    assert_eq!((args[0].index(), args[0].value()), (1, 2));
}

#[test]
fn errno_ret_presence_is_kept() {
    let spec = rich_spec();
    let wire = spec_to_grpc(&spec);
    let calls = &wire.Linux.Seccomp.Syscalls;
    assert!(!calls[0].has_errnoret());
    assert!(calls[3].has_errnoret() && calls[3].errnoret() == 1);
    assert!(calls[4].has_errnoret() && calls[4].errnoret() == 0);
}

// ---------------------------------------------------------------------------
// Errors name the field.

fn ns(t: &str) -> grpc::LinuxNamespace {
    grpc::LinuxNamespace {
        Type: t.into(),
        ..Default::default()
    }
}

fn expect_err(spec: &grpc::Spec) -> ConvertError {
    match spec_from_grpc(spec) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e,
    }
}

fn with_linux(linux: grpc::Linux) -> grpc::Spec {
    grpc::Spec {
        Linux: MessageField::some(linux),
        ..Default::default()
    }
}

fn with_process(process: grpc::Process) -> grpc::Spec {
    grpc::Spec {
        Process: MessageField::some(process),
        ..Default::default()
    }
}

#[test]
fn unknown_namespace_is_an_error() {
    let err = expect_err(&with_linux(grpc::Linux {
        Namespaces: vec![ns("pid"), ns("network"), ns("foo")],
        ..Default::default()
    }));
    assert_eq!(
        err.to_string(),
        r#"linux.namespaces[2].type: unknown namespace "foo""#
    );
    assert_eq!(err.path(), "linux.namespaces[2].type");
    assert!(matches!(
        err,
        ConvertError::Unknown {
            kind: "namespace",
            ..
        }
    ));
}

#[test]
fn bad_capability_is_an_error() {
    let err = expect_err(&with_process(grpc::Process {
        Capabilities: MessageField::some(grpc::LinuxCapabilities {
            Bounding: vec!["CAP_KILL".into()],
            Ambient: vec!["CAP_CHOWN".into(), "CAP_NOPE".into()],
            ..Default::default()
        }),
        ..Default::default()
    }));
    assert_eq!(
        err.to_string(),
        r#"process.capabilities.ambient[1]: unknown capability "CAP_NOPE""#
    );
}

#[test]
fn unknown_rlimit_is_an_error() {
    let err = expect_err(&with_process(grpc::Process {
        Rlimits: vec![grpc::POSIXRlimit {
            Type: "RLIMIT_BOGUS".into(),
            ..Default::default()
        }],
        ..Default::default()
    }));
    assert_eq!(
        err.to_string(),
        r#"process.rlimits[0].type: unknown rlimit "RLIMIT_BOGUS""#
    );
}

#[test]
fn bad_seccomp_action_is_an_error() {
    let seccomp = |default: &str, action: &str, op: &str| grpc::LinuxSeccomp {
        DefaultAction: default.into(),
        Syscalls: vec![
            grpc::LinuxSyscall {
                Names: vec!["read".into()],
                Action: "SCMP_ACT_ALLOW".into(),
                ..Default::default()
            },
            grpc::LinuxSyscall {
                Names: vec!["write".into()],
                Action: action.into(),
                Args: vec![grpc::LinuxSeccompArg {
                    Op: op.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let linux = |s| {
        with_linux(grpc::Linux {
            Seccomp: MessageField::some(s),
            ..Default::default()
        })
    };
    let err = expect_err(&linux(seccomp(
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_EXPLODE",
        "SCMP_CMP_EQ",
    )));
    assert_eq!(
        err.to_string(),
        r#"linux.seccomp.syscalls[1].action: unknown seccomp action "SCMP_ACT_EXPLODE""#
    );
    let err = expect_err(&linux(seccomp("", "SCMP_ACT_ALLOW", "SCMP_CMP_EQ")));
    assert_eq!(
        err.to_string(),
        r#"linux.seccomp.defaultAction: unknown seccomp action """#
    );
    let err = expect_err(&linux(seccomp("SCMP_ACT_ALLOW", "SCMP_ACT_ALLOW", "==")));
    assert_eq!(
        err.to_string(),
        r#"linux.seccomp.syscalls[1].args[0].op: unknown seccomp operator "==""#
    );
}

#[test]
fn bad_device_type_is_an_error() {
    let dev = |t: &str| grpc::LinuxDevice {
        Path: "/dev/x".into(),
        Type: t.into(),
        ..Default::default()
    };
    for bad in ["x", "", "a", "C", "cc"] {
        let err = expect_err(&with_linux(grpc::Linux {
            Devices: vec![dev("c"), dev(bad)],
            ..Default::default()
        }));
        assert_eq!(
            err.to_string(),
            format!("linux.devices[1].type: unknown device type {bad:?}")
        );
    }
    let err = resources_from_grpc(&grpc::LinuxResources {
        Devices: vec![grpc::LinuxDeviceCgroup {
            Type: "z".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"devices[0].type: unknown device type "z""#
    );
}

#[test]
fn out_of_range_numbers_are_errors() {
    let err = expect_err(&with_process(grpc::Process {
        OOMScoreAdj: i64::from(i32::MAX) + 1,
        ..Default::default()
    }));
    assert_eq!(err.path(), "process.oomScoreAdj");

    let res = |r: grpc::LinuxResources| {
        with_linux(grpc::Linux {
            Resources: MessageField::some(r),
            ..Default::default()
        })
    };
    let err = expect_err(&res(grpc::LinuxResources {
        BlockIO: MessageField::some(grpc::LinuxBlockIO {
            WeightDevice: vec![grpc::LinuxWeightDevice {
                Weight: 70000,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }));
    assert_eq!(err.path(), "linux.resources.blockIO.weightDevice[0].weight");
    assert!(err.to_string().contains("70000"), "{err}");

    let err = expect_err(&res(grpc::LinuxResources {
        HugepageLimits: vec![grpc::LinuxHugepageLimit {
            Pagesize: "2MB".into(),
            Limit: u64::MAX,
            ..Default::default()
        }],
        ..Default::default()
    }));
    assert_eq!(err.path(), "linux.resources.hugepageLimits[0].limit");

    let err = expect_err(&res(grpc::LinuxResources {
        Devices: vec![grpc::LinuxDeviceCgroup {
            Major: -2,
            ..Default::default()
        }],
        ..Default::default()
    }));
    assert_eq!(err.path(), "linux.resources.devices[0].major");

    let err = expect_err(&grpc::Spec {
        Hooks: MessageField::some(grpc::Hooks {
            Poststop: vec![grpc::Hook {
                Path: "/bin/true".into(),
                Timeout: -5,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(err.path(), "hooks.poststop[0].timeout");
}

// ---------------------------------------------------------------------------
// Garbage from the host never panics.

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn i64(&mut self) -> i64 {
        const EDGES: &[i64] = &[
            0,
            1,
            -1,
            -2,
            i64::MIN,
            i64::MAX,
            65535,
            65536,
            1 << 31,
            -(1 << 31) - 1,
        ];
        if self.coin() {
            EDGES[self.below(EDGES.len())]
        } else {
            self.next() as i64
        }
    }
    fn u64(&mut self) -> u64 {
        self.i64() as u64
    }
    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }
    fn strings(&mut self, from: &[&str]) -> Vec<String> {
        (0..self.below(4))
            .map(|_| self.pick(from).to_owned())
            .collect()
    }
}

const JUNK: &[&str] = &[
    "",
    "foo",
    "\u{0}",
    "é\u{202e}",
    "CAP_",
    "\"",
    "\"\"",
    "*",
    "-1",
    "a",
    "c",
];
const NAMESPACES: &[&str] = &[
    "pid", "network", "net", "mount", "mnt", "ipc", "uts", "user", "cgroup", "time", "foo", "",
];
const CAPS: &[&str] = &[
    "CAP_KILL",
    "KILL",
    "\"CAP_CHOWN\"",
    "CAP_NOPE",
    "cap_kill",
    "",
    "CAP_CAP_KILL",
];
const RLIMITS: &[&str] = &[
    "RLIMIT_NOFILE",
    "RLIMIT_CPU",
    "RLIMIT_BOGUS",
    "rlimit_nofile",
    "",
];
const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_NOPE",
    "",
];
const OPS: &[&str] = &["SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ", "EQ", ""];
const ARCHES: &[&str] = &["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "x86_64", ""];
const FLAGS: &[&str] = &["SECCOMP_FILTER_FLAG_LOG", "LOG", ""];
const DEV_TYPES: &[&str] = &["c", "b", "u", "p", "a", "", "x", "cb"];

fn all<'a>(valid: &'a [&'a str], rng: &mut Rng) -> &'a [&'a str] {
    // Mostly valid names, so that conversion gets deep before it fails.
    if rng.below(8) == 0 {
        JUNK
    } else {
        valid
    }
}

fn random_spec(rng: &mut Rng) -> grpc::Spec {
    let mut spec = grpc::Spec {
        Version: rng.pick(JUNK).into(),
        Hostname: rng.pick(JUNK).into(),
        ..Default::default()
    };
    if rng.coin() {
        let caps = all(CAPS, rng);
        spec.Process = MessageField::some(grpc::Process {
            Terminal: rng.coin(),
            ConsoleSize: if rng.coin() {
                MessageField::some(grpc::Box {
                    Height: rng.u32(),
                    Width: rng.u32(),
                    ..Default::default()
                })
            } else {
                MessageField::none()
            },
            User: if rng.coin() {
                MessageField::some(grpc::User {
                    UID: rng.u32(),
                    GID: rng.u32(),
                    AdditionalGids: (0..rng.below(3)).map(|_| rng.u32()).collect(),
                    Username: rng.pick(JUNK).into(),
                    ..Default::default()
                })
            } else {
                MessageField::none()
            },
            Args: rng.strings(JUNK),
            Env: rng.strings(JUNK),
            Cwd: rng.pick(JUNK).into(),
            Capabilities: if rng.coin() {
                MessageField::some(grpc::LinuxCapabilities {
                    Bounding: rng.strings(caps),
                    Effective: rng.strings(caps),
                    Inheritable: rng.strings(caps),
                    Permitted: rng.strings(caps),
                    Ambient: rng.strings(caps),
                    ..Default::default()
                })
            } else {
                MessageField::none()
            },
            Rlimits: (0..rng.below(3))
                .map(|_| grpc::POSIXRlimit {
                    Type: rng.pick(RLIMITS).into(),
                    Hard: rng.u64(),
                    Soft: rng.u64(),
                    ..Default::default()
                })
                .collect(),
            NoNewPrivileges: rng.coin(),
            ApparmorProfile: rng.pick(JUNK).into(),
            OOMScoreAdj: rng.i64(),
            SelinuxLabel: rng.pick(JUNK).into(),
            ..Default::default()
        });
    }
    if rng.coin() {
        spec.Root = MessageField::some(grpc::Root {
            Path: rng.pick(JUNK).into(),
            Readonly: rng.coin(),
            ..Default::default()
        });
    }
    spec.Mounts = (0..rng.below(3))
        .map(|_| grpc::Mount {
            destination: rng.pick(JUNK).into(),
            source: rng.pick(JUNK).into(),
            type_: rng.pick(JUNK).into(),
            options: rng.strings(JUNK),
            ..Default::default()
        })
        .collect();
    if rng.coin() {
        let mut hook = || grpc::Hook {
            Path: rng.pick(JUNK).into(),
            Args: rng.strings(JUNK),
            Env: rng.strings(JUNK),
            Timeout: if rng.coin() { rng.i64() } else { 0 },
            ..Default::default()
        };
        spec.Hooks = MessageField::some(grpc::Hooks {
            Prestart: vec![hook()],
            Poststart: vec![hook(), hook()],
            Poststop: vec![],
            CreateRuntime: vec![hook()],
            CreateContainer: vec![],
            StartContainer: vec![hook()],
            ..Default::default()
        });
    }
    for _ in 0..rng.below(3) {
        spec.Annotations
            .insert(rng.pick(JUNK).into(), rng.pick(JUNK).into());
    }
    if rng.coin() {
        spec.Linux = MessageField::some(random_linux(rng));
    }
    spec
}

fn random_linux(rng: &mut Rng) -> grpc::Linux {
    let ns_names = all(NAMESPACES, rng);
    let dev_types = all(DEV_TYPES, rng);
    let mut linux = grpc::Linux {
        UIDMappings: (0..rng.below(2))
            .map(|_| grpc::LinuxIDMapping {
                HostID: rng.u32(),
                ContainerID: rng.u32(),
                Size: rng.u32(),
                ..Default::default()
            })
            .collect(),
        CgroupsPath: rng.pick(JUNK).into(),
        Namespaces: (0..rng.below(5))
            .map(|_| grpc::LinuxNamespace {
                Type: rng.pick(ns_names).into(),
                Path: rng.pick(JUNK).into(),
                ..Default::default()
            })
            .collect(),
        Devices: (0..rng.below(3))
            .map(|_| grpc::LinuxDevice {
                Path: rng.pick(JUNK).into(),
                Type: rng.pick(dev_types).into(),
                Major: rng.i64(),
                Minor: rng.i64(),
                FileMode: rng.u32(),
                UID: rng.u32(),
                GID: rng.u32(),
                ..Default::default()
            })
            .collect(),
        RootfsPropagation: rng.pick(JUNK).into(),
        MaskedPaths: rng.strings(JUNK),
        ReadonlyPaths: rng.strings(JUNK),
        MountLabel: rng.pick(JUNK).into(),
        ..Default::default()
    };
    if rng.coin() {
        linux
            .Sysctl
            .insert(rng.pick(JUNK).into(), rng.pick(JUNK).into());
    }
    if rng.coin() {
        linux.IntelRdt = MessageField::some(grpc::LinuxIntelRdt {
            L3CacheSchema: rng.pick(JUNK).into(),
            ..Default::default()
        });
    }
    if rng.coin() {
        linux.Resources = MessageField::some(random_resources(rng, dev_types));
    }
    if rng.coin() {
        let (actions, ops) = (all(ACTIONS, rng), all(OPS, rng));
        let (arches, flags) = (all(ARCHES, rng), all(FLAGS, rng));
        linux.Seccomp = MessageField::some(grpc::LinuxSeccomp {
            DefaultAction: rng.pick(actions).into(),
            Architectures: rng.strings(arches),
            Flags: rng.strings(flags),
            Syscalls: (0..rng.below(3))
                .map(|_| {
                    let mut sc = grpc::LinuxSyscall {
                        Names: rng.strings(JUNK),
                        Action: rng.pick(actions).into(),
                        Args: (0..rng.below(3))
                            .map(|_| grpc::LinuxSeccompArg {
                                Index: rng.u64(),
                                Value: rng.u64(),
                                ValueTwo: rng.u64(),
                                Op: rng.pick(ops).into(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    };
                    if rng.coin() {
                        sc.set_errnoret(rng.u32());
                    }
                    sc
                })
                .collect(),
            ..Default::default()
        });
    }
    linux
}

fn random_resources(rng: &mut Rng, dev_types: &[&str]) -> grpc::LinuxResources {
    let throttle = |rng: &mut Rng| -> Vec<grpc::LinuxThrottleDevice> {
        (0..rng.below(2))
            .map(|_| grpc::LinuxThrottleDevice {
                Major: rng.i64(),
                Minor: rng.i64(),
                Rate: rng.u64(),
                ..Default::default()
            })
            .collect()
    };
    grpc::LinuxResources {
        Devices: (0..rng.below(3))
            .map(|_| grpc::LinuxDeviceCgroup {
                Allow: rng.coin(),
                Type: rng.pick(dev_types).into(),
                Major: if rng.coin() {
                    rng.i64()
                } else {
                    rng.below(3) as i64 - 1
                },
                Minor: if rng.coin() {
                    rng.i64()
                } else {
                    rng.below(3) as i64 - 1
                },
                Access: rng.pick(JUNK).into(),
                ..Default::default()
            })
            .collect(),
        Memory: MessageField::some(grpc::LinuxMemory {
            Limit: rng.i64(),
            Reservation: rng.i64(),
            Swap: rng.i64(),
            Kernel: rng.i64(),
            KernelTCP: rng.i64(),
            Swappiness: rng.u64(),
            DisableOOMKiller: rng.coin(),
            ..Default::default()
        }),
        CPU: MessageField::some(grpc::LinuxCPU {
            Shares: rng.u64(),
            Quota: rng.i64(),
            Period: rng.u64(),
            RealtimeRuntime: rng.i64(),
            RealtimePeriod: rng.u64(),
            Cpus: rng.pick(JUNK).into(),
            Mems: rng.pick(JUNK).into(),
            ..Default::default()
        }),
        Pids: MessageField::some(grpc::LinuxPids {
            Limit: rng.i64(),
            ..Default::default()
        }),
        BlockIO: MessageField::some(grpc::LinuxBlockIO {
            Weight: if rng.coin() {
                rng.u32()
            } else {
                rng.below(1000) as u32
            },
            LeafWeight: if rng.coin() {
                rng.u32()
            } else {
                rng.below(1000) as u32
            },
            WeightDevice: (0..rng.below(2))
                .map(|_| grpc::LinuxWeightDevice {
                    Major: rng.i64(),
                    Minor: rng.i64(),
                    Weight: rng.below(70000) as u32,
                    LeafWeight: rng.below(70000) as u32,
                    ..Default::default()
                })
                .collect(),
            ThrottleReadBpsDevice: throttle(rng),
            ThrottleWriteBpsDevice: throttle(rng),
            ThrottleReadIOPSDevice: throttle(rng),
            ThrottleWriteIOPSDevice: throttle(rng),
            ..Default::default()
        }),
        HugepageLimits: (0..rng.below(2))
            .map(|_| grpc::LinuxHugepageLimit {
                Pagesize: rng.pick(JUNK).into(),
                Limit: rng.u64(),
                ..Default::default()
            })
            .collect(),
        Network: MessageField::some(grpc::LinuxNetwork {
            ClassID: rng.u32(),
            Priorities: (0..rng.below(2))
                .map(|_| grpc::LinuxInterfacePriority {
                    Name: rng.pick(JUNK).into(),
                    Priority: rng.u32(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A spec accepted once is a fixed point: encoding and decoding it again changes nothing.
fn check(wire: &grpc::Spec, ok: &mut usize, errs: &mut usize) {
    match spec_from_grpc(wire) {
        Ok(spec) => {
            *ok += 1;
            let again = spec_from_grpc(&spec_to_grpc(&spec)).unwrap();
            assert_eq!(again, spec, "not a fixed point for {wire:?}");
        }
        Err(e) => {
            *errs += 1;
            assert!(!e.path().is_empty(), "error without a field: {e}");
            assert!(e.to_string().starts_with(e.path()), "{e}");
        }
    }
}

#[test]
fn random_wire_specs_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut errs) = (0, 0);
    for _ in 0..3000 {
        let wire = random_spec(&mut rng);
        check(&wire, &mut ok, &mut errs);
        if let Some(p) = wire.Process.as_ref() {
            let _ = process_from_grpc(p);
        }
        if let Some(r) = wire.Linux.as_ref().and_then(|l| l.Resources.as_ref()) {
            let _ = resources_from_grpc(r);
        }
    }
    // Both outcomes must actually be exercised.
    assert!(ok > 100 && errs > 100, "ok={ok} errs={errs}");
}

#[test]
fn mutated_wire_bytes_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let seed = spec_to_grpc(&rich_spec()).write_to_bytes().unwrap();
    let (mut ok, mut errs) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = seed.clone();
        for _ in 0..=rng.below(8) {
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[i] ^= 1 << rng.below(8),
                1 => bytes[i] = rng.next() as u8,
                _ => bytes.truncate(i),
            }
            if bytes.is_empty() {
                break;
            }
        }
        if let Ok(wire) = grpc::Spec::parse_from_bytes(&bytes) {
            check(&wire, &mut ok, &mut errs);
        }
    }
    assert!(ok > 0 && errs > 0, "ok={ok} errs={errs}");
}
