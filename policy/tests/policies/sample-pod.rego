# A representative pod policy, in the shape of what Kata's genpolicy emits (rules, then the
# policy_data the rules compare requests with): a pod "web-7f9c8d" in namespace "shop" with
# three containers (pause, app, log-shipper). Used by the table-driven tests and the bench.
#
# CreateContainerRequest checks: sandbox name/namespace, container name and type, image
# pinned by digest (annotation and guest-pull storage), command, working dir, user, every
# env var (listed, or matching a Kubernetes service regex), every mount (default mounts or
# the container's, source regex with $(cpath)/$(bundle-id)), capabilities (no more than the
# defaults unless privileged), NoNewPrivileges, masked/readonly paths, no hooks, no devices.
# Allowed creations record container_id -> policy container index in data.pstate.
package agent_policy

default CreateContainerRequest := false
default CreateSandboxRequest := false
default ExecProcessRequest := false
default ReadStreamRequest := false
default WriteStreamRequest := false
default StartContainerRequest := false
default CopyFileRequest := false
default SetPolicyRequest := false
default UpdateEphemeralMountsRequest := false
default GetDiagnosticDataRequest := false

default DestroySandboxRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default OnlineCPUMemRequest := true
default RemoveContainerRequest := true
default SignalProcessRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default WaitProcessRequest := true
default CloseStdinRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default AddARPNeighborsRequest := true

default AllowRequestsFailingPolicy := false

S_NAME_KEY := "io.kubernetes.cri.sandbox-name"
S_NAMESPACE_KEY := "io.kubernetes.cri.sandbox-namespace"
C_NAME_KEY := "io.kubernetes.cri.container-name"
C_TYPE_KEY := "io.kubernetes.cri.container-type"
IMAGE_KEY := "io.kubernetes.cri.image-name"

# ---- sandbox ---------------------------------------------------------------------------

CreateSandboxRequest := {"allowed": true, "ops": ops} if {
	count(input.guest_hook_path) == 0
	count(input.kernel_modules) == 0
	input.sandbox_pidns == false
	count(input.storages) == 0
	not data.pstate.sandbox_id
	ops := [{"op": "add", "path": "/pstate/sandbox_id", "value": input.sandbox_id}]
}

# ---- containers ------------------------------------------------------------------------

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	allow_create_container_input

	i_oci := input.OCI
	i_oci.Annotations[S_NAME_KEY] == policy_data.sandbox.name
	i_oci.Annotations[S_NAMESPACE_KEY] == policy_data.sandbox.namespace
	not known_container(input.container_id)

	some idx, p_container in policy_data.containers
	p_container.name == i_oci.Annotations[C_NAME_KEY]
	p_container.type == i_oci.Annotations[C_TYPE_KEY]

	allow_image(p_container, input)
	allow_process(p_container, i_oci.Process)
	allow_mounts(p_container, i_oci.Mounts)
	allow_linux(p_container, i_oci.Linux)

	ops := record_container(input.container_id, idx)
}

allow_create_container_input if {
	count(input.shared_mounts) == 0
	count(input.devices) == 0
	is_null(input.string_user)
	is_null(input.OCI.Hooks)
	count(input.OCI.Linux.UIDMappings) == 0
	count(input.OCI.Linux.GIDMappings) == 0
	count(input.OCI.Linux.Resources.Devices) == 0
	count(input.OCI.Process.SelinuxLabel) == 0
	count(input.OCI.Process.ApparmorProfile) == 0
}

known_container(id) if data.pstate.containers[id] >= 0

record_container(id, idx) := ops if {
	data.pstate.containers
	ops := [{"op": "add", "path": concat("/", ["/pstate/containers", id]), "value": idx}]
} else := [{"op": "add", "path": "/pstate/containers", "value": {id: idx}}]

# The image must be pinned by digest, named by the CRI annotation and pulled in the guest.
allow_image(p_container, i) if {
	regex.match(`@sha256:[a-f0-9]{64}$`, p_container.image)
	i.OCI.Annotations[IMAGE_KEY] == p_container.image
	count(i.storages) == 1
	some storage in i.storages
	storage.driver == "image_guest_pull"
	storage.source == p_container.image
	storage.mount_point == concat("", ["/run/kata-containers/", i.container_id, "/rootfs"])
}

allow_process(p_container, i_process) if {
	p_process := p_container.process
	i_process.Args == p_process.Args
	i_process.Cwd == p_process.Cwd
	i_process.User.UID == p_process.UID
	i_process.Terminal == false
	i_process.NoNewPrivileges == true
	allow_env(p_process, i_process)
	allow_caps(p_container, i_process.Capabilities)
}

