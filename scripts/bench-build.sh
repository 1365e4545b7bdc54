#!/usr/bin/env bash
# Benchmark `berth build` against BuildKit (`DOCKER_BUILDKIT=1 docker build` with Debian's
# docker 20.10 CLI and a private, warm dockerd) and `buildah bud --isolation chroot` on the same
# Dockerfiles and context, side by side in one run (timings here are noisy: compare the ratios).
#
#   sudo scripts/bench-build.sh
#
# Measures, for each tool:
#   cold    a build with empty caches (base image pulled from a local registry, every step run)
#   cached  the same build again, nothing changed (every layer reused)
#   per-RUN the cost of one trivial RUN step: (cold build of N RUNs - cold build of 0) / N
#   cachemnt a build whose RUN re-runs (a build arg changed) with its `--mount=type=cache`
#           already filled by the previous build (the expensive part is skipped)
# and prints peer/berth ratios (above 1 means berth is faster). BuildKit's cold builds start
# after `docker builder prune -af` and removing the images (the daemon itself stays warm: we
# start from nothing every time, BuildKit does not).
#
# Environment knobs (all optional):
#   BERTH=path/to/berth     the binary to measure [default: cargo build --release, then that]
#   BENCH_RUNS=3            repetitions; the median is reported
#   BENCH_FILES=2000        files in the context that COPY copies (4 KiB each)
#   BENCH_NRUN=10           trivial RUN steps for the per-RUN figure
#   BENCH_KEEP=1            keep the temporary folder
#   BENCH_TOOLS="berth buildkit buildah"   which tools to measure
#
# Needs root, runc, buildah, dockerd + /usr/bin/docker (20.10), curl, python3. The base image is
# a busybox-static rootfs made here and pushed to a `berth serve` on 127.0.0.1 (only 127.0.0.1 is
# contacted). Everything started is stopped by PID on exit; buildah's storage and the private
# dockerd's data root live in the temporary folder (the dockerd runs with `--bridge none`, so
# BuildKit's RUN steps use `--network host`, as berth's and buildah's do).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${BENCH_RUNS:-3}
FILES=${BENCH_FILES:-2000}
NRUN=${BENCH_NRUN:-10}
TOOLS=${BENCH_TOOLS:-berth buildkit buildah}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in buildah runc curl python3 busybox tar dockerd; do
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
DOCKERD_PID=""
cleanup() {
    set +e
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
    if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null; fi
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

# The cache-mount build: the RUN re-runs when V changes; a warm cache skips the expensive part
# (writing and hashing 200 MiB stands in for a package download).
mkdir -p "$WORK/cachemnt"
cat >"$WORK/cachemnt/Dockerfile" <<EOF
FROM $BASE
ARG V=1
RUN --mount=type=cache,target=/cache sh -c 'if [ ! -f /cache/dl ]; then dd if=/dev/urandom of=/cache/dl bs=1M count=200 2>/dev/null; md5sum /cache/dl > /cache/sum; fi; cp /cache/sum /sum; echo \$V > /v'
EOF

# A private dockerd for BuildKit (started once: a warm daemon is BuildKit's normal setting).
DOCKER=/usr/bin/docker
if [[ " $TOOLS " == *" buildkit "* ]]; then
    [ -x "$DOCKER" ] || { echo "bench-build.sh: $DOCKER (docker.io 20.10) not found" >&2; exit 1; }
    mkdir -p "$WORK/dockerd"
    setsid dockerd --data-root "$WORK/dockerd/data" --exec-root "$WORK/dockerd/exec" \
        --pidfile "$WORK/dockerd/pid" -H "unix://$WORK/dockerd/sock" --bridge none \
        --iptables=false --storage-driver overlay2 --tls=false >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$WORK/dockerd/sock"
    for _ in $(seq 1 100); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.2; done
    "$DOCKER" info >/dev/null || { echo "bench-build.sh: the private dockerd did not start:" >&2; tail "$WORK/dockerd.log" >&2; exit 1; }
fi

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

buildah_build() { # STORE CONTEXT [ARGS...]
    local store=$1 ctx=$2
    shift 2
    buildah --root "$store/root" --runroot "$store/run" --storage-driver overlay bud \
        --tls-verify=false --isolation chroot --layers -q -t bench "$@" "$ctx"
}
buildkit_build() { # STORE(unused: one daemon) CONTEXT [ARGS...]
    local ctx=$2
    shift 2
    DOCKER_BUILDKIT=1 "$DOCKER" build -q --network host -t bench "$@" "$ctx"
}
buildkit_reset() { # what a cold BuildKit build starts from: no build cache, no images
    "$DOCKER" builder prune -af >/dev/null
    "$DOCKER" image prune -af >/dev/null
}
berth_build_args() { # CACHE CONTEXT [ARGS...]
    local cache=$1 ctx=$2
    shift 2
    "$BERTH" build -q --cache-dir "$cache" "$@" "$ctx"
}

declare -A R
for run in $(seq 1 "$RUNS"); do
    for tool in $TOOLS; do
        store="$WORK/$tool-$run"
        case $tool in
            berth) f=berth_build_args ;;
            buildah) f=buildah_build ;;
            buildkit) f=buildkit_build ;;
            *) echo "unknown tool $tool" >&2; exit 1 ;;
        esac
        if [ "$tool" = buildkit ]; then buildkit_reset; fi
        R[$tool,cold]+="$(time_cmd $f "$store" "$CTX") "
        R[$tool,cached]+="$(time_cmd $f "$store" "$CTX") "
        if [ "$tool" = buildkit ]; then buildkit_reset; fi
        R[$tool,runs0]+="$(time_cmd $f "$store-r0" "$WORK/runs0") "
        if [ "$tool" = buildkit ]; then buildkit_reset; fi
        R[$tool,runsN]+="$(time_cmd $f "$store-rN" "$WORK/runsN") "
        if [ "$tool" = buildkit ]; then buildkit_reset; fi
        time_cmd $f "$store-cm" "$WORK/cachemnt" --build-arg V=1 >/dev/null
        R[$tool,cachemnt]+="$(time_cmd $f "$store-cm" "$WORK/cachemnt" --build-arg V=2) "
    done
    echo "run $run of $RUNS done" >&2
done

ratio() { python3 -c "print(f'{$1/max($2,0.001):.2f}x')"; }
per_run() { python3 -c "print(f'{($(median ${R[$1,runsN]}) - $(median ${R[$1,runs0]})) / $NRUN:.3f}')"; }
printf '\n%-10s' ""
for tool in $TOOLS; do printf ' %11s' "$tool (s)"; done
for tool in $TOOLS; do if [ "$tool" != berth ]; then printf ' %14s' "$tool/berth"; fi; done
echo
for what in cold cached per-RUN cachemnt; do
    printf '%-10s' "$what"
    declare -A V=()
    for tool in $TOOLS; do
        if [ "$what" = per-RUN ]; then V[$tool]=$(per_run "$tool"); else V[$tool]=$(median ${R[$tool,$what]}); fi
        printf ' %11s' "${V[$tool]}"
    done
    for tool in $TOOLS; do
        if [ "$tool" != berth ]; then printf ' %14s' "$(ratio "${V[$tool]}" "${V[berth]}")"; fi
    done
    echo
done
echo "(median of $RUNS runs; $FILES context files; ratio = peer/berth, above 1 means berth is faster)"
