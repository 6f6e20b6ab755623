#!/usr/bin/env bash
# Builds the kata-cc-deploy image (the DaemonSet's, deploy/k8s/kata-cc-deploy.yaml) as an OCI
# image layout, without a Docker daemon and without pulling a base image: the root
# filesystem is made here from
#   /opt/kata-cc-artifacts/   deploy/install.sh, configuration.toml, containerd/*.toml,
#                             crio/kata-cc.conf, kata-cc-deploy.sh (the entrypoint),
#                             bin/ (the release binaries), guest/ (the prod guest image)
#   /usr/bin, /usr/lib        what install.sh and the entrypoint run: bash, coreutils, sed,
#                             grep, mawk (awk), cmp, nsenter, curl, copied from this Debian
#                             host with the shared libraries they load (ldd)
# and packed as one layer with umoci; skopeo pushes it.
#
#   deploy/build-deploy-image.sh [--out DIR] [--tag TAG] [--from DIR] [--guest DIR]
#                                [--build] [--push REF] [--push-tls-verify]
#
#   --out DIR     OCI layout to write (default <target>/deploy-image/oci; replaced)
#   --tag TAG     tag in the layout (default latest)
#   --from DIR    host binaries (default <target>/release: cargo build --release, see --build)
#   --guest DIR   guest image: vmlinuz, initramfs.cpio.gz, manifest.txt (default
#                 <target>/guest-image/prod: deploy/guest/build-image.sh --variant prod)
#   --build       build what is missing first: the release binaries (only the five shipped
#                 ones) and the prod guest image
#   --push REF    then copy the image to a registry, e.g. 127.0.0.1:5000/kata-cc/deploy:latest
#                 (plain HTTP unless --push-tls-verify)
#
# <target> is $CARGO_TARGET_DIR, else <repo>/target. Reproducible: every file's mtime, the
# layer's tar headers and the image's dates are SOURCE_DATE_EPOCH (default: the time of the
# HEAD commit); the same inputs give the same digest. Prints the manifest digest and sizes.
# The binaries are built for this host's glibc (Debian bookworm: 2.36); nodes need that or newer.
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out=$target/deploy-image/oci
tag=latest
from=
guest=
build=0
push=
tls_verify=false
BINS=(containerd-shim-kata-cc-v2 kata-cc-snapshotter kata-cc kata-cc-policy kata-cc-kbs)
# What install.sh and kata-cc-deploy.sh run inside the image (coreutils: all of it).
TOOLS=(bash sed grep mawk cmp nsenter curl)

die() { echo "build-deploy-image: error: $*" >&2; exit 1; }
log() { echo "build-deploy-image: $*" >&2; }
while (($#)); do
    case $1 in
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --from) from=${2:?--from needs a value}; shift 2 ;;
        --guest) guest=${2:?--guest needs a value}; shift 2 ;;
        --build) build=1; shift ;;
        --push) push=${2:?--push needs a value}; shift 2 ;;
        --push-tls-verify) tls_verify=true; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
for t in umoci skopeo tar ldd dpkg-query; do
    command -v "$t" >/dev/null || die "$t not found (apt-get install umoci skopeo)"
done
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "--tag $tag: not a valid tag"
start=$(date +%s)

from=${from:-$target/release}
guest=${guest:-$target/guest-image/prod}
if ((build)); then
    missing=0
    for b in "${BINS[@]}"; do [[ -x $from/$b ]] || missing=1; done
    if ((missing)); then
        [[ $from == "$target/release" ]] || die "--build builds into $target/release, not --from $from"
        log "cargo build --release (shim, snapshotter, kata-cc, kata-cc-policy, kata-cc-kbs)"
        (cd "$repo" && cargo build --release --locked -p kata-cc-shim -p kata-cc-snapshotter -p kata-cc \
            -p policy --features policy/cli -p kbs --features kbs/cli)
    fi
    if [[ ! -f $guest/initramfs.cpio.gz ]]; then
        log "deploy/guest/build-image.sh --variant prod --out $guest"
        bash "$here/guest/build-image.sh" --variant prod --out "$guest"
    fi
fi
for b in "${BINS[@]}"; do
    [[ -x $from/$b ]] || die "no $b in $from: cargo build --release (or --build, or --from DIR)"
done
[[ $from == */release ]] || log "note: binaries from $from, not a release build: an image for tests, not for nodes"
for f in vmlinuz initramfs.cpio.gz manifest.txt; do
    [[ -f $guest/$f ]] || die "no $f in $guest: deploy/guest/build-image.sh --variant prod (or --build, or --guest DIR)"
done

if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH: not a number"
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

