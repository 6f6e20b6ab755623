# kata-cc generated-policy rules (written by `kata-cc-policy gen`, followed by `policy_data`).
#
# The rules are generic; everything pod-specific is in `policy_data` (schema in
# policy/src/gen/mod.rs). A request is checked against data that `kata-cc-policy gen` derived
# from the pod YAML and the images' configs, and every denial carries a reason naming the
# field, the value sent and the value allowed:
#   {"allowed": false, "reason": "app: Process.Args: sent [...], allowed [...]"}
#
# Fail closed: each checked rule first collects a list of errors; if any input field has an
# unexpected shape the list is undefined and the request is denied.
#
# CreateContainerRequest: sandbox name and namespace, container name and type, the image
# (pinned by digest, pulled in the guest), the command, working dir, user, terminal,
# NoNewPrivileges, every env var (listed, or matching a Kubernetes service/HOSTNAME regex;
# listed ones must be present), capabilities, read-only root, every mount (default mounts
# or the container's own; the pod's volume mounts must be present), storages, masked and
# read-only paths, namespaces, sysctls, seccomp (strength), no hooks, devices,
# SELinux/AppArmor labels, hostname, supplementary groups, rlimits, OOM score, root
# propagation, memory/CPU limits, one sandbox container.
# ExecProcessRequest: only the argv lists of the container's `exec_commands` (the pod's
# `kata-cc.io/exec-allow` annotation and its exec probes), with allowed env and user, and
# no more than the container's own process (capabilities, NoNewPrivileges, cwd, rlimits).
# UpdateContainerRequest: memory/CPU within the pod spec's limits, no device allow rule.
# State (`data.pstate`): the agent applies a request's `ops` only once it carried it out.
package agent_policy

default CreateContainerRequest := false
default CreateSandboxRequest := false
default ExecProcessRequest := false
default StartContainerRequest := false
default UpdateContainerRequest := false
default CopyFileRequest := false
default ReadStreamRequest := false
default WriteStreamRequest := false
default CloseStdinRequest := false
default SetPolicyRequest := false
default UpdateEphemeralMountsRequest := false
default GetDiagnosticDataRequest := false
default PauseContainerRequest := false
default ResumeContainerRequest := false
default GetIPTablesRequest := false
default SetIPTablesRequest := false
default GetMetricsRequest := false
default MemAgentMemcgConfig := false
default MemAgentCompactConfig := false
default ReseedRandomDevRequest := false
default SetGuestDateTimeRequest := false
default AddSwapRequest := false
default AddSwapPathRequest := false
default ResizeVolumeRequest := false

default DestroySandboxRequest := true
default RemoveContainerRequest := true
default SignalProcessRequest := true
default WaitProcessRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default OnlineCPUMemRequest := true
default MemHotplugByProbeRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default AddARPNeighborsRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default VolumeStatsRequest := true

default AllowRequestsFailingPolicy := false

S_NAME_KEY := "io.kubernetes.cri.sandbox-name"
S_NAMESPACE_KEY := "io.kubernetes.cri.sandbox-namespace"
C_NAME_KEY := "io.kubernetes.cri.container-name"
C_TYPE_KEY := "io.kubernetes.cri.container-type"
IMAGE_KEY := "io.kubernetes.cri.image-name"
CAP_KINDS := ["Bounding", "Effective", "Permitted", "Inheritable", "Ambient"]

# ---- helpers ---------------------------------------------------------------------------

# [] when sent == allowed, else one message.
eq_err(field, sent, allowed) := [] if {
	sent == allowed
} else := [sprintf("%s: sent %s, allowed %s", [field, json.marshal(sent), json.marshal(allowed)])]

# [] when `sent` is a string matching `pattern`, else one message.
regex_err(field, pattern, sent) := [] if {
	is_string(sent)
	regex.match(pattern, sent)
} else := [sprintf("%s: sent %s, allowed /%s/", [field, json.marshal(sent), pattern])]

# [] when `sent` is in `allowed`, else one message.
in_err(field, sent, allowed) := [] if {
	sent in allowed
} else := [sprintf("%s: sent %s, allowed one of %s", [field, json.marshal(sent), json.marshal(allowed)])]

# [] when `sent` is empty (missing, null, "", [] or {}), else one message.
empty_err(field, sent) := [] if {
	is_null(sent)
} else := [] if {
	count(sent) == 0
} else := [sprintf("%s: sent %s, allowed none", [field, json.marshal(sent)])]

