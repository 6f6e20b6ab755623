# shellcheck shell=bash disable=SC2034
# Sourced by start.sh and stop.sh: which instance (profile) and where its pieces live.
PROFILE=${KATA_CC_CTRD_PROFILE:-default}
case $PROFILE in
    default) suffix= ;;
    cc) suffix=-cc ;;
    *) echo "kata-cc-ctrd: unknown KATA_CC_CTRD_PROFILE=$PROFILE (default|cc)" >&2; exit 2 ;;
esac
DIR=${KATA_CC_CTRD_DIR:-/var/tmp/kata-cc-ctrd$suffix}
RUN=${KATA_CC_CTRD_RUN:-/run/kata-cc-ctrd$suffix}
SHARED=${KATA_CC_CTRD_SHARED:-/var/tmp/kata-cc-ctrd-shared}
SOCK=$RUN/containerd.sock
BRIDGE=kcc0
CNI_NAME=kata-cc-test
IPAM=/var/lib/cni/networks/$CNI_NAME
log() { echo "kata-cc-ctrd: $*" >&2; }
