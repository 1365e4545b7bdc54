#!/usr/bin/env bash
# Benchmark `berth serve` against Debian's reference registry (`docker-registry`,
# distribution 2.8.2) in the same run, on the same machine, with the same load generator
# (target/release/berth-bench), and print a table of ratios.
#
#   scripts/bench.sh
#
# Environment knobs (all optional):
#   BENCH_ROUNDS=2        rounds; each round runs every workload against both servers,
#                         the order of the two servers alternates between rounds; 0 runs only
#                         the group-commit and many-clients sections below
#   BENCH_DURATION=10     seconds of manifest-get (and of the wrk run)
#   BENCH_BIG_MIB=256     size of the big blob
#   BENCH_REPS=3          big-blob transfers per push-big / pull-big run
#   BENCH_WRK=1           also drive manifest GETs with wrk (if installed); 0 to skip
#   BENCH_KEEP=1          keep the temporary folder (storage, logs, raw JSON)
#   BENCH_MANY="64 256"   client counts for the many-clients workloads (pull-image: every
#                         client pulls one whole image at once; mixed: one in four pushes);
#                         "64 256 1024" for the full run (1024 moves 64 GiB per server), "" to skip
#   BENCH_IMAGE_MIB=64    size of the image they pull (4 layers)
#   BENCH_GROUP_ROUNDS=5  rounds of the group-commit comparison: push-small (1000 x 4 KiB,
#                         16 clients) against berth, against the same berth binary with group
#                         commit off (BERTH_GROUP_COMMIT=legacy: each upload fsyncs its data file
#                         alone and no folder, as before group commit; BERTH_GROUP_COMMIT=off:
#                         each upload fsyncs its data and folders alone, the same promise) and
#                         against distribution, the order rotating each round; 0 to skip
#   DOCKER_REGISTRY=/usr/bin/docker-registry
#
# Only 127.0.0.1 is contacted. Both servers are stopped by PID on exit, also on failure.
# Needs: cargo, docker-registry, curl, jq (wrk optional) — all from Debian:
#   apt-get install -y docker-registry curl jq wrk
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=${BENCH_ROUNDS:-2}
DURATION=${BENCH_DURATION:-10}
BIG_MIB=${BENCH_BIG_MIB:-256}
REPS=${BENCH_REPS:-3}
USE_WRK=${BENCH_WRK:-1}
MANY=${BENCH_MANY-64 256}
IMAGE_MIB=${BENCH_IMAGE_MIB:-64}
GROUP_ROUNDS=${BENCH_GROUP_ROUNDS:-5}
DIST_BIN=${DOCKER_REGISTRY:-docker-registry}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "bench.sh: '$1' not found; install it with: $2" >&2
        exit 1
    fi
}
need cargo "rustup (https://rustup.rs)"
need "$DIST_BIN" "apt-get install -y docker-registry"
need curl "apt-get install -y curl"
need jq "apt-get install -y jq"
if [[ "$USE_WRK" == 1 ]] && ! command -v wrk >/dev/null 2>&1; then
    echo "bench.sh: wrk not found, skipping the wrk row (apt-get install -y wrk)" >&2
    USE_WRK=0
fi

echo "== building berth and berth-bench (release)" >&2
cargo build --release -p berth -p berth-bench >&2
BERTH="$TARGET_DIR/release/berth"
BENCH="$TARGET_DIR/release/berth-bench"

WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
BERTH_PID=""
DIST_PID=""
LEGACY_PID=""
OFF_PID=""

