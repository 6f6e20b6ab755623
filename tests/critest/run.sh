#!/usr/bin/env bash
# critest (the CRI validation suite, cri-tools v1.32) against kata-cc and runc on a private
# test containerd, same specs, same run; prints both pass counts, the specs that pass with
# runc and fail with kata-cc (with the reason when the spec is on the VM-only list in
# docs/critest.md, else UNEXPECTED) and the time of each run.
#
#   tests/critest/run.sh [--focus REGEX] [--skip REGEX] [--procs N] [--handlers "runc kata-cc"]
#                        [--out DIR] [--keep]
#
#   --focus REGEX   only the specs whose full text matches (ginkgo.focus), e.g. '\[Conformance\]'
#   --skip REGEX    leave out the specs that match (ginkgo.skip)
#   --procs N       N critest processes per handler at once, each on 1/N of the selected
#                   specs (critest's own -parallel needs the ginkgo CLI, which is not here);
#                   the handlers still run one after the other
#   --handlers L    the CRI handlers to run (default "runc kata-cc"); the comparison needs both
#   --out DIR       reports (default /var/tmp/kata-cc-critest): DIR/<handler>/<shard>/junit*.xml,
#                   DIR/<handler>/<shard>.log, DIR/summary.txt
#   --keep          leave the test containerd running (default: stopped at the end)
#   --compare-only  run nothing: compare the reports already in the out dir
#
# Exit status: 0 when kata-cc fails nothing that runc passes beyond the VM-only list (and
# skips nothing beyond the features-skip list, containerd < 2.4); 1 on
# an UNEXPECTED difference; 2 on a setup error.
#
#   KATA_CC_CRITEST_BUSYBOX  the static busybox the test image is made of (default /bin/busybox)
# Environment: the test containerd's (tests/containerd/start.sh): KATA_CC_CTRD_DIR,
# KATA_CC_CTRD_RUN, KATA_CC_GUEST_DIR, KATA_CC_CONTAINERD_BIN (the containerd binary to run;
# passed through), ... ; and
#   KATA_CC_BIN_DIR     directory with containerd-shim-kata-cc-v2 (default: built with cargo
#                       into $CARGO_TARGET_DIR/debug)
#   KATA_CC_CRITEST     the critest binary (default: unpacked from
#                       ../shared/tools/critest/critest-v1.32.0.xz into the out dir)
#   KATA_CC_CRITEST_XZ  the .xz to unpack (default: that file)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
focus=
skip=
procs=1
handlers="runc kata-cc"
out=/var/tmp/kata-cc-critest
keep=0
compare_only=0
critest_sha=c26e049d791a4d90ac874432b7a9a82608ac99fcaacb0bfdc237572aaf0779da

log() { echo "critest: $*" >&2; }
die() { log "$*"; exit 2; }
usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
    case $1 in
        --focus) focus=${2:?}; shift 2 ;;
        --skip) skip=${2:?}; shift 2 ;;
        --procs) procs=${2:?}; shift 2 ;;
        --handlers) handlers=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        --compare-only) compare_only=1; shift ;;
        -h | --help) usage ;;
        *) log "unknown argument $1"; usage ;;
    esac
done
[[ $procs =~ ^[1-9][0-9]?$ ]] || die "--procs must be 1..99, not $procs"
declare -A secs
if ((compare_only)); then
    for h in $handlers; do secs[$h]=$(cat "$out/$h/seconds" 2>/dev/null || echo "?"); done
else
[[ $(id -u) == 0 ]] || die "must run as root"
for t in xz skopeo umoci python3 tar sha256sum; do
    command -v "$t" >/dev/null || die "missing $t"
done
mkdir -p "$out"

# --- The critest binary.
critest=${KATA_CC_CRITEST:-}
if [[ -z $critest ]]; then
    xzfile=${KATA_CC_CRITEST_XZ:-$repo/../shared/tools/critest/critest-v1.32.0.xz}
    [[ -f $xzfile ]] || xzfile=/work/shared/tools/critest/critest-v1.32.0.xz
    [[ -f $xzfile ]] || die "no critest .xz (KATA_CC_CRITEST_XZ or KATA_CC_CRITEST)"
    critest=$out/critest
    if ! [[ -x $critest ]] || [[ $(sha256sum <"$critest" | cut -d' ' -f1) != "$critest_sha" ]]; then
        log "unpacking $xzfile"
        xz -dc "$xzfile" >"$critest.new"
        [[ $(sha256sum <"$critest.new" | cut -d' ' -f1) == "$critest_sha" ]] ||
            die "$xzfile does not unpack to the critest v1.32.0 binary (sha256 $critest_sha)"
        chmod +x "$critest.new"
        mv "$critest.new" "$critest"
    fi
fi

