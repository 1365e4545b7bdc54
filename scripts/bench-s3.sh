#!/usr/bin/env bash
# Benchmark `berth serve` on S3 storage, and compare it with Debian's reference registry
# (`docker-registry`, distribution 2.8.2) on the same S3 server, with the same load
# generator (target/release/berth-bench).
#
#   scripts/bench-s3.sh
#
# Servers, all on 127.0.0.1:
#   berth-s3s    berth on s3s-fs (checks SigV4 and conditional writes, stores on disk)
#   berth-moto   berth on moto (Python, in memory, no signature checks)
#   dist-moto    distribution 2.8.2 on the same moto: its s3 driver needs
#                ListMultipartUploads, which s3s-fs lacks, so moto is the common server
#   berth-moto-ra  (pull-big only) berth on moto with its default read-ahead
#   berth-moto-nc  (small reads only) berth on moto without its object cache
#                (BERTH_S3_CACHE_MIB=0): every small pull is one GET, none served from memory
#   berth-moto-replica, dist-moto-replica  (pull-small only) a second berth / distribution
#                on the same bucket and prefix that never saw the push: what a pull costs on
#                another replica behind a load balancer (one round: after it, it has seen them)
# moto runs through scripts/moto-serial.py: moto's backend is not thread-safe, and plain
# `moto_server` answers 500 when a listing races a delete (distribution's pushes failed at
# blob #330-690 of 1000 that way); the wrapper serves one request at a time inside moto.
#
# pull-small runs in BENCH_ROUNDS rounds (default 3) over the same 1000 blobs: round 1
# pushes them (untimed) and pulls them against each server in turn, later rounds only pull,
# interleaved (A B C A B C); the table gives the median round and the range.
# moto is slow (every byte goes through Python), so the berth-moto / dist-moto ratio is the
# fair comparison and berth-s3s shows what berth does on a faster S3 server.
# berth reads a big blob in parallel 16 MiB ranged GETs (read-ahead), but moto copies the
# whole object for every ranged GET, so berth-moto runs with BERTH_S3_READ_AHEAD=0 (one
# GET per blob, as distribution does) and berth-moto-ra shows what read-ahead costs there.
#
# S3 requests are counted from moto's request log, so both registries are measured the same
# way: requests per pushed 4 KiB blob (push-small), per pulled small blob (pull-small, its
# untimed push subtracted) and per manifest GET by tag (manifest-get) and by digest
# (manifest-get-digest).
#
# Knobs: BENCH_BIG_MIB=256 BENCH_REPS=1 BENCH_COUNT=1000 BENCH_DURATION=5 BENCH_KEEP=1 BENCH_ROUNDS=3
#        BENCH_SKIP_BUILD=1 (use the release binaries already built)
#        BENCH_WORKLOADS="push-small pull-small ..." (a subset; default all)
#        MOTO_SERVER="python3 scripts/moto-serial.py" (pip install 'moto[server]'), S3S_FS=s3s-fs
# Needs: cargo, docker-registry, curl, jq, s3s-fs, moto_server. Everything is stopped by PID
# on exit, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BIG_MIB=${BENCH_BIG_MIB:-256}
REPS=${BENCH_REPS:-1}
COUNT=${BENCH_COUNT:-1000}
DURATION=${BENCH_DURATION:-5}
MOTO=${MOTO_SERVER:-python3 $ROOT/scripts/moto-serial.py}
ROUNDS=${BENCH_ROUNDS:-3}
S3S=${S3S_FS:-s3s-fs}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "bench-s3.sh: '$1' not found; install it with: $2" >&2
        exit 1
    fi
}
need cargo "rustup (https://rustup.rs)"
need docker-registry "apt-get install -y docker-registry"
need curl "apt-get install -y curl"
need jq "apt-get install -y jq"
need "$S3S" "cargo install s3s-fs --version 0.14.1 --features binary --locked"
if ! python3 -c 'import moto.server' 2>/dev/null; then
    echo "bench-s3.sh: moto not found; install it with: pip install 'moto[server]'" >&2
    exit 1