cleanup() {
    local pid
    for pid in "$BERTH_PID" "$DIST_PID" "$LEGACY_PID" "$OFF_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    for pid in "$BERTH_PID" "$DIST_PID" "$LEGACY_PID" "$OFF_PID"; do
        if [[ -n "$pid" ]]; then
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        echo "bench.sh: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on yet (probed on 127.0.0.1 only).
free_port() {
    local p i
    for i in $(seq 1 100); do
        p=$((20000 + RANDOM % 30000))
        if [[ "$p" != "${1:-}" ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "bench.sh: no free port found" >&2
    return 1
}

P1=$(free_port)
P2=$(free_port "$P1")
P3=$(free_port "$P2")
P4=$(free_port "$P3")
BERTH_URL="http://127.0.0.1:$P1"
DIST_URL="http://127.0.0.1:$P2"
LEGACY_URL="http://127.0.0.1:$P3"
OFF_URL="http://127.0.0.1:$P4"
mkdir -p "$WORK/berth-data" "$WORK/dist-data" "$WORK/legacy-data" "$WORK/off-data" "$WORK/res"

cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/dist-data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$P2
EOF

echo "== starting berth on $BERTH_URL and distribution on $DIST_URL (work dir $WORK)" >&2
"$BERTH" serve --addr "127.0.0.1:$P1" --storage "$WORK/berth-data" >"$WORK/berth.log" 2>&1 &
BERTH_PID=$!
# `env` execs the registry, so $! is the registry's own PID. Debian's registry panics in
# its s3 driver when AWS_CA_BUNDLE is set; unset it to be safe.
env -u AWS_CA_BUNDLE "$DIST_BIN" serve "$WORK/registry.yml" >"$WORK/dist.log" 2>&1 &
DIST_PID=$!

wait_ready() { # NAME PID URL LOG
    local i
    for i in $(seq 1 100); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "bench.sh: $1 exited during start-up; its log:" >&2
            cat "$4" >&2
            exit 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$3/v2/"; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench.sh: $1 did not answer $3/v2/ within 10 s; its log:" >&2
    cat "$4" >&2
    exit 1
}
wait_ready berth "$BERTH_PID" "$BERTH_URL" "$WORK/berth.log"
wait_ready distribution "$DIST_PID" "$DIST_URL" "$WORK/dist.log"

WORKLOADS=(push-big push-small pull-big pull-big-raw manifest-get)
ERRORS=0

url_of() {
    case "$1" in
    berth) echo "$BERTH_URL" ;;
    berth-legacy) echo "$LEGACY_URL" ;;
    berth-off) echo "$OFF_URL" ;;
    *) echo "$DIST_URL" ;;
    esac
}

# run_bench SERVER WORKLOAD ROUND: one berth-bench run; its JSON goes to res/.
run_bench() {
    local out="$WORK/res/$1.$2.$3"
    # Flush what the previous run left in the page cache, so one server's deferred
    # writeback (distribution does not fsync) is not billed to the next server's run.
    sync
    echo "-- round $3: $2 against $1" >&2
    if RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$BENCH" --url "$(url_of "$1")" --workload "$2" --json \
        --big-mib "$BIG_MIB" --reps "$REPS" --duration "$DURATION" \
        >"$out.json" 2>"$out.err"; then
        jq -r '"   \(.value | floor) \(.unit) in \(.seconds * 100 | floor / 100) s"' "$out.json" >&2
    else
        ERRORS=$((ERRORS + 1))
        rm -f "$out.json"
        echo "   FAILED: $(head -n 8 "$out.err")" >&2
    fi
}

# run_wrk SERVER ROUND: manifest GETs by tag with wrk (the image was pushed by manifest-get).
run_wrk() {
    local out="$WORK/res/$1.manifest-get-wrk.$2"
    sync
    local url
    url="$(url_of "$1")/v2/bench/manifest-get/manifests/latest"
    echo "-- round $2: manifest-get (wrk) against $1" >&2
    if wrk -t2 -c16 -d"${DURATION}s" --latency \
        -H "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json" \
        "$url" >"$out.txt" 2>&1; then
        if grep -q "Non-2xx or 3xx responses" "$out.txt"; then
            ERRORS=$((ERRORS + 1))
            echo "   FAILED: $(grep 'Non-2xx' "$out.txt")" >&2
            return
        fi
        local rps
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$out.txt")
        if [[ -n "$rps" ]]; then
            jq -n --argjson v "$rps" '{value: $v, unit: "req/s"}' >"$out.json"
            echo "   $rps req/s" >&2
            return
        fi
    fi
    ERRORS=$((ERRORS + 1))
    echo "   FAILED: $(tail -n 5 "$out.txt")" >&2
}

