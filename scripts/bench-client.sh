#!/usr/bin/env bash
# Benchmark the registry client: `berth copy` against `skopeo copy` of the same multi-layer
# image between two local registries, in the same run, alternating which tool goes first.
# Prints each run's times and the ratio skopeo/berth (above 1 means berth is faster).
#
#   scripts/bench-client.sh
#
# Environment knobs (all optional):
#   BENCH_RUNS=5            copies per tool
#   BENCH_LAYERS_MIB="1 4 16 32 64 96"   layer sizes (random data, so no compression helps)
#   BENCH_SERVER=berth      the two registries: berth (berth serve) or distribution
#                           (Debian's docker-registry)
#   BENCH_KEEP=1            keep the temporary folder
#
# Each run copies into a repository of its own on a registry started fresh for that run, so
# nothing is skipped as "already there" and neither tool profits from the other's work.
# Only 127.0.0.1 is contacted; servers are stopped by PID on exit, also on failure.
# Needs: cargo, skopeo, python3, curl (and docker-registry with BENCH_SERVER=distribution).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${BENCH_RUNS:-5}
LAYERS_MIB=${BENCH_LAYERS_MIB:-"1 4 16 32 64 96"}
SERVER=${BENCH_SERVER:-berth}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in cargo skopeo python3 curl; do
    command -v "$tool" >/dev/null || { echo "bench-client.sh: $tool not found" >&2; exit 1; }
done

echo "== building berth (release)" >&2
cargo build --release -p berth >&2
BERTH="$TARGET_DIR/release/berth"

WORK=$(mktemp -d /tmp/berth-bench-client.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_registry NAME -> sets REG_PORT; the PID is recorded for cleanup (no subshell, so
# PIDS stays in this shell)
start_registry() {
    local name=$1 port dir
    port=$(free_port)
    dir="$WORK/$name"
    mkdir -p "$dir"
    if [[ "$SERVER" == distribution ]]; then
        cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
YML
        env -u AWS_CA_BUNDLE docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    else
        BERTH_LOG=warn "$BERTH" serve --addr "127.0.0.1:$port" --storage "$dir/data" >"$dir/log" 2>&1 &
    fi
    PIDS+=($!)
    for _ in $(seq 1 100); do
        if curl -fs "http://127.0.0.1:$port/v2/" >/dev/null; then REG_PORT=$port; return; fi
        sleep 0.1
    done
    echo "registry $name did not start" >&2; cat "$dir/log" >&2; exit 1
}

stop_last_registry() {
    local pid=${PIDS[-1]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PIDS[-1]'
}

echo "== making a ${LAYERS_MIB// /+} MiB image" >&2
python3 - "$WORK/layout" $LAYERS_MIB <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
sizes = [int(x) for x in sys.argv[2:]]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return d
layers, diff_ids = [], []
for i, mib in enumerate(sizes):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        payload = os.urandom(mib << 20)
        info = tarfile.TarInfo(f"layer{i}/data.bin"); info.size = len(payload); info.mode = 0o644
        t.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    # gzip, as real images are: skopeo would otherwise compress the layers itself and the
    # two tools would not copy the same image.
    data = gzip.compress(raw, compresslevel=1, mtime=0)
    d = put(data)
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + d, "size": len(data)})
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}}).encode()
cd = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(config)},
    "layers": layers}).encode()
md = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
    open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY

start_registry source
SRC_PORT=$REG_PORT
"$BERTH" copy --quiet "oci:$WORK/layout:v1" "127.0.0.1:$SRC_PORT/bench/app:v1" >/dev/null
echo "== source registry ($SERVER) on 127.0.0.1:$SRC_PORT holds the image" >&2

# time_copy TOOL RUN -> sets SECS
time_copy() {
    local tool=$1 run=$2 port t0 t1
    start_registry "dest-$tool-$run"
    port=$REG_PORT
    sync
    t0=$(date +%s.%N)
    if [[ "$tool" == berth ]]; then
        "$BERTH" copy --quiet "127.0.0.1:$SRC_PORT/bench/app:v1" "127.0.0.1:$port/copy/app:v1" >/dev/null
    else
        skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
            "docker://127.0.0.1:$SRC_PORT/bench/app:v1" "docker://127.0.0.1:$port/copy/app:v1" >/dev/null
    fi
    t1=$(date +%s.%N)
    # Both tools must leave the same manifest behind.
    curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$port/v2/copy/app/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}' >"$WORK/digest-$tool-$run"
    stop_last_registry
    rm -rf "$WORK/dest-$tool-$run"
    SECS=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
}

printf '%-5s %10s %10s %8s\n' run berth_s skopeo_s ratio
ratios=()
for run in $(seq 1 "$RUNS"); do
    if (( run % 2 )); then
        time_copy berth "$run"; b=$SECS; time_copy skopeo "$run"; s=$SECS
    else
        time_copy skopeo "$run"; s=$SECS; time_copy berth "$run"; b=$SECS
    fi
    if ! cmp -s "$WORK/digest-berth-$run" "$WORK/digest-skopeo-$run"; then
        echo "run $run: the two copies differ: $(cat "$WORK/digest-berth-$run") vs $(cat "$WORK/digest-skopeo-$run")" >&2
        exit 1
    fi
    r=$(python3 -c "print(f'{$s / $b:.2f}')")
    ratios+=("$r")
    printf '%-5s %10s %10s %7sx\n' "$run" "$b" "$s" "$r"
done
python3 - "${ratios[@]}" <<'PY'
import statistics, sys
r = sorted(float(x) for x in sys.argv[1:])
print(f"skopeo/berth time ratio: median {statistics.median(r):.2f}x, range {r[0]:.2f}-{r[-1]:.2f}x over {len(r)} runs")
PY
