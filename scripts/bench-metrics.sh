#!/usr/bin/env bash
# What `/metrics` costs: manifest GET throughput of `berth serve` with metrics on (the
# default) against the same binary with `[metrics] enabled = false`, in the same run, on the
# same machine, with the same load generator (target/release/berth-bench manifest-get),
# alternating which server goes first. Prints the medians and the ratio on/off (the target:
# at least 0.95).
#
#   scripts/bench-metrics.sh
#
# Environment knobs (all optional):
#   BENCH_ROUNDS=4      rounds; each measures both servers
#   BENCH_DURATION=10   seconds of manifest-get per measurement
#   BENCH_CLIENTS=16    concurrent clients
#   BENCH_KEEP=1        keep the temporary folder (storage, logs, raw JSON)
#
# Only 127.0.0.1 is contacted. Both servers are stopped by PID on exit, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${BENCH_ROUNDS:-4}
DURATION=${BENCH_DURATION:-10}
CLIENTS=${BENCH_CLIENTS:-16}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in cargo curl jq python3; do
    command -v "$tool" >/dev/null || { echo "bench-metrics.sh: $tool not found" >&2; exit 1; }
done
echo "== building berth and berth-bench (release)" >&2
cargo build --release -p berth -p berth-bench >&2
BERTH="$TARGET_DIR/release/berth"
BENCH="$TARGET_DIR/release/berth-bench"

WORK=$(mktemp -d /tmp/berth-bench-metrics.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 30000))
        if [[ "$p" != "${1:-}" ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "bench-metrics.sh: no free port found" >&2
    return 1
}

declare -A URL
start() { # NAME METRICS_ENABLED PORT
    mkdir -p "$WORK/$1"
    printf '[metrics]\nenabled = %s\n' "$2" >"$WORK/$1/berth.toml"
    BERTH_LOG=warn "$BERTH" serve --addr "127.0.0.1:$3" --storage "$WORK/$1/data" \
        --config "$WORK/$1/berth.toml" >"$WORK/$1/serve.log" 2>&1 &
    PIDS+=($!)
    URL[$1]="http://127.0.0.1:$3"
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "${URL[$1]}/v2/" && return 0
        kill -0 "$!" 2>/dev/null || { cat "$WORK/$1/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "bench-metrics.sh: $1 did not start" >&2
    exit 1
}
P1=$(free_port)
P2=$(free_port "$P1")
start on true "$P1"
start off false "$P2"
exposition=$(curl -fs "${URL[on]}/metrics")
[[ "$exposition" == *"# TYPE berth_http_requests_total"* ]] || { echo "metrics are not on" >&2; exit 1; }
[[ "$(curl -s -o /dev/null -w '%{http_code}' "${URL[off]}/metrics")" == 404 ]] ||
    { echo "metrics are not off" >&2; exit 1; }

measure() { # NAME ROUND
    "$BENCH" --url "${URL[$1]}" --workload manifest-get --clients "$CLIENTS" \
        --duration "$DURATION" --repo-prefix "bench-$2" --json >"$WORK/$1-$2.json"
    printf '%s\t%s\t%s\n' "$1" "$2" "$(jq -r .value "$WORK/$1-$2.json")" >>"$WORK/results.tsv"
    printf '%-2s %-4s %10.0f req/s\n' "$2" "$1" "$(jq -r .value "$WORK/$1-$2.json")" >&2
}
: >"$WORK/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then measure on "$round"; measure off "$round"
    else measure off "$round"; measure on "$round"; fi
done

python3 - "$WORK/results.tsv" "$ROUNDS" "$CLIENTS" "$DURATION" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
v = {"on": [], "off": []}
for name, _r, value in rows:
    v[name].append(float(value))
per_round = sorted(a / b for a, b in zip(v["on"], v["off"]))
on, off = statistics.median(v["on"]), statistics.median(v["off"])
print(f"manifest GET, {sys.argv[3]} clients, {sys.argv[4]} s x {sys.argv[2]} rounds (req/s, median):"
      f" metrics on {on:.0f}, off {off:.0f}, on/off {on / off:.3f}"
      f" (per round {per_round[0]:.3f}-{per_round[-1]:.3f})")
PY
