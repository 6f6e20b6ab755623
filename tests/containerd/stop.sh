#!/usr/bin/env bash
# Stops one instance that tests/containerd/start.sh started and cleans up after its pods:
# containers and tasks (every namespace), their shims, kata-cc VMs (QEMU,
# vhost-device-vsock under the shim's state dir), pod network namespaces, the CNI
# addresses and masquerade rules of its pods, mounts, containerd itself and the
# snapshotter it started. The last instance to stop also removes the shared pieces: the
# pod-side registry, the bridge, and whatever the CNI network still holds.
#
#   tests/containerd/stop.sh            # keeps $KATA_CC_CTRD_DIR (images, config) for a quick restart
#   tests/containerd/stop.sh --purge    # also removes $KATA_CC_CTRD_DIR
#   KATA_CC_CTRD_PROFILE=cc tests/containerd/stop.sh   # the cc profile's instance
#   KATA_CC_CONTAINERD_BIN=/opt/kata-cc/containerd-2.1/usr/bin tests/containerd/stop.sh
#                                       # the instance of that containerd (same env as start.sh)
#
# Leaves alone: the fixture registry on 127.0.0.1:5000 (tests/registry/start.sh; other
# suites use it) and the host's /etc/cni/net.d mount point.
set -euo pipefail

# shellcheck source=tests/containerd/instance.sh
source "$(dirname "$0")/instance.sh"
purge=0
case "${1:-}" in
    --purge) purge=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

[[ -d $DIR ]] || { log "nothing to stop ($DIR does not exist)"; exit 0; }
exec 9>"$DIR/lock"
flock 9