allow_env(p_process, i_process) if {
	every env in i_process.Env {
		allow_env_var(p_process, env)
	}
}

allow_env_var(p_process, env) if {
	env in p_process.Env
}

allow_env_var(p_process, env) if {
	some pattern in policy_data.request_defaults.CreateContainerRequest.allow_env_regex
	regex.match(pattern, env)
}

allow_caps(p_container, i_caps) if {
	not p_container.privileged
	allowed := {c | some c in policy_data.common.default_caps}
	every kind in ["Bounding", "Effective", "Permitted", "Inheritable", "Ambient"] {
		every cap in object.get(i_caps, kind, []) {
			cap in allowed
		}
	}
}

allow_mounts(p_container, i_mounts) if {
	every i_mount in i_mounts {
		allow_mount(p_container, i_mount)
	}
}

allow_mount(p_container, i_mount) if {
	some p_mount in policy_data.common.default_mounts
	p_mount == i_mount
}

allow_mount(p_container, i_mount) if {
	some p_mount in p_container.mounts
	p_mount.destination == i_mount.destination
	p_mount.type == i_mount.type
	p_mount.options == i_mount.options
	source1 := replace(p_mount.source, "$(cpath)", policy_data.common.cpath)
	source2 := replace(source1, "$(bundle-id)", "[a-z0-9]{64}")
	regex.match(concat("", ["^", source2, "$"]), i_mount.source)
}

allow_linux(p_container, i_linux) if {
	not p_container.privileged
	i_linux.MaskedPaths == policy_data.common.masked_paths
	i_linux.ReadonlyPaths == policy_data.common.readonly_paths
	is_null(i_linux.Seccomp) # the agent applies no host-supplied seccomp in this pod
	every ns in i_linux.Namespaces {
		ns.Type in {"ipc", "uts", "mount"}
		ns.Path == ""
	}
}

StartContainerRequest if known_container(input.container_id)

# ---- processes and streams -------------------------------------------------------------

ExecProcessRequest if {
	is_null(input.string_user)
	idx := data.pstate.containers[input.container_id]
	p_container := policy_data.containers[idx]
	some command in p_container.exec_commands
	command == input.process.Args
	input.process.Terminal == false
}

ReadStreamRequest if policy_data.request_defaults.ReadStreamRequest == true

ReadStreamRequest if known_container(input.container_id)

WriteStreamRequest if policy_data.request_defaults.WriteStreamRequest == true

# ---- data ------------------------------------------------------------------------------

