#!/usr/bin/env bash
# Boots the test guest image under QEMU (TCG) with a hybrid-vsock channel and drives the
# agent with kata-cc-agent-ctl: Health.Check, Version, a `uname -r` container from the
# baked busybox rootfs, and an exec into a running `sleep` container.
#
#   deploy/guest/boot-smoke.sh [--image DIR] [--keep]
#
# --image DIR  a test-variant image (vmlinuz, initramfs.cpio.gz); default: build one
#              with build-image.sh --variant test.
# --keep       keep the work dir (console log) after the run.
# Installs qemu-system-x86 (bookworm-backports) and vhost-device-vsock if missing.
# KATA_CC_SMOKE_APPEND adds kernel parameters (e.g. "loglevel=7" to see kernel messages
# despite quiet). A watchdog kills QEMU after ${KATA_CC_SMOKE_TIMEOUT:-60} s; QEMU and the vsock daemon
# are stopped on exit. Needs root.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "$0")/../.." && pwd)
image=
keep=0
while (($#)); do
    case "$1" in
        --image) image=${2:?--image needs a directory}; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
timeout_s=${KATA_CC_SMOKE_TIMEOUT:-60}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

log() { echo "==> [$(date +%T.%3N)] $*" >&2; }
fail() { echo "boot-smoke: FAIL: $*" >&2; exit 1; }

# --- host tools ---------------------------------------------------------------------
qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null &&
        qemu-system-x86_64 --version | head -n1 | grep -Eq 'version (9|[1-9][0-9])\.'
}
if ! qemu_ok; then
    log "installing qemu-system-x86 from bookworm-backports"
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/bookworm-backports.list
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
    qemu_ok || fail "qemu-system-x86_64 >= 9 not available"
fi
if ! command -v vhost-device-vsock >/dev/null; then
    if [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-vsock ]]; then
        PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    else
        log "cargo install vhost-device-vsock"
        cargo install --locked vhost-device-vsock
        PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    fi
fi

if [[ -z $image ]]; then
    image=$CARGO_TARGET_DIR/guest-image/test
    "$repo/deploy/guest/build-image.sh" --variant test --out "$image"
fi
[[ -f $image/vmlinuz && -f $image/initramfs.cpio.gz ]] || fail "no image in $image"

log "building kata-cc-agent-ctl"
(cd "$repo" && cargo build --locked -q -p kata-cc-agent-ctl)
ctl=$CARGO_TARGET_DIR/debug/kata-cc-agent-ctl

# --- boot ---------------------------------------------------------------------------
dir=$(mktemp -d /tmp/kata-cc-smoke.XXXXXX)
console=$dir/console.log
pids=()
cleanup() {
    local rc=$?
    # Newest first: QEMU before the vsock daemon it is connected to.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if ((rc != 0)) && [[ -f $console ]]; then
        echo "---- guest console ($console) ----" >&2
        tail -n 60 "$console" >&2 || true
    fi
    if ((keep)); then echo "work dir kept: $dir" >&2; else rm -rf "$dir"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

vhost-device-vsock --guest-cid 3 --socket "$dir/vhost.sock" --uds-path "$dir/vm.vsock" >"$dir/vhost.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $dir/vhost.sock ]] && break; sleep 0.1; done
[[ -S $dir/vhost.sock ]] || fail "vhost-device-vsock did not create its socket: $(cat "$dir/vhost.log")"

log "booting $image under TCG (watchdog ${timeout_s}s)"
boot_start=$(date +%s%N)
timeout -s KILL "$timeout_s" qemu-system-x86_64 \
    -accel tcg -machine q35,memory-backend=mem0 -m 512 -smp 2 \
    -object memory-backend-memfd,id=mem0,size=512M,share=on \
    -nodefaults -no-user-config -nographic -no-reboot \
    -serial "file:$console" \
    -chardev socket,id=vc0,path="$dir/vhost.sock" -device vhost-user-vsock-pci,chardev=vc0 \
    -kernel "$image/vmlinuz" -initrd "$image/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet reboot=t panic=-1${KATA_CC_SMOKE_APPEND:+ $KATA_CC_SMOKE_APPEND}" >"$dir/qemu.log" 2>&1 &
qemu=$!
pids+=("$qemu")

addr=hvsock://$dir/vm.vsock:1024
ctl() { "$ctl" --addr "$addr" "$@"; }

# Health.Check, retried until the agent answers (the ctl retries connecting itself).
ready=
for _ in $(seq $((timeout_s * 2))); do
    kill -0 "$qemu" 2>/dev/null || fail "QEMU exited before the agent answered"
    if out=$(ctl --connect-timeout 1 check 2>&1); then ready=$(date +%s%N); break; fi
    sleep 0.2
done
[[ -n $ready ]] || fail "the agent did not answer Health.Check"
ms() { local d=$(( ($1 - $2) / 1000000 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }
boot_s=$(ms "$ready" "$boot_start")
log "Health.Check answered ${boot_s}s after QEMU start: $out"
ctl version

bundle=$dir/bundle
mkdir -p "$bundle"
spec() { # spec ARGS_JSON: an OCI config.json on the baked busybox rootfs
    cat <<EOF
{
  "ociVersion": "1.1.0",
  "process": {
    "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
    "args": $1,
    "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    "noNewPrivileges": true
  },
  "root": {"path": "/run/kata-containers/shared/containers/busybox/rootfs", "readonly": true},
  "hostname": "smoke",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}},
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
}

log "run c1: uname -r"
spec '["uname", "-r"]' >"$bundle/config.json"
t0=$(date +%s%N)
kver=$(ctl run c1 --bundle "$bundle") || fail "run c1 failed"
log "c1 printed '$kver' ($(ms "$(date +%s%N)" "$t0")s)"
[[ $kver == 6.12.*-cloud-amd64 ]] || fail "expected the guest kernel release, got '$kver'"

log "create+start c2: sleep 600; exec into it"
spec '["sleep", "600"]' >"$bundle/config.json"
ctl create c2 --bundle "$bundle"
ctl start c2
ps_out=$(ctl exec c2 e1 -- ps -o pid,comm) || fail "exec into c2 failed"
echo "$ps_out"
grep -q 'sleep' <<<"$ps_out" || fail "exec did not see the container's sleep"
ctl exec c2 e2 -- sh -c 'echo hostname=$(hostname) cgroup=$(cat /proc/self/cgroup)'
ctl exec c2 e3 -- grep -E '^(MemTotal|MemAvailable|Shmem):' /proc/meminfo
ctl stats c2 >/dev/null || fail "stats c2 failed"
ctl kill c2 --signal 9
status=$(ctl wait c2)
[[ $status == 137 ]] || fail "c2 ended with status $status, expected 137 (SIGKILL)"
ctl remove c2

log "PASS (boot to Health.Check ${boot_s}s)"
echo "---- guest console ----"
cat "$console"
