#!/usr/bin/env bash
# STYLE rule 8: simulation and test doubles never reach a shipped binary. Resolves the
# normal (non-dev) dependency tree of every shipped binary with the features it ships
# with, and fails if a `sim` or `fake` feature is enabled anywhere in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
check() { # package [features]
    local out
    out=$(cargo tree --locked -q -e normal,features -p "$1" ${2:+--features "$2"})
    if grep -E 'feature "(sim|fake)"' <<<"$out"; then
        echo "check-release-features: $1 ${2:+(features $2) }pulls in a simulation or test feature" >&2
        bad=1
    else
        echo "ok  $1 ${2:+(features $2)}"
    fi
}
check guest-agent                 # kata-cc-agent, the guest's PID 1
check kata-cc-agent-ctl
check kata-cc                     # kata-cc check
check policy cli                  # kata-cc-policy
check kbs cli                     # kata-cc-kbs
check attestation-agent
exit "$bad"
