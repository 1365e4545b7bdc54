#!/usr/bin/env bash
# Benchmark `berth build` against `buildah bud --isolation chroot` on the same Dockerfile and
# context, side by side in one run (timings here are noisy: compare the ratios).
#
#   sudo scripts/bench-build.sh
#
# Measures, for each tool:
#   cold    a build with empty caches (base image pulled from a local registry, every step run)
#   cached  the same build again, nothing changed (every layer reused)
#   per-RUN the cost of one trivial RUN step: (cold build of N RUNs - cold build of 0) / N
# and prints buildah/berth ratios (above 1 means berth is faster).
#
# Environment knobs (all optional):
#   BERTH=path/to/berth     the binary to measure [default: cargo build --release, then that]
#   BENCH_RUNS=3            repetitions; the median is reported
#   BENCH_FILES=2000        files in the context that COPY copies (4 KiB each)
#   BENCH_NRUN=10           trivial RUN steps for the per-RUN figure
#   BENCH_KEEP=1            keep the temporary folder
#
# Needs root, runc, buildah, curl, python3. The base image is a busybox-static rootfs made here
# and pushed to a `berth serve` on 127.0.0.1 (only 127.0.0.1 is contacted). Everything started
# is stopped by PID on exit; buildah's storage lives in the temporary folder.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${BENCH_RUNS:-3}
FILES=${BENCH_FILES:-2000}
NRUN=${BENCH_NRUN:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in buildah runc curl python3 busybox tar; do
    command -v "$tool" >/dev/null || { echo "bench-build.sh: $tool not found (apt-get install $tool)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-build.sh: run as root (overlay mounts)" >&2; exit 1; }

if [ -z "${BERTH:-}" ]; then
    echo "== building berth (release)" >&2
    cargo build --release -p berth >&2
    BERTH="$TARGET_DIR/release/berth"
fi

WORK=$(mktemp -d /var/tmp/berth-bench-build.XXXXXX)
SERVER_PID=""
cleanup() {
    set +e
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
    # buildah leaves overlay mounts in its storage; unmount them before removing it.
    grep -o " $WORK/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m"; done
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "kept $WORK" >&2; else rm -rf --one-file-system "$WORK"; fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
BERTH_LOG=warn "$BERTH" serve --addr "127.0.0.1:$port" --storage "$WORK/registry" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

# The base image: busybox-static with its applets linked, imported and pushed.
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/etc" "$WORK/rootfs/tmp"
cp "$(command -v busybox)" "$WORK/rootfs/bin/busybox"
chroot "$WORK/rootfs" /bin/busybox --install -s /bin
echo 'root:x:0:0:root:/root:/bin/sh' >"$WORK/rootfs/etc/passwd"
chmod 1777 "$WORK/rootfs/tmp"
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
BASE="127.0.0.1:$port/bench/busybox:1"
export BERTH_STORE="$WORK/berth-store"
"$BERTH" import -q --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' "$WORK/rootfs.tar" "$BASE" >/dev/null

# The context: FILES small files, a Dockerfile with RUNs before and after the COPY.
CTX="$WORK/ctx"
mkdir -p "$CTX/src"
python3 - "$CTX/src" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 50}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "wb") as f:
        f.write((f"file {i}\n" * 512).encode()[:4096])
PY
cat >"$CTX/Dockerfile" <<EOF
FROM $BASE
RUN mkdir -p /app && echo one > /app/one
COPY src /app/src
RUN find /app/src -type f | wc -l > /app/count
RUN cat /app/src/d1/*.txt | md5sum > /app/sum
CMD ["cat", "/app/count"]
EOF
mkdir -p "$WORK/runs0" "$WORK/runsN"
echo "FROM $BASE" >"$WORK/runs0/Dockerfile"
{ echo "FROM $BASE"; for i in $(seq 1 "$NRUN"); do echo "RUN echo $i > /step$i"; done; } >"$WORK/runsN/Dockerfile"

now() { date +%s.%N; }
# time_cmd CMD... -> seconds on stdout; the command's output goes to $WORK/last.log
time_cmd() {
    local t0 t1
    t0=$(now)
    if ! "$@" >"$WORK/last.log" 2>&1; then
        echo "FAILED: $*" >&2; cat "$WORK/last.log" >&2; exit 1
    fi
    t1=$(now)
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}
median() { python3 -c 'import sys,statistics; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }

berth_build() { # CACHE CONTEXT
    "$BERTH" build -q --cache-dir "$1" "$2"
}
buildah_build() { # STORE CONTEXT
    buildah --root "$1/root" --runroot "$1/run" --storage-driver overlay bud \
        --tls-verify=false --isolation chroot --layers -q -t bench "$2"
}

declare -A R
for run in $(seq 1 "$RUNS"); do
    for tool in berth buildah; do
        store="$WORK/$tool-$run"
        if [ "$tool" = berth ]; then f=berth_build; else f=buildah_build; fi
        R[$tool,cold]+="$(time_cmd $f "$store" "$CTX") "
        R[$tool,cached]+="$(time_cmd $f "$store" "$CTX") "
        R[$tool,runs0]+="$(time_cmd $f "$store-r0" "$WORK/runs0") "
        R[$tool,runsN]+="$(time_cmd $f "$store-rN" "$WORK/runsN") "
    done
    echo "run $run of $RUNS done" >&2
done

printf '\n%-10s %10s %10s %8s\n' "" "berth (s)" "buildah (s)" "ratio"
for what in cold cached; do
    b=$(median ${R[berth,$what]}); h=$(median ${R[buildah,$what]})
    printf '%-10s %10s %10s %8s\n' "$what" "$b" "$h" "$(python3 -c "print(f'{$h/$b:.2f}x')")"
done
pb=$(python3 -c "print(f'{($(median ${R[berth,runsN]}) - $(median ${R[berth,runs0]})) / $NRUN:.3f}')")
ph=$(python3 -c "print(f'{($(median ${R[buildah,runsN]}) - $(median ${R[buildah,runs0]})) / $NRUN:.3f}')")
printf '%-10s %10s %10s %8s\n' "per-RUN" "$pb" "$ph" "$(python3 -c "print(f'{$ph/max($pb,0.001):.2f}x')")"
echo "(median of $RUNS runs; $FILES context files; ratio = buildah/berth, above 1 means berth is faster)"