for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2 == 1)); then order=(berth distribution); else order=(distribution berth); fi
    for wl in "${WORKLOADS[@]}"; do
        for server in "${order[@]}"; do
            run_bench "$server" "$wl" "$round"
            if [[ "$wl" == manifest-get && "$USE_WRK" == 1 && -f "$WORK/res/$server.$wl.$round.json" ]]; then
                run_wrk "$server" "$round"
            fi
        done
    done
done

# Peak resident memory (VmHWM) and CPU time of the rounds above, read before the
# many-clients runs below (which report their own sampled peaks).
hwm_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
cpu_s() { # utime + stime in seconds (fields 14 and 15 of /proc/PID/stat)
    local stat
    stat=$(cat "/proc/$1/stat")
    stat=${stat##*) }
    awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($12 + $13) / t}' <<<"$stat"
}
for s in berth distribution; do
    pid=$BERTH_PID
    [[ "$s" == distribution ]] && pid=$DIST_PID
    if kill -0 "$pid" 2>/dev/null; then
        hwm_mib "$pid" >"$WORK/res/$s.hwm"
        cpu_s "$pid" >"$WORK/res/$s.cpu"
    fi
done

# Group commit: push-small against berth, the same binary without group commit (two
# ways) and distribution, GROUP_ROUNDS rounds, the order rotating so drift hits all.
if ((GROUP_ROUNDS > 0)); then
    echo "== starting berth with BERTH_GROUP_COMMIT=legacy on $LEGACY_URL and =off on $OFF_URL" >&2
    BERTH_GROUP_COMMIT=legacy "$BERTH" serve --addr "127.0.0.1:$P3" --storage "$WORK/legacy-data" \
        >"$WORK/legacy.log" 2>&1 &
    LEGACY_PID=$!
    BERTH_GROUP_COMMIT=off "$BERTH" serve --addr "127.0.0.1:$P4" --storage "$WORK/off-data" \
        >"$WORK/off.log" 2>&1 &
    OFF_PID=$!
    wait_ready berth-legacy "$LEGACY_PID" "$LEGACY_URL" "$WORK/legacy.log"
    wait_ready berth-off "$OFF_PID" "$OFF_URL" "$WORK/off.log"
    GROUP_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    servers=(berth berth-legacy berth-off distribution)
    for r in $(seq 1 "$GROUP_ROUNDS"); do
        for k in 0 1 2 3; do
            server=${servers[$(((r - 1 + k) % 4))]}
            out="$WORK/res/$server.group.$r"
            sync
            echo "-- group round $r: push-small against $server" >&2
            if "$BENCH" --url "$(url_of "$server")" --workload push-small --json \
                >"$out.json" 2>"$out.err"; then
                jq -r '"   \(.value | floor) \(.unit), p99 \(.p99_ms) ms"' "$out.json" >&2
            else
                ERRORS=$((ERRORS + 1))
                rm -f "$out.json"
                echo "   FAILED: $(head -n 8 "$out.err")" >&2
            fi
        done
    done
    GROUP_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
    for pid in "$LEGACY_PID" "$OFF_PID"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$LEGACY_PID" "$OFF_PID"; do wait "$pid" 2>/dev/null || true; done
    LEGACY_PID=""
    OFF_PID=""
fi

# Many clients: once per client count, both servers back to back (order alternating).
# run_many SERVER WORKLOAD CLIENTS
run_many() {
    local out="$WORK/res/$1.$2-$3" pid=$BERTH_PID
    [[ "$1" == distribution ]] && pid=$DIST_PID
    sync
    echo "-- $2 with $3 clients against $1" >&2
    if RUST_BACKTRACE=0 "$BENCH" --url "$(url_of "$1")" --workload "$2" --json --clients "$3" \
        --image-mib "$IMAGE_MIB" --server-pid "$pid" --timeout 1200 >"$out.json" 2>"$out.err"; then
        cut -d' ' -f1-3 /proc/loadavg >"$out.load"
        jq -r '"   \(.value | floor) \(.unit) in \(.seconds * 100 | floor / 100) s, p99 \(.p99_ms) ms, manifest GET p99 \(.manifest_p99_ms) ms (probe \(.probe_manifest_p99_ms) ms), RssAnon \(.rss_anon_peak_mib) MiB, Pss \(.pss_peak_mib) MiB, VmRSS \(.rss_peak_mib) MiB"' "$out.json" >&2
    else
        ERRORS=$((ERRORS + 1))
        rm -f "$out.json"
        echo "   FAILED: $(grep -v 'open-file limit' "$out.err" | head -n 8)" >&2
    fi
}
i=0
for n in $MANY; do
    if ((i % 2 == 0)); then order=(berth distribution); else order=(distribution berth); fi
    i=$((i + 1))
    for wl in pull-image mixed; do
        for server in "${order[@]}"; do run_many "$server" "$wl" "$n"; done
    done