ctrd_up() { "$CTR" --address "$SOCK" version >/dev/null 2>&1; }
c() { "$CTR" --address "$SOCK" "$@"; }
# pids_with ARG...: pids (not ours) whose argv contains every ARG as a substring.
pids_with() {
    local pid argv a ok
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        argv=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
        [[ -n $argv ]] || continue
        ok=1
        for a in "$@"; do [[ $argv == *"$a"* ]] || { ok=0; break; }; done
        ((ok)) && echo "$pid"
    done
}
stop_pidfile() { # FILE WHAT: SIGTERM the pid in FILE, SIGKILL after 10 s; remove FILE
    local pid
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $2 ($pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill_wait "$pid"
    fi
    rm -f "$1"
}
kill_wait() { # PID...: SIGKILL and wait until gone (max 10 s)
    local p
    for p in "$@"; do kill -9 "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local any=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && any=1; done
        ((any)) || return 0
        sleep 0.1
    done
    log "warning: still alive: $*"
}
# cni_del ID: CNI DEL without a netns for the test network (releases the IP) and the
# masquerade rules of ID.
conf=$DIR/cni/net.d/10-$CNI_NAME.conflist
cni_del() {
    if [[ -f $conf ]]; then
        jq -c '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$conf" |
            CNI_COMMAND=DEL CNI_CONTAINERID="$1" CNI_NETNS='' CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
                /usr/lib/cni/bridge >/dev/null 2>&1 || log "warning: CNI DEL $1 failed"
    fi
    masq_del "id: \\\"$1\\\""
}
# masq_del PATTERN: deletes the test network's POSTROUTING rules containing PATTERN, and
# their chains.
masq_del() {
    local rule chain
    { iptables -t nat -S POSTROUTING 2>/dev/null || true; } |
        { grep -F "name: \\\"$CNI_NAME\\\"" || true; } | { grep -F "$1" || true; } |
        while read -r rule; do
            chain=${rule##* }
            eval "iptables -t nat -D ${rule#-A }" || true
            if [[ $chain == CNI-* ]]; then
                iptables -t nat -F "$chain" 2>/dev/null || true
                iptables -t nat -X "$chain" 2>/dev/null || true
            fi
        done
}

# 1. Pods and containers, while containerd still answers: remember their netns and CNI ids
# (CRI: the sandbox id; ctr run --cni: <namespace>-<id>), then kill and delete everything
# in every namespace.
netns=()
ids=()
if ctrd_up; then
    for ns in $(c namespaces ls -q); do
        for id in $(c -n "$ns" containers ls -q); do
            ids+=("$id" "$ns-$id")
            path=$(c -n "$ns" containers info "$id" 2>/dev/null |
                jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty' 2>/dev/null || true)
            [[ $path == /var/run/netns/* || $path == /run/netns/* ]] && netns+=("$(basename "$path")")
            c -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        for id in $(c -n "$ns" containers ls -q); do
            c -n "$ns" tasks delete --force "$id" >/dev/null 2>&1 || true
            c -n "$ns" containers delete "$id" >/dev/null 2>&1 || log "warning: could not delete container $ns/$id"
        done
    done
fi

# 2. Shims of this containerd, then VMs of its kata-cc runtime (its state dir is in their argv).
mapfile -t shims < <(pids_with containerd-shim "-address $SOCK")
((${#shims[@]})) && { log "killing shims: ${shims[*]}"; kill_wait "${shims[@]}"; }
mapfile -t vms < <(pids_with "$RUN/kata-cc/")
((${#vms[@]})) && { log "killing kata-cc VM processes: ${vms[*]}"; kill_wait "${vms[@]}"; }

# 3. containerd and the snapshotter this instance started.
for p in containerd snapshotter; do
    f=$DIR/$p.pid
    [[ -f $f ]] || continue
    stop_pidfile "$f" "$p"
done

# 4. CNI: this instance's pods' addresses (host-local file name = IP, first line = container
# id) and masquerade rules; their netns.
if [[ -d $IPAM ]]; then
    for f in "$IPAM"/*; do
        [[ $(basename "$f") =~ ^[0-9.]+$ ]] || continue
        cid=$(head -n1 "$f" | tr -d '\r') # host-local writes "id\r\nifname"
        for id in "${ids[@]}"; do
            [[ $cid == "$id" ]] && { cni_del "$cid"; rm -f "$f"; break; }
        done
    done
fi
for id in "${ids[@]}"; do masq_del "id: \\\"$id\\\""; done
for n in "${netns[@]}"; do
    ip netns del "$n" 2>/dev/null && log "removed netns $n"
done

# 5. Mounts below this instance's directories (deepest first), then its state.
for root in "$RUN" "$DIR/root"; do
    awk -v r="$root" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"; done
done
rm -rf "$RUN"
if ((purge)); then
    log "removing $DIR"
    rm -rf "$DIR"
fi

# 6. The shared pieces, if no other instance runs (a containerd whose config start.sh wrote).
others=()
for pid in $(pids_with containerd --config); do
    cfg=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n '/^--config$/{n;p;q}')
    [[ -f $cfg ]] && head -n1 "$cfg" | grep -q '^# Written by tests/containerd/start.sh' && others+=("$cfg")
done
if ((${#others[@]})); then
    log "other instances still run (${others[*]}): keeping the bridge and the pod-side registry"
else
    mkdir -p "$SHARED"
    exec 8>"$SHARED/lock"
    flock 8
    if [[ -f $SHARED/registry.pid ]]; then
        stop_pidfile "$SHARED/registry.pid" "the pod-side registry"
    fi
    # Leftovers of instances that went away without stop.sh.
    if [[ -d $IPAM ]]; then
        for f in "$IPAM"/*; do
            [[ $(basename "$f") =~ ^[0-9.]+$ ]] || continue
            cni_del "$(head -n1 "$f" | tr -d '\r')"
            rm -f "$f"
        done
    fi
    masq_del "name: \\\"$CNI_NAME\\\""
    # Netns still wired to the bridge (a sandbox whose container was already gone).
    for n in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        idx=$(ip -n "$n" -o link show eth0 2>/dev/null | sed -n 's/^[0-9]*: eth0@if\([0-9]*\):.*/\1/p')
        if [[ -n $idx ]] && ip -o link show master "$BRIDGE" 2>/dev/null | grep -q "^$idx:"; then
            ip netns del "$n" && log "removed netns $n (on $BRIDGE)"
        fi
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE" && log "removed bridge $BRIDGE"
    if ((purge)); then
        exec 8>&-
        rm -rf "$SHARED"
    fi
fi
log "stopped ($PROFILE)"
