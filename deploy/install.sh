#!/usr/bin/env bash
# Installs kata-cc on this host (run as root), or removes it again.
#
#   deploy/install.sh [options]
#   deploy/install.sh --uninstall [--prefix DIR] [--containerd-config PATH]
#
# Options:
#   --prefix DIR             install root (default /opt/kata-cc): DIR/bin/{containerd-shim-kata-cc-v2,
#                            kata-cc-snapshotter,kata-cc,kata-cc-policy,kata-cc-kbs},
#                            DIR/share/guest/{vmlinuz,initramfs.cpio.gz,manifest.txt}
#   --from DIR               built binaries (default: <repo>/target/release, else <repo>/target/debug;
#                            $CARGO_TARGET_DIR instead of <repo>/target when set)
#   --guest DIR              guest image (default <repo>/target/guest-image/prod, from
#                            deploy/guest/build-image.sh --variant prod)
#   --config FILE            shim configuration to install as <config-dir>/configuration.toml
#                            (default deploy/configuration.toml with /opt/kata-cc replaced by
#                            --prefix). An existing different configuration is kept unless
#                            --config is given; then it is backed up to configuration.toml.bak.<time>.
#   --containerd-config PATH add the kata-cc CRI runtime to containerd (e.g. /etc/containerd/config.toml;
#                            created if missing). Backs PATH up once to PATH.kata-cc.bak. How:
#                            containerd 2.x, or a config without CRI plugin tables: PATH's
#                            `imports` gets <dir of PATH>/conf.d/kata-cc.toml (deploy/containerd/kata-cc.toml
#                            for a `version = 2` PATH, deploy/containerd/kata-cc-v3.toml for `version = 3`);
#                            containerd 1.6/1.7 with CRI plugin tables in PATH: the runtime tables
#                            are appended to PATH between kata-cc markers, because 1.x imports
#                            replace the whole CRI plugin section. Restart containerd afterwards.
#   --config-dir DIR         where configuration.toml goes (default /etc/kata-cc)
#   --bin-link-dir DIR       where the containerd-shim-kata-cc-v2 link goes (default /usr/local/bin);
#                            "" for none
#   --uninstall              remove what an install put there (files listed in
#                            <prefix>/share/kata-cc/installed.txt) and undo the containerd edits
#
# Environment: KATA_CC_CONTAINERD_MAJOR (1 or 2) when `containerd --version` cannot be run
# here (e.g. in the kata-cc-deploy container); else it is guessed from the config version.
#
# Idempotent: running it again with the same inputs changes nothing. Needs bash, coreutils,
# sed, awk, grep.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=/opt/kata-cc
from=
guest=
config=
ctrd_config=
config_dir=/etc/kata-cc
bin_link_dir=/usr/local/bin
uninstall=0
BINS=(containerd-shim-kata-cc-v2 kata-cc-snapshotter kata-cc kata-cc-policy kata-cc-kbs)
SHIM=containerd-shim-kata-cc-v2
MARK_BEGIN="# >>> kata-cc runtime (deploy/install.sh; removed by --uninstall) >>>"
MARK_END="# <<< kata-cc runtime <<<"
MARK_IMPORT="# added by kata-cc deploy/install.sh"

log() { echo "kata-cc install: $*" >&2; }
die() { echo "kata-cc install: error: $*" >&2; exit 1; }
need_arg() { [[ -n ${2:-} ]] || die "$1 needs a value"; }