done

# The final check that both servers are still up (crashed?).
for s in berth distribution; do
    pid=$BERTH_PID
    [[ "$s" == distribution ]] && pid=$DIST_PID
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "bench.sh: $s is no longer running (crashed?); its log:" >&2
        tail -n 20 "$WORK/$([[ $s == berth ]] && echo berth || echo dist).log" >&2
        ERRORS=$((ERRORS + 1))
    fi
done

# values SERVER KEY: the per-round values, space-separated.
values() {
    local r f
    for r in $(seq 1 "$ROUNDS"); do
        f="$WORK/res/$1.$2.$r.json"
        if [[ -f "$f" ]]; then jq -r '.value * 10 | round / 10' "$f"; else echo ERR; fi
    done | paste -sd' ' -
}
mean() { awk '{ for (i = 1; i <= NF; i++) { if ($i == "ERR") { print "ERR"; exit } s += $i } printf "%.1f", s / NF }' <<<"$1"; }
ratio() {
    if [[ "$1" == ERR || "$2" == ERR || -z "$1" || -z "$2" ]]; then echo "-"; else
        awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2fx", a / b }'
    fi
}

ROWS=("push-big|MB/s|>= 2" "push-small|push/s|>= 2" "pull-big|MB/s|>= 1.2" "pull-big-raw|MB/s|>= 1.2" "manifest-get|req/s|>= 4")
if [[ "$USE_WRK" == 1 ]]; then ROWS+=("manifest-get-wrk|req/s|>= 4"); fi
# BENCH_ROUNDS=0 runs only the group-commit and many-clients sections.
if ((ROUNDS == 0)); then ROWS=(); fi

if ((ROUNDS > 0)); then
echo
echo "berth vs distribution 2.8.2 — mean of $ROUNDS round(s); ratio = berth / distribution"
echo "(big blob ${BIG_MIB} MiB x ${REPS} per run; small pushes 1000 x 4 KiB, 16 clients; manifest GETs 16 clients for ${DURATION} s; MB = 10^6 bytes)"
printf '%-26s %14s %14s %9s  %-22s %s\n' workload berth distribution ratio better target
for row in "${ROWS[@]}"; do
    IFS='|' read -r key unit target <<<"$row"
    b=$(mean "$(values berth "$key")")
    d=$(mean "$(values distribution "$key")")
    printf '%-26s %14s %14s %9s  %-22s %s\n' "$key ($unit)" "$b" "$d" "$(ratio "$b" "$d")" "higher" "$target"
done
b=$(cat "$WORK/res/berth.hwm" 2>/dev/null || echo ERR)
d=$(cat "$WORK/res/distribution.hwm" 2>/dev/null || echo ERR)
printf '%-26s %14s %14s %9s  %-22s %s\n' "peak RSS (MiB, VmHWM)" "$b" "$d" "$(ratio "$b" "$d")" "lower" "< 1"
b=$(cat "$WORK/res/berth.cpu" 2>/dev/null || echo ERR)
d=$(cat "$WORK/res/distribution.cpu" 2>/dev/null || echo ERR)
printf '%-26s %14s %14s %9s  %-22s %s\n' "server CPU time (s)" "$b" "$d" "$(ratio "$b" "$d")" "lower (information)" "-"
fi