work=$(mktemp -d "${TMPDIR:-/tmp}/kata-cc-deploy-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,tmp,var/tmp,opt/kata-cc-artifacts}
chmod 1777 "$root/tmp" "$root/var/tmp"
# Debian's merged /usr, so that the paths in ELF headers and #! lines resolve.
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
# Mount points of the DaemonSet's hostPath volumes: the node's files appear there (nothing
# of the image may live under them: /usr/local/bin is the node's).
mkdir -p "$root"/{opt/kata-cc,etc/kata-cc,etc/containerd,usr/local/bin}

# copy_path P: P (a host file or link, as a program names it) into the rootfs at the same
# path, links kept as links, their targets copied too.
copy_path() {
    local p=$1 dest target
    # The rootfs has the same top-level links as the host: go through them as it would.
    case $p in
        /bin/*|/sbin/*|/lib/*|/lib64/*) p=/usr$p ;;
    esac
    dest=$root$p
    [[ -e $dest || -L $dest ]] && return 0
    mkdir -p "$(dirname "$dest")"
    if [[ -L $p ]]; then
        target=$(readlink "$p")
        ln -s "$target" "$dest"
        [[ $target == /* ]] || target=$(dirname "$p")/$target
        copy_path "$(realpath -s "$target")"
    else
        cp "$p" "$dest"
    fi
}
# copy_prog P: the program and every shared library it loads.
copy_prog() {
    local p=$1 lib
    copy_path "$p"
    while read -r lib; do
        copy_path "$lib"
    done < <(ldd "$p" 2>/dev/null | grep -oE '/[^ ]+' | grep -v ':$' || true)
}
for f in $(dpkg-query -L coreutils | grep -E '^/(usr/)?s?bin/[^/]+$'); do
    [[ -f $f ]] && copy_prog "$f"
done
for t in "${TOOLS[@]}"; do
    p=$(command -v "$t") || die "$t not found on this host (apt-get install it)"
    p=$(realpath -s "$p")
    copy_prog "$p"
done
ln -sf mawk "$root/usr/bin/awk"
[[ -x $root/usr/bin/sh ]] || ln -sf bash "$root/usr/bin/sh"
# Which Debian packages the copied files belong to, and their versions (for whoever audits
# the image). dpkg knows some files by their pre-merged-/usr path (/bin/bash): both asked.
{
    echo "# Debian packages the files in /usr of this image were copied from (deploy/build-deploy-image.sh)"
    (cd "$root" && find usr -path usr/local -prune -o -type f -printf '/%p\n' | sed 'p; s|^/usr/|/|') |
        { xargs dpkg-query -S 2>/dev/null || true; } | cut -d: -f1 | tr ',' '\n' | sed 's/^ *//; s/ *$//' | LC_ALL=C sort -u |
        xargs dpkg-query -W -f '${Package} ${Version}\n'
} >"$root/opt/kata-cc-artifacts/debian-packages.txt"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# The artifacts, in the layout install.sh expects beside it.
A=$root/opt/kata-cc-artifacts
mkdir -p "$A/bin" "$A/guest" "$A/containerd" "$A/crio"
install -m 755 "$here/install.sh" "$A/install.sh"
install -m 755 "$here/k8s/kata-cc-deploy.sh" "$A/kata-cc-deploy.sh"
install -m 644 "$here/configuration.toml" "$A/configuration.toml"
install -m 644 "$here/containerd/kata-cc.toml" "$here/containerd/kata-cc-v3.toml" "$A/containerd/"
install -m 644 "$here/crio/kata-cc.conf" "$A/crio/"
for b in "${BINS[@]}"; do install -m 755 "$from/$b" "$A/bin/$b"; done
for f in vmlinuz initramfs.cpio.gz manifest.txt; do install -m 644 "$guest/$f" "$A/guest/$f"; done
(cd "$A" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum) >"$work/SHA256SUMS"
mv "$work/SHA256SUMS" "$A/SHA256SUMS"

# One layer, deterministic: sorted names, fixed mtimes and owners, no atime/ctime.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar -C "$root" --sort=name --format=posix --numeric-owner --owner=0 --group=0 \
    --mtime="@$SOURCE_DATE_EPOCH" --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -cf "$work/layer.tar" .

rm -rf "$out"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci raw add-layer --image "$out:$tag" --history.created "$created" \
    --history.created_by "deploy/build-deploy-image.sh" "$work/layer.tar"
umoci config --image "$out:$tag" --no-history --created "$created" --author "kata-cc" \
    --architecture amd64 --os linux \
    --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --config.entrypoint /opt/kata-cc-artifacts/kata-cc-deploy.sh --config.cmd install \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=kata-cc-deploy" \
    --config.label "org.opencontainers.image.created=$created" \
    --config.label "org.opencontainers.image.revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
umoci gc --layout "$out"

# Figures: the manifest digest (what a registry serves for the tag) and the sizes.
mdigest=$(jq -r --arg t "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$out/index.json")
manifest=$out/blobs/${mdigest/://}
packed=$(jq '[.config.size] + [.layers[].size] | add' "$manifest")
unpacked=$(du -sb "$root" | cut -f1)
echo "image:    $out:$tag"
echo "digest:   $mdigest"
echo "size:     $packed bytes compressed ($((packed / 1048576)) MiB), $unpacked bytes unpacked ($((unpacked / 1048576)) MiB)"
echo "built in: $(($(date +%s) - start)) s (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"

if [[ -n $push ]]; then
    skopeo copy --dest-tls-verify="$tls_verify" --digestfile "$work/pushed" "oci:$out:$tag" "docker://$push" >&2
    echo "pushed:   $push@$(cat "$work/pushed")"
fi