# [] when `value` has JSON type `want` (e.g. "array"), else one message.
type_err(field, value, want) := [] if {
	type_name(value) == want
} else := [sprintf("%s: sent %s, expected %s", [field, json.marshal(value), want])]

flatten_errs(lists) := [e | some l in lists; some e in l]

get(obj, key, fallback) := object.get(obj, key, fallback) if is_object(obj) else := fallback

# `x` if it is a collection, else [] (regorus errors on `some .. in null`).
iter(x) := x if is_array(x) else := x if is_object(x) else := x if is_set(x) else := []

# Expand the placeholders of a policy mount source or storage mount point into a regex.
expand(pattern) := p if {
	p1 := replace(pattern, "$(cpath)", policy_data.common.cpath)
	p2 := replace(p1, "$(bundle-id)", "[a-z0-9]{64}")
	p := replace(p2, "$(sandbox-id)", "[a-z0-9]{64}")
}

# ---- sandbox ---------------------------------------------------------------------------

CreateSandboxRequest := {"allowed": true, "ops": ops} if {
	count(sandbox_errors) == 0
	ops := array.concat(
		[{"op": "add", "path": "/pstate/sandbox_id", "value": input.sandbox_id}],
		init_containers_op,
	)
} else := {"allowed": false, "reason": concat("; ", sandbox_errors)} if {
	count(sandbox_errors) > 0
}

sandbox_errors := flatten_errs([
	empty_err("guest_hook_path", get(input, "guest_hook_path", null)),
	empty_err("kernel_modules", get(input, "kernel_modules", null)),
	eq_err("sandbox_pidns", get(input, "sandbox_pidns", false), false),
	regex_err("sandbox_id", "^[a-z0-9]{64}$", get(input, "sandbox_id", null)),
	sandbox_storage_errors,
	sandbox_once_errors,
])

# The container table starts with the sandbox, so that the ops of two CreateContainer
# requests in flight at once each add one entry (neither replaces the table).
init_containers_op := [] if {
	data.pstate.containers
} else := [{"op": "add", "path": "/pstate/containers", "value": {}}]

sandbox_once_errors := [] if {
	not data.pstate.sandbox_id
} else := ["sandbox already created (CreateSandbox is allowed once)"]

sandbox_storage_errors := [sprintf("storages: sent %s, allowed only the sandbox shm", [json.marshal(s)]) |
	some s in iter(get(input, "storages", []))
	not allowed_sandbox_storage(s)
]

allowed_sandbox_storage(s) if {
	s.driver == "ephemeral"
	s.mount_point == "/run/kata-containers/sandbox/shm"
	s.fstype == "tmpfs"
}

# ---- containers ------------------------------------------------------------------------

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	errs := create_container_errors
	count(errs) == 0
	ops := array.concat(record_container(input.container_id, create_container_index), record_sandbox_container)
} else := {"allowed": false, "reason": create_container_reason}

record_sandbox_container := [{"op": "add", "path": "/pstate/sandbox_container", "value": input.container_id}] if {
	anno(C_TYPE_KEY) == "sandbox"
} else := []

create_container_reason := concat("; ", create_container_errors) if {
	count(create_container_errors) > 0
} else := "the request could not be checked (a field has an unexpected shape)"

i_oci := get(input, "OCI", {})

i_annotations := get(i_oci, "Annotations", {})

i_process := get(i_oci, "Process", {})

i_linux := get(i_oci, "Linux", {})

anno(key) := get(i_annotations, key, null)

# The sandbox (pause) container is found by its type, the others by name.
create_container_index := idx if {
	anno(C_TYPE_KEY) == "sandbox"
	some idx, p in policy_data.containers
	p.type == "sandbox"
} else := idx if {
	anno(C_TYPE_KEY) != "sandbox"
	some idx, p in policy_data.containers
	p.type == "container"
	p.name == anno(C_NAME_KEY)
}

create_container_errors := errs if {
	p := policy_data.containers[create_container_index]
	errs := flatten_errs([sandbox_match_errors, container_errors(p)])
} else := errs if {
	not create_container_index
	names := [p.name | some p in policy_data.containers; p.type == "container"]
	errs := array.concat(
		sandbox_match_errors,
		in_err(sprintf("OCI.Annotations[%s]", [C_NAME_KEY]), anno(C_NAME_KEY), names),
	)
}

