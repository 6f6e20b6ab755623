#!/usr/bin/env bash
# A PRIVATE containerd for the CRI/ctr suites and the pod-start bench. Idempotent and safe
# to run concurrently (flocks); a second run only refreshes what changed.
#
#   tests/containerd/start.sh          # then: tests/containerd/stop.sh [--purge]
#   KATA_CC_CTRD_PROFILE=cc tests/containerd/start.sh   # the confidential profile (below)
#
# Per instance (nothing outside these paths, except the shared pieces below and the netns
# and iptables rules the CNI bridge plugin makes for pods):
#   $KATA_CC_CTRD_DIR (default /var/tmp/kata-cc-ctrd, profile cc: /var/tmp/kata-cc-ctrd-cc)
#       config.toml            containerd config (CRI on, restrict_oom_score_adj = true)
#       containerd.log         containerd's log, with the shims' log lines (timing phases)
#       root/                  containerd root (content store, snapshots, CRI state)
#       bin/                   on containerd's PATH: containerd-shim-kata-cc-v2, kata-cc-snapshotter (links)
#       kata-cc/configuration.toml   the shim's config for the `kata-cc` runtime (TEST image)
#       cni/net.d/             bridge CNI config (bridge kcc0, 10.88.0.0/16, gateway 10.88.0.1)
#       certs.d/               registry hosts (plain HTTP) for 10.88.0.1:5000 and 127.0.0.1:5000
#       pods/                  log_directory for test pods
#       snapshotter/           kata-cc-snapshotter metadata (when it runs)
#       profile                the profile that owns the directory (another one is refused)
#   $KATA_CC_CTRD_RUN (default /run/kata-cc-ctrd, profile cc: /run/kata-cc-ctrd-cc)
#       containerd.sock        the gRPC socket (CRI and ctr); state/ containerd's state
#       kata-cc/               the shim's state_dir
#       kata-cc-snapshotter.sock
# Shared by every instance on this host (several may run at once, e.g. both profiles):
#   the bridge kcc0 with 10.88.0.1/16, the CNI network `kata-cc-test` with its addresses in
#   /var/lib/cni/networks/kata-cc-test, the pod-side registry, the pause image; state in
#   $KATA_CC_CTRD_SHARED (default /var/tmp/kata-cc-ctrd-shared). stop.sh removes them with
#   the last instance.
#
# Runtimes (CRI handlers): runc (io.containerd.runc.v2) and kata-cc (io.containerd.kata-cc.v2,
# options ConfigPath = the test configuration.toml).
# Profiles (KATA_CC_CTRD_PROFILE):
#   default  CRI pulls with overlayfs; tee none.
#   cc       CRI pulls through the kata-cc snapshotter (no layer on the host: needs
#            KATA_CC_SNAPSHOTTER; 1.7+ also name it on the kata-cc runtime, 1.6 has one
#            CRI snapshotter), and the kata-cc runtime uses the SIMULATED TEE
#            (tee.kind = "sim", allow_simulated = true): development/test only.
#
# The registry: tests/registry/start.sh serves the fixtures on 127.0.0.1:5000; pods cannot
# reach the host's loopback, so a second docker-registry serves the SAME storage on
# 10.88.0.1:5000 (the bridge's gateway address, which this script assigns), an address the
# host (containerd's pulls) and pods/guests (guest pull) both reach. Use images by that name,
# e.g. 10.88.0.1:5000/busybox:latest. The sandbox (pause) image is built here from
# deploy/guest/pause.c and pushed as 10.88.0.1:5000/kata-cc/pause:1.
#
# Environment:
#   KATA_CC_CONTAINERD_BIN directory with containerd, ctr and containerd-shim-runc-v2 of the
#                          containerd to run (deploy/containerd/fetch.sh 1.7|2.1 prints one);
#                          unset: the machine's (PATH). Config version 2 for 1.x, 3 for 2.x.
#                          With it, the instance's default directories name the version:
#                          /var/tmp/kata-cc-ctrd-<minor>[-cc], /run/kcc-<minor>[-cc]
#                          (instance.sh; docs/containerd.md)
#   KATA_CC_CTRD_DIR, KATA_CC_CTRD_RUN   the instance's directories (the cc profile adds -cc)
#   KATA_CC_BIN_DIR        directory with containerd-shim-kata-cc-v2 (linked into bin/);
#                          unset: the kata-cc runtime is configured but has no shim binary
#   KATA_CC_SNAPSHOTTER    path of the kata-cc-snapshotter binary: started on
#                          $KATA_CC_CTRD_RUN/kata-cc-snapshotter.sock (proxy plugin `kata-cc`,
#                          always configured). Pull images for it with
#                          `$KATA_CC_CTRD_DIR/bin/kata-cc-snapshotter pull` (ctr images pull
#                          cannot: it unpacks on the host).
#   KATA_CC_GUEST_DIR      guest image for the kata-cc runtime (default <repo>/target/guest-image/test)
#   KATA_CC_QEMU, KATA_CC_VHOST_DEVICE_VSOCK   tool paths (default: PATH, then ~/.cargo/bin)
#
# Prints KEY=VALUE lines on stdout (everything else goes to stderr):
#   KATA_CC_CTRD_SOCK, KATA_CC_CTRD_LOG, KATA_CC_CTRD_DIR, KATA_CC_CTRD_PROFILE,
#   KATA_CC_REGISTRY, KATA_CC_PAUSE_IMAGE, KATA_CC_BUSYBOX_IMAGE, KATA_CC_POD_LOG_DIR,
#   KATA_CC_SHIM_CONFIG, KATA_CC_SHIM_STATE_DIR,
#   KATA_CC_SNAPSHOTTER_NAME (empty when the snapshotter is not running)
#
# Needs (deploy/install-deps.sh): containerd (1.6, 1.7 or 2.1), runc, containernetworking-plugins,
# iptables, docker-registry, skopeo, umoci, gcc, curl, jq.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/containerd/instance.sh
source "$(dirname "$0")/instance.sh"
SUBNET=10.88.0.0/16
GW=10.88.0.1
REG=$GW:5000
PAUSE_IMAGE=$REG/kata-cc/pause:1
BUSYBOX_IMAGE=$REG/busybox:latest
SNAP_SOCK=$RUN/kata-cc-snapshotter.sock
REGISTRY_DIR=${KATA_CC_REGISTRY_DIR:-/var/tmp/kata-cc-registry}
GUEST_DIR=${KATA_CC_GUEST_DIR:-$repo/target/guest-image/test}
SHIM_STATE=$RUN/kata-cc