fi

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building berth and berth-bench (release)" >&2
    cargo build --release -p berth -p berth-bench >&2
fi
BERTH="$TARGET_DIR/release/berth"
BENCH="$TARGET_DIR/release/berth-bench"

WORK=$(mktemp -d /tmp/berth-bench-s3.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "bench-s3.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}
wait_port() { # NAME PID PORT LOG
    for _ in $(seq 1 200); do
        if ! kill -0 "$2" 2>/dev/null; then echo "$1 exited; log:" >&2; tail -n 30 "$4" >&2; exit 1; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$1 did not listen on $3" >&2; tail -n 30 "$4" >&2; exit 1
}
wait_registry() { # NAME PID URL LOG
    for _ in $(seq 1 200); do
        if ! kill -0 "$2" 2>/dev/null; then echo "$1 exited; log:" >&2; tail -n 30 "$4" >&2; exit 1; fi
        if curl -fsS -o /dev/null --max-time 2 "$3/v2/" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$1 did not answer $3/v2/" >&2; tail -n 30 "$4" >&2; exit 1
}

export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecretkey
BUCKET=bench

# --- S3 servers ---
P_S3S=$(free_port); mkdir -p "$WORK/s3s/$BUCKET"
"$S3S" --host 127.0.0.1 --port "$P_S3S" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3s" >"$WORK/s3s.log" 2>&1 &
PIDS+=($!); wait_port s3s-fs "$!" "$P_S3S" "$WORK/s3s.log"
P_MOTO=$(free_port)
$MOTO -H 127.0.0.1 -p "$P_MOTO" >"$WORK/moto.log" 2>&1 &
PIDS+=($!); wait_port moto "$!" "$P_MOTO" "$WORK/moto.log"
curl -fsS --retry 5 --retry-connrefused -X PUT "http://127.0.0.1:$P_MOTO/$BUCKET" >/dev/null

# --- registries ---
declare -A URL PID
start_berth() { # NAME S3PORT [VAR=VALUE...]
    local port; port=$(free_port)
    env "${@:3}" "$BERTH" serve --addr "127.0.0.1:$port" --storage "s3://$BUCKET/berth" \
        --s3-endpoint "http://127.0.0.1:$2" --s3-region us-east-1 --s3-allow-http \
        >"$WORK/$1.log" 2>&1 &
    PID[$1]=$!; PIDS+=($!); URL[$1]="http://127.0.0.1:$port"
    wait_registry "$1" "$!" "${URL[$1]}" "$WORK/$1.log"
}
start_berth berth-s3s "$P_S3S"
start_berth berth-moto "$P_MOTO" BERTH_S3_READ_AHEAD=0
start_berth berth-moto-ra "$P_MOTO"
start_berth berth-moto-nc "$P_MOTO" BERTH_S3_READ_AHEAD=0 BERTH_S3_CACHE_MIB=0
start_berth berth-moto-replica "$P_MOTO" BERTH_S3_READ_AHEAD=0
start_dist() { # NAME
    local port; port=$(free_port)
    sed "s/^  addr: .*/  addr: 127.0.0.1:$port/" "$WORK/dist.yml" >"$WORK/$1.yml"
    # Debian's registry panics in its s3 driver when AWS_CA_BUNDLE is set.
    env -u AWS_CA_BUNDLE docker-registry serve "$WORK/$1.yml" >"$WORK/$1.log" 2>&1 &
    PID[$1]=$!; PIDS+=($!); URL[$1]="http://127.0.0.1:$port"
    wait_registry "$1" "$!" "${URL[$1]}" "$WORK/$1.log"
}
cat >"$WORK/dist.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: us-east-1
    regionendpoint: http://127.0.0.1:$P_MOTO
    bucket: $BUCKET
    rootdirectory: /dist
    secure: false
    v4auth: true
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  redirect:
    disable: true
http:
  addr: 127.0.0.1:0
EOF
start_dist dist-moto
start_dist dist-moto-replica

# moto logs one line per request it serves.
moto_requests() { grep -c '" [0-9][0-9][0-9] ' "$WORK/moto.log" || true; }

SERVERS=(berth-s3s berth-moto dist-moto)
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-push-big pull-big push-small pull-small manifest-get manifest-get-digest}"
declare -A VALUE REQS OPS RANGE
# One run of the load generator: SERVER WORKLOAD RESULT-NAME [more berth-bench args].
# Sets VALUE/OPS/REQS[RESULT-NAME] (ERR if it failed).
run_one() {
    local s=$1 wl=$2 key=$3 before
    echo "-- $wl against $s ${*:4}" >&2
    before=$(moto_requests)
    if "$BENCH" --url "${URL[$s]}" --workload "$wl" --json --big-mib "$BIG_MIB" --reps "$REPS" \
        --count "$COUNT" --duration "$DURATION" --warmup 0 --repo-prefix "$s" "${@:4}" \
        >"$WORK/$key.json" 2>"$WORK/$key.err"; then
        VALUE[$key]=$(jq -r '.value * 10 | round / 10' "$WORK/$key.json")
        OPS[$key]=$(jq -r '.ops' "$WORK/$key.json")
        echo "   ${VALUE[$key]} $(jq -r .unit "$WORK/$key.json")" >&2
    else
        VALUE[$key]=ERR
        echo "   FAILED: $(head -c 600 "$WORK/$key.err")" >&2
    fi
    REQS[$key]=$(( $(moto_requests) - before ))
}
per() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.1f", a / b }'; }
# The median of the arguments (ERR if any is); "min-max" goes to RANGE_OUT.
median() {
    RANGE_OUT="-"
    if printf '%s\n' "$@" | grep -qx ERR; then echo ERR; return; fi
    local sorted; sorted=$(printf '%s\n' "$@" | sort -g)
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }' <<<"$sorted"
}
min_max() { printf '%s\n' "$@" | grep -vx ERR | sort -g | sed -n '1h;${H;x;s/\n/-/;p}'; }
# pull-small in rounds over the same blobs, interleaved across servers (see the header).
PULL_SERVERS=(berth-s3s berth-moto berth-moto-nc dist-moto)
pull_small_rounds() {
    local seed=$((RANDOM * 32768 + RANDOM)) r s
    # Round 1 includes the untimed push: distribution's takes 9+ minutes through moto.
    for s in "${PULL_SERVERS[@]}"; do
        run_one "$s" pull-small "$s.pull-small.1" --data-seed "$seed" --timeout 3600
    done
    for r in $(seq 2 "$ROUNDS"); do
        for s in "${PULL_SERVERS[@]}"; do
            run_one "$s" pull-small "$s.pull-small.$r" --data-seed "$seed" --pulls-only
        done
    done
    for s in "${PULL_SERVERS[@]}"; do
        local vals=()
        for r in $(seq 1 "$ROUNDS"); do vals+=("${VALUE[$s.pull-small.$r]}"); done
        VALUE[$s.pull-small]=$(median "${vals[@]}")
        RANGE[$s.pull-small]=$(min_max "${vals[@]}")
        cp "$WORK/$s.pull-small.1.json" "$WORK/$s.pull-small.json" 2>/dev/null || true
        # S3 requests per pull, from a round without a push.
        if (( ROUNDS > 1 )); then REQS[$s.pull-small.per]=$(per "${REQS[$s.pull-small.2]}" "$COUNT"); fi
    done
    # Replicas that never saw the push pull what berth-moto / dist-moto pushed: one round.
    run_one berth-moto-replica pull-small berth-moto-replica.pull-small --data-seed "$seed" \
        --pulls-only --repo-prefix berth-moto
    run_one dist-moto-replica pull-small dist-moto-replica.pull-small --data-seed "$seed" \
        --pulls-only --repo-prefix dist-moto
    for s in berth-moto-replica dist-moto-replica; do
        REQS[$s.pull-small.per]=$(per "${REQS[$s.pull-small]}" "$COUNT")
    done
}