while (($#)); do
    case "$1" in
        --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
        --from) need_arg "$@"; from=$2; shift 2 ;;
        --guest) need_arg "$@"; guest=$2; shift 2 ;;
        --config) need_arg "$@"; config=$2; shift 2 ;;
        --containerd-config) need_arg "$@"; ctrd_config=$2; shift 2 ;;
        --config-dir) need_arg "$@"; config_dir=$2; shift 2 ;;
        --bin-link-dir) bin_link_dir=${2-}; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ $prefix == /* ]] || die "--prefix must be absolute"
[[ $config_dir == /* ]] || die "--config-dir must be absolute"
[[ -z $bin_link_dir || $bin_link_dir == /* ]] || die "--bin-link-dir must be absolute"
[[ -z $ctrd_config || $ctrd_config == /* ]] || die "--containerd-config must be absolute"
prefix=${prefix%/}
config_dir=${config_dir%/}

record=$prefix/share/kata-cc/installed.txt
conf_dest=$config_dir/configuration.toml
# The drop-in by config version: kata-cc.toml (version 2: containerd 1.6, 1.7, and 2.x
# configs still at version 2), kata-cc-v3.toml (version 3: containerd 2.x).
dropin_v2=$here/containerd/kata-cc.toml
dropin_v3=$here/containerd/kata-cc-v3.toml

sha() { sha256sum "$1" | cut -d' ' -f1; }
# put SRC DEST MODE: atomic copy (a running binary is replaced, not rewritten).
put() {
    if [[ -f $2 ]] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        return 0
    fi
    install -m "$3" "$1" "$2.kata-cc-new"
    mv -f "$2.kata-cc-new" "$2"
    log "installed $2"
}
# render: the shipped file with the default paths replaced by this install's.
render() {
    sed -e "s|/opt/kata-cc/|$prefix/|g" -e "s|/etc/kata-cc/|$config_dir/|g" "$1"
}

# ---------------------------------------------------------------- containerd config edits
# The dropin path for a containerd config PATH.
dropin_of() { echo "$(dirname "$1")/conf.d/kata-cc.toml"; }

# undo_containerd PATH: removes our marker block, our imports line/entry and the drop-in.
undo_containerd() {
    local f=$1 dropin tmp
    dropin=$(dropin_of "$f")
    if [[ -f $f ]]; then
        tmp=$(mktemp "$f.kata-cc-tmp.XXXXXX")
        awk -v b="$MARK_BEGIN" -v e="$MARK_END" -v m="$MARK_IMPORT" -v d="\"$dropin\"" '
            $0 == b { skip = 1; pend = 0; next }   # (and the blank line install put before it)
            skip { if ($0 == e) skip = 0; next }
            pend { print ""; pend = 0 }
            $0 == "" { pend = 1; next }
            index($0, m) { next }
            /^[ \t]*imports[ \t]*=/ && index($0, d) {
                gsub("[ \t]*" d "[ \t]*,[ \t]*", " ")
                gsub(",[ \t]*" d, "")
                gsub(d, "")
                sub(/\[ +/, "[")
                sub(/ +\]/, "]")
            }
            { print }
            END { if (pend) print "" }' "$f" >"$tmp"
        if ! cmp -s "$tmp" "$f"; then
            chmod --reference="$f" "$tmp"
            mv -f "$tmp" "$f"
            log "removed the kata-cc runtime from $f"
        else
            rm -f "$tmp"
        fi
    fi
    if [[ -f $dropin ]]; then
        rm -f "$dropin"
        rmdir "$(dirname "$dropin")" 2>/dev/null || true
        log "removed $dropin"
    fi
}

containerd_major() {
    local v
    v=$(containerd --version 2>/dev/null | grep -oE '[[:space:]]v?[0-9]+\.[0-9]+' | head -n1 | tr -d ' v') || true
    echo "${v%%.*}"
}

# default_runtimes_v1: containerd 1.x's built-in runtime tables (runc), as
# `containerd config default` writes them. containerd 1.x replaces its default runtimes map
# with the one a config file (or import) gives: a file that adds only kata-cc would drop the
# built-in runc runtime, the default for every other pod. So the added block carries them
# too, with their default values: the effective config stays the same for runc.
default_runtimes_v1() {
    local out
    if out=$(containerd config default 2>/dev/null) && [[ -n $out ]]; then
        awk '/^[ \t]*\[/ { keep = ($0 ~ /^[ \t]*\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\.runtimes\.[^]]+\]/) }
             keep { sub(/^[ \t]+/, ""); print }' <<<"$out"
    else
        # No containerd here (the deploy container): the runtime as 1.x defines it.
        printf '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
    fi
}

configure_containerd() {
    local f=$1 dropin dropin_src version major mode tmp
    dropin=$(dropin_of "$f")
    major=${KATA_CC_CONTAINERD_MAJOR:-$(containerd_major)}
    mkdir -p "$(dirname "$f")"
    if [[ -f $f ]]; then
        # (Not a file an earlier run created: uninstall removes that one.)
        [[ -e $f.kata-cc.bak || -e $f.kata-cc.created ]] || { cp -p "$f" "$f.kata-cc.bak"; log "backed up $f to $f.kata-cc.bak"; }
    else
        # The config version this containerd writes itself (`containerd config default`).
        if [[ ${major:-1} -ge 2 ]]; then printf 'version = 3\n' >"$f"; else printf 'version = 2\n' >"$f"; fi
        : >"$f.kata-cc.created"
        log "created $f"
    fi
    undo_containerd "$f" 2>/dev/null
    version=$(sed -n 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9]\+\).*/\1/p' "$f" | head -n1)
    if [[ -z $version ]]; then
        if grep -qv '^[[:space:]]*\(#.*\)\{0,1\}$' "$f"; then
            die "$f has no 'version = 2' line (a version 1 config): migrate it first (containerd config migrate, 2.x) or add the line"
        fi
        sed -i '1i version = 2' "$f"
        version=2
    fi
    if [[ -z $major ]]; then
        major=1
        [[ $version -ge 3 ]] && major=2
        log "containerd not found here; assuming containerd $major.x from config version $version"
    fi
    # containerd 2.x merges an imported file into the main one before it migrates the whole
    # to version 3, so the drop-in must have the main file's version; 1.x reads version 2 only.
    if [[ $version -ge 3 ]]; then
        [[ $major -ge 2 ]] || die "$f is config version $version (containerd 2.x) but containerd here is $major.x: it cannot read it"
        dropin_src=$dropin_v3
    else
        dropin_src=$dropin_v2
    fi
    if [[ $version -ge 3 || $major -ge 2 ]] ||
        ! grep -qE '^[[:space:]]*\[+[[:space:]]*plugins\.("io\.containerd\.grpc\.v1\.cri"|cri)([].]|[[:space:]])' "$f"; then
        mode=import
    else
        mode=inline
    fi
    if grep -qE '^[[:space:]]*\[+[[:space:]]*plugins\.("io\.containerd\.grpc\.v1\.cri"|"io\.containerd\.cri\.v1\.runtime"|cri)\.containerd\.runtimes\.("kata-cc"|kata-cc)[].]' "$f"; then
        die "$f already defines a kata-cc runtime (not added by this installer): remove it first"
    fi
    # containerd 1.x and a file that defines no runtime: keep the built-in ones (above).
    local keep_default=0
    if [[ $major -lt 2 ]] && ! grep -qE '^[[:space:]]*\[+[[:space:]]*plugins\.("io\.containerd\.grpc\.v1\.cri"|cri)\.containerd\.runtimes\.' "$f"; then
        keep_default=1
    fi
    block() {
        render "$dropin_src"
        if ((keep_default)); then
            printf '\n# containerd 1.x replaces its built-in runtimes with the ones a config names: the\n'
            printf '# built-in runtimes, as `containerd config default` has them (deploy/install.sh).\n'
            default_runtimes_v1
        fi
    }
    if [[ $mode == import ]]; then
        mkdir -p "$(dirname "$dropin")"
        tmp=$(mktemp)
        block >"$tmp"
        put "$tmp" "$dropin" 644
        rm -f "$tmp"
        if grep -qE '^[[:space:]]*imports[[:space:]]*=' "$f"; then
            grep -qE '^[[:space:]]*imports[[:space:]]*=.*\]' "$f" ||
                die "$f has a multi-line imports array: add \"$dropin\" to it by hand"
            sed -i -E "s|^([[:space:]]*imports[[:space:]]*=[[:space:]]*\[)[[:space:]]*\]|\1\"$dropin\"]|; t; s|^([[:space:]]*imports[[:space:]]*=[[:space:]]*\[)|\1\"$dropin\", |" "$f"
        else
            # A top-level key: just before the (top-level) version line.
            sed -i -E "0,/^[[:space:]]*version[[:space:]]*=/s||imports = [\"$dropin\"] $MARK_IMPORT\n&|" "$f"
        fi
        log "containerd: $f imports $dropin (restart containerd)"
    else
        {
            printf '\n%s\n' "$MARK_BEGIN"
            block | sed -E '/^[[:space:]]*version[[:space:]]*=/d; /^#/d'
            printf '%s\n' "$MARK_END"
        } >>"$f"
        log "containerd: added the kata-cc runtime to $f (containerd 1.x with CRI settings there: inline, not imports; restart containerd)"
    fi
}

