#!/usr/bin/env bash
# The installer's containerd edits, checked with the real containerd of each version:
# deploy/install.sh --containerd-config adds a kata-cc runtime that containerd itself reads
# (`containerd config dump`), changes nothing else in the effective config, and
# --uninstall leaves config.toml byte for byte as it was, with no file left behind.
#
#   deploy/containerd/test-install.sh            # 1.6 (the machine's), 1.7 and 2.1
#   deploy/containerd/test-install.sh 2.1        # one version
#
# Starting configs per version: none (install creates it), the version's own
# `containerd config default`, a short hand-written one with CRI tables (1.x: the inline
# path), and one that already imports another file. 1.7 and 2.1 come from
# deploy/containerd/fetch.sh. Runs in a temporary directory; starts no daemon; needs no
# root beyond what fetch.sh needs. Prints one line per case and "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
versions=("$@")
((${#versions[@]})) || versions=(1.6 1.7 2.1)

work=$(mktemp -d /tmp/kata-cc-test-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Stand-ins for the built binaries and guest image: this test is about the config edits.
mkdir -p "$work/from" "$work/guest"
for b in containerd-shim-kata-cc-v2 kata-cc-snapshotter kata-cc kata-cc-policy kata-cc-kbs; do
    printf '#!/bin/sh\nexit 0\n' >"$work/from/$b"
    chmod 755 "$work/from/$b"
done
: >"$work/guest/vmlinuz"
: >"$work/guest/initramfs.cpio.gz"

passed=0
failed=0
fail() { echo "FAIL $case: $*"; failed=$((failed + 1)); }

# dump BIN CONFIG: containerd's effective config (stderr in $work/dump.err), flattened to
# sorted "[section] key = value" lines so that two dumps compare as sets of settings.
dump() {
    "$1/containerd" --config "$2" config dump 2>"$work/dump.err" >"$work/dump.out" || return 1
    awk '/^[ \t]*\[/ { sec = $0; gsub(/^[ \t]+|[ \t]+$/, "", sec); gsub("\047", "\"", sec); next }
         /^[ \t]*$/ { next }
         { line = $0; gsub(/^[ \t]+/, "", line); print sec " " line }' "$work/dump.out" | tr "'" '"' |
        grep -v '^ imports = ' | LC_ALL=C sort
}

# check BIN VERSION NAME CONFIG-TEXT|-: one round trip.
check() {
    local bin=$1 ver=$2 name=$3 text=$4 d cfg before after added removed outside left
    case="$ver/$name"
    d=$work/$ver-$name
    mkdir -p "$d/etc"
    cfg=$d/etc/config.toml
    [[ $text == - ]] || printf '%s\n' "$text" >"$cfg"
    [[ -f $cfg ]] && cp -p "$cfg" "$d/original"
    if [[ -f $cfg ]]; then
        before=$(dump "$bin" "$cfg") || { fail "containerd cannot read the starting config: $(cat "$work/dump.err")"; return; }
    else
        # No file: containerd's built-in defaults (what an empty file of its version gives).
        printf 'version = %s\n' "$((major >= 2 ? 3 : 2))" >"$d/empty.toml"
        before=$(dump "$bin" "$d/empty.toml") || { fail "containerd cannot read an empty config"; return; }
        rm -f "$d/empty.toml"
    fi
    if ! PATH="$bin:$PATH" bash "$repo/deploy/install.sh" --prefix "$d/opt" --config-dir "$d/etc/kata-cc" \
        --bin-link-dir "" --from "$work/from" --guest "$work/guest" --containerd-config "$cfg" \
        >"$d/install.log" 2>&1; then
        fail "install.sh failed: $(tail -n 3 "$d/install.log")"
        return
    fi
    # Twice: the second run changes nothing.
    cp -p "$cfg" "$d/after-1"
    PATH="$bin:$PATH" bash "$repo/deploy/install.sh" --prefix "$d/opt" --config-dir "$d/etc/kata-cc" \
        --bin-link-dir "" --from "$work/from" --guest "$work/guest" --containerd-config "$cfg" \
        >>"$d/install.log" 2>&1 || { fail "second install.sh failed"; return; }
    cmp -s "$cfg" "$d/after-1" || { fail "a second install changed $cfg"; return; }
    after=$(dump "$bin" "$cfg") || { fail "containerd cannot read the installed config: $(cat "$work/dump.err")"; return; }
    grep -q '^level=\(warning\|error\)\|level=warning\|level=error' "$work/dump.err" &&
        { fail "containerd warns about the installed config: $(grep level= "$work/dump.err" | head -n 2)"; return; }
    # What the install changed in the effective config: nothing removed or changed, and
    # every added setting inside the kata-cc runtime's tables.
    removed=$(LC_ALL=C comm -23 <(echo "$before") <(echo "$after"))
    [[ -z $removed ]] || { fail "the install removed or changed effective settings: $(head -n 5 <<<"$removed")"; return; }
    added=$(LC_ALL=C comm -13 <(echo "$before") <(echo "$after"))
    outside=$(grep -v '^\[[^ ]*runtimes\.kata-cc[].]' <<<"$added" || true)
    [[ -z $outside ]] || { fail "the install changed settings outside the kata-cc runtime: $(head -n 5 <<<"$outside")"; return; }
    grep -q '^\[[^ ]*runtimes\.kata-cc\] runtime_type = "io.containerd.kata-cc.v2"$' <<<"$after" ||
        { fail "containerd does not see runtime_type io.containerd.kata-cc.v2 for kata-cc"; return; }
    grep -q '^\[[^ ]*runtimes\.kata-cc\.options\] ConfigPath = "'"$d"'/etc/kata-cc/configuration.toml"$' <<<"$after" ||
        { fail "the kata-cc runtime has no ConfigPath to the installed configuration"; return; }
    if ! PATH="$bin:$PATH" bash "$repo/deploy/install.sh" --uninstall --prefix "$d/opt" --config-dir "$d/etc/kata-cc" \
        --bin-link-dir "" >>"$d/install.log" 2>&1; then
        fail "uninstall failed: $(tail -n 3 "$d/install.log")"
        return
    fi
    if [[ -f $d/original ]]; then
        cmp -s "$cfg" "$d/original" || { fail "config.toml differs after uninstall: $(diff "$d/original" "$cfg" | head -n 5)"; return; }
    else
        [[ ! -e $cfg ]] || { fail "the config install.sh created is still there after uninstall"; return; }
    fi
    left=$(cd "$d" && find etc opt 2>/dev/null | grep -vx 'etc\|etc/config.toml' || true)
    [[ -z $left ]] || { fail "left behind: $(tr '\n' ' ' <<<"$left")"; return; }
    echo "ok   $case ($(grep -o 'imports [^ ]*\|inline, not imports' "$d/install.log" | head -n1 | sed 's/imports .*/import/; s/inline.*/inline/'))"
    passed=$((passed + 1))
}

for v in "${versions[@]}"; do
    bin=$(bash "$here/fetch.sh" "$v" 2>"$work/fetch.err") || { case=$v; fail "fetch: $(tail -n 2 "$work/fetch.err")"; continue; }
    major=$("$bin/containerd" --version | awk '{print $3}' | sed -E 's/^v//; s/\..*//')
    check "$bin" "$v" none -
    check "$bin" "$v" default "$("$bin/containerd" config default 2>/dev/null)"
    if ((major >= 2)); then
        check "$bin" "$v" cri-tables "$(cat "$here/testdata/cri-tables-v3.toml")"
        # A 2.x node that kept its version 2 file: the version 2 drop-in.
        check "$bin" "$v" v2-file 'version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true'
    else
        check "$bin" "$v" cri-tables "$(cat "$here/testdata/cri-tables-v2.toml")"
    fi
    other=$work/other-$v.toml
    printf 'version = %s\n' "$((major >= 2 ? 3 : 2))" >"$other"
    check "$bin" "$v" imports "$(printf 'version = %s\nimports = ["%s"]\n\n[debug]\n  level = "info"' \
        "$((major >= 2 ? 3 : 2))" "$other")"
done
echo "$passed passed, $failed failed"
((failed == 0))