# --- The shim.
if [[ -z ${KATA_CC_BIN_DIR:-} ]]; then
    log "building the shim (cargo build -p kata-cc-shim)"
    (cd "$repo" && cargo build -q -p kata-cc-shim) >&2 || die "shim build failed"
    export KATA_CC_BIN_DIR=${CARGO_TARGET_DIR:-$repo/target}/debug
fi

# --- The test containerd (passes KATA_CC_CONTAINERD_BIN and the rest of the env through).
if ((!keep)); then
    trap 'bash "$repo/tests/containerd/stop.sh" >&2 || true' EXIT
fi
env_out=$(bash "$repo/tests/containerd/start.sh") || die "tests/containerd/start.sh failed"
eval "$(grep -E '^KATA_CC_[A-Z_]+=' <<<"$env_out" | sed 's/^/export /')"
sock=$KATA_CC_CTRD_SOCK
reg=$KATA_CC_REGISTRY

# --- The two configurable images, in the pod-reachable registry.
busybox_bin=${KATA_CC_CRITEST_BUSYBOX:-/bin/busybox}
[[ -x $busybox_bin ]] || die "no static busybox at $busybox_bin (apt-get install busybox-static)"
# The tag follows the busybox binary: a different one gives a different image.
bb_tag=$(sha256sum <"$busybox_bin" | cut -c1-12)
busybox_img=$reg/critest/busybox-with-all-applets:$bb_tag
web_img=$reg/critest/web:$bb_tag
have_image() {
    local r=${1#*/}
    curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$reg/v2/${r%:*}/manifests/${r##*:}" 2>/dev/null
}
if ! have_image "$busybox_img" || ! have_image "$web_img"; then
    w=$(mktemp -d "$out/img.XXXXXX")
    log "building $busybox_img and $web_img from $busybox_bin"
    (
        set -e
        cd "$w"
        # One static busybox with a link for each of its applets (critest runs top, sh,
        # sleep, nc, ping, nslookup, hostname, mount, ...), and the files a rootfs needs.
        mkdir -p rootfs/bin rootfs/etc rootfs/tmp rootfs/root
        chmod 1777 rootfs/tmp
        install -m 755 "$busybox_bin" rootfs/bin/busybox
        "$busybox_bin" --list-full | while read -r a; do
            [[ $a == bin/busybox ]] && continue
            mkdir -p "rootfs/$(dirname "$a")"
            ln -sf /bin/busybox "rootfs/$a"
        done
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >rootfs/etc/passwd
        printf 'root:x:0:\nnogroup:x:65534:\n' >rootfs/etc/group
        umoci init --layout oci
        umoci new --image oci:busybox
        tar --numeric-owner --owner=0 --group=0 -C rootfs -cf layer.tar .
        umoci raw add-layer --image oci:busybox layer.tar
        umoci config --image oci:busybox --os linux --architecture amd64 \
            --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --config.cmd sh
        skopeo --insecure-policy copy -q --dest-tls-verify=false oci:oci:busybox "docker://$busybox_img"
        # The web server: busybox httpd in the foreground on port 80, serving /www.
        mkdir -p www/www
        printf '<html><body>kata-cc critest web server</body></html>\n' >www/www/index.html
        tar --numeric-owner --owner=0 --group=0 -C www -cf www.tar www
        umoci raw add-layer --image oci:busybox --tag web www.tar
        umoci config --image oci:web --clear config.cmd --config.entrypoint httpd \
            --config.cmd -f --config.cmd -p --config.cmd 80 --config.cmd -h --config.cmd /www \
            --config.exposedports 80/tcp
        skopeo --insecure-policy copy -q --dest-tls-verify=false oci:oci:web "docker://$web_img"
    ) >&2 || die "image build failed (in $w)"
    rm -rf "$w"
fi
cat >"$out/images.yaml" <<EOF
defaultTestContainerImage: $busybox_img
webServerTestImage: $web_img
EOF

# --- The spec list (dry run), split into --procs shards.
list_args=(-ginkgo.dry-run -ginkgo.no-color -ginkgo.v)
[[ -n $focus ]] && list_args+=("-ginkgo.focus=$focus")
[[ -n $skip ]] && list_args+=("-ginkgo.skip=$skip")
"$critest" "${list_args[@]}" 2>&1 | grep -E '^\[k8s\.io\] ' | sed 's/ *$//' | sort -u >"$out/specs.txt" || true
nspecs=$(wc -l <"$out/specs.txt")
((nspecs > 0)) || die "no spec matches (focus '$focus', skip '$skip')"
log "$nspecs specs selected, $procs process(es) per handler"
# A shard's focus: its specs' full texts, regex-escaped, anchored, joined by |.
shard_focus() {
    awk -v n="$procs" -v k="$1" 'NR % n == k' "$out/specs.txt" |
        sed -e 's/[][\\.^$*+?(){}|]/\\&/g' -e 's/$/$/' | paste -sd'|'
}

# --- The runs.
for h in $handlers; do
    rm -rf "${out:?}/$h"
    mkdir -p "$out/$h"
    log "running critest with -runtime-handler $h"
    start=$(date +%s)
    pids=()
    for ((k = 0; k < procs; k++)); do
        args=(-runtime-endpoint "unix://$sock" -image-endpoint "unix://$sock" -runtime-handler "$h"
            -test-images-file "$out/images.yaml" -ginkgo.no-color
            # critest v1.32 ignores its -report-dir: ginkgo writes the JUnit report.
            "-ginkgo.junit-report=$out/$h/$k/junit.xml")
        if ((procs > 1)); then
            f=$(shard_focus "$k")
            [[ -n $f ]] || continue
            args+=("-ginkgo.focus=$f")
        else
            [[ -n $focus ]] && args+=("-ginkgo.focus=$focus")
            [[ -n $skip ]] && args+=("-ginkgo.skip=$skip")
        fi
        mkdir -p "$out/$h/$k"
        # critest exits nonzero when a spec fails: the reports decide, not the status.
        "$critest" "${args[@]}" >"$out/$h/$k.log" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    secs[$h]=$(($(date +%s) - start))
    echo "${secs[$h]}" >"$out/$h/seconds"
    log "$h: ${secs[$h]} s"
done
fi

# --- The comparison.
timing=
for h in $handlers; do timing+="$h=${secs[$h]}s "; done
python3 - "$out" "$repo/docs/critest.md" "$procs" "$timing" $handlers <<'PY'
import glob, re, sys, xml.etree.ElementTree as ET

out, doc, procs, timing, handlers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]

def results(h):
    res = {}
    for f in glob.glob(f"{out}/{h}/*/junit*.xml"):
        for tc in ET.parse(f).getroot().iter("testcase"):
            name = re.sub(r"^\[It\] ", "", tc.get("name", ""))
            if not name.startswith("[k8s.io]"):
                continue  # suite setup nodes
            st = tc.get("status")
            if st is None:
                st = "failed" if tc.find("failure") is not None or tc.find("error") is not None else (
                    "skipped" if tc.find("skipped") is not None else "passed")
            msg = ""
            fl = tc.find("failure")
            if fl is not None:
                msg = (fl.get("message") or fl.text or "").strip().splitlines()
                msg = msg[0][:160] if msg else ""
            # Each shard's report lists every spec, those of the other shards as skipped.
            if st != "skipped" or name not in res:
                res[name] = (st, msg)
    return res

def marked_list(name):
    """Lines "- `SPEC TEXT` — reason" of docs/critest.md between <!-- name:begin/end -->."""
    out, inside = [], False
    for line in open(doc, encoding="utf-8"):
        if f"<!-- {name}:begin -->" in line:
            inside = True
        elif f"<!-- {name}:end -->" in line:
            inside = False
        elif inside:
            m = re.match(r"^- `([^`]+)` — (.+)$", line.strip())
            if m:
                out.append((m.group(1), m.group(2)))
    return out

# Specs a VM runtime cannot pass.
vm_only = marked_list("vm-only")
# Specs critest skips for a runtime whose features containerd does not read (containerd
# before 2.4 reads them for io.containerd.runc.v2 runtimes only). Only a skip is excused,
# never a failure.
features_skip = marked_list("features-skip")

res = {h: results(h) for h in handlers}
lines = []
for h in handlers:
    r = res[h]
    passed = sum(1 for s, _ in r.values() if s == "passed")
    ran = sum(1 for s, _ in r.values() if s in ("passed", "failed"))
    lines.append(f"{h}: {passed} of {ran} specs pass")
lines.append(f"time ({procs} process(es) per handler): {timing.strip()}")
unexpected = 0
if "runc" in res and "kata-cc" in res:
    diff = sorted(n for n, (s, _) in res["runc"].items()
                  if s == "passed" and res["kata-cc"].get(n, ("missing", ""))[0] != "passed")
    lines.append(f"pass with runc, fail with kata-cc: {len(diff)}")
    for n in diff:
        reason = next((why for spec, why in vm_only if spec in n), None)
        skip_reason = next((why for spec, why in features_skip if spec in n), None)
        if reason:
            lines.append(f"  VM-only     {n}\n              ({reason})")
        elif skip_reason and res["kata-cc"].get(n, ("missing", ""))[0] == "skipped":
            lines.append(f"  SKIPPED     {n}\n              ({skip_reason})")
        else:
            unexpected += 1
            lines.append(f"  UNEXPECTED  {n}\n              {res['kata-cc'].get(n, ('missing', ''))[1]}")
    better = sorted(n for n, (s, _) in res["kata-cc"].items()
                    if s == "passed" and res["runc"].get(n, ("missing", ""))[0] != "passed")
    if better:
        lines.append(f"pass with kata-cc, fail with runc: {len(better)}")
        lines.extend(f"  {n}" for n in better)
text = "\n".join(lines) + "\n"
open(f"{out}/summary.txt", "w").write(text)
print(text, end="")
sys.exit(1 if unexpected else 0)
PY