die() { log "$*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root"
[[ -x $CTRD_BIN/containerd && -x $CTR ]] || die "missing containerd/ctr in $CTRD_BIN (run deploy/install-deps.sh, or deploy/containerd/fetch.sh)"
[[ -n $CTRD_VERSION ]] || die "cannot tell the version of $CTRD_BIN/containerd"
ctrd_major=${CTRD_VERSION%%.*}
[[ -x $CTRD_BIN/containerd-shim-runc-v2 ]] || command -v containerd-shim-runc-v2 >/dev/null ||
    die "missing containerd-shim-runc-v2 (in $CTRD_BIN or on PATH)"
for t in runc ip iptables docker-registry skopeo umoci gcc curl jq flock; do
    command -v "$t" >/dev/null || die "missing $t (run deploy/install-deps.sh)"
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || die "missing /usr/lib/cni (containernetworking-plugins)"

mkdir -p "$DIR" "$RUN" "$SHARED"
exec 9>"$DIR/lock"
flock 9
# One directory, one profile: two containerds on one root would share (and corrupt) one
# metadata store. A KATA_CC_CTRD_DIR inherited from another profile's output lands here.
if [[ -f $DIR/profile && $(cat "$DIR/profile") != "$PROFILE" ]]; then
    die "$DIR belongs to profile $(cat "$DIR/profile"), not $PROFILE: unset KATA_CC_CTRD_DIR/KATA_CC_CTRD_RUN (or give each profile its own)"
fi
echo "$PROFILE" >"$DIR/profile"
# The shared pieces (bridge, pod-side registry, pause image) under their own lock, taken
# after the instance's (stop.sh takes them in the same order).
exec 8>"$SHARED/lock"
flock 8

# wait_for WHAT CMD...: polls CMD for up to 30 s.
wait_for() {
    shift # WHAT only documents the call
    for _ in $(seq 1 300); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# find_tool NAME OVERRIDE: absolute path of a tool.
find_tool() {
    if [[ -n ${2:-} ]]; then echo "$2"; return; fi
    local p
    p=$(command -v "$1" 2>/dev/null || true)
    [[ -z $p && -x $HOME/.cargo/bin/$1 ]] && p=$HOME/.cargo/bin/$1
    echo "$p"
}

# --- 1. The fixture registry on 127.0.0.1:5000 (its own script, its own lock).
# (Without our lock fds: a daemon it starts must not keep our locks held.)
bash "$repo/tests/registry/start.sh" >&2 8>&- 9>&-

# --- 2. The pod bridge, made here so its gateway address exists before anything binds it.
# The CNI bridge plugin reuses it (same name, same gateway address).
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($GW/${SUBNET#*/})"
    # A fixed MAC: a Linux bridge without one takes the lowest MAC of its ports, so it
    # would change whenever a pod's veth comes or goes, and every pod's ARP entry for the
    # gateway (the registry, the KBS) would point at a MAC nobody answers any more.
    ip link add "$BRIDGE" address 02:6b:63:63:00:01 type bridge
fi
addrs=$(ip -4 addr show dev "$BRIDGE")
[[ $addrs == *"inet $GW/"* ]] || ip addr add "$GW/${SUBNET#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" address 02:6b:63:63:00:01
ip link set "$BRIDGE" up

# --- 3. The registry at an address pods reach: same storage, listening on the gateway.
reg_up() { curl -fsS -o /dev/null --max-time 2 "http://$REG/v2/" 2>/dev/null; }
if ! reg_up; then
    cat >"$SHARED/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/storage
  delete:
    enabled: true
http:
  addr: $REG
EOF
    log "starting docker-registry on $REG (storage $REGISTRY_DIR/storage)"
    setsid docker-registry serve "$SHARED/registry.yml" >>"$SHARED/registry.log" 2>&1 </dev/null 8>&- 9>&- &
    echo $! >"$SHARED/registry.pid"
    wait_for registry reg_up || die "registry on $REG did not come up; see $SHARED/registry.log"
fi

# --- 4. The sandbox (pause) image: static pause from deploy/guest/pause.c, one layer.
pause_tag=${PAUSE_IMAGE##*:}
pause_repo=${PAUSE_IMAGE#*/}
pause_repo=${pause_repo%:*}
if ! curl -fsS -o /dev/null 2>/dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/$pause_repo/manifests/$pause_tag"; then
    log "building the pause image $PAUSE_IMAGE"
    w=$SHARED/pause-work
    rm -rf "$w"
    mkdir -p "$w/rootfs"
    gcc -static -Os -s -Wall -Werror -o "$w/rootfs/pause" "$repo/deploy/guest/pause.c"
    chmod 755 "$w/rootfs/pause"
    (
        cd "$w"
        umoci init --layout oci
        umoci new --image oci:pause
        tar --numeric-owner --owner=0 --group=0 -C rootfs -cf layer.tar .
        umoci raw add-layer --image oci:pause layer.tar
        umoci config --image oci:pause --config.entrypoint /pause --os linux --architecture amd64
        skopeo --insecure-policy copy -q --dest-tls-verify=false oci:oci:pause "docker://$PAUSE_IMAGE"
    ) >&2
    rm -rf "$w"
fi

flock -u 8 # the shared lock, released even if a child kept the fd
exec 8>&-

# --- 5. CNI: the bridge plugin on $BRIDGE, host-local IPAM in its default data dir
# (/var/lib/cni/networks/$CNI_NAME), shared by every instance on the bridge.
mkdir -p "$DIR/cni/net.d" "$DIR/pods"
cat >"$DIR/cni/net.d/10-$CNI_NAME.conflist.new" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$SUBNET", "gateway": "$GW" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
mv "$DIR/cni/net.d/10-$CNI_NAME.conflist.new" "$DIR/cni/net.d/10-$CNI_NAME.conflist"

# `ctr run --cni` reads /etc/cni/net.d only: tests/ctr.rs binds cni/net.d there in a
# private mount namespace, which needs the (empty) mount point.
[[ -d /etc/cni/net.d ]] || mkdir -p /etc/cni/net.d
# ctr 1.7+ finds the CNI plugins in /opt/cni/bin only: tests/ctr.rs binds /usr/lib/cni there
# the same way.
[[ -d /opt/cni/bin ]] || mkdir -p /opt/cni/bin

# --- 6. Registry hosts: plain HTTP for the pod-reachable registry (and the loopback one).
for r in "$REG" 127.0.0.1:5000; do
    mkdir -p "$DIR/certs.d/$r"
    printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' \
        "$r" "$r" >"$DIR/certs.d/$r/hosts.toml"
done

# --- 7. The kata-cc runtime: shim on containerd's PATH, test configuration.
mkdir -p "$DIR/bin" "$DIR/kata-cc"
if [[ -n ${KATA_CC_BIN_DIR:-} ]]; then
    [[ -x $KATA_CC_BIN_DIR/containerd-shim-kata-cc-v2 ]] ||
        die "no containerd-shim-kata-cc-v2 in KATA_CC_BIN_DIR=$KATA_CC_BIN_DIR"
    ln -sfn "$(cd "$KATA_CC_BIN_DIR" && pwd)/containerd-shim-kata-cc-v2" "$DIR/bin/containerd-shim-kata-cc-v2"
fi
qemu=$(find_tool qemu-system-x86_64 "${KATA_CC_QEMU:-}")
vhost=$(find_tool vhost-device-vsock "${KATA_CC_VHOST_DEVICE_VSOCK:-}")
[[ -n $qemu ]] || log "warning: qemu-system-x86_64 not found (hypervisor/tests/setup-host.sh); kata-cc pods will fail"
[[ -n $vhost ]] || log "warning: vhost-device-vsock not found (hypervisor/tests/setup-host.sh); kata-cc pods will fail"
[[ -f $GUEST_DIR/vmlinuz ]] || log "warning: no guest image in $GUEST_DIR (deploy/guest/build-image.sh --variant test); kata-cc pods will fail"
tee_kind=none
tee_sim=false
if [[ $PROFILE == cc ]]; then
    tee_kind=sim # the simulated TEE: nothing is protected; test profile only
    tee_sim=true
fi
cat >"$DIR/kata-cc/configuration.toml" <<EOF
# Written by tests/containerd/start.sh: the kata-cc runtime of the test containerd.
[hypervisor]
qemu = "${qemu:-qemu-system-x86_64}"
vhost_device_vsock = "${vhost:-vhost-device-vsock}"
kernel = "$GUEST_DIR/vmlinuz"
initramfs = "$GUEST_DIR/initramfs.cpio.gz"
vcpus = 1
memory_mib = 512
# TCG on the test machines: generous.
boot_timeout_secs = 120
kernel_params = ""

[tee]
kind = "$tee_kind"
allow_simulated = $tee_sim

[agent]
# The guest pulls from the test registry over plain HTTP (non-TEE VM).
insecure_registries = ["$REG"]
timeout_secs = 120

[runtime]
state_dir = "$SHIM_STATE"
enable_annotations = ["io.katacontainers.config.hypervisor.cc_init_data"]
# A plain ctr run pod has no netns: QEMU user-mode networking lets its guest reach the
# registry (10.88.0.1:5000 is a host address). CRI pods always get their CNI netns.
standalone_network = "user"
EOF

# --- 8. The kata-cc snapshotter (optional): our own instance (socket under $RUN, metadata
# under $DIR/snapshotter), not a system one.
snap_name=
if [[ -n ${KATA_CC_SNAPSHOTTER:-} ]]; then
    [[ -x $KATA_CC_SNAPSHOTTER ]] || die "KATA_CC_SNAPSHOTTER=$KATA_CC_SNAPSHOTTER is not executable"
    ln -sfn "$(cd "$(dirname "$KATA_CC_SNAPSHOTTER")" && pwd)/$(basename "$KATA_CC_SNAPSHOTTER")" "$DIR/bin/kata-cc-snapshotter"
    snap_name=kata-cc
    # A rebuilt binary, or an instance without the socket, is replaced.
    if alive "$DIR/snapshotter.pid" &&
        [[ $DIR/bin/kata-cc-snapshotter -nt $DIR/snapshotter.pid || ! -S $SNAP_SOCK ]]; then
        log "restarting kata-cc-snapshotter (rebuilt, or no socket)"
        kill "$(cat "$DIR/snapshotter.pid")"
        for _ in $(seq 1 100); do alive "$DIR/snapshotter.pid" || break; sleep 0.1; done
    fi
    if ! [[ -S $SNAP_SOCK ]] || ! alive "$DIR/snapshotter.pid"; then
        log "starting kata-cc-snapshotter ($SNAP_SOCK)"
        mkdir -p "$(dirname "$SNAP_SOCK")"
        rm -f "$SNAP_SOCK"
        mkdir -p "$DIR/snapshotter"
        setsid "$DIR/bin/kata-cc-snapshotter" --address "$SNAP_SOCK" --root "$DIR/snapshotter" \
            >>"$DIR/snapshotter.log" 2>&1 </dev/null 9>&- &
        echo $! >"$DIR/snapshotter.pid"
        if ! wait_for snapshotter test -S "$SNAP_SOCK"; then
            # Not fatal: the runc and CRI suites do not need it; the ctr kata-cc test
            # fails saying the snapshotter is not configured.
            log "warning: kata-cc-snapshotter did not create $SNAP_SOCK (see $DIR/snapshotter.log); no proxy plugin"
            alive "$DIR/snapshotter.pid" && kill "$(cat "$DIR/snapshotter.pid")"
            rm -f "$DIR/snapshotter.pid"
            snap_name=
        fi
    fi
fi

[[ $PROFILE == cc && -z $snap_name ]] && die "profile cc needs the kata-cc snapshotter (KATA_CC_SNAPSHOTTER; cargo build -p kata-cc-snapshotter)"

# --- 9. containerd. The proxy plugin is always configured (so the config does not depend on
# whether the snapshotter runs); without the snapshotter its calls fail.
cri_snapshotter=overlayfs
[[ $PROFILE == cc ]] && cri_snapshotter=kata-cc
# containerd 1.x reads config version 2 (one CRI plugin); 2.x reads version 3, where the CRI
# plugin is split into io.containerd.cri.v1.runtime (runtimes, CNI, OOM score),
# io.containerd.cri.v1.images (snapshotter, sandbox image, registry) and
# io.containerd.grpc.v1.cri (the streaming server). Same settings either way.
# containerd 1.7+: the kata-cc runtime names its snapshotter itself (per-runtime
# `snapshotter`); 1.6 has one CRI snapshotter for every runtime.
kata_snap_line=
if [[ $PROFILE == cc && $CTRD_VERSION != 1.6 ]]; then
    kata_snap_line='snapshotter = "kata-cc"'
fi
runtimes() { # TABLE-PREFIX: the runc and kata-cc runtime tables
    cat <<EOT
      [$1.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [$1.runtimes.runc.options]
          SystemdCgroup = false
      [$1.runtimes.kata-cc]
        runtime_type = "io.containerd.kata-cc.v2"
        pod_annotations = ["io.katacontainers.*"]
        privileged_without_host_devices = true
        $kata_snap_line
        [$1.runtimes.kata-cc.options]
          ConfigPath = "$DIR/kata-cc/configuration.toml"
EOT
}
common() { # VERSION: the top of the file
    cat <<EOT
# Written by tests/containerd/start.sh. containerd $CTRD_VERSION (config version $1).
version = $1
root = "$DIR/root"
state = "$RUN/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = "$RUN/debug.sock"
  level = "info"

[proxy_plugins]
  [proxy_plugins.kata-cc]
    type = "snapshot"
    address = "$SNAP_SOCK"
EOT
}
if ((ctrd_major >= 2)); then
    rt='plugins."io.containerd.cri.v1.runtime"'
    # Pulls: the default profile uses the transfer service, as a stock 2.x node does. The
    # cc profile's remote snapshotter needs the snapshot labels (cri.image-ref,
    # cri.layer-digest), which only CRI's own (local) pull adds.
    images_pull=
    if [[ $PROFILE == cc ]]; then
        images_pull='    use_local_image_pull = true
    disable_snapshot_annotations = false'
    fi
    im='plugins."io.containerd.cri.v1.images"'
    {
        common 3
        cat <<EOF

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [$im]
    snapshotter = "$cri_snapshotter"
$images_pull
    [$im.pinned_images]
      sandbox = "$PAUSE_IMAGE"
    [$im.registry]
      config_path = "$DIR/certs.d"
  [$rt]
    # No CAP_SYS_RESOURCE here: a negative oom_score_adj fails every pod otherwise.
    restrict_oom_score_adj = true
    enable_selinux = false
    # enable_unprivileged_ports / enable_unprivileged_icmp keep 2.x's defaults (on): the
    # guest agent sets their net.* sysctls in the pod VM's network (docs/containerd.md).
    [$rt.containerd]
      default_runtime_name = "runc"
$(runtimes "$rt.containerd")
    [$rt.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$DIR/cni/net.d"
      max_conf_num = 1
EOF
    } >"$DIR/config.toml.new"
else
    cri='plugins."io.containerd.grpc.v1.cri"'
    {
        common 2
        cat <<EOF

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/opt"
  [$cri]
    sandbox_image = "$PAUSE_IMAGE"
    # No CAP_SYS_RESOURCE here: a negative oom_score_adj fails every pod otherwise.
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    [$cri.containerd]
      default_runtime_name = "runc"
      snapshotter = "$cri_snapshotter"
      # Snapshot labels (cri.image-ref, cri.layer-digest) for remote snapshotters.
      disable_snapshot_annotations = false
$(runtimes "$cri.containerd")
    [$cri.cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$DIR/cni/net.d"
      max_conf_num = 1
    [$cri.registry]
      config_path = "$DIR/certs.d"
EOF
    } >"$DIR/config.toml.new"
fi

ctrd_up() { "$CTR" --address "$SOCK" version >/dev/null 2>&1; }
restart=0
if ! cmp -s "$DIR/config.toml.new" "$DIR/config.toml"; then
    mv "$DIR/config.toml.new" "$DIR/config.toml"
    restart=1
else
    rm -f "$DIR/config.toml.new"
fi
if alive "$DIR/containerd.pid" && ((restart)); then
    log "config changed: restarting containerd"
    pid=$(cat "$DIR/containerd.pid")
    kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "containerd $pid did not stop"
fi
if ! alive "$DIR/containerd.pid" || ! ctrd_up; then
    alive "$DIR/containerd.pid" && die "containerd $(cat "$DIR/containerd.pid") runs but does not answer on $SOCK"
    ctrd_up && die "another containerd already answers on $SOCK"
    log "starting containerd ($SOCK, log $DIR/containerd.log)"
    rm -f "$SOCK" "$SOCK.ttrpc"
    # Shims inherit this environment: PATH finds containerd-shim-kata-cc-v2 in bin/ and
    # this containerd's own containerd-shim-runc-v2 before the machine's;
    # KATA_CC_CONFIG is the shim's fallback when a client passes no ConfigPath (ctr).
    env PATH="$DIR/bin:$CTRD_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        KATA_CC_CONFIG="$DIR/kata-cc/configuration.toml" \
        setsid "$CTRD_BIN/containerd" --config "$DIR/config.toml" >>"$DIR/containerd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$DIR/containerd.pid"
    wait_for containerd ctrd_up || die "containerd did not come up; see $DIR/containerd.log"
fi

# --- 10. The CRI plugin ready, and the pause and busybox images in k8s.io (so pod starts
# time the pod, not the pull).
cri_ready() {
    "$CTR" --address "$SOCK" plugins ls 2>/dev/null | awk '$2 == "cri" && $4 == "ok" {f=1} END {exit !f}'
}
wait_for cri cri_ready || die "the CRI plugin is not ok; see $DIR/containerd.log"
for img in "$PAUSE_IMAGE" "$BUSYBOX_IMAGE"; do
    have=$("$CTR" --address "$SOCK" -n k8s.io images ls -q)
    if ! grep -qxF "$img" <<<"$have"; then
        log "pulling $img into k8s.io"
        if [[ $PROFILE == cc ]]; then
            # Through the kata-cc snapshotter: manifest and config only, as CRI pulls there.
            "$DIR/bin/kata-cc-snapshotter" pull --containerd "$SOCK" -n k8s.io --snapshotter kata-cc \
                --hosts-dir "$DIR/certs.d" "$img" >/dev/null
        else
            "$CTR" --address "$SOCK" -n k8s.io images pull --hosts-dir "$DIR/certs.d" "$img" >/dev/null
        fi
    fi
done

cat <<EOF
KATA_CC_CTRD_SOCK=$SOCK
KATA_CC_CTRD_LOG=$DIR/containerd.log
KATA_CC_CTRD_DIR=$DIR
KATA_CC_CTRD_PROFILE=$PROFILE
KATA_CC_REGISTRY=$REG
KATA_CC_PAUSE_IMAGE=$PAUSE_IMAGE
KATA_CC_BUSYBOX_IMAGE=$BUSYBOX_IMAGE
KATA_CC_POD_LOG_DIR=$DIR/pods
KATA_CC_SHIM_CONFIG=$DIR/kata-cc/configuration.toml
KATA_CC_SHIM_STATE_DIR=$SHIM_STATE
KATA_CC_SNAPSHOTTER_NAME=$snap_name
EOF
