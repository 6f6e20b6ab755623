#!/usr/bin/env bash
# Builds every fuzz target once and runs each for a bounded time; fails if any target
# finds a crash (or does not build). See docs/fuzzing.md.
#
#   fuzz/run.sh                 # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=300 fuzz/run.sh snp_report tdx_quote
#
# Environment:
#   FUZZ_SECONDS     time per target (libFuzzer -max_total_time), default 20
#   FUZZ_SANITIZER   cargo fuzz --sanitizer (none, address, ...), default none: the code
#                    is safe Rust, so panics and aborts are what is found, and an
#                    uninstrumented build is several times faster to build and run
#   FUZZ_JOBS        cargo build jobs, default: cargo's
#   TEE_FIXTURES     recorded SNP/TDX evidence used as extra seeds and TDX collateral,
#                    default shared/fixtures/tee beside the repository (or beside its
#                    worktree directory); skipped if absent
set -euo pipefail
cd "$(dirname "$0")"
FUZZ="$PWD"
REPO="$(cd .. && pwd)"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
SANITIZER="${FUZZ_SANITIZER:-none}"
# The recorded TEE evidence lives beside the repository (as kbs/tests expect it), or
# beside the directory of a git worktree.
FIXTURES="${TEE_FIXTURES:-}"
if [ -z "$FIXTURES" ]; then
    for d in "$REPO/../shared/fixtures/tee" "$REPO/../../shared/fixtures/tee"; do
        [ -d "$d" ] && { FIXTURES="$(cd "$d" && pwd)"; break; }
    done
fi
TOOLCHAIN=+nightly

t0=$(date +%s)
now() { echo $(( $(date +%s) - t0 )); }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "==> installing the nightly toolchain (libFuzzer needs -Z flags)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo "$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(cargo "$TOOLCHAIN" fuzz list)
fi

echo "==> [$(now)s] build ${#TARGETS[@]} targets (release, sanitizer=$SANITIZER)"
build_args=(-O --sanitizer "$SANITIZER")
if [ -n "${FUZZ_JOBS:-}" ]; then build_args+=(--jobs "$FUZZ_JOBS"); fi
mkdir -p "$FUZZ/artifacts"
# fuzz/Cargo.lock is committed: refuse to build if it is out of date (cargo fuzz build
# has no --locked of its own).
cargo "$TOOLCHAIN" metadata --locked --format-version 1 >/dev/null
if ! cargo "$TOOLCHAIN" fuzz build "${build_args[@]}" >"$FUZZ/artifacts/build.log" 2>&1; then
    grep -v '^ *\(Compiling\|Downloaded\|Downloading\) ' "$FUZZ/artifacts/build.log" | tail -n 60
    echo "fuzz build failed"
    exit 1
fi
build_time=$(now)
echo "==> [${build_time}s] built"

# Seeds: the checked-in ones (fuzz/seeds/<target>), plus some made here from files of
# the repository and from the recorded TEE evidence (not copied into the repository).
seed_dir() { mkdir -p "$FUZZ/corpus/$1"; cp -n "$FUZZ/seeds/$1/"* "$FUZZ/corpus/$1/" 2>/dev/null || true; }
for t in "${TARGETS[@]}"; do seed_dir "$t"; done
if [ -d "$FUZZ/corpus/policy_eval" ]; then
    for pair in create-sandbox:CreateSandboxRequest create-pause:CreateContainerRequest \
        create-app:CreateContainerRequest exec-app:ExecProcessRequest read-stream-app:ReadStreamRequest; do
        f="$REPO/policy/tests/inputs/${pair%%:*}.json"
        [ -f "$f" ] && { printf '%s\n' "${pair##*:}"; cat "$f"; } > "$FUZZ/corpus/policy_eval/repo-${pair%%:*}"
    done
fi
if [ -n "$FIXTURES" ] && [ -d "$FIXTURES" ]; then
    echo "==> seeds from $FIXTURES"
    if [ -d "$FUZZ/corpus/snp_report" ]; then
        for d in "$FIXTURES"/snp/*/; do
            n=$(basename "$d")
            [ -f "$d/report.bin" ] || continue
            for kind in vcek:1 vlek:2; do
                cert="$d/${kind%%:*}.der"
                [ -f "$cert" ] || continue
                { printf "\\x0${kind##*:}"; cat "$d/report.bin" "$cert"; } > "$FUZZ/corpus/snp_report/fixture-$n"
            done
            { printf '\x00'; cat "$d/report.bin"; } > "$FUZZ/corpus/snp_report/fixture-$n-report"
        done
    fi
    if [ -d "$FUZZ/corpus/tdx_quote" ]; then
        for q in "$FIXTURES"/tdx/*/quote.bin; do
            [ -f "$q" ] && { printf '\x00'; cat "$q"; } > "$FUZZ/corpus/tdx_quote/fixture-$(basename "$(dirname "$q")")"
        done
    fi
    [ -d "$FIXTURES/tdx/pcs-2026-03-16" ] && export FUZZ_TDX_COLLATERAL="$FIXTURES/tdx/pcs-2026-03-16"
    [ -f "$FIXTURES/tdx/v4-b0c06f-uptodate/collateral.json" ] &&
        export FUZZ_TDX_COLLATERAL_JSON="$FIXTURES/tdx/v4-b0c06f-uptodate/collateral.json"
else
    echo "==> no TEE fixtures (../shared/fixtures/tee, TEE_FIXTURES): SNP/TDX targets start from the checked-in seeds only"
fi

# Each target runs for SECONDS_PER_TARGET; a crash, a timeout (-timeout, per input) or
# an out-of-memory stops it with a non-zero status and a reproducer in artifacts/<t>/.
failed=()
declare -A took execs
for t in "${TARGETS[@]}"; do
    start=$(date +%s)
    log="$FUZZ/artifacts/$t.log"
    mkdir -p "$FUZZ/artifacts/$t"
    echo "==> [$(now)s] $t (${SECONDS_PER_TARGET}s)"
    if cargo "$TOOLCHAIN" fuzz run "${build_args[@]}" "$t" "$FUZZ/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=25 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        :
    else
        failed+=("$t")
        echo "!!! $t failed; last lines of $log:"
        tail -n 40 "$log"
    fi
    took[$t]=$(( $(date +%s) - start ))
    execs[$t]=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
done

echo
echo "==> per-target time (build ${build_time}s, ${SECONDS_PER_TARGET}s fuzzing each)"
printf '%-24s %8s %12s\n' target seconds executions
for t in "${TARGETS[@]}"; do printf '%-24s %8s %12s\n' "$t" "${took[$t]}" "${execs[$t]}"; done
echo "==> [$(now)s] total"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (reproducers in fuzz/artifacts/<target>/; cargo +nightly fuzz run <target> <file>)"
    exit 1
fi
echo "no crash found"
