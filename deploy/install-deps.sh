#!/usr/bin/env bash
# Installs what building and testing kata-cc needs on a Debian bookworm machine.
# Idempotent; safe to run again. Needs root (apt-get).
set -euo pipefail

need_apt=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in busybox-static runc libseccomp-dev pkg-config; do
    have "$p" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
    echo "==> apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
echo "==> build dependencies present"
