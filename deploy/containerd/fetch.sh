#!/usr/bin/env bash
# Fetches Debian's containerd package for another containerd minor version and unpacks its
# binaries, without touching the machine's apt sources, lists or installed packages.
#
#   deploy/containerd/fetch.sh 1.7     # containerd 1.7 from Debian trixie
#   deploy/containerd/fetch.sh 2.1     # containerd 2.1 from Debian sid
#   deploy/containerd/fetch.sh 1.6     # the machine's own containerd (bookworm): its bin dir
#
# Prints the bin directory (containerd, ctr, containerd-shim-runc-v2) on stdout, everything
# else on stderr. Use it as tests/containerd/start.sh's KATA_CC_CONTAINERD_BIN.
#
# How: a private apt state under $KATA_CC_CONTAINERD_CACHE (default /var/cache/kata-cc/apt-
# containerd): its own sources.list (one suite, signed by the Debian archive keyring that
# bookworm already has), its own lists and archive cache; `apt-get update` and
# `apt-get download containerd` with those directories, then `dpkg-deb -x` into
# $KATA_CC_CONTAINERD_ROOT/containerd-VERSION (default /opt/kata-cc/containerd-VERSION).
# Nothing is installed with dpkg; /etc/apt and /var/lib/apt are untouched.
#
# runc stays the machine's (bookworm 1.1.5): the trixie and sid runc packages need glibc
# 2.38 (bookworm has 2.36), and containerd 1.7/2.1 run it fine (docs/containerd.md).
#
# Idempotent: an unpacked tree whose containerd reports the wanted minor version is reused
# (KATA_CC_CONTAINERD_REFRESH=1 fetches again). Non-interactive; needs root (or write access
# to both directories), apt-get, dpkg-deb and the network to deb.debian.org.
set -euo pipefail

log() { echo "kata-cc containerd fetch: $*" >&2; }
die() { log "error: $*"; exit 1; }

version=${1:-}
case $version in
    1.6)
        # bookworm's own package (deploy/install-deps.sh installs it).
        c=$(command -v containerd) || die "containerd 1.6 is not installed (deploy/install-deps.sh)"
        dirname "$c"
        exit 0
        ;;
    1.7) suite=trixie ;;
    2.1) suite=sid ;;
    *) die "usage: $0 1.6|1.7|2.1" ;;
esac

root=${KATA_CC_CONTAINERD_ROOT:-/opt/kata-cc}
dest=$root/containerd-$version
bin=$dest/usr/bin
cache=${KATA_CC_CONTAINERD_CACHE:-/var/cache/kata-cc/apt-containerd}/$suite

have_version() { # the minor version the unpacked containerd reports (e.g. 1.7)
    "$bin/containerd" --version 2>/dev/null | awk '{print $3}' | sed -E 's/^v//; s/^([0-9]+\.[0-9]+).*/\1/'
}
if [[ ${KATA_CC_CONTAINERD_REFRESH:-0} != 1 && -x $bin/containerd && $(have_version) == "$version" ]]; then
    log "have $("$bin/containerd" --version)"
    echo "$bin"
    exit 0
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f $keyring ]] || die "no $keyring (apt-get install debian-archive-keyring)"
mkdir -p "$cache/etc/sources.list.d" "$cache/etc/preferences.d" "$cache/lists/partial" \
    "$cache/archives/partial" "$cache/deb"
echo "deb [signed-by=$keyring] http://deb.debian.org/debian $suite main" >"$cache/etc/sources.list"
# Only the package indexes: no translations, no AppStream metadata; the machine's own
# sources, preferences and package caches are replaced by the private ones.
apt_opts=(
    -q
    -o "Dir::Etc::sourcelist=$cache/etc/sources.list"
    -o "Dir::Etc::sourceparts=$cache/etc/sources.list.d"
    -o "Dir::Etc::preferences=$cache/etc/preferences"
    -o "Dir::Etc::preferencesparts=$cache/etc/preferences.d"
    -o "Dir::State::Lists=$cache/lists"
    -o "Dir::Cache=$cache"
    -o "Dir::Cache::archives=$cache/archives"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Get::List-Cleanup=false"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
)
export DEBIAN_FRONTEND=noninteractive
log "apt-get update ($suite, private lists in $cache/lists)"
apt-get "${apt_opts[@]}" update >&2 || die "apt-get update for $suite failed"
# The candidate is the suite's containerd (the installed bookworm one is older, and a
# download never installs it).
pkg_version=$(apt-cache "${apt_opts[@]}" madison containerd | awk -F'|' -v s="$suite/" 'index($3, s) {gsub(/ /, "", $2); print $2; exit}')
[[ -n $pkg_version ]] || die "no containerd package in $suite"
[[ $pkg_version == "$version".* ]] ||
    die "$suite carries containerd $pkg_version, not $version.x: update deploy/containerd/fetch.sh and docs/containerd.md"
log "downloading containerd $pkg_version from $suite"
(cd "$cache/deb" && rm -f containerd_*.deb && apt-get "${apt_opts[@]}" download "containerd=$pkg_version" >&2) ||
    die "apt-get download containerd=$pkg_version failed"
deb=$(ls "$cache"/deb/containerd_*.deb)
tmp=$(mktemp -d "$root/.containerd-$version.XXXXXX" 2>/dev/null) || { mkdir -p "$root"; tmp=$(mktemp -d "$root/.containerd-$version.XXXXXX"); }
dpkg-deb -x "$deb" "$tmp"
for b in containerd ctr containerd-shim-runc-v2; do
    [[ -x $tmp/usr/bin/$b ]] || { rm -rf "$tmp"; die "$deb has no usr/bin/$b"; }
done
echo "$pkg_version" >"$tmp/debian-version"
rm -rf "$dest"
mv "$tmp" "$dest"
got=$(have_version)
[[ $got == "$version" ]] || die "$bin/containerd reports $("$bin/containerd" --version 2>&1), not $version"
log "unpacked $("$bin/containerd" --version) into $dest"
echo "$bin"