# ---------------------------------------------------------------- uninstall
if ((uninstall)); then
    [[ $(id -u) == 0 ]] || log "warning: not root"
    if [[ -z $ctrd_config && -f $record ]]; then
        ctrd_config=$(sed -n 's/^containerd //p' "$record" | head -n1)
    fi
    if [[ -n $ctrd_config ]]; then
        undo_containerd "$ctrd_config"
        if [[ -f $ctrd_config.kata-cc.created ]]; then
            if ! grep -qv '^[[:space:]]*\(version[[:space:]]*=.*\)\{0,1\}$' "$ctrd_config"; then
                rm -f "$ctrd_config"
                log "removed $ctrd_config (created by the install)"
            fi
            rm -f "$ctrd_config.kata-cc.created"
        elif [[ -f $ctrd_config.kata-cc.bak ]]; then
            if cmp -s "$ctrd_config" "$ctrd_config.kata-cc.bak"; then
                rm -f "$ctrd_config.kata-cc.bak"
            else
                log "note: $ctrd_config differs from its backup $ctrd_config.kata-cc.bak (changed since the install); backup kept"
            fi
        fi
    fi
    if [[ -f $record ]]; then
        while read -r kind path sum; do
            case $kind in
                file) rm -f "$path" && log "removed $path" ;;
                link) [[ -L $path ]] && rm -f "$path" && log "removed $path" ;;
                config)
                    if [[ -f $path && $(sha "$path") == "$sum" ]]; then
                        rm -f "$path"
                        log "removed $path"
                    elif [[ -f $path ]]; then
                        mv -f "$path" "$path.kata-cc-uninstalled"
                        log "kept your changed $path as $path.kata-cc-uninstalled"
                    fi
                    ;;
            esac
        done <"$record"
        rm -f "$record"
    else
        log "no install record at $record: removing the default file set"
        for b in "${BINS[@]}"; do rm -f "$prefix/bin/$b"; done
        rm -f "$prefix/share/guest/"{vmlinuz,initramfs.cpio.gz,manifest.txt}
        [[ -n $bin_link_dir && -L $bin_link_dir/$SHIM ]] && rm -f "$bin_link_dir/$SHIM"
    fi
    for d in "$prefix/share/kata-cc" "$prefix/share/guest" "$prefix/share" "$prefix/bin" "$prefix" "$config_dir"; do
        rmdir "$d" 2>/dev/null || true
    done
    log "uninstalled"
    exit 0
