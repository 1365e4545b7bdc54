#!/usr/bin/env bash
# Measures what docs/client.md says about big layers: time and peak RSS of pushing and pulling
# an image with one 1 GiB layer, `berth copy` beside `skopeo copy`, in the same run,
# alternating which tool goes first.
#
#   scripts/bench-client-big.sh
#
#   push: oci:LAYOUT -> a berth serve registry started fresh for each push (so no blob is
#         already there and nothing is mounted)
#   pull: that registry -> a fresh oci: folder
#
# Peak RSS is GNU time's %M (the client process's ru_maxrss); the registry runs as a separate
# process and is not counted. The layer is random data in a gzip layer (as real images are;
# skopeo would otherwise compress an uncompressed layer itself when it pushes), so both tools
# move the same bytes; the pushed manifests' digests and the pulled layer are checked.
#
# Environment knobs (all optional):
#   BENCH_RUNS=3         pushes and pulls per tool
#   BENCH_LAYER_MIB=1024 size of the layer's content
#   BENCH_KEEP=1         keep the temporary folder
# Only 127.0.0.1 is contacted; servers are stopped by PID on exit, also on failure.
# Needs: cargo, skopeo, python3, curl, /usr/bin/time (GNU time); about 4 GiB free in /var/tmp
# (BENCH_TMP to choose another place).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${BENCH_RUNS:-3}
LAYER_MIB=${BENCH_LAYER_MIB:-1024}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in cargo skopeo python3 curl /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench-client-big.sh: $tool not found" >&2; exit 1; }
done

echo "== building berth (release)" >&2
cargo build --release -p berth >&2
BERTH="$TARGET_DIR/release/berth"

WORK=$(mktemp -d "${BENCH_TMP:-/var/tmp}/berth-bench-client-big.XXXXXX")
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

# start_registry NAME -> sets REG_PORT; the PID is recorded for cleanup.
start_registry() {
    local name=$1 port dir
    port=$(free_port)
    dir="$WORK/$name"
    mkdir -p "$dir"
    BERTH_LOG=warn "$BERTH" serve --addr "127.0.0.1:$port" --storage "$dir/data" >"$dir/log" 2>&1 &
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

echo "== making an image with one ${LAYER_MIB} MiB layer" >&2
LAYER_DIGEST=$(python3 - "$WORK/layout" "$LAYER_MIB" <<'PY'
import gzip, hashlib, json, os, sys, tarfile
out, mib = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return d
class Hashing:
    """A file object that hashes and counts what passes through it."""
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0
    def write(self, b):
        self.h.update(b); self.n += len(b)
        return self.f.write(b) if self.f else len(b)
    def flush(self):
        if self.f: self.f.flush()
class Random:
    def __init__(self, n): self.left = n
    def read(self, size=-1):
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return os.urandom(size)
# Streamed: tar -> (diff_id hash) -> gzip -> (digest hash) -> file; never all in memory.
tmp = os.path.join(blobs, "tmp")
with open(tmp, "wb") as f:
    packed = Hashing(f)
    with gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=1, mtime=0) as gz:
        raw = Hashing(gz)
        with tarfile.open(fileobj=raw, mode="w|", bufsize=1 << 20) as t:
            info = tarfile.TarInfo("big/data.bin"); info.size = mib << 20; info.mode = 0o644
            t.addfile(info, Random(info.size))
layer = packed.h.hexdigest()
os.rename(tmp, os.path.join(blobs, layer))
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + raw.h.hexdigest()]}}).encode()
cd = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + layer, "size": packed.n}]}).encode()
md = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
    open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
print(layer)
PY
)

# The registry pulls read from: loaded once.
start_registry source
SRC_PORT=$REG_PORT
"$BERTH" copy --quiet "oci:$WORK/layout:v1" "127.0.0.1:$SRC_PORT/big/app:v1" >/dev/null

# measure TOOL FROM TO -> sets SECS and RSS_MIB; both tools copy between the same places.
measure() {
    local tool=$1 from=$2 to=$3
    sync
    if [[ "$tool" == berth ]]; then
        /usr/bin/time -f '%e %M' -o "$WORK/time" "$BERTH" copy --quiet "$from" "$to" >/dev/null
    else
        [[ "$from" == oci:* ]] || from="docker://$from"
        [[ "$to" == oci:* ]] || to="docker://$to"
        /usr/bin/time -f '%e %M' -o "$WORK/time" skopeo copy --quiet \
            --src-tls-verify=false --dest-tls-verify=false "$from" "$to" >/dev/null
    fi
    read -r SECS kib <"$WORK/time"
    RSS_MIB=$(python3 -c "print(f'{$kib / 1024:.1f}')")
}

push() {
    local tool=$1 run=$2 port
    start_registry "dest-$tool-$run"
    port=$REG_PORT
    measure "$tool" "oci:$WORK/layout:v1" "127.0.0.1:$port/big/app:v1"
    curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$port/v2/big/app/manifests/v1" | tr -d '\r' \
        | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}' >"$WORK/digest-$tool-$run"
    stop_last_registry
    rm -rf "$WORK/dest-$tool-$run"
    printf '%-5s %-7s %4s %9s %12s\n' push "$tool" "$run" "$SECS" "$RSS_MIB"
    echo "push $tool $SECS $RSS_MIB" >>"$WORK/results"
}

pull() {
    local tool=$1 run=$2 dir="$WORK/pulled-$1-$2"
    measure "$tool" "127.0.0.1:$SRC_PORT/big/app:v1" "oci:$dir:v1"
    [[ -f "$dir/blobs/sha256/$LAYER_DIGEST" ]] \
        || { echo "pull $tool $run: layer sha256:$LAYER_DIGEST not in $dir" >&2; exit 1; }
    rm -rf "$dir"
    printf '%-5s %-7s %4s %9s %12s\n' pull "$tool" "$run" "$SECS" "$RSS_MIB"
    echo "pull $tool $SECS $RSS_MIB" >>"$WORK/results"
}

printf '%-5s %-7s %4s %9s %12s\n' op tool run seconds peak_RSS_MiB
for run in $(seq 1 "$RUNS"); do
    if (( run % 2 )); then order="berth skopeo"; else order="skopeo berth"; fi
    for tool in $order; do push "$tool" "$run"; done
    if ! cmp -s "$WORK/digest-berth-$run" "$WORK/digest-skopeo-$run"; then
        echo "run $run: the pushed manifests differ: $(cat "$WORK/digest-berth-$run") vs $(cat "$WORK/digest-skopeo-$run")" >&2
        exit 1
    fi
    for tool in $order; do pull "$tool" "$run"; done
done
python3 - "$WORK/results" "$LAYER_MIB" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
def span(xs):
    xs = sorted(xs)
    return f"{xs[0]:g}" if xs[0] == xs[-1] else f"{xs[0]:g}-{xs[-1]:g}"
print(f"summary ({sys.argv[2]} MiB layer, {len(rows) // 4} runs): seconds, peak RSS MiB")
for op in ("push", "pull"):
    for tool in ("berth", "skopeo"):
        sel = [r for r in rows if r[0] == op and r[1] == tool]
        print(f"  {op} {tool:6}  {span([float(r[2]) for r in sel]):>11} s  "
              f"{span([float(r[3]) for r in sel]):>11} MiB")
PY