for wl in "${WORKLOADS[@]}"; do
    if [[ "$wl" == pull-small ]]; then pull_small_rounds; continue; fi
    servers=("${SERVERS[@]}")
    if [[ "$wl" == pull-big ]]; then servers+=(berth-moto-ra); fi
    if [[ "$wl" == manifest-get* ]]; then servers+=(berth-moto-nc); fi
    for s in "${servers[@]}"; do run_one "$s" "$wl" "$s.$wl"; done
done

ratio() {
    if [[ "$1" == ERR || "$2" == ERR || -z "$1" || -z "$2" ]]; then echo "-"; else
        awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2fx", a / b }'
    fi
}

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "berth on S3 vs distribution 2.8.2 on S3 (big blob ${BIG_MIB} MiB x ${REPS}; ${COUNT} x 4 KiB blobs, 16 clients; manifest GETs 16 clients ${DURATION} s)"
printf '%-14s %12s %12s %12s %16s\n' workload berth-s3s berth-moto dist-moto "berth/dist(moto)"
for wl in "${WORKLOADS[@]}"; do
    unit=$(jq -r .unit "$WORK/berth-moto.$wl.json" 2>/dev/null || echo "")
    printf '%-14s %12s %12s %12s %16s  %s\n' "$wl" "${VALUE[berth-s3s.$wl]}" "${VALUE[berth-moto.$wl]}" \
        "${VALUE[dist-moto.$wl]}" "$(ratio "${VALUE[berth-moto.$wl]}" "${VALUE[dist-moto.$wl]}")" "$unit"
