#!/usr/bin/env bash
# Checks that the guest image build is reproducible: builds the image twice into two
# directories and compares the outputs byte for byte.
#
#   deploy/guest/test-reproducible.sh [--variant prod|test] [--rebuild-agent]
#
# By default the second build reuses cargo's cache (the agent binary is the same file),
# so this checks the image assembly: staging, mtimes, ordering, cpio and gzip. With
# --rebuild-agent the guest-agent crate is cleaned first and compiled again, which
# also checks that its compilation is deterministic (a few minutes more).
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "$0")/../.." && pwd)
variant=prod
rebuild=0
while (($#)); do
    case "$1" in
        --variant) variant=${2:?--variant needs prod or test}; shift 2 ;;
        --rebuild-agent) rebuild=1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}

work=$(mktemp -d /tmp/kata-cc-repro.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$repo/deploy/guest/build-image.sh" --variant "$variant" --out "$work/a"
if ((rebuild)); then
    (cd "$repo" && cargo clean --profile guest-image --config 'profile.guest-image.inherits="release"' --target x86_64-unknown-linux-gnu -p guest-agent)
fi
"$repo/deploy/guest/build-image.sh" --variant "$variant" --out "$work/b"

rc=0
for f in vmlinuz initramfs.cpio.gz manifest.txt; do
    if cmp -s "$work/a/$f" "$work/b/$f"; then
        echo "same:   $f $(sha256sum "$work/a/$f" | cut -d' ' -f1)"
    else
        echo "DIFFER: $f" >&2
        rc=1
    fi
done
if ((rc)); then
    # Show which archive members differ, to say what is not reproducible.
    for d in a b; do
        mkdir -p "$work/x$d"
        (cd "$work/x$d" && gzip -dc "$work/$d/initramfs.cpio.gz" | cpio -idm --quiet --no-absolute-filenames 2>/dev/null) || true
    done
    diff -r "$work/xa" "$work/xb" >&2 || true
    diff "$work/a/manifest.txt" "$work/b/manifest.txt" >&2 || true
    echo "FAIL: the guest image build is not reproducible" >&2
    exit 1
fi
echo "PASS: two builds of the $variant guest image are byte-identical"