sandbox_match_errors := flatten_errs([
	regex_err(sprintf("OCI.Annotations[%s]", [S_NAME_KEY]), policy_data.sandbox.name_regex, anno(S_NAME_KEY)),
	eq_err(sprintf("OCI.Annotations[%s]", [S_NAMESPACE_KEY]), anno(S_NAMESPACE_KEY), policy_data.sandbox.namespace),
	regex_err("container_id", "^[a-z0-9]{64}$", get(input, "container_id", null)),
	already_created_errors,
])

already_created_errors := [] if {
	not known_container(input.container_id)
	not second_sandbox_container
} else := [sprintf("container_id: %s was already created", [input.container_id])] if {
	known_container(input.container_id)
} else := [sprintf("OCI.Annotations[%s]: sent \"sandbox\", but the sandbox container %s was already created", [C_TYPE_KEY, data.pstate.sandbox_container])]

second_sandbox_container if {
	anno(C_TYPE_KEY) == "sandbox"
	data.pstate.sandbox_container
}

container_errors(p) := errs if {
	lists := [
		shape_errors,
		eq_err(sprintf("OCI.Annotations[%s]", [C_TYPE_KEY]), anno(C_TYPE_KEY), p.type),
		input_errors,
		image_errors(p),
		process_errors(p),
		mount_errors(p),
		linux_errors(p),
		eq_root_errors(p),
		hostname_errors,
		create_resources_errors(p),
	]
	errs := [sprintf("%s: %s", [p.name, e]) | some l in lists; some e in l]
}

shape_errors := flatten_errs([
	type_err("OCI.Process.Args", get(i_process, "Args", null), "array"),
	type_err("OCI.Process.Env", get(i_process, "Env", []), "array"),
	type_err("OCI.Mounts", get(i_oci, "Mounts", []), "array"),
	type_err("storages", get(input, "storages", []), "array"),
	type_err("OCI.Linux.MaskedPaths", get(i_linux, "MaskedPaths", []), "array"),
	type_err("OCI.Linux.ReadonlyPaths", get(i_linux, "ReadonlyPaths", []), "array"),
	type_err("OCI.Linux.Namespaces", get(i_linux, "Namespaces", []), "array"),
	type_err("OCI.Linux.Sysctl", get(i_linux, "Sysctl", {}), "object"),
])

input_errors := flatten_errs([
	empty_err("shared_mounts", get(input, "shared_mounts", null)),
	eq_err("sandbox_pidns", get(input, "sandbox_pidns", false), false),
	empty_err("devices", get(input, "devices", null)),
	empty_err("string_user", get(input, "string_user", null)),
	empty_err("OCI.Hooks", hooks_in_use),
	empty_err("OCI.Linux.UIDMappings", get(i_linux, "UIDMappings", null)),
	empty_err("OCI.Linux.GIDMappings", get(i_linux, "GIDMappings", null)),
	empty_err("OCI.Linux.Devices", get(i_linux, "Devices", null)),
	empty_err("OCI.Linux.Resources.Devices (allow rules)", allowed_device_rules),
	empty_err("OCI.Process.SelinuxLabel", get(i_process, "SelinuxLabel", null)),
	empty_err("OCI.Process.ApparmorProfile", get(i_process, "ApparmorProfile", null)),
	empty_err("OCI.Linux.MountLabel", get(i_linux, "MountLabel", null)),
	empty_err("OCI.Linux.IntelRdt", intel_rdt_in_use),
	empty_err("storages[image_guest_pull].options", [o | some s in i_pulls; some o in iter(get(s, "options", []))]),
	empty_err("storages[image_guest_pull].fs_group", [g | some s in i_pulls; g := get(s, "fs_group", null); not is_null(g)]),
	in_err("OCI.Linux.RootfsPropagation", get(i_linux, "RootfsPropagation", ""), ROOTFS_PROPAGATIONS),
])

# Mount propagation of the container's root: never shared with the guest's mounts.
ROOTFS_PROPAGATIONS := ["", "private", "rprivate", "slave", "rslave"]

intel_rdt_in_use := [x | x := get(get(i_linux, "IntelRdt", {}), "L3CacheSchema", ""); x != ""]

# The pod's hostname (the sandbox container's; other containers send none and get it).
hostname_errors := [] if {
	get(i_oci, "Hostname", "") == ""
} else := [] if {
	regex.match(policy_data.sandbox.name_regex, i_oci.Hostname)
} else := [] if {
	i_oci.Hostname == get(policy_data.sandbox, "hostname", null)
} else := [sprintf("OCI.Hostname: sent %s, allowed the pod name /%s/", [json.marshal(i_oci.Hostname), policy_data.sandbox.name_regex])]