policy_data := {
  "common": {
	"cpath": "/run/kata-containers/shared/containers",
	"root_path": "/run/kata-containers/$(bundle-id)/rootfs",
	"default_caps": [
	  "CAP_CHOWN",
	  "CAP_DAC_OVERRIDE",
	  "CAP_FSETID",
	  "CAP_FOWNER",
	  "CAP_MKNOD",
	  "CAP_NET_RAW",
	  "CAP_SETGID",
	  "CAP_SETUID",
	  "CAP_SETFCAP",
	  "CAP_SETPCAP",
	  "CAP_NET_BIND_SERVICE",
	  "CAP_SYS_CHROOT",
	  "CAP_KILL",
	  "CAP_AUDIT_WRITE"
	],
	"masked_paths": [
	  "/proc/asound",
	  "/proc/acpi",
	  "/proc/kcore",
	  "/proc/keys",
	  "/proc/latency_stats",
	  "/proc/timer_list",
	  "/proc/timer_stats",
	  "/proc/sched_debug",
	  "/proc/scsi",
	  "/sys/firmware",
	  "/sys/devices/virtual/powercap"
	],
	"readonly_paths": [
	  "/proc/bus",
	  "/proc/fs",
	  "/proc/irq",
	  "/proc/sys",
	  "/proc/sysrq-trigger"
	],
	"default_mounts": [
	  {
		"destination": "/proc",
		"type": "proc",
		"source": "proc",
		"options": [
		  "nosuid",
		  "noexec",
		  "nodev"
		]
	  },
	  {
		"destination": "/dev",
		"type": "tmpfs",
		"source": "tmpfs",
		"options": [
		  "nosuid",
		  "strictatime",
		  "mode=755",
		  "size=65536k"
		]
	  },
	  {
		"destination": "/dev/pts",
		"type": "devpts",
		"source": "devpts",
		"options": [
		  "nosuid",
		  "noexec",
		  "newinstance",
		  "ptmxmode=0666",
		  "mode=0620",
		  "gid=5"
		]
	  },
	  {
		"destination": "/dev/mqueue",
		"type": "mqueue",
		"source": "mqueue",
		"options": [
		  "nosuid",
		  "noexec",
		  "nodev"
		]
	  },
	  {
		"destination": "/sys",
		"type": "sysfs",
		"source": "sysfs",
		"options": [
		  "nosuid",
		  "noexec",
		  "nodev",
		  "ro"
		]
	  },
	  {
		"destination": "/sys/fs/cgroup",
		"type": "cgroup",
		"source": "cgroup",
		"options": [
		  "nosuid",
		  "noexec",
		  "nodev",
		  "relatime",
		  "ro"
		]
	  },
	  {
		"destination": "/dev/shm",
		"type": "bind",
		"source": "/run/kata-containers/sandbox/shm",
		"options": [
		  "rbind"
		]
	  }
	]
  },
  "sandbox": {
	"name": "web-7f9c8d",
	"namespace": "shop"
  },
  "request_defaults": {
	"CreateContainerRequest": {
	  "allow_env_regex": [
		"^KUBERNETES_[A-Z0-9_]+=.*$",
		"^[A-Z0-9_]+_SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?=.*$",
		"^[A-Z0-9_]+_PORT(_[0-9]+_(TCP|UDP))?(_(PROTO|PORT|ADDR))?=.*$"
	  ]
	},
	"ReadStreamRequest": false,
	"WriteStreamRequest": false
  },
  "containers": [
	{
	  "name": "pause",
	  "type": "sandbox",
	  "image": "registry.k8s.io/pause@sha256:7777777777777777777777777777777777777777777777777777777777777777",
	  "privileged": false,
	  "process": {
		"Args": [
		  "/pause"
		],
		"Cwd": "/",
		"UID": 65535,
		"Env": [
		  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		],
		"NoNewPrivileges": true
	  },
	  "mounts": [],
	  "exec_commands": []
	},
	{
	  "name": "app",
	  "type": "container",
	  "image": "ghcr.io/example/shop-api@sha256:3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f",
	  "privileged": false,
	  "process": {
		"Args": [
		  "/app/server",
		  "--port=8080",
		  "--config=/etc/shop/config.yaml"
		],
		"Cwd": "/app",
		"UID": 1000,
		"Env": [
		  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		  "HOSTNAME=web-7f9c8d",
		  "SHOP_MODE=production",
		  "LOG_LEVEL=info",
		  "GOMAXPROCS=2"
		],
		"NoNewPrivileges": true
	  },
	  "mounts": [
		{
		  "destination": "/etc/hosts",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-hosts",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"rw"
		  ]
		},
		{
		  "destination": "/dev/termination-log",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-termination-log",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"rw"
		  ]
		},
		{
		  "destination": "/etc/hostname",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-hostname",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"ro"
		  ]
		},
		{
		  "destination": "/etc/resolv.conf",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-resolv.conf",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"ro"
		  ]
		},
		{
		  "destination": "/etc/shop",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-config",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"ro"
		  ]
		},
		{
		  "destination": "/var/run/secrets/kubernetes.io/serviceaccount",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-serviceaccount",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"ro"
		  ]
		}
	  ],
	  "exec_commands": [
		[
		  "/app/healthcheck"
		],
		[
		  "/bin/sh",
		  "-c",
		  "cat /tmp/ready"
		]
	  ]
	},
	{
	  "name": "log-shipper",
	  "type": "container",
	  "image": "docker.io/fluent/fluent-bit@sha256:9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a",
	  "privileged": false,
	  "process": {
		"Args": [
		  "/fluent-bit/bin/fluent-bit",
		  "-c",
		  "/fluent-bit/etc/fluent-bit.conf"
		],
		"Cwd": "/",
		"UID": 0,
		"Env": [
		  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		  "HOSTNAME=web-7f9c8d",
		  "FLB_LOG_LEVEL=warn"
		],
		"NoNewPrivileges": true
	  },
	  "mounts": [
		{
		  "destination": "/etc/hosts",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-hosts",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"rw"
		  ]
		},
		{
		  "destination": "/etc/resolv.conf",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-resolv.conf",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"ro"
		  ]
		},
		{
		  "destination": "/fluent-bit/etc",
		  "source": "$(cpath)/$(bundle-id)-[a-z0-9]{16}-fluent-bit-config",
		  "type": "bind",
		  "options": [
			"rbind",
			"rprivate",
			"ro"
		  ]
		}
	  ],
	  "exec_commands": []
	}
  ]
}
