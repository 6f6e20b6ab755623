#!/usr/bin/env bash
# kata-cc quickstart: sets up containerd, a local registry, the guest image and our
# binaries on this machine, then runs pods through containerd with the kata-cc shim,
# saying what happens at each step. Run as root on Debian bookworm:
#
#   bash deploy/quickstart.sh
#
# 1. dependencies (apt, QEMU 10 from backports, vhost-device-vsock, the guest kernel)
# 2. the guest image (test variant: its agent can use the simulated TEE)
# 3. the shim, the snapshotter and the tools, installed with deploy/install.sh
# 4. a private containerd (tests/containerd/start.sh: CRI, CNI bridge, registry with
#    test images, runtime handlers runc and kata-cc)
# 5. `ctr run` in a pod VM: the container sees the guest kernel, not the host's
# 6. the main job: a confidential pod through the CRI with the SIMULATED TEE (this machine
#    has no SEV-SNP or TDX): initdata bound to HOST_DATA, attestation to the KBS, an
#    encrypted image pulled and decrypted in the guest with the key the KBS releases,
#    nothing of the image downloaded by the host, exec refused by the pod's policy.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
export CARGO_TERM_QUIET=true

say "1/6 dependencies: apt packages (containerd, CNI plugins, registry, skopeo, umoci, protoc, ...), QEMU 10, vhost-device-vsock, guest kernel"
bash deploy/install-deps.sh
bash hypervisor/tests/setup-host.sh

say "2/6 the guest image (kernel + initramfs with the agent as PID 1; test variant, which can run the simulated TEE)"
bash deploy/guest/build-image.sh --variant test

say "3/6 building the shim, the snapshotter and the tools (release), installing them in /opt/kata-cc"
cargo build --release --locked -p kata-cc-shim -p kata-cc-snapshotter -p kata-cc -p policy --features policy/cli
bash deploy/install.sh --prefix /opt/kata-cc --from "${CARGO_TARGET_DIR:-target}/release" \
    --guest target/guest-image/test --bin-link-dir ""
export KATA_CC_SHIM=/opt/kata-cc/bin/containerd-shim-kata-cc-v2
export KATA_CC_SNAPSHOTTER=/opt/kata-cc/bin/kata-cc-snapshotter

say "4/6 a private containerd with the kata-cc runtime and snapshotter, the CNI bridge and the local registry"
# Shell variables, not exported: the confidential pod (part 6) starts the harness's other
# profile, which must not inherit this instance's directories.
eval "$(KATA_CC_BIN_DIR=/opt/kata-cc/bin bash tests/containerd/start.sh | grep -E '^KATA_CC_[A-Z_]+=')"
echo "containerd: $KATA_CC_CTRD_SOCK   log: $KATA_CC_CTRD_LOG   registry: $KATA_CC_REGISTRY"

say "5/6 ctr run in a pod VM (snapshotter kata-cc: containerd downloads no layer; the guest pulls the image)"
ctr() { command ctr --address "$KATA_CC_CTRD_SOCK" -n quickstart "$@"; }
image=$KATA_CC_BUSYBOX_IMAGE
"$KATA_CC_SNAPSHOTTER" pull --containerd "$KATA_CC_CTRD_SOCK" --namespace quickstart --plain-http "$image" >/dev/null
echo "host kernel:  $(uname -r)"
start=$(date +%s%N)
guest=$(ctr run --rm --runtime io.containerd.kata-cc.v2 --runtime-config-path "$KATA_CC_SHIM_CONFIG" \
    --snapshotter kata-cc "$image" "quickstart-$$" /bin/busybox uname -r)
echo "guest kernel: $guest   (ctr run to exit, VM boot included: $(( ($(date +%s%N) - start) / 1000000 )) ms)"

say "6/6 a confidential pod through the CRI (simulated TEE), step by step"
log=$(mktemp /tmp/kata-cc-quickstart.XXXXXX)
if ! cargo test --locked -p kata-cc-tests --test cri_confidential -- --nocapture >"$log" 2>&1; then
    grep -v '^ *at ' "$log" | tail -40
    echo "the confidential pod failed; whole output in $log, containerd's log in /var/tmp/kata-cc-ctrd-cc/containerd.log"
    exit 1
fi
grep -E '^(==>|    )|test result' "$log"
rm -f "$log"
say "done: every pod, VM and network namespace this run created is gone (tests/containerd/stop.sh stops containerd)"
