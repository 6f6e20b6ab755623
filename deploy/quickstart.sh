#!/usr/bin/env bash
# kata-cc quickstart: installs what is needed, builds, starts the guest agent on a unix
# socket and runs containers through it with kata-cc-agent-ctl, saying what happens at
# each step. Run as root on Debian bookworm: `bash deploy/quickstart.sh`.
#
# Part 1 runs the guest agent as a plain process and containers through it. Part 2 boots
# the pod VM (QEMU; TCG on this machine) from the reproducible guest image with the agent
# as PID 1, and runs containers inside it over hybrid vsock. containerd (the shim) and
# attestation join as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing dependencies (busybox-static, runc, libseccomp-dev)"
bash deploy/install-deps.sh

say "building kata-cc-agent and kata-cc-agent-ctl (release)"
cargo build --release --locked -p guest-agent -p kata-cc-agent-ctl
bin=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d /tmp/kata-cc-quickstart.XXXXXX)
agent_pid=""
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

say "making a busybox rootfs in $work/shared/demo/rootfs"
rootfs=$work/shared/demo/rootfs
mkdir -p "$rootfs"/{bin,proc,dev,sys,tmp,etc}
cp /bin/busybox "$rootfs/bin/busybox"
for a in sh echo cat id uname hostname sleep ps ls true; do ln -s busybox "$rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$rootfs/etc/passwd"
echo "root:x:0:" > "$rootfs/etc/group"

say "starting the agent on unix://$work/agent.sock"
"$bin/kata-cc-agent" --listen "unix://$work/agent.sock" --shared-dir "$work/shared" \
    --state-dir "$work/state" --cgroup-parent /kata-cc-quickstart --log warn &
agent_pid=$!
export KATA_CC_AGENT_ADDR="unix://$work/agent.sock"
ctl() { echo "+ kata-cc-agent-ctl $*" >&2; "$bin/kata-cc-agent-ctl" "$@"; }

ctl check
ctl version
ctl create-sandbox --id demo-pod --hostname demo-pod

say "writing an OCI bundle (runc's default spec, our command)"
mkdir -p "$work/bundle"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
s = json.load(open(p))
s["process"]["terminal"] = False
s["process"]["args"] = ["sh", "-c", "echo hello from a kata-cc container; hostname; id; ps"]
s["root"] = {"path": "rootfs", "readonly": True}
s.pop("hostname", None)
json.dump(s, open(p, "w"), indent=2)
PY

say "run: create + start + relay output + wait + remove"
ctl run demo --bundle "$work/bundle"
echo "exit status: $?"

say "a long-running container, an exec into it, its stats, then removal"
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
s = json.load(open(p))
s["process"]["args"] = ["sleep", "3600"]
json.dump(s, open(p, "w"), indent=2)
PY
ctl create demo --bundle "$work/bundle"
ctl start demo
ctl exec demo e1 -- sh -c 'echo "exec sees pid 1 as: $(cat /proc/1/cmdline | tr "\0" " ")"; exit 4' || echo "exec exit status: $?"
ctl stats demo | grep -E "^  (memory_stats|pids_stats)|usage: |current: " | head -6
ctl remove demo
ctl destroy-sandbox

say "part 1 done: the agent served every step over ttrpc; nothing is left running"

say "part 2: QEMU 10, vhost-device-vsock and the guest kernel"
bash hypervisor/tests/setup-host.sh
say "part 2: building the guest image (static agent as PID 1, busybox test rootfs)"
bash deploy/guest/build-image.sh --variant test
say "part 2: booting the pod VM and running containers in it"
bash deploy/guest/boot-smoke.sh --image target/guest-image/test

say "part 3: a confidential pod with the simulated TEE: initdata bound to HOST_DATA, attestation to the KBS, an encrypted image pulled and decrypted in the guest with a key the KBS releases"
echo "(simulated TEE: SNP-format evidence signed by a test root, which this KBS trusts only because the demo configures it to)"
cargo test --locked -p kata-cc-tests --test pod_attest encrypted_image_is_pulled_in_the_guest_with_a_key_from_the_kbs -- --nocapture 2>&1 \
    | grep -E 'console: .*(TEE|initdata|attest|signature policy|pulled)|container output|FIGURE|refused|test result'
say "done"
