#!/usr/bin/env bash
# Builds the pod VM's guest image: a Debian cloud kernel (vmlinuz) and an initramfs whose
# /init is the static guest agent (PID 1), with the kernel modules it loads at boot.
#
#   deploy/guest/build-image.sh [--variant prod|test] [--out DIR]
#
# prod: agent (feature release-tee: the simulated TEE cannot be compiled in) + modules.
# test: the agent with feature `sim` (the simulated TEE, used only when the host hands it
# the sim parameters), and a busybox-static container rootfs at
# /run/kata-containers/shared/containers/busybox/rootfs (below the agent's shared dir).
#
# Reproducible: the same inputs (kernel and busybox package versions, sources, toolchain)
# give byte-identical outputs. Inputs are pinned by environment variables:
#   KATA_CC_KERNEL_PKG   versioned kernel package (default: what the metapackage
#                        linux-image-6.12-cloud-amd64 depends on today)
#   SOURCE_DATE_EPOCH    mtime of every file in the initramfs (default 0)
#   KATA_CC_CACHE        download cache (default /var/cache/kata-cc)
#   CARGO_TARGET_DIR     cargo's target dir (default <repo>/target)
# Needs root (apt-get download, mknod /dev/console), cpio, gzip, xz, binutils.
set -euo pipefail
umask 022
export LC_ALL=C

