#!/usr/bin/env bash
# Bench fixtures (big; not used by `cargo test`): ~200 MB of this machine's binaries and
# libraries in 4 gzip layers, as bench:latest (plain) and bench-enc:latest (the same files
# plus a marker, so no layer is shared, encrypted with jwe:keys/pub.pem). Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/start.sh"
DIR=${KATA_CC_REGISTRY_DIR:-/var/tmp/kata-cc-registry}
ADDR=127.0.0.1:5000
MB=${BENCH_IMAGE_MB:-200}
exec 9>"$DIR/bench.lock"
flock 9
[[ -f "$DIR/bench.v1.$MB" ]] && exit 0

echo "bench-fixture: building a ${MB} MB image" >&2
W=$DIR/bench-work
rm -rf "$W"
mkdir -p "$W"
cd "$W"
# Files from /usr, sorted, until MB megabytes; dealt round-robin into 4 layer dirs.
find /usr/lib/x86_64-linux-gnu /usr/bin /usr/share -xdev -type f -size -20M -printf '%s %p\n' \
    2>/dev/null | sort -k2 >all-files
awk -v max=$((MB * 1024 * 1024)) '{ t += $1; if (t > max) exit; print $2 }' all-files >files
i=0
while read -r f; do
    d="l$((i % 4))"
    mkdir -p "$d$(dirname "$f")"
    cp -p "$f" "$d$f"
    i=$((i + 1))
done <files
umoci init --layout oci
build() { # NAME [MARKER]
    umoci new --image "oci:$1"
    for d in l0 l1 l2 l3; do
        if [[ -n "${2:-}" ]]; then echo "$2 $d" >"$d/marker.txt"; fi
        tar --numeric-owner -C "$d" -cf layer.tar .
        umoci raw add-layer --image "oci:$1" layer.tar
    done
}
build bench
skopeo --insecure-policy copy -q --dest-tls-verify=false oci:oci:bench "docker://$ADDR/bench:latest"
build bench-enc "encrypted bench $(date +%s%N)"
skopeo --insecure-policy copy -q --dest-tls-verify=false --encryption-key "jwe:$DIR/keys/pub.pem" \
    oci:oci:bench-enc "docker://$ADDR/bench-enc:latest"
cd "$DIR"
rm -rf "$W"
touch "$DIR/bench.v1.$MB"
echo "bench-fixture: ready" >&2