# Hooks: null, or an object whose hook lists are all empty.
hooks_in_use := [h | some _, list in iter(get(i_oci, "Hooks", {})); some h in iter(list)]

# Device cgroup rules that allow something (deny rules only narrow access).
allowed_device_rules := [d | some d in iter(get(get(i_linux, "Resources", {}), "Devices", [])); get(d, "Allow", true) != false]

known_container(id) if data.pstate.containers[id] >= 0

record_container(id, idx) := ops if {
	data.pstate.containers
	ops := [{"op": "add", "path": concat("/", ["/pstate/containers", id]), "value": idx}]
} else := [{"op": "add", "path": "/pstate/containers", "value": {id: idx}}]

# The image must be the pinned one, named by the CRI annotation and pulled in the guest.
# The sandbox (pause) container is the exception: the agent mounts the guest image's own
# (measured) pause rootfs for it and pulls nothing, so its CRI image name (containerd's
# sandbox_image, whatever the cluster configured) selects nothing and is not checked, and
# its storage names either the pinned pause image or Kata's placeholder "pause"; its
# command, env, user, mounts etc. are checked like any container's.
image_errors(p) := storage_errors(p) if {
	p.type == "sandbox"
} else := flatten_errs([
	in_err(sprintf("OCI.Annotations[%s]", [IMAGE_KEY]), anno(IMAGE_KEY), p.image_names),
	storage_errors(p),
])

# Where the guest-pulled rootfs may be mounted: Kata's path, or below $(cpath) (kata-cc's
# agent keeps container rootfs below its shared directory). OCI.Root.Path must be the
# mount point of the image_guest_pull storage, so the container runs the pulled image.
rootfs_paths := [
	concat("", ["/run/kata-containers/", input.container_id, "/rootfs"]),
	concat("", [policy_data.common.cpath, "/", input.container_id, "/rootfs"]),
]

i_pulls := [s | some s in iter(get(input, "storages", [])); s.driver == "image_guest_pull"]

storage_errors(p) := errs if {
	storages := iter(get(input, "storages", []))
	bad_pulls := [sprintf("storages: image_guest_pull %s at %s, allowed source one of %s at one of %s", [json.marshal(s.source), json.marshal(s.mount_point), json.marshal(image_sources(p)), json.marshal(rootfs_paths)]) |
		some s in i_pulls
		not image_storage_ok(p, s)
	]
	others := [sprintf("storages: sent %s, not allowed", [json.marshal(s)]) |
		some s in storages
		s.driver != "image_guest_pull"
		not volume_storage_ok(p, s)
	]
	errs := flatten_errs([eq_err("storages (image_guest_pull count)", count(i_pulls), 1), bad_pulls, others])
}

image_sources(p) := array.concat(p.image_names, ["pause"]) if {
	p.type == "sandbox"
} else := p.image_names

image_storage_ok(p, s) if {
	s.source in image_sources(p)
	s.mount_point in rootfs_paths
}

volume_storage_ok(p, s) if {
	some ps in p.storages
	s.driver == ps.driver
	regex.match(concat("", ["^", expand(ps.mount_point), "$"]), s.mount_point)
}

i_root_path := get(get(i_oci, "Root", {}), "Path", null)

eq_root_errors(p) := flatten_errs([
	in_err("OCI.Root.Path", i_root_path, rootfs_paths),
	[sprintf("OCI.Root.Path: sent %s, but the image_guest_pull storage is mounted at %s", [json.marshal(i_root_path), json.marshal(s.mount_point)]) |
		some s in i_pulls
		s.mount_point != i_root_path
	],
	readonly_root_errors(p),
])

readonly_root_errors(p) := [] if {
	not p.read_only_root
} else := eq_err("OCI.Root.Readonly", get(get(i_oci, "Root", {}), "Readonly", null), true)

process_errors(p) := flatten_errs([
	eq_err("OCI.Process.Args", get(i_process, "Args", null), p.process.Args),
	eq_err("OCI.Process.Cwd", get(i_process, "Cwd", null), p.process.Cwd),
	eq_err("OCI.Process.Terminal", get(i_process, "Terminal", false), p.process.Terminal),
	user_errors(p, "OCI.Process", i_process),
	nnp_errors(p, "OCI.Process", i_process),
	env_errors(p, "OCI.Process", i_process, true),
	caps_errors(p, "OCI.Process", i_process),
	process_extra_errors("OCI.Process", i_process),
])

