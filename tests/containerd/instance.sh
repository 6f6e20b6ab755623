# shellcheck shell=bash disable=SC2034
# Sourced by start.sh and stop.sh: which instance (profile) and where its pieces live.
PROFILE=${KATA_CC_CTRD_PROFILE:-default}
case $PROFILE in
    default) suffix= ;;
    cc) suffix=-cc ;;
    *) echo "kata-cc-ctrd: unknown KATA_CC_CTRD_PROFILE=$PROFILE (default|cc)" >&2; exit 2 ;;
esac
# Which containerd: KATA_CC_CONTAINERD_BIN=<dir> with containerd, ctr and
# containerd-shim-runc-v2 (deploy/containerd/fetch.sh prints one), else the one on PATH.
if [[ -n ${KATA_CC_CONTAINERD_BIN:-} ]]; then
    CTRD_BIN=${KATA_CC_CONTAINERD_BIN%/}
    [[ -x $CTRD_BIN/containerd && -x $CTRD_BIN/ctr ]] ||
        { echo "kata-cc-ctrd: no containerd and ctr in KATA_CC_CONTAINERD_BIN=$CTRD_BIN" >&2; exit 2; }
else
    CTRD_BIN=$(dirname "$(command -v containerd 2>/dev/null || echo /usr/bin/containerd)")
fi
CTR=$CTRD_BIN/ctr
# major.minor of that containerd ("containerd github.com/containerd/containerd[/v2] 2.1.9+unknown ...").
CTRD_VERSION=$("$CTRD_BIN/containerd" --version 2>/dev/null | awk '{print $3}' | sed -E 's/^v//; s/^([0-9]+\.[0-9]+).*/\1/')
# Each containerd version named by KATA_CC_CONTAINERD_BIN gets its own instance (so several
# versions run side by side); without it the historical default paths. KATA_CC_CTRD_DIR and
# KATA_CC_CTRD_RUN name the default profile's instance; the cc profile adds "-cc" to them.
# (RUN is short: the shim's sockets live below it, RUN/kata-cc/<64-hex pod id>/vm/vhost.sock,
# and a unix socket path has at most 107 bytes.)
if [[ -n ${KATA_CC_CONTAINERD_BIN:-} ]]; then
    DIR=${KATA_CC_CTRD_DIR:-/var/tmp/kata-cc-ctrd-${CTRD_VERSION:-unknown}}$suffix
    RUN=${KATA_CC_CTRD_RUN:-/run/kcc-${CTRD_VERSION:-unknown}}$suffix
else
    DIR=${KATA_CC_CTRD_DIR:-/var/tmp/kata-cc-ctrd}$suffix
    RUN=${KATA_CC_CTRD_RUN:-/run/kata-cc-ctrd}$suffix
fi
SHARED=${KATA_CC_CTRD_SHARED:-/var/tmp/kata-cc-ctrd-shared}
SOCK=$RUN/containerd.sock
BRIDGE=kcc0
CNI_NAME=kata-cc-test
IPAM=/var/lib/cni/networks/$CNI_NAME
log() { echo "kata-cc-ctrd: $*" >&2; }
