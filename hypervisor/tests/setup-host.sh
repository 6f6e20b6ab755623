#!/usr/bin/env bash
# Install what the hypervisor crate's integration tests need on a Debian bookworm host.
# Idempotent: every step checks first and does nothing when already done.
#   - qemu-system-x86 10.x from bookworm-backports (bookworm's 7.2 oopses TCG guests)
#   - vhost-device-vsock (cargo install) into ~/.cargo/bin
#   - busybox-static, cpio, gzip, xz-utils (to build a test initramfs)
#   - the stock Debian cloud kernel, extracted (not installed) into $KATA_CC_KERNEL_DIR
# Prints the kernel image path on its last line.
set -euo pipefail

KERNEL_DIR="${KATA_CC_KERNEL_DIR:-/var/cache/kata-cc/kernel}"
KERNEL_PKG="${KATA_CC_KERNEL_PKG:-linux-image-6.12-cloud-amd64}"
BACKPORTS=/etc/apt/sources.list.d/bookworm-backports.list

log() { printf 'setup-host: %s\n' "$*" >&2; }

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
}

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'
}

# 1. QEMU >= 10 from backports.
if [ "$(qemu_major)" -lt 10 ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding bookworm-backports"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$BACKPORTS"
    fi
    apt_update_once
    log "installing qemu-system-x86 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 >/dev/null
fi
log "$(qemu-system-x86_64 --version | head -n1)"

# 2. Tools to build a test initramfs.
missing=()
# A static busybox goes into the test initramfs; ldd succeeds only on dynamic ones.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. vhost-device-vsock.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v vhost-device-vsock >/dev/null 2>&1; then
    log "cargo install vhost-device-vsock (about 75 s)"
    cargo install --locked --quiet vhost-device-vsock
fi
log "vhost-device-vsock at $(command -v vhost-device-vsock)"

# 4. The guest kernel, extracted, not installed.
if ! ls "$KERNEL_DIR"/boot/vmlinuz-* >/dev/null 2>&1; then
    apt_update_once
    # The meta package only depends on the versioned one; resolve it.
    versioned="$(apt-cache depends "$KERNEL_PKG" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)"
    pkg="${versioned:-$KERNEL_PKG}"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    log "downloading $pkg"
    (cd "$tmp" && apt-get download -qq "$pkg")
    mkdir -p "$KERNEL_DIR"
    dpkg-deb -x "$tmp"/*.deb "$KERNEL_DIR"
fi
kernel="$(ls "$KERNEL_DIR"/boot/vmlinuz-* | sort -V | tail -n1)"
chmod a+r "$kernel"
log "kernel at $kernel"
echo "$kernel"