# What no pod YAML asks for, on any process (container or exec): no LSM labels the
# guest does not have, rlimits only from the allow-list, a sane OOM score.
process_extra_errors(prefix, proc) := flatten_errs([
	empty_err(concat("", [prefix, ".SelinuxLabel"]), get(proc, "SelinuxLabel", null)),
	empty_err(concat("", [prefix, ".ApparmorProfile"]), get(proc, "ApparmorProfile", null)),
	rlimit_errors(prefix, proc),
	oom_score_errors(prefix, proc),
])

# Rlimits: only the types in common.allowed_rlimits (type -> largest hard limit), soft at
# most hard. containerd 1.x gives every container RLIMIT_NOFILE 1024:1024 by default.
default_allowed_rlimits := {"RLIMIT_NOFILE": 1048576}

allowed_rlimits := get(policy_data.common, "allowed_rlimits", default_allowed_rlimits)

rlimit_errors(prefix, proc) := [sprintf("%s.Rlimits: sent %s, allowed %s with Soft <= Hard <= the limit", [prefix, json.marshal(r), json.marshal(allowed_rlimits)]) |
	some r in iter(get(proc, "Rlimits", []))
	not rlimit_ok(r)
]

rlimit_ok(r) if {
	max := allowed_rlimits[r.Type]
	r.Hard <= max
	r.Soft <= r.Hard
}

oom_score_errors(prefix, proc) := [] if {
	x := get(proc, "OOMScoreAdj", 0)
	is_number(x)
	x >= -1000
	x <= 1000
} else := [sprintf("%s.OOMScoreAdj: sent %s, allowed -1000..1000", [prefix, json.marshal(get(proc, "OOMScoreAdj", null))])]

user_errors(p, prefix, proc) := flatten_errs([
	uid_errors(p, prefix, proc),
	gid_errors(p, prefix, proc),
	additional_gids_errors(p, prefix, proc),
	empty_err(concat("", [prefix, ".User.Username"]), get(get(proc, "User", {}), "Username", null)),
])

# Supplementary groups: the primary group and the pod's supplementalGroups / fsGroup
# (containerd adds the first; the kubelet the others); none else.
additional_gids_errors(p, prefix, proc) := [sprintf("%s.User.AdditionalGids: sent %s, allowed %s", [prefix, json.marshal(g), json.marshal(allowed)]) |
	user := get(proc, "User", {})
	allowed := array.concat([get(user, "GID", null)], get(p.process, "AdditionalGids", []))
	some g in iter(get(user, "AdditionalGids", []))
	not g in allowed
]

uid_errors(p, prefix, proc) := [] if {
	is_null(p.process.UID)
} else := eq_err(concat("", [prefix, ".User.UID"]), get(get(proc, "User", {}), "UID", null), p.process.UID)

# A GID not known at generation time (the image's USER names a user only, whose group is
# in the image's /etc/passwd): the host cannot know it either and sends 0, as containerd
# does without the image's files; nothing else is accepted.
gid_errors(p, prefix, proc) := eq_err(concat("", [prefix, ".User.GID"]), get(get(proc, "User", {}), "GID", null), 0) if {
	is_null(p.process.GID)
} else := eq_err(concat("", [prefix, ".User.GID"]), get(get(proc, "User", {}), "GID", null), p.process.GID)

nnp_errors(p, prefix, proc) := [] if {
	not p.process.NoNewPrivileges
} else := eq_err(concat("", [prefix, ".NoNewPrivileges"]), get(proc, "NoNewPrivileges", false), true)

# Every env var sent must be allowed; with `required`, every listed one must be sent.
# Allowed: listed exactly, or matching one of the container's EnvRegex or the common
# allow_env_regex. The patterns are tried as one alternation (each pattern that compiles on
# its own, as a group of its own: the same strings match).
env_errors(p, prefix, proc, required) := errs if {
	env := iter(get(proc, "Env", []))
	listed := {e | some e in p.process.Env}
	patterns := [concat("", ["(?:", r, ")"]) |
		some r in array.concat(p.process.EnvRegex, policy_data.common.allow_env_regex)
		regex.is_valid(r)
	]
	re := concat("|", patterns)
	unknown := [sprintf("%s.Env: sent %s, not allowed", [prefix, json.marshal(e)]) |
		some e in env
		not e in listed
		not env_pattern_match(patterns, re, e)
	]
	missing := [sprintf("%s.Env: missing %s", [prefix, json.marshal(e)]) |
		required
		some e in p.process.Env
		not e in env
	]
	errs := array.concat(unknown, missing)
}

