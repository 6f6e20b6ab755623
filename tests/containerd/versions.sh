#!/usr/bin/env bash
# Runs the repo's CRI test suites against several containerd versions, one private
# containerd per version (tests/containerd/start.sh with KATA_CC_CONTAINERD_BIN), and prints
# a per-version pass/fail table with the time of each part. Stops every instance it started.
#
#   tests/containerd/versions.sh              # 1.7 and 2.1 (1.6 is what `cargo test` uses)
#   tests/containerd/versions.sh 1.6 1.7 2.1  # choose versions
#   KATA_CC_VERSION_SUITES="cri ctr" tests/containerd/versions.sh 2.1
#
# Versions: 1.6 is the machine's containerd (bookworm); 1.7 (trixie) and 2.1 (sid) are
# fetched by deploy/containerd/fetch.sh. Instance per version: /var/tmp/kata-cc-ctrd-VERSION
# and /run/kcc-VERSION (the cc profile adds -cc; tests/containerd/instance.sh), so they
# never meet the instance of a plain `cargo test`.
#
# Suites (test targets of the `tests` crate; KATA_CC_VERSION_SUITES overrides): the ones
# that go through the runtime end to end on CRI and ctr, chosen to fit ~4 minutes per
# version under TCG (docs/containerd.md lists what each covers):
#   cri               runc and kata-cc pod lifecycle (CRI sandbox/container/exec/logs/stop/
#                     remove), shim killed, QEMU killed
#   ctr               ctr run with runc and kata-cc (shim v2 start/bootstrap without CRI)
#   cri_confidential  profile cc: the kata-cc snapshotter per runtime, guest pull of an
#                     encrypted image, key released after attestation
# Not by default (run them by name): cri_policy, pod_net (they add nothing
# version-specific: the same CRI calls as cri, plus policy and network inside the guest).
#
# Builds the shim, the snapshotter and those test targets (`cargo test --no-run`), copies
# them to $KATA_CC_VERSION_LOGS/bin (default target/containerd-versions/bin) and runs them
# from there; each suite's output goes to $KATA_CC_VERSION_LOGS/VERSION-SUITE.log. Exit status: 0 when every suite passed on every version.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

versions=("$@")
((${#versions[@]})) || versions=(1.7 2.1)
read -r -a suites <<<"${KATA_CC_VERSION_SUITES:-cri ctr cri_confidential cri_critest}"
# Each version's instance is tests/containerd/instance.sh's default for that version, never
# the one KATA_CC_CTRD_DIR/KATA_CC_CTRD_RUN name (that is the 1.6 instance of `cargo test`).
unset KATA_CC_CTRD_DIR KATA_CC_CTRD_RUN
logs=${KATA_CC_VERSION_LOGS:-$repo/target/containerd-versions}
mkdir -p "$logs"

log() { echo "containerd versions: $*" >&2; }
now() { date +%s; }

log "building the test targets (${suites[*]}), the shim and the snapshotter"
t0=$(now)
test_args=()
for s in "${suites[@]}"; do test_args+=(--test "$s"); done
tdir=${CARGO_TARGET_DIR:-$repo/target}
# The binaries are copied to $logs/bin and run from there: a shared target directory (other
# worktrees building meanwhile) cannot swap them under a running suite.
rm -rf "$logs/bin"
mkdir -p "$logs/bin"
if ! cargo build --locked -p kata-cc-shim -p kata-cc-snapshotter >&2 ||
    ! cp "$tdir/debug/containerd-shim-kata-cc-v2" "$tdir/debug/kata-cc-snapshotter" "$logs/bin/" ||
    ! cargo test --locked -p kata-cc-tests --no-run --message-format=json "${test_args[@]}" >"$logs/build.json"; then
    log "build failed"
    exit 1
fi
declare -A test_bin
for s in "${suites[@]}"; do
    exe=$(jq -r --arg s "$s" 'select(.reason == "compiler-artifact" and .target.name == $s and .profile.test == true) | .executable // empty' "$logs/build.json" | tail -n1)
    [[ -x $exe ]] || { log "no test binary for $s"; exit 1; }
    cp "$exe" "$logs/bin/test-$s"
    test_bin[$s]=$logs/bin/test-$s
done
export KATA_CC_SHIM=$logs/bin/containerd-shim-kata-cc-v2 KATA_CC_SNAPSHOTTER=$logs/bin/kata-cc-snapshotter
build_secs=$(($(now) - t0))

declare -A result secs
part_secs=()
failed=0
passed=0
for v in "${versions[@]}"; do
    env_v=()
    t0=$(now)
    if ! bin=$(bash deploy/containerd/fetch.sh "$v"); then
        log "$v: fetch failed"
        for s in "${suites[@]}"; do result[$v/$s]="not run (fetch failed)"; failed=$((failed + 1)); done
        part_secs+=("$v fetch: $(($(now) - t0))s (failed)")
        continue
    fi
    env_v+=(KATA_CC_CONTAINERD_BIN="$bin" PATH="$bin:$PATH")
    version_line=$("$bin/containerd" --version)
    part_secs+=("$v fetch: $(($(now) - t0))s ($version_line)")
    t0=$(now)
    # The default profile up front (the suites reuse it): a broken config shows here.
    if ! env "${env_v[@]}" KATA_CC_CTRD_PROFILE=default KATA_CC_BIN_DIR="$logs/bin" KATA_CC_SNAPSHOTTER="$KATA_CC_SNAPSHOTTER" \
        bash tests/containerd/start.sh >"$logs/$v-start.log" 2>&1; then
        log "$v: start.sh failed: $(tail -n 3 "$logs/$v-start.log")"
    fi
    part_secs+=("$v start: $(($(now) - t0))s")
    for s in "${suites[@]}"; do
        t0=$(now)
        log "$v: tests/$s.rs (log $logs/$v-$s.log)"
        # The stalled-vsock test exercises the shim's boot, not containerd: `cargo test` runs
        # it once (on 1.6), and it takes a 30 s stall per run.
        if (cd "$repo/tests" && env "${env_v[@]}" "${test_bin[$s]}" --test-threads=1 --skip stalled_vsock_channel) >"$logs/$v-$s.log" 2>&1; then
            result[$v/$s]=passed
            passed=$((passed + 1))
        else
            result[$v/$s]=FAILED
            failed=$((failed + 1))
        fi
        counts=$(grep -E '^test result:' "$logs/$v-$s.log" | tail -n1 | sed -E 's/^test result: [a-zA-Z]+\. //; s/; finished.*//')
        secs[$v/$s]=$(($(now) - t0))
        result[$v/$s]="${result[$v/$s]} (${counts:-no result line})"
    done
    t0=$(now)
    for p in default cc; do
        env "${env_v[@]}" KATA_CC_CTRD_PROFILE=$p bash tests/containerd/stop.sh >>"$logs/$v-stop.log" 2>&1 ||
            log "$v: stop.sh ($p) failed: see $logs/$v-stop.log"
    done
    part_secs+=("$v stop: $(($(now) - t0))s")
done

echo
echo "containerd versions: build ${build_secs}s"
for p in "${part_secs[@]}"; do echo "  $p"; done
printf '%-8s %-18s %-8s %s\n' version suite seconds result
for v in "${versions[@]}"; do
    for s in "${suites[@]}"; do
        printf '%-8s %-18s %-8s %s\n' "$v" "$s" "${secs[$v/$s]:--}" "${result[$v/$s]:-not run}"
    done
done
echo "containerd versions: $passed passed, $failed failed"
((failed == 0))