fi

# ---------------------------------------------------------------- install
[[ $(id -u) == 0 ]] || log "warning: not root"
if [[ -z $from ]]; then
    tdir=${CARGO_TARGET_DIR:-$repo/target}
    for p in release debug; do
        [[ -x $tdir/$p/$SHIM ]] && { from=$tdir/$p; break; }
    done
    [[ -n $from ]] || die "no $SHIM in $tdir/release or $tdir/debug: cargo build --release -p kata-cc-shim (or pass --from DIR)"
fi
[[ -x $from/$SHIM ]] || die "no $SHIM in --from $from"
guest=${guest:-$repo/target/guest-image/prod}
[[ -f $guest/vmlinuz && -f $guest/initramfs.cpio.gz ]] ||
    die "no guest image (vmlinuz, initramfs.cpio.gz) in $guest: deploy/guest/build-image.sh --variant prod (or pass --guest DIR)"
config_given=0
if [[ -n $config ]]; then
    config_given=1
    [[ -f $config ]] || die "--config $config: no such file"
else
    config=$here/configuration.toml
fi

mkdir -p "$prefix/bin" "$prefix/share/guest" "$prefix/share/kata-cc" "$config_dir"
new_record=$(mktemp)
trap 'rm -f "$new_record"' EXIT

for b in "${BINS[@]}"; do
    if [[ -x $from/$b ]]; then
        put "$from/$b" "$prefix/bin/$b" 755
        echo "file $prefix/bin/$b" >>"$new_record"
    else
        log "warning: no $b in $from (not installed)"
    fi
done
for f in vmlinuz initramfs.cpio.gz manifest.txt; do
    if [[ -f $guest/$f ]]; then
        put "$guest/$f" "$prefix/share/guest/$f" 644
        echo "file $prefix/share/guest/$f" >>"$new_record"
    fi
done
if [[ -n $bin_link_dir ]]; then
    link=$bin_link_dir/$SHIM
    mkdir -p "$bin_link_dir"
    if [[ -e $link && ! -L $link ]]; then
        die "$link exists and is not a link: move it away first"
    fi
    [[ $(readlink "$link" 2>/dev/null) == "$prefix/bin/$SHIM" ]] || { ln -sfn "$prefix/bin/$SHIM" "$link"; log "linked $link"; }
    echo "link $link" >>"$new_record"
fi

tmp=$(mktemp)
if ((config_given)); then cp "$config" "$tmp"; else render "$config" >"$tmp"; fi
if [[ ! -f $conf_dest ]]; then
    put "$tmp" "$conf_dest" 644
elif ! cmp -s "$tmp" "$conf_dest"; then
    if ((config_given)); then
        bak=$conf_dest.bak.$(date +%Y%m%d%H%M%S)
        cp -p "$conf_dest" "$bak"
        log "backed up the existing $conf_dest to $bak"
        put "$tmp" "$conf_dest" 644
    else
        log "keeping the existing $conf_dest (differs from the default; pass --config to replace it)"
    fi
fi
# Recorded (for uninstall, which removes it only if unchanged since) when it is ours: what
# was just installed, or identical to it. A different configuration kept here is not.
cmp -s "$tmp" "$conf_dest" && echo "config $conf_dest $(sha "$conf_dest")" >>"$new_record"
rm -f "$tmp"

if [[ -n $ctrd_config ]]; then
    configure_containerd "$ctrd_config"
    echo "containerd $ctrd_config" >>"$new_record"
fi
mv -f "$new_record" "$record"
chmod 644 "$record"
trap - EXIT
log "done: shim $prefix/bin/$SHIM, guest $prefix/share/guest, config $conf_dest"
