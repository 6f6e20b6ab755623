#!/usr/bin/env bash
# Installs what building and testing kata-cc needs on a Debian bookworm machine.
# Idempotent; safe to run again. Needs root (apt-get).
set -euo pipefail

need_apt=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# ovmf: Debian's OVMF.fd, for `kata-cc measure` and its tests (SNP digest of the firmware).
for p in busybox-static runc libseccomp-dev pkg-config ovmf; do
    have "$p" || need_apt+=("$p")
done
# image-rs tests and bench: a local registry and the tools that build and push fixtures
# (tests/registry/start.sh).
for p in docker-registry skopeo umoci openssl curl jq; do
    have "$p" || need_apt+=("$p")
done
# The shim under real containerd: containerd 1.6, CNI plugins, and protoc for the
# containerd snapshotter and CRI client protos (tonic-build / prost-build need it).
for p in containerd containernetworking-plugins protobuf-compiler iptables; do
    have "$p" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
    echo "==> apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
echo "==> build dependencies present"