# many_field SERVER KEY FIELD: one field of a many-clients run, or ERR.
many_field() {
    local f="$WORK/res/$1.$2.json"
    if [[ -f "$f" ]]; then jq -r ".$3 // \"ERR\" | if type == \"number\" then (. * 10 | round / 10) else . end" "$f"; else echo ERR; fi
}
if [[ -n "${MANY// /}" ]]; then
    echo
    echo "many clients at once (one run each; ${IMAGE_MIB} MiB image in 4 layers, every client pulls it once;"
    echo "mixed: one client in four pushes a new 1 MiB image instead; RSS sampled every 100 ms):"
    printf '%-40s %14s %14s %9s  %-22s %s\n' workload berth distribution ratio better target
    for n in $MANY; do
        for wl in pull-image mixed; do
            key="$wl-$n"
            for spec in "value|MB/s|higher|flat 64..1024" "p99_ms|p99 ms|lower|-" \
                    "manifest_p99_ms|manifest GET p99 ms|lower|< 50 ms" \
                "probe_manifest_p99_ms|probe manifest p99 ms|lower|< 50 ms" \
                "rss_anon_peak_mib|RssAnon peak MiB|lower|< 100 MiB" \
                "pss_peak_mib|Pss peak MiB|lower|(information)" \
                "rss_peak_mib|VmRSS peak MiB|lower|(information)"; do
                IFS='|' read -r field label better target <<<"$spec"
                b=$(many_field berth "$key" "$field")
                d=$(many_field distribution "$key" "$field")
                printf '%-40s %14s %14s %9s  %-22s %s\n' "$key ($label)" "$b" "$d" "$(ratio "$b" "$d")" "$better" "$target"
            done
            printf '%-40s %14s / %s\n' "$key (load avg after: berth / dist)" "$(cat "$WORK/res/berth.$key.load" 2>/dev/null || echo -)" \
                "$(cat "$WORK/res/distribution.$key.load" 2>/dev/null || echo -)"
        done
    done
fi

# group_values SERVER: push/s of each group-commit round, one per line.
group_values() {
    local r
    for r in $(seq 1 "$GROUP_ROUNDS"); do
        f="$WORK/res/$1.group.$r.json"
        [[ -f "$f" ]] && jq -r '.value * 10 | round / 10' "$f"
    done
}
# median_range SERVER: "median (min-max)" of its group-commit rounds, or ERR.
median_range() {
    group_values "$1" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "ERR"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.1f (%.1f-%.1f)", m, v[1], v[NR] }'
}
if ((GROUP_ROUNDS > 0)); then
    echo
    echo "group commit: push-small (1000 x 4 KiB, 16 clients), median (min-max) of $GROUP_ROUNDS rounds, order rotating;"
    echo "berth-legacy: the same binary with BERTH_GROUP_COMMIT=legacy (each upload fsyncs its data file alone, no folder:"
    echo "as before group commit); berth-off: BERTH_GROUP_COMMIT=off (each upload fsyncs its data and folders alone)"
    echo "load average before/after: $GROUP_LOAD_BEFORE / $GROUP_LOAD_AFTER"
    printf '%-26s %24s %24s %9s  %s\n' workload berth peer ratio target
    b=$(median_range berth)
    for peer in berth-legacy berth-off distribution; do
        p=$(median_range "$peer")
        target="-"
        [[ "$peer" == berth-legacy ]] && target=">= 1.5x"
        printf '%-26s %24s %24s %9s  %s\n' "push-small vs $peer" "$b" "$p" "$(ratio "${b%% *}" "${p%% *}")" "$target"
    done
fi

echo
echo "raw values per round (round 1 .. $ROUNDS):"
for row in "${ROWS[@]}"; do
    IFS='|' read -r key unit _ <<<"$row"
    printf '  %-20s berth: %-32s distribution: %s\n' "$key" "$(values berth "$key")" "$(values distribution "$key")"
done
for s in berth distribution; do
    for r in $(seq 1 "$ROUNDS"); do
        for wl in push-small manifest-get; do
            f="$WORK/res/$s.$wl.$r.json"
            if [[ -f "$f" ]]; then
                jq -r --arg s "$s" --arg r "$r" \
                    '"  latency \(.workload) \($s) round \($r): p50 \(.p50_ms) ms, p99 \(.p99_ms) ms"' "$f"
            fi
        done
    done
done

if ((ERRORS > 0)); then
    echo
    echo "bench.sh: $ERRORS run(s) failed; see the FAILED lines above (BENCH_KEEP=1 keeps logs)" >&2
    exit 1
fi