env_pattern_match(patterns, re, e) if {
	count(patterns) > 0
	regex.match(re, e)
}

caps_errors(p, prefix, proc) := [sprintf("%s.Capabilities.%s: sent %s, not allowed (allowed: %s)", [prefix, kind, cap, json.marshal(p.process.Capabilities)]) |
	caps := get(proc, "Capabilities", null)
	some kind in CAP_KINDS
	some cap in iter(get(caps, kind, []))
	not cap in p.process.Capabilities
]

mount_errors(p) := errs if {
	mounts := iter(get(i_oci, "Mounts", []))
	unknown := [sprintf("OCI.Mounts: sent %s, not allowed", [json.marshal(m)]) |
		some m in mounts
		not mount_allowed(p, m)
	]
	missing := [sprintf("OCI.Mounts: missing %s (%s)", [pm.destination, pm.type]) |
		some pm in p.mounts
		pm.required
		not mount_present(pm, mounts)
	]
	errs := array.concat(unknown, missing)
}

# (The destination is compared first, inline: only those candidates are matched in full.)
mount_allowed(p, m) if {
	some pm in policy_data.common.default_mounts
	pm.destination == m.destination
	mount_matches(pm, m)
}

mount_allowed(p, m) if {
	some pm in p.mounts
	pm.destination == m.destination
	mount_matches(pm, m)
}

mount_present(pm, mounts) if {
	some m in mounts
	mount_matches(pm, m)
}

mount_matches(pm, m) if {
	pm.destination == m.destination
	pm.type == m.type
	options_match(pm, {o | some o in iter(get(m, "options", []))})
	regex.match(concat("", ["^", expand(pm.source), "$"]), m.source)
}

# The options, as a set, are the policy's, or its alternative set where it has one
# (`ro` for a volume that asked for recursive read-only only where possible).
options_match(pm, sent) if {
	{o | some o in pm.options} == sent
}

options_match(pm, sent) if {
	alt := get(pm, "alt_options", [])
	count(alt) > 0
	{o | some o in alt} == sent
}

linux_errors(p) := flatten_errs([
	paths_errors(p),
	seccomp_errors(p),
	namespace_errors,
	sysctl_errors,
])

# Masked and read-only paths: every listed one must be sent (more only hides more). The
# sandbox gets containerd's defaults, containers the kubelet's list.
paths_errors(p) := [] if {
	p.privileged
} else := flatten_errs([
	required_paths_errors("OCI.Linux.MaskedPaths", get(i_linux, "MaskedPaths", []), required_masked(p)),
	required_paths_errors("OCI.Linux.ReadonlyPaths", get(i_linux, "ReadonlyPaths", []), required_readonly(p)),
])

required_masked(p) := policy_data.common.sandbox_masked_paths if p.type == "sandbox" else := policy_data.common.masked_paths

required_readonly(p) := policy_data.common.sandbox_readonly_paths if p.type == "sandbox" else := policy_data.common.readonly_paths

required_paths_errors(field, sent, required) := [sprintf("%s: sent %s, missing %s", [field, json.marshal(sent), json.marshal(missing)])] if {
	missing := [r | some r in required; not r in iter(sent)]
	count(missing) > 0
} else := []

seccomp_errors(p) := [] if {
	p.seccomp == "unconfined"
	is_null(get(i_linux, "Seccomp", null))
} else := seccomp_strength_errors(p, i_linux.Seccomp) if {
	p.seccomp != "unconfined"
	not is_null(get(i_linux, "Seccomp", null))
} else := [sprintf("OCI.Linux.Seccomp: sent %s, allowed %s profile", [json.marshal(get(i_linux, "Seccomp", null)), p.seccomp])]

# A profile (RuntimeDefault or Localhost: its text is the node's, so unknown here) must
# be at least as strict as the runtime's default in what matters: it refuses by default,
# hands no decision to a tracer or a user-space listener, keeps the kernel's mitigations
# (no SPEC_ALLOW flag), and allows the syscalls the default profile reserves to a
# capability (mount, unshare, bpf, ...) only to a container holding that capability.
SECCOMP_REFUSING := {"SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP"}

