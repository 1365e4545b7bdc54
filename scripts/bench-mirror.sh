#!/usr/bin/env bash
# The pull-through cache against pulling direct and against Debian's `docker-registry` in proxy
# mode (`proxy: remoteurl:`), from the same upstream (a `berth serve` holding one image with a
# big layer), same machine, same run. Per round, both caches start empty: a cold pull (time to
# first byte and total, with curl) of the big blob, then a warm one; and a cold and a warm
# `skopeo copy` of the whole image. Prints the medians and the ratios against direct.
#
#   scripts/bench-mirror.sh
#
# Environment knobs (all optional):
#   BENCH_ROUNDS=3        rounds
#   BENCH_MIB=256         size of the big layer in MiB
#   BENCH_KEEP=1          keep the temporary folder (storage, logs)
#   BENCH_PROFILE=release cargo profile of the berth binary (debug only to try the script)
#   BENCH_UPSTREAM_RATE=  e.g. 1gbit: the upstream runs in a network namespace this script
#                         makes, behind a veth pair shaped to that rate both ways (tc tbf;
#                         needs root), as a registry across a network is; the mirrors and the
#                         direct pulls reach it over that link alike. Unset: all on loopback,
#                         where the cache's own CPU (hash, write, copy) is all there is to see.
#
# Only 127.0.0.1 (and the namespace's own 10.231.N.0/24) is contacted. Every server is
# stopped by PID on exit, also on failure, and the namespace and veth are removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${BENCH_ROUNDS:-3}
MIB=${BENCH_MIB:-256}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in cargo curl python3 docker-registry skopeo sha256sum; do
    command -v "$tool" >/dev/null || { echo "bench-mirror.sh: $tool not found" >&2; exit 1; }
done
PROFILE=${BENCH_PROFILE:-release}
echo "== building berth ($PROFILE)" >&2
if [[ $PROFILE == release ]]; then cargo build --release --bin berth >&2; else cargo build --bin berth >&2; fi
BERTH="$TARGET_DIR/$PROFILE/berth"

WORK=$(mktemp -d /tmp/berth-bench-mirror.XXXXXX)
PIDS=()
RATE=${BENCH_UPSTREAM_RATE:-}
NETNS=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$NETNS" ]]; then
        ip netns del "$NETNS" 2>/dev/null || true
        ip link del "${NETNS}h" 2>/dev/null || true
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "bench-mirror.sh: no free port found" >&2
    return 1
}

wait_up() { # PORT
    for _ in $(seq 1 300); do
        curl -fs -o /dev/null "http://127.0.0.1:$1/v2/" && return 0
        sleep 0.1
    done
    echo "bench-mirror.sh: nothing answers on port $1" >&2
    return 1
}

stop() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- the upstream and its image ----------------------------------------------------------
UP_PORT=$(free_port)
mkdir -p "$WORK/upstream"
UP_HOST=127.0.0.1
RUN_UP=()
if [[ -n "$RATE" ]]; then
    # A namespace of our own: 10.231.N.2 inside, 10.231.N.1 on this side, tbf both ways.
    n=$((RANDOM % 250 + 1))
    NETNS="bm$$"
    ip netns add "$NETNS"
    ip link add "${NETNS}h" type veth peer name "${NETNS}n"
    ip link set "${NETNS}n" netns "$NETNS"
    ip addr add "10.231.$n.1/24" dev "${NETNS}h"
    ip link set "${NETNS}h" up
    ip -n "$NETNS" addr add "10.231.$n.2/24" dev "${NETNS}n"
    ip -n "$NETNS" link set "${NETNS}n" up
    ip -n "$NETNS" link set lo up
    tc qdisc add dev "${NETNS}h" root tbf rate "$RATE" burst 1mbit latency 50ms
    tc -n "$NETNS" qdisc add dev "${NETNS}n" root tbf rate "$RATE" burst 1mbit latency 50ms
    UP_HOST="10.231.$n.2"
    RUN_UP=(nsenter "--net=/var/run/netns/$NETNS")
    echo "== upstream behind a $RATE link at $UP_HOST" >&2
fi
BERTH_LOG=warn "${RUN_UP[@]}" "$BERTH" serve --addr "$UP_HOST:$UP_PORT" \
    --storage "$WORK/upstream/data" >"$WORK/upstream/log" 2>&1 &
PIDS+=($!)
UP="http://$UP_HOST:$UP_PORT"
for _ in $(seq 1 300); do curl -fs -o /dev/null "$UP/v2/" && break; sleep 0.1; done
curl -fs -o /dev/null "$UP/v2/" || { echo "bench-mirror.sh: the upstream does not answer" >&2; cat "$WORK/upstream/log" >&2; exit 1; }

push_blob() { # FILE -> digest
    local digest location
    digest="sha256:$(sha256sum "$1" | cut -d' ' -f1)"
    location=$(curl -fsS -D - -o /dev/null -X POST "$UP/v2/bench/app/blobs/uploads/" \
        | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
    case "$location" in http*) ;; *) location="$UP$location" ;; esac
    case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
    curl -fsS -o /dev/null -X PUT -H 'content-type: application/octet-stream' \
        --data-binary "@$1" "$location"
    echo "$digest"
}

