#!/usr/bin/env bash
# Fuzz Berth's parsers of untrusted input and its upload state machine for a bounded time,
# benchmark-style: run by hand or on a schedule, not in every CI run (scripts/test.sh does not
# call this, so CI time does not grow with it). What CI does run is the saved inputs: every
# file of fuzz/regressions/TARGET and fuzz/corpus/TARGET goes once through the target's
# checks in tests/fuzz_regressions.rs (`cargo test -p berth --test fuzz_regressions`, about
# 4 s, no libFuzzer): each target's checks are a plain function, `run` in
# fuzz/logic/TARGET.rs, which fuzz/fuzz_targets/TARGET.rs only wraps.
#
#   scripts/fuzz.sh                       # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh range auth
#
# Nightly: run every target for a few minutes each, e.g. from cron at 03:00
#
#   0 3 * * *  cd /path/to/berth && FUZZ_SECONDS=300 scripts/fuzz.sh >fuzz-$(date +\%F).log 2>&1
#
# (five targets x 5 minutes, about half an hour with the build; uploads is the slowest per input,
# give it FUZZ_SECONDS=900 alone now and then). A non-zero exit means a crash was saved under
# fuzz/artifacts/TARGET/: read the log's end, reproduce, fix, and keep the input (see below).
#
# Targets (fuzz/fuzz_targets/ over fuzz/logic/, a Cargo package of its own outside the main
# workspace):
#   reference  image references, command-line locations, the /v2/ path router
#   manifest   the check of a pushed manifest/index, content negotiation
#   range      Range and Content-Range headers, upload Range, query strings
#   auth       Authorization header, token scopes, /token query and form, token
#              verification, access rules (ACL) and their repository patterns
#   uploads    the upload state machine (POST/PATCH/PUT/DELETE/GET on upload sessions) on
#              FsStorage (in a fresh folder on /dev/shm) and MemoryStorage: sequences over
#              three repositories and four sessions, requests run concurrently, naming another
#              repository's session or forged ids, bodies that break off, requests dropped
#              part-way; checks every stored blob hashes to its name and that each session's
#              answers fit some order of its requests (a reference model). Knob:
#              BERTH_FUZZ_TRACE=1 prints each input's requests and answers
#
# Each target starts from its corpus in fuzz/corpus/TARGET (kept in the repository, minimised)
# and from fuzz/regressions/TARGET: inputs that once failed, kept by name and never minimised
# away (a bug's input also has a unit test in the crate where the bug was).
# What a run discovers goes to a scratch folder; with FUZZ_MERGE=1 the inputs that add
# coverage are merged into fuzz/corpus/TARGET afterwards (then commit them; keep the corpus
# small, `cargo fuzz cmin TARGET` shrinks it). A crash is saved under fuzz/artifacts/TARGET/;
# reproduce it with `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`, fix the bug, add a
# unit test to the crate and copy the input into fuzz/regressions/TARGET under a name that says
# what broke (from then on CI replays it).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address, sanitizer coverage). There
# is no nightly toolchain here, so this script sets RUSTC_BOOTSTRAP=1, which lets the stable
# compiler accept them. That is only for this separate fuzz build; nothing shipped uses it.
#
# Environment knobs (all optional):
#   FUZZ_SECONDS=60     seconds per target (libFuzzer -max_total_time)
#   FUZZ_TIMEOUT=10     seconds one input may take before it counts as a hang (a failure)
#   FUZZ_MERGE=0        1: merge new coverage-adding inputs into fuzz/corpus/TARGET
#   FUZZ_SANITIZER=address   or none (faster, still catches panics and overflow)
#   CARGO_TARGET_DIR    where to build (default fuzz/target)
#
# Exits non-zero if any target crashed, panicked, hung or failed to build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"

SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TIMEOUT=${FUZZ_TIMEOUT:-10}
MERGE=${FUZZ_MERGE:-0}
SANITIZER=${FUZZ_SANITIZER:-address}
# The cargo-fuzz release checked to build with the project's stable toolchain.
CARGO_FUZZ_VERSION=0.13.2

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

echo "==> building ${TARGETS[*]} (sanitizer: $SANITIZER)"
cargo fuzz build --sanitizer "$SANITIZER"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/berth-fuzz.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

declare -A RESULT EXECS RATE
FAILED=0
for target in "${TARGETS[@]}"; do
    echo
    echo "==> $target: ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$target" "regressions/$target" "$SCRATCH/$target"
    log="$SCRATCH/$target.log"
    status=0
    # New inputs go to the scratch folder (first corpus argument); the others are read only.
    cargo fuzz run --sanitizer "$SANITIZER" "$target" "$SCRATCH/$target" "corpus/$target" \
        "regressions/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +(INITED|DONE))|^Done |^stat::number_of_executed_units|^stat::average_exec_per_sec' "$log" || true
    EXECS[$target]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    RATE[$target]=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$status" -eq 0 ]; then
        RESULT[$target]=ok
    else
        FAILED=1
        RESULT[$target]="FAILED (exit $status)"
        echo "--- $target failed; the end of its log:"
        tail -n 60 "$log"
        ls -1 "artifacts/$target" 2>/dev/null | sed 's/^/    saved: fuzz\/artifacts\/'"$target"'\//' || true
    fi
    if [ "$MERGE" = 1 ] && [ "$status" -eq 0 ]; then
        echo "--- merging new coverage into fuzz/corpus/$target"
        cargo fuzz run --sanitizer "$SANITIZER" "$target" "corpus/$target" "$SCRATCH/$target" -- \
            -merge=1 >"$SCRATCH/$target.merge.log" 2>&1 || tail -n 20 "$SCRATCH/$target.merge.log"
    fi
done

echo
printf '%-10s %8s %14s %12s  %s\n' target seconds executions "execs/s" result
for target in "${TARGETS[@]}"; do
    printf '%-10s %8s %14s %12s  %s\n' "$target" "$SECONDS_PER_TARGET" \
        "${EXECS[$target]:-?}" "${RATE[$target]:-?}" "${RESULT[$target]}"
done
exit "$FAILED"