SECCOMP_FLAGS := {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"}

SECCOMP_HANDOFF := {"SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE"}

SECCOMP_PERMISSIVE := {"SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}

seccomp_gated := get(policy_data.common, "seccomp_gated_syscalls", {})

seccomp_strength_errors(p, sc) := flatten_errs([
	in_err("OCI.Linux.Seccomp.DefaultAction", get(sc, "DefaultAction", null), SECCOMP_REFUSING),
	[sprintf("OCI.Linux.Seccomp.Flags: sent %s, allowed one of %s", [json.marshal(f), json.marshal(SECCOMP_FLAGS)]) |
		some f in iter(get(sc, "Flags", []))
		not f in SECCOMP_FLAGS
	],
	[sprintf("OCI.Linux.Seccomp.Syscalls: %s for %s, not allowed (no tracer or listener may decide)", [rule.Action, json.marshal(rule.Names)]) |
		some rule in iter(get(sc, "Syscalls", []))
		rule.Action in SECCOMP_HANDOFF
	],
	[sprintf("OCI.Linux.Seccomp.Syscalls: %s allows %s, which needs one of %s", [rule.Action, name, json.marshal(seccomp_gated[name])]) |
		some rule in iter(get(sc, "Syscalls", []))
		rule.Action in SECCOMP_PERMISSIVE
		some name in iter(get(rule, "Names", []))
		seccomp_gated[name]
		not seccomp_unlocked(p, name, rule)
	],
])

seccomp_unlocked(p, name, rule) if {
	some cap in seccomp_gated[name]
	cap in p.process.Capabilities
}

# clone with argument conditions (the default profile's "no new namespaces" mask).
seccomp_unlocked(p, name, rule) if {
	name == "clone"
	count(iter(get(rule, "Args", []))) > 0
}

namespace_errors := [sprintf("OCI.Linux.Namespaces: sent %s, allowed new ipc/uts/mount namespaces only", [json.marshal(ns)]) |
	some ns in iter(get(i_linux, "Namespaces", []))
	not namespace_ok(ns)
]

namespace_ok(ns) if {
	ns.Type in {"ipc", "uts", "mount"}
	get(ns, "Path", "") == ""
}

allowed_sysctls := object.union(policy_data.common.default_sysctls, policy_data.sandbox.sysctls)

sysctl_errors := [sprintf("OCI.Linux.Sysctl: sent %s=%s, allowed %s", [k, json.marshal(v), json.marshal(allowed_sysctls)]) |
	some k, v in iter(get(i_linux, "Sysctl", {}))
	object.get(allowed_sysctls, k, null) != v
]

StartContainerRequest := true if {
	known_container(input.container_id)
} else := {"allowed": false, "reason": sprintf("container_id: %s was not created under this policy", [json.marshal(get(input, "container_id", null))])}

# ---- resources (CreateContainer and UpdateContainer) ------------------------------------

# Resources may not exceed the pod spec's limits (memory, CPU), and device rules may never
# allow anything. Other resource fields only trade the pod's own availability, which the
# host holds anyway (it can stop the VM). The sandbox (pause) container carries the pod's
# totals, so only its device rules are checked.
create_resources_errors(p) := [] if {
	p.type == "sandbox"
} else := resources_errors(p, "OCI.Linux.Resources", get(i_linux, "Resources", null))

resources_errors(p, prefix, res) := flatten_errs([
	empty_err(concat("", [prefix, ".Devices (allow rules)"]), [d | some d in iter(get(res, "Devices", [])); get(d, "Allow", true) != false]),
	memory_limit_errors(p, prefix, res),
	cpu_limit_errors(p, prefix, res),
])

limits(p) := get(p, "resources", {})

memory_limit_errors(p, prefix, res) := [] if {
	is_null(get(limits(p), "memory_limit", null))
} else := [] if {
	sent := get(get(res, "Memory", {}), "Limit", 0)
	sent > 0
	sent <= limits(p).memory_limit
} else := [sprintf("%s.Memory.Limit: sent %s, allowed 1..%d (the pod spec's limit)", [prefix, json.marshal(get(get(res, "Memory", {}), "Limit", null)), limits(p).memory_limit])]

# A CPU limit of L millicores: Quota/Period <= L/1000.
cpu_limit_errors(p, prefix, res) := [] if {
	is_null(get(limits(p), "cpu_limit_milli", null))
} else := [] if {
	cpu := get(res, "CPU", {})
	quota := get(cpu, "Quota", 0)
	period := get(cpu, "Period", 0)
	quota > 0
	period > 0
	quota * 1000 <= limits(p).cpu_limit_milli * period
} else := [sprintf("%s.CPU: sent %s, allowed Quota/Period <= %d millicores (the pod spec's limit)", [prefix, json.marshal(get(res, "CPU", null)), limits(p).cpu_limit_milli])]

UpdateContainerRequest := true if {
	count(update_errors) == 0
} else := {"allowed": false, "reason": concat("; ", update_errors)}

update_errors := errs if {
	idx := data.pstate.containers[input.container_id]
	p := policy_data.containers[idx]
	res := get(input, "resources", null)
	lists := [
		type_err("resources", res, "object"),
		update_pause_errors(p),
		resources_errors(p, "resources", res),
	]
	errs := [sprintf("%s: %s", [p.name, e]) | some l in lists; some e in l]
} else := [sprintf("container_id: %s was not created under this policy", [json.marshal(get(input, "container_id", null))])]

update_pause_errors(p) := [] if {
	p.type != "sandbox"
} else := ["the sandbox container's resources are the pod's and are not updated"]

# ---- processes and streams -------------------------------------------------------------

ExecProcessRequest := true if {
	count(exec_errors) == 0
} else := {"allowed": false, "reason": concat("; ", exec_errors)} if {
	count(exec_errors) > 0
}

exec_errors := errs if {
	idx := data.pstate.containers[input.container_id]
	p := policy_data.containers[idx]
	proc := get(input, "process", {})
	lists := [
		empty_err("string_user", get(input, "string_user", null)),
		type_err("process.Env", get(proc, "Env", []), "array"),
		in_err("process.Args", get(proc, "Args", null), p.exec_commands),
		user_errors(p, "process", proc),
		env_errors(p, "process", proc, false),
		# No more than the container's own process: its capabilities (at most), its
		# NoNewPrivileges, its working directory (containerd execs with the container's
		# process as the base). A terminal only changes how the output is carried; reading
		# it is ReadStdout's decision.
		caps_errors(p, "process", proc),
		nnp_errors(p, "process", proc),
		eq_err("process.Cwd", get(proc, "Cwd", null), p.process.Cwd),
		process_extra_errors("process", proc),
	]
	errs := [sprintf("%s: %s", [p.name, e]) | some l in lists; some e in l]
} else := [sprintf("container_id: %s was not created under this policy", [json.marshal(get(input, "container_id", null))])]

ReadStreamRequest if policy_data.request_defaults.ReadStreamRequest == true

WriteStreamRequest if policy_data.request_defaults.WriteStreamRequest == true

CloseStdinRequest if policy_data.request_defaults.CloseStdinRequest == true

# Files the shim copies into the guest when there is no shared file system (Kubernetes
# volumes: configMap, secret, projected, /etc/hosts, ...).
CopyFileRequest := true if {
	count(copy_file_errors) == 0
} else := {"allowed": false, "reason": concat("; ", copy_file_errors)}

copy_file_errors := flatten_errs([copy_file_path_errors, copy_file_mode_errors])

copy_file_path_errors := [] if {
	path := input.path
	is_string(path)
	not contains(path, "/../")
	not endswith(path, "/..")
	some pattern in policy_data.common.copy_file_regex
	regex.match(expand(pattern), path)
} else := [sprintf("path: sent %s, allowed a file of the pod's containers (%s)", [json.marshal(get(input, "path", null)), json.marshal(policy_data.common.copy_file_regex)])]

copy_file_mode_errors := [] if {
	copy_file_mode_ok(get(input, "file_mode", null))
} else := [sprintf("file_mode: sent %s, allowed a regular file, directory or symlink without setuid (setgid/sticky on directories only)", [json.marshal(get(input, "file_mode", null))])]

# file_mode is st_mode: the type (S_IFMT 0o170000) none (0, a regular file), a directory
# (0o040000), a regular file (0o100000) or a symlink (0o120000); no setuid/setgid/sticky
# on files and symlinks (0o7000); directories may keep setgid and sticky (the kubelet's
# fsGroup volumes), never setuid (0o4000). The agent refuses the same whatever a policy
# says; a policy may narrow `copy_file_types` further.
copy_file_types := {0, 16384, 32768, 40960}

copy_file_mode_ok(mode) if {
	is_number(mode)
	mode >= 0
	mode < 65536
	bits.and(mode, 61440) in copy_file_types
	bits.and(mode, 3584) == 0
}

copy_file_mode_ok(mode) if {
	is_number(mode)
	mode >= 0
	mode < 65536
	bits.and(mode, 61440) == 16384
	bits.and(mode, 2048) == 0
}
