#!/bin/bash
# The kata-cc-deploy image's entrypoint (deploy/build-deploy-image.sh puts it at
# /opt/kata-cc-artifacts/kata-cc-deploy.sh). The DaemonSet (deploy/k8s/kata-cc-deploy.yaml)
# mounts the node's /opt/kata-cc, /etc/kata-cc, /etc/containerd and /usr/local/bin at the
# same paths in the container, so install.sh writes the paths the host's containerd reads.
#
#   kata-cc-deploy.sh install     install on the node, restart containerd, label the node,
#                                 then wait (the DaemonSet's container)
#   kata-cc-deploy.sh uninstall   unlabel the node, uninstall, restart containerd (preStop)
#
# Environment:
#   NODE_NAME                   this node (the DaemonSet sets it from spec.nodeName)
#   KATA_CC_CONTAINERD_MAJOR    1 or 2; unset: from `containerd --version` in PID 1's mount
#                               namespace (hostPID), else install.sh guesses from the config
#   KATA_CC_DEPLOY_RESTART      command run in PID 1's namespaces to restart containerd
#                               (default "systemctl restart containerd"; "" for none)
#   KATA_CC_DEPLOY_LABEL        1 (default): set/remove the node label through the API server
#                               with the pod's service account; 0: leave the label alone
#   KATA_CC_DEPLOY_WAIT         1 (default): after install, wait for SIGTERM; 0: exit
set -euo pipefail
a=$(cd "$(dirname "$0")" && pwd)
ctrd_config=/etc/containerd/config.toml
label_key=katacontainers.io/kata-cc-runtime
restart=${KATA_CC_DEPLOY_RESTART-systemctl restart containerd}

log() { echo "kata-cc-deploy: $*" >&2; }
die() { echo "kata-cc-deploy: error: $*" >&2; exit 1; }

# host CMD...: runs CMD in PID 1's namespaces (the node's, with hostPID).
host() { nsenter --target 1 --mount --uts --ipc --net --pid -- "$@"; }

restart_containerd() {
    if [[ -z $restart ]]; then
        log "KATA_CC_DEPLOY_RESTART is empty: containerd not restarted"
        return 0
    fi
    log "restarting containerd on ${NODE_NAME:-this node}: $restart"
    # shellcheck disable=SC2086 # a command line, split on purpose
    host $restart
}

# label VALUE: sets (VALUE "true") or removes (VALUE "") the runtime label on this node with
# a JSON merge patch to the API server, as `kubectl label` does.
label() {
    [[ ${KATA_CC_DEPLOY_LABEL:-1} == 1 ]] || { log "KATA_CC_DEPLOY_LABEL=${KATA_CC_DEPLOY_LABEL}: node label left alone"; return 0; }
    local sa=/var/run/secrets/kubernetes.io/serviceaccount host port value
    [[ -n ${NODE_NAME:-} ]] || die "NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)"
    host=${KUBERNETES_SERVICE_HOST:-}
    port=${KUBERNETES_SERVICE_PORT:-443}
    [[ -n $host ]] || die "KUBERNETES_SERVICE_HOST is not set: not in a pod? (KATA_CC_DEPLOY_LABEL=0 to skip labelling)"
    [[ -r $sa/token && -r $sa/ca.crt ]] || die "no service account token in $sa (automountServiceAccountToken)"
    [[ $host == *:* ]] && host="[$host]"
    if [[ -n $1 ]]; then value="\"$1\""; else value=null; fi
    curl -fsS --max-time 30 --cacert "$sa/ca.crt" \
        -H "Authorization: Bearer $(cat "$sa/token")" \
        -H "Content-Type: application/merge-patch+json" \
        -X PATCH --data "{\"metadata\":{\"labels\":{\"$label_key\":$value}}}" \
        "https://$host:$port/api/v1/nodes/$NODE_NAME" >/dev/null ||
        die "could not change the label $label_key on node $NODE_NAME"
    log "node $NODE_NAME: label $label_key${1:+=$1}${1:- removed}"
}

containerd_major() {
    if [[ -n ${KATA_CC_CONTAINERD_MAJOR:-} ]]; then
        echo "$KATA_CC_CONTAINERD_MAJOR"
        return
    fi
    host containerd --version 2>/dev/null | grep -oE '[[:space:]]v?[0-9]+[.]' | head -n1 | tr -dc 0-9 || true
}

case ${1:-} in
    install)
        KATA_CC_CONTAINERD_MAJOR=$(containerd_major)
        export KATA_CC_CONTAINERD_MAJOR
        log "containerd major version: ${KATA_CC_CONTAINERD_MAJOR:-unknown (from the config version)}"
        bash "$a/install.sh" --prefix /opt/kata-cc --from "$a/bin" --guest "$a/guest" \
            --containerd-config "$ctrd_config"
        restart_containerd
        label true
        log "installed"
        if [[ ${KATA_CC_DEPLOY_WAIT:-1} == 1 ]]; then
            log "waiting"
            trap 'exit 0' TERM
            sleep infinity &
            wait
        fi
        ;;
    uninstall)
        (label "") || log "warning: node label not removed; uninstalling anyway"
        bash "$a/install.sh" --prefix /opt/kata-cc --containerd-config "$ctrd_config" --uninstall
        restart_containerd
        log "uninstalled"
        ;;
    *) die "usage: $0 install|uninstall" ;;
esac
