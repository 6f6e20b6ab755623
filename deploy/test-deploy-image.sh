#!/usr/bin/env bash
# The kata-cc-deploy image, run the way the DaemonSet runs it, against fake node roots:
# deploy/build-deploy-image.sh's OCI layout is unpacked (umoci) and its entrypoint runs
# under runc, privileged, with a temporary "node" directory's opt/kata-cc, etc/kata-cc,
# etc/containerd and usr/local/bin bind-mounted at the paths deploy/k8s/kata-cc-deploy.yaml
# mounts the node's. Per case (a containerd config.toml of each form: 1.6 and 1.7 with
# version 2 and CRI tables, 2.1 with version 3, and no config at all):
#   install   -> exit 0; the node has the image's binaries, guest image and configuration
#                byte for byte, the shim link, and a config.toml that the real containerd of
#                that version (deploy/containerd/fetch.sh) reads with a kata-cc runtime;
#                containerd's restart command ran through nsenter
#   uninstall -> (the preStop) the node directory is byte for byte as when the pod started
#                (listing with types, modes, owners, link targets and SHA-256 of every file)
#
#   deploy/test-deploy-image.sh [--image DIR[:TAG]] [VERSION...]
#       --image  default $CARGO_TARGET_DIR/deploy-image/oci:latest (deploy/build-deploy-image.sh)
#       VERSION  1.6, 1.7, 2.1 (default: all)
#
# Then the node label: install and uninstall against a stand-in API server (python3, TLS with
# its own CA, the service account token mounted where a pod has it) must send the merge
# patches that set and remove katacontainers.io/kata-cc-runtime on the node.
# Needs root, runc, umoci, jq, openssl, python3. Not tested here: restarting a real
# containerd (KATA_CC_DEPLOY_RESTART is an echo, run through nsenter).
# Prints one line per case and "N passed, N failed"; exits nonzero on any failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
image=${CARGO_TARGET_DIR:-$repo/target}/deploy-image/oci:latest
versions=()
while (($#)); do
    case $1 in
        --image) image=${2:?--image needs a value}; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) versions+=("$1"); shift ;;
    esac