done
echo "pull-big on moto with berth's default read-ahead (parallel ranged GETs, each of which moto"
echo "answers by copying the whole object): ${VALUE[berth-moto-ra.pull-big]:-} MB/s"
if [[ -n "${VALUE[berth-moto.pull-small]:-}" ]]; then
    echo "pull-small, median of $ROUNDS interleaved rounds over the same blobs (min-max):"
    for s in "${PULL_SERVERS[@]}"; do
        printf '  %-20s %10s  (%s)  vs distribution %s\n' "$s" "${VALUE[$s.pull-small]}" \
            "${RANGE[$s.pull-small]}" "$(ratio "${VALUE[$s.pull-small]}" "${VALUE[dist-moto.pull-small]}")"
    done
    echo "pull-small on a second replica that never saw the push (one round):"
    printf '  %-20s %10s  vs dist-moto-replica %s\n' berth-moto-replica \
        "${VALUE[berth-moto-replica.pull-small]}" \
        "$(ratio "${VALUE[berth-moto-replica.pull-small]}" "${VALUE[dist-moto-replica.pull-small]}")"
    printf '  %-20s %10s\n' dist-moto-replica "${VALUE[dist-moto-replica.pull-small]}"
fi
echo "berth on moto without its object cache (BERTH_S3_CACHE_MIB=0; links still remembered):"
for wl in manifest-get manifest-get-digest; do
    printf '  %-20s %10s  vs distribution %s\n' "$wl" "${VALUE[berth-moto-nc.$wl]:-}" \
        "$(ratio "${VALUE[berth-moto-nc.$wl]:-}" "${VALUE[dist-moto.$wl]:-}")"
done
echo
echo "S3 requests seen by moto (lower is better):"
for s in berth-moto berth-moto-nc dist-moto berth-moto-replica dist-moto-replica; do
    push=$(per "${REQS[$s.push-small]:-0}" "$COUNT")
    pull=${REQS[$s.pull-small.per]:--}
    man=$(per "${REQS[$s.manifest-get]:-0}" "${OPS[$s.manifest-get]:-0}")
    mand=$(per "${REQS[$s.manifest-get-digest]:-0}" "${OPS[$s.manifest-get-digest]:-0}")
    big=${REQS[$s.push-big]:-}
    printf '  %-13s per 4 KiB blob push: %-5s per small blob pull: %-5s per manifest GET by tag: %-5s by digest: %-5s for the %s MiB push: %s\n' \
        "$s" "$push" "$pull" "$man" "$mand" "$BIG_MIB" "$big"
done