echo "== pushing a ${MIB} MiB layer to the upstream" >&2
head -c "$((MIB << 20))" /dev/urandom >"$WORK/big"
printf 'small layer\n' >"$WORK/small"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$WORK/config"
BIG=$(push_blob "$WORK/big")
SMALL=$(push_blob "$WORK/small")
CONFIG=$(push_blob "$WORK/config")
size() { stat -c %s "$1"; }
cat >"$WORK/manifest" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CONFIG","size":$(size "$WORK/config")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$BIG","size":$(size "$WORK/big")},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$SMALL","size":$(size "$WORK/small")}]}
EOF
curl -fsS -o /dev/null -X PUT -H 'content-type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$WORK/manifest" "$UP/v2/bench/app/manifests/1"

# --- the caches --------------------------------------------------------------------------
start_berth_mirror() { # DIR PORT
    mkdir -p "$1"
    printf '[[mirror]]\nupstream = "%s"\nprefix = "up"\n' "$UP" >"$1/berth.toml"
    BERTH_LOG=warn "$BERTH" serve --addr "127.0.0.1:$2" --storage "$1/data" \
        --config "$1/berth.toml" >"$1/log" 2>&1 &
    echo $!
}

start_distribution_proxy() { # DIR PORT
    mkdir -p "$1"
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n  secret: bench\nproxy:\n  remoteurl: %s\n' \
        "$1/data" "$2" "$UP" >"$1/config.yml"
    docker-registry serve "$1/config.yml" >"$1/log" 2>&1 &
    echo $!
}

# "TTFB TOTAL" in seconds for a GET, checking the bytes' digest.
timed_get() { # URL EXPECTED_DIGEST
    local out got
    out=$(curl -fsS -o "$WORK/got" -w '%{time_starttransfer} %{time_total}' "$1")
    got="sha256:$(sha256sum "$WORK/got" | cut -d' ' -f1)"
    [[ "$got" == "$2" ]] || { echo "bench-mirror.sh: $1 gave $got, not $2" >&2; exit 1; }
    rm -f "$WORK/got"
    echo "$out"
}

timed_copy() { # IMAGE_REF
    local start end
    rm -rf "$WORK/copy"
    start=$(date +%s.%N)
    skopeo copy --src-tls-verify=false --retry-times=0 "$1" "dir:$WORK/copy" >/dev/null
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.4f}')"
}

RESULTS="$WORK/results"
: >"$RESULTS"
record() { echo "$1 $2" >>"$RESULTS"; }

for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS" >&2
    read -r t f <<<"$(timed_get "$UP/v2/bench/app/blobs/$BIG" "$BIG")"
    record direct_ttfb "$t"; record direct_total "$f"
    record direct_copy "$(timed_copy "docker://$UP_HOST:$UP_PORT/bench/app:1")"

    for kind in berth distribution; do
        port=$(free_port)
        dir="$WORK/$kind-$round"
        if [[ $kind == berth ]]; then
            pid=$(start_berth_mirror "$dir" "$port"); path="up/bench/app"
        else
            pid=$(start_distribution_proxy "$dir" "$port"); path="bench/app"
        fi
        PIDS+=("$pid")
        wait_up "$port"
        # A cache serving pulls has been up a while: let both finish starting (berth asks
        # its upstream `GET /v2/` at start, which over a link tries https first).
        sleep 1
        read -r t f <<<"$(timed_get "http://127.0.0.1:$port/v2/$path/blobs/$BIG" "$BIG")"
        record "${kind}_cold_ttfb" "$t"; record "${kind}_cold_total" "$f"
        # Let a fill that outlives the response (distribution's) finish before the warm pull.
        sleep 1
        read -r t f <<<"$(timed_get "http://127.0.0.1:$port/v2/$path/blobs/$BIG" "$BIG")"
        record "${kind}_warm_ttfb" "$t"; record "${kind}_warm_total" "$f"
        stop "$pid"
        # Whole image with skopeo, cold then warm, on a fresh cache.
        rm -rf "$dir"
        if [[ $kind == berth ]]; then pid=$(start_berth_mirror "$dir" "$port"); else pid=$(start_distribution_proxy "$dir" "$port"); fi
        PIDS+=("$pid")
        wait_up "$port"
        sleep 1
        record "${kind}_cold_copy" "$(timed_copy "docker://127.0.0.1:$port/$path:1")"
        sleep 1
        record "${kind}_warm_copy" "$(timed_copy "docker://127.0.0.1:$port/$path:1")"
        stop "$pid"
    done
done

python3 - "$RESULTS" "$MIB" "${RATE:-loopback}" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    rows.setdefault(k, []).append(float(v))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"median of {len(rows['direct_total'])} rounds, {sys.argv[2]} MiB blob, upstream link: {sys.argv[3]} (seconds; ratio to direct)")
for metric in ["ttfb", "total", "copy"]:
    d = med[f"direct_{metric}"]
    print(f"{metric:6} direct {d:.4f}")
    for kind in ["berth", "distribution"]:
        for state in ["cold", "warm"]:
            v = med[f"{kind}_{state}_{metric}"]
            print(f"{metric:6} {kind:12} {state} {v:.4f}  ratio {v / d:.2f}")
EOF