done
((${#versions[@]})) || versions=(1.6 1.7 2.1)
[[ $image == *:* ]] || image=$image:latest
for t in runc umoci jq unshare; do command -v "$t" >/dev/null || { echo "FAIL setup: $t not found"; echo "0 passed, 1 failed"; exit 1; }; done
[[ $(id -u) == 0 ]] || { echo "FAIL setup: needs root (runc, bind mounts)"; echo "0 passed, 1 failed"; exit 1; }

work=$(mktemp -d /tmp/kata-cc-test-deploy-image.XXXXXX)
cleanup() {
    local id
    for id in $(runc --root "$work/runc" list -q 2>/dev/null); do runc --root "$work/runc" delete -f "$id" >/dev/null 2>&1; done
    rm -rf "$work"
}
trap cleanup EXIT
passed=0
failed=0
case=setup
fail() { echo "FAIL $case: $*"; failed=$((failed + 1)); }
done_fail() { echo "$passed passed, $failed failed"; exit 1; }

if ! umoci unpack --image "$image" "$work/bundle" >"$work/unpack.log" 2>&1; then
    fail "umoci unpack $image: $(tail -n 2 "$work/unpack.log") (build it: deploy/build-deploy-image.sh)"
    done_fail
fi
rootfs=$work/bundle/rootfs
A=$rootfs/opt/kata-cc-artifacts
# The image's own checksums of its artifacts: the unpacked layer is what was built.
if ! (cd "$A" && sha256sum --quiet -c SHA256SUMS) >"$work/sums.log" 2>&1; then
    fail "the unpacked image's artifacts do not match its SHA256SUMS: $(head -n 3 "$work/sums.log")"
    done_fail
fi
entry=$(jq -c '.process.args' "$work/bundle/config.json")
[[ $entry == '["/opt/kata-cc-artifacts/kata-cc-deploy.sh","install"]' ]] ||
    { fail "the image's entrypoint+cmd is $entry, not the DaemonSet's kata-cc-deploy.sh install"; done_fail; }
cp "$work/bundle/config.json" "$work/config.base.json"

# snapshot DIR: every entry with type, mode, owner, link target, and content hash.
snapshot() {
    (cd "$1" && find . -printf '%y %m %U:%G %P -> %l\n' | LC_ALL=C sort &&
        find . -type f -printf '%P\n' | LC_ALL=C sort | while read -r f; do echo "sha256 $(sha256sum <"$f" | cut -d' ' -f1) $f"; done)
}

# run NODE ENV-MAJOR ARG: the image's entrypoint with ARG under runc, the node's hostPath
# directories bind-mounted as the DaemonSet mounts them. Output in $node.ARG.log.
run() {
    local node=$1 major=$2 arg=$3 id
    id=kcc-deploy-test-$$-$arg
    jq --arg node "$node" --arg major "$major" --arg arg "$arg" --argjson xenv "${run_env:-[\"KATA_CC_DEPLOY_LABEL=0\"]}" \
        --argjson xmounts "${run_mounts:-[]}" '
        .process.args = ["/opt/kata-cc-artifacts/kata-cc-deploy.sh", $arg]
        | .process.terminal = false
        | .process.env += ["NODE_NAME=test-node", "KATA_CC_CONTAINERD_MAJOR=" + $major,
                           "KATA_CC_DEPLOY_RESTART=echo restart-containerd-requested",
                           "KATA_CC_DEPLOY_WAIT=0"] + $xenv
        | .mounts += $xmounts
        | if $xmounts != [] then .linux.namespaces |= map(select(.type != "network")) else . end
        | .root.readonly = false
        | (["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FOWNER","CAP_FSETID","CAP_KILL","CAP_SETGID",
            "CAP_SETUID","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_MKNOD",
            "CAP_AUDIT_WRITE","CAP_SETFCAP","CAP_SYS_ADMIN","CAP_SYS_PTRACE"]) as $caps
        | .process.capabilities = {bounding: $caps, effective: $caps, permitted: $caps}
        | .mounts += [["opt/kata-cc", "etc/kata-cc", "etc/containerd", "usr/local/bin"][]
            | {destination: ("/" + .), type: "bind", source: ($node + "/" + .), options: ["rbind", "rw"]}]
        ' "$work/config.base.json" >"$work/bundle/config.json" || return 1
    runc --root "$work/runc" run --bundle "$work/bundle" "$id" </dev/null >"$node.$arg.log" 2>&1
}

# check VERSION NAME CONFIG-TEXT|-
check() {
    local ver=$1 name=$2 text=$3 node bin major before pristine after f dump
    case="$ver/$name"
    node=$work/node-$ver-$name
    mkdir -p "$node/etc/containerd" "$node/usr/local/bin" "$node/var/lib"
    # Something of the node's own beside the paths the installer writes.
    printf '#!/bin/sh\necho a tool of the node\n' >"$node/usr/local/bin/node-tool"
    chmod 755 "$node/usr/local/bin/node-tool"
    [[ $text == - ]] || printf '%s\n' "$text" >"$node/etc/containerd/config.toml"
    pristine=$(snapshot "$node")
    # What the kubelet does for the hostPath volumes (type DirectoryOrCreate): the state of
    # the node when the pod starts, which uninstall must restore.
    mkdir -p "$node/opt/kata-cc" "$node/etc/kata-cc"
    before=$(snapshot "$node")
    bin=$(bash "$here/containerd/fetch.sh" "$ver" 2>"$work/fetch.err") || { fail "fetch containerd $ver: $(tail -n 2 "$work/fetch.err")"; return; }
    major=$("$bin/containerd" --version | awk '{print $3}' | sed -E 's/^v//; s/\..*//')

    run "$node" "$major" install || { fail "install (the entrypoint) failed: $(tail -n 4 "$node.install.log")"; return; }
    grep -q 'restart-containerd-requested' "$node.install.log" ||
        { fail "the entrypoint did not run the restart command through nsenter: $(tail -n 3 "$node.install.log")"; return; }
    for f in bin/containerd-shim-kata-cc-v2 bin/kata-cc-snapshotter bin/kata-cc bin/kata-cc-policy bin/kata-cc-kbs; do
        cmp -s "$A/$f" "$node/opt/kata-cc/$f" || { fail "/opt/kata-cc/$f on the node is not the image's"; return; }
        [[ -x $node/opt/kata-cc/$f ]] || { fail "/opt/kata-cc/$f is not executable"; return; }
    done
    for f in vmlinuz initramfs.cpio.gz manifest.txt; do
        cmp -s "$A/guest/$f" "$node/opt/kata-cc/share/guest/$f" || { fail "/opt/kata-cc/share/guest/$f is not the image's"; return; }
    done
    cmp -s "$A/configuration.toml" "$node/etc/kata-cc/configuration.toml" ||
        { fail "/etc/kata-cc/configuration.toml is not the image's configuration.toml"; return; }
    [[ $(readlink "$node/usr/local/bin/containerd-shim-kata-cc-v2") == /opt/kata-cc/bin/containerd-shim-kata-cc-v2 ]] ||
        { fail "no /usr/local/bin/containerd-shim-kata-cc-v2 link to /opt/kata-cc/bin"; return; }
    cmp -s "$node/usr/local/bin/node-tool" <(printf '#!/bin/sh\necho a tool of the node\n') ||
        { fail "the node's own /usr/local/bin/node-tool changed"; return; }
    # The real containerd of this version reads the installed config (its imports name
    # /etc/containerd/conf.d/kata-cc.toml: the node's /etc/containerd, mounted there in a
    # private mount namespace).
    dump=$(unshare --mount --propagation private sh -c \
        'mount --bind "$1/etc/containerd" /etc/containerd && exec "$2/containerd" --config /etc/containerd/config.toml config dump' \
        sh "$node" "$bin" 2>"$work/dump.err") || { fail "containerd $ver cannot read the installed config: $(tail -n 2 "$work/dump.err")"; return; }
    grep -q 'runtime_type = .io\.containerd\.kata-cc\.v2.' <<<"$dump" ||
        { fail "containerd $ver does not see the kata-cc runtime in the installed config"; return; }
    grep -q 'ConfigPath = ./etc/kata-cc/configuration\.toml.' <<<"$dump" ||
        { fail "containerd $ver: the kata-cc runtime's ConfigPath is not /etc/kata-cc/configuration.toml"; return; }

    run "$node" "$major" uninstall || { fail "uninstall (the preStop) failed: $(tail -n 4 "$node.uninstall.log")"; return; }
    after=$(snapshot "$node")
    if [[ $after != "$before" ]]; then
        fail "the node differs after uninstall: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | head -n 6 | tr '\n' ' ')"
        return
    fi
    # Against the node before the pod: only the kubelet's hostPath directories are new.
    local extra
    extra=$(diff <(echo "$pristine") <(echo "$after") | grep '^[<>]' | grep -v '^> d 755 0:0 \(opt\|opt/kata-cc\|etc/kata-cc\) -> $' || true)
    [[ -z $extra ]] || { fail "beyond the kubelet's hostPath directories, the node changed: $(head -n 4 <<<"$extra" | tr '\n' ' ')"; return; }
    echo "ok   $case (install $(grep -o 'imports [^ ]*\|inline, not imports' "$node.install.log" 2>/dev/null | head -n1 | sed 's/imports .*/import/; s/inline.*/inline/'), uninstall: node byte for byte as before)"
    passed=$((passed + 1))
}

# The node label, through a stand-in API server (TLS with its own CA, like the cluster's):
# install sets katacontainers.io/kata-cc-runtime=true on the node with the service
# account's token, uninstall removes it. The container shares this host's network here.
check_label() {
    case="label"
    local d=$work/api node=$work/node-label log
    mkdir -p "$d/sa" "$node/etc/containerd" "$node/usr/local/bin" "$node/opt/kata-cc" "$node/etc/kata-cc"
    printf 'version = 3\n' >"$node/etc/containerd/config.toml"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kubernetes -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$d/key.pem" -out "$d/sa/ca.crt" >/dev/null 2>&1 || { fail "openssl: cannot make a certificate"; return; }
    printf 'test-token-%s' "$$" >"$d/sa/token"
    log=$d/requests.log
    python3 - "$d/sa/ca.crt" "$d/key.pem" "$log" "$d/port" <<'PY' &
import http.server, ssl, sys
cert, key, log, portfile = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def do_PATCH(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(log, "a") as f:
            f.write("%s %s %s %s %s\n" % (self.command, self.path, self.headers.get("Authorization"),
                                         self.headers.get("Content-Type"), body.decode()))
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
open(portfile, "w").write(str(s.server_address[1]))
s.serve_forever()
PY
    local pid=$! i
    for i in $(seq 50); do [[ -s $d/port ]] && break; sleep 0.1; done
    [[ -s $d/port ]] || { kill "$pid"; fail "the stand-in API server did not start"; return; }
    local run_env run_mounts
    run_env=$(jq -nc --arg port "$(cat "$d/port")" '["KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=" + $port]')
    run_mounts=$(jq -nc --arg sa "$d/sa" '[{destination: "/var/run/secrets/kubernetes.io/serviceaccount", type: "bind", source: $sa, options: ["rbind", "ro"]}]')
    run "$node" 2 install; local rc1=$?
    run "$node" 2 uninstall; local rc2=$?
    kill "$pid"; wait "$pid" 2>/dev/null
    ((rc1 == 0)) || { fail "install with the label failed: $(tail -n 3 "$node.install.log")"; return; }
    ((rc2 == 0)) || { fail "uninstall with the label failed: $(tail -n 3 "$node.uninstall.log")"; return; }
    local want="PATCH /api/v1/nodes/test-node Bearer test-token-$$ application/merge-patch+json"
    [[ $(sed -n 1p "$log") == "$want "'{"metadata":{"labels":{"katacontainers.io/kata-cc-runtime":"true"}}}' ]] ||
        { fail "install's request to the API server: $(sed -n 1p "$log")"; return; }
    [[ $(sed -n 2p "$log") == "$want "'{"metadata":{"labels":{"katacontainers.io/kata-cc-runtime":null}}}' ]] ||
        { fail "uninstall's request to the API server: $(sed -n 2p "$log")"; return; }
    [[ $(wc -l <"$log") == 2 ]] || { fail "$(wc -l <"$log") requests to the API server, not 2"; return; }
    echo "ok   label (set on install, removed on uninstall: merge patches with the service account token over TLS)"
    passed=$((passed + 1))
}

for v in "${versions[@]}"; do
    case $v in
        1.6|1.7)
            check "$v" cri-tables "$(cat "$repo/deploy/containerd/testdata/cri-tables-v2.toml")"
            ;;
        2.1)
            check "$v" cri-tables "$(cat "$repo/deploy/containerd/testdata/cri-tables-v3.toml")"
            ;;
        *) case=$v; fail "unknown version (1.6, 1.7, 2.1)"; continue ;;
    esac
    check "$v" none -
done
check_label
echo "$passed passed, $failed failed"
((failed == 0))