repo=$(cd "$(dirname "$0")/../.." && pwd)
variant=prod
out=
while (($#)); do
    case "$1" in
        --variant) variant=${2:?--variant needs prod or test}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$variant" in prod|test) ;; *) echo "--variant must be prod or test" >&2; exit 2 ;; esac
out=${out:-$repo/target/guest-image/$variant}
cache=${KATA_CC_CACHE:-/var/cache/kata-cc}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
target=x86_64-unknown-linux-gnu

# Kernel modules to load at boot, in load order (dependencies first). llc stp bridge: a
# container with CAP_NET_ADMIN (privileged, or the capability added) manages bridges (critest).
modules=(vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport virtio_blk overlay failover net_failover virtio_net configfs tsm llc stp bridge)
# Loaded best effort after those (the TEE guest drivers refuse to load outside their TEE;
# qemu_fw_cfg carries the simulated TEE's parameters). File names, not module names.
optional_modules=(sev-guest tdx-guest qemu_fw_cfg)

log() { echo "==> $*" >&2; }
die() { echo "build-image: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg-deb cpio gzip xz objcopy readelf strip sha256sum gcc; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

# apt_fetch PKG DIR: downloads PKG (apt verifies it against the signed archive index) and
# extracts it into DIR, once; later runs reuse DIR.
apt_fetch() {
    local pkg=$1 dir=$2
    [[ -f $dir/.complete ]] && return 0
    local tmp
    tmp=$(mktemp -d)
    chmod 755 "$tmp"   # apt's download user must be able to write there
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    dpkg-deb -x "$tmp"/*.deb "$dir.partial"
    cp "$tmp"/*.deb "$dir.partial/.deb-$(basename "$tmp"/*.deb)"
    rm -rf "$tmp" "$dir"
    touch "$dir.partial/.complete"
    mv "$dir.partial" "$dir"
}

# pkg_version PKG: the candidate version apt would download.
pkg_version() {
    apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n1
}

if ! apt-cache show linux-image-6.12-cloud-amd64 >/dev/null 2>&1; then
    log "apt-get update"
    apt-get update -qq
fi

# --- kernel -------------------------------------------------------------------------
kpkg=${KATA_CC_KERNEL_PKG:-$(apt-cache depends linux-image-6.12-cloud-amd64 \
    | sed -n 's/^ *Depends: \(linux-image-6\.12\.[^ ]*-cloud-amd64\)$/\1/p' | head -n1)}
[[ -n $kpkg ]] || die "cannot resolve linux-image-6.12-cloud-amd64 to a versioned package"
kpkg_ver=$(pkg_version "$kpkg")
[[ -n $kpkg_ver ]] || die "no candidate version for $kpkg"
kdir=$cache/kernel/$kpkg_ver
log "kernel: $kpkg $kpkg_ver ($kdir)"
apt_fetch "$kpkg=$kpkg_ver" "$kdir"
kver=${kpkg#linux-image-}
[[ -f $kdir/boot/vmlinuz-$kver && -d $kdir/lib/modules/$kver ]] || die "unexpected layout of $kpkg"

# --- busybox (test rootfs) ----------------------------------------------------------
if [[ $variant == test ]]; then
    bb_ver=$(pkg_version busybox-static)
    [[ -n $bb_ver ]] || die "no candidate version for busybox-static"
    bbdir=$cache/busybox-static/$bb_ver
    log "busybox-static $bb_ver"
    apt_fetch "busybox-static=$bb_ver" "$bbdir"
fi

# --- CA certificates (both variants: guest pull from HTTPS registries) ----------------
ca_ver=$(pkg_version ca-certificates)
[[ -n $ca_ver ]] || die "no candidate version for ca-certificates"
cadir=$cache/ca-certificates/$ca_ver
log "ca-certificates $ca_ver"
apt_fetch "ca-certificates=$ca_ver" "$cadir"

# --- agent --------------------------------------------------------------------------
log "agent: static build"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$repo=/src --remap-path-prefix=$CARGO_TARGET_DIR=/target"
export LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=${LIBSECCOMP_LIB_PATH:-/usr/lib/x86_64-linux-gnu}
# The `guest-image` profile: release, optimised for size (the agent is most of the
# initramfs): opt-level s, fat LTO, one codegen unit, symbols stripped.
profile=(--profile guest-image
    --config 'profile.guest-image.inherits="release"'
    --config 'profile.guest-image.opt-level="s"'
    --config 'profile.guest-image.lto="fat"'
    --config 'profile.guest-image.codegen-units=1'
    --config 'profile.guest-image.strip="symbols"')
case "$variant" in
    prod) agent_features=release-tee ;;
    test) agent_features=sim ;;
esac
log "agent features: $agent_features"
(cd "$repo" && cargo build --locked --target "$target" -p guest-agent --features "$agent_features" "${profile[@]}")
agent=$CARGO_TARGET_DIR/$target/guest-image/kata-cc-agent
if readelf -lW "$agent" | grep -q 'Requesting program interpreter' || readelf -dW "$agent" | grep -q '(NEEDED)'; then
    die "$agent is not statically linked"
fi

# --- staging tree -------------------------------------------------------------------
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
mkdir -p "$stage"/{usr/bin,etc/kata-cc,lib/modules/kata-cc,proc,sys,dev,run,tmp,root}
chmod 1777 "$stage/tmp"
chmod 700 "$stage/root"
ln -s usr/bin "$stage/bin"
ln -s usr/bin "$stage/sbin"
strip --strip-all -o "$stage/usr/bin/kata-cc-agent" "$agent"
chmod 755 "$stage/usr/bin/kata-cc-agent"
ln -s usr/bin/kata-cc-agent "$stage/init"
# The kernel opens /dev/console for init before any devtmpfs exists.
mknod -m 600 "$stage/dev/console" c 5 1

# modinfo_depends KO: the module's `depends=` (modinfo -F depends, without kmod).
modinfo_depends() {
    objcopy -O binary -j .modinfo "$1" /dev/stdout | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}
loaded=()
# add_modules LIST KIND NAME...: decompress each module into the image and list it in
# /etc/kata-cc/LIST; every dependency must be a required module listed before it.
add_modules() {
    local list=$1 kind=$2 m src ko dep
    shift 2
    : >"$stage/etc/kata-cc/$list"
    for m in "$@"; do
        src=$(find "$kdir/lib/modules/$kver/kernel" -name "$m.ko.xz" -o -name "$m.ko" | head -n1)
        [[ -n $src ]] || die "$kind module $m not in $kpkg"
        ko=$stage/lib/modules/kata-cc/$m.ko
        case "$src" in *.xz) xz -dc "$src" >"$ko" ;; *) cp "$src" "$ko" ;; esac
        chmod 644 "$ko"
        for dep in $(modinfo_depends "$ko"); do
            [[ " ${loaded[*]} " == *" $dep "* ]] || die "$kind module $m needs $dep, which is not loaded before it"
        done
        [[ $kind == required ]] && loaded+=("$m")
        echo "/lib/modules/kata-cc/$m.ko" >>"$stage/etc/kata-cc/$list"
    done
}
add_modules modules.load required "${modules[@]}"
add_modules modules.optional optional "${optional_modules[@]}"

# The Mozilla roots Debian ships, as one bundle where rustls-native-certs looks
# (what update-ca-certificates would build; sorted so the image stays reproducible).
mkdir -p "$stage/etc/ssl/certs"
find "$cadir/usr/share/ca-certificates/mozilla" -name '*.crt' | LC_ALL=C sort | xargs cat >"$stage/etc/ssl/certs/ca-certificates.crt"
[[ -s $stage/etc/ssl/certs/ca-certificates.crt ]] || die "no certificates in ca-certificates $ca_ver"
chmod 644 "$stage/etc/ssl/certs/ca-certificates.crt"

# The sandbox's pause container (both variants): a static binary in its own rootfs.
pause_root=$stage/run/kata-containers/shared/containers/pause/rootfs
# It is bind-mounted read-only: every mount point a CRI or ctr spec may name must exist.
mkdir -p "$pause_root"/{proc,sys,dev,tmp,run,etc,var}
: >"$pause_root/etc/hosts"
: >"$pause_root/etc/hostname"
: >"$pause_root/etc/resolv.conf"
gcc -static -Os -s -Wall -Werror -ffile-prefix-map="$repo"=/src -o "$pause_root/pause" "$repo/deploy/guest/pause.c"
chmod 755 "$pause_root/pause"

if [[ $variant == test ]]; then
    rootfs=$stage/run/kata-containers/shared/containers/busybox/rootfs
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,run,var}
    chmod 1777 "$rootfs/tmp"
    chmod 700 "$rootfs/root"
    install -m 755 "$bbdir/bin/busybox" "$rootfs/bin/busybox"
    # Applet links (paths from the binary itself, e.g. bin/sh, usr/bin/env).
    "$bbdir/bin/busybox" --list-full | sort | while read -r applet; do
        [[ $applet == bin/busybox || -e $rootfs/$applet ]] && continue
        mkdir -p "$rootfs/$(dirname "$applet")"
        ln -s /bin/busybox "$rootfs/$applet"
    done
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$rootfs/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$rootfs/etc/group"
    echo busybox >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
    : >"$rootfs/etc/hosts"
fi

# --- archive ------------------------------------------------------------------------
find "$stage" -mindepth 1 -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
(cd "$stage" && find . -mindepth 1 -printf '%P\n' | sort \
    | cpio -o -H newc --reproducible -R 0:0 --quiet) | gzip -n -9 >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
cp "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz"
chmod 644 "$out/vmlinuz" "$out/initramfs.cpio.gz"

{
    echo "variant=$variant"
    echo "kernel_package=$kpkg=$kpkg_ver"
    echo "kernel_release=$kver"
    [[ $variant == test ]] && echo "busybox_package=busybox-static=$bb_ver"
    echo "ca_certificates_package=ca-certificates=$ca_ver"
    echo "rustc=$(rustc --version)"
    echo "source_date_epoch=$SOURCE_DATE_EPOCH"
    echo "modules=${modules[*]}"
    echo "optional_modules=${optional_modules[*]}"
    echo "agent_features=$agent_features"
    echo "agent_sha256=$(sha256sum "$stage/usr/bin/kata-cc-agent" | cut -d' ' -f1)"
    (cd "$out" && sha256sum vmlinuz initramfs.cpio.gz | sed 's/^\([0-9a-f]*\)  \(.*\)$/\2_sha256=\1/')
} >"$out/manifest.txt"

log "image in $out"
for f in vmlinuz initramfs.cpio.gz; do
    printf '%-18s %9d bytes  sha256 %s\n' "$f" "$(stat -c %s "$out/$f")" "$(sha256sum "$out/$f" | cut -d' ' -f1)"
done
