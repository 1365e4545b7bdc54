#!/usr/bin/env bash
# Garbage collection at size: `berth gc` against distribution 2.8.2's `docker-registry
# garbage-collect` (Debian's docker-registry) on the same generated registry, on s3s-fs, on
# moto and on disk.
#
#   scripts/bench-gc.sh
#
# The registry is written straight into each storage layout by scripts/gc-fixture.py (no
# pushes): GC_REPOS repositories of 20 blobs each, half of them garbage (two of four images
# per repository had their manifests deleted). Both tools collect the same shape of data,
# each in its own bucket or folder; distribution's collector needs the registry stopped, so
# no server runs. Berth runs with its default grace (1h; the fixture is dated 2h back).
#
# Measured per run: wall time and peak RSS (/usr/bin/time -v), S3 requests counted by the
# S3 server for both tools alike (s3s-fs: its per-request "resolved route" debug line; moto:
# its request log), and what is left (blobs before/after), which must be half for both.
#
# Knobs: GC_REPOS=500 (5000 = 100,000 blobs), GC_MOTO_REPOS=$GC_REPOS, GC_DISK_REPOS=$GC_REPOS
#        (50000 = 1,000,000 blobs), GC_TIMEOUT=3600 (seconds per run; a run cut off is
#        reported as ">T"), GC_PARTS="s3s moto disk", GC_KEEP=1 keeps the work folder,
#        BERTH=path (default: release build), S3S_FS, MOTO_SERVER.
# Needs: python3, docker-registry, s3s-fs, moto_server (+ boto3, which moto brings).
# Servers listen on 127.0.0.1 only and are stopped by PID on exit, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REPOS=${GC_REPOS:-500}
MOTO_REPOS=${GC_MOTO_REPOS:-$REPOS}
DISK_REPOS=${GC_DISK_REPOS:-$REPOS}
TIMEOUT=${GC_TIMEOUT:-3600}
PARTS=${GC_PARTS:-s3s moto disk}
S3S=${S3S_FS:-s3s-fs}
# moto through scripts/moto-serial.py: plain moto_server answers 500 when a listing races a
# delete on another thread (its backend is not thread-safe).
MOTO=${MOTO_SERVER:-python3 $ROOT/scripts/moto-serial.py}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
FIXTURE="$ROOT/scripts/gc-fixture.py"

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "bench-gc.sh: '$1' not found; install it with: $2" >&2
        exit 1
    fi
}
need python3 "apt-get install -y python3"
need docker-registry "apt-get install -y docker-registry"
need "$S3S" "cargo install s3s-fs --version 0.14.1 --features binary --locked"
[[ -x /usr/bin/time ]] || { echo "bench-gc.sh: /usr/bin/time missing: apt-get install -y time" >&2; exit 1; }
if [[ -z "${BERTH:-}" ]]; then
    echo "== building berth (release)" >&2
    cargo build --release --bin berth >&2
    BERTH="$TARGET_DIR/release/berth"
fi

WORK=$(mktemp -d /var/tmp/berth-bench-gc.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "${GC_KEEP:-0}" == 1 ]]; then echo "bench-gc.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}
wait_port() { # NAME PID PORT LOG
    for _ in $(seq 1 300); do
        if ! kill -0 "$2" 2>/dev/null; then echo "$1 exited; log:" >&2; tail -n 30 "$4" >&2; exit 1; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$1 did not listen on $3" >&2; exit 1
}

export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecretkey AWS_REGION=us-east-1

dist_config() { # FILE STORAGE-YAML
    cat >"$1" <<EOF
version: 0.1
log:
  level: error
storage:
$2
  delete:
    enabled: true
http:
  addr: 127.0.0.1:1
EOF
}
s3_yaml() { # PORT BUCKET
    cat <<EOF
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: us-east-1
    regionendpoint: http://127.0.0.1:$1
    bucket: $2
    secure: false
    v4auth: true
EOF
}

# Run a collector under /usr/bin/time -v; sets SECS, RSS_MIB, OUT. NAME CMD...
measure() {
    local name=$1; shift
    local status=0
    /usr/bin/time -v -o "$WORK/$name.time" timeout "$TIMEOUT" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || status=$?
    if [[ $status == 124 ]]; then
        SECS=">$TIMEOUT"
    elif [[ $status != 0 ]]; then
        echo "$name failed ($status):" >&2; tail -n 20 "$WORK/$name.err" >&2; tail -n 5 "$WORK/$name.out" >&2
        exit 1
    else
        SECS=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; printf "%.1f", s}' "$WORK/$name.time")
    fi
    RSS_MIB=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$WORK/$name.time")
}

count_files() { find "$1" -type f 2>/dev/null | wc -l; }

ROWS=()
row() { ROWS+=("$(printf '| %-9s | %-12s | %8s | %9s | %8s | %-19s |' "$@")"); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.1fx", b/a; else print "-" }'; }

part_s3s() {
    echo "== s3s-fs: $REPOS repositories, $((REPOS * 20)) blobs" >&2
    mkdir -p "$WORK/s3s/berth" "$WORK/s3s/dist"
    python3 "$FIXTURE" berth-s3 "$WORK/s3s/berth" --repos "$REPOS" >&2
    python3 "$FIXTURE" distribution "$WORK/s3s/dist" --repos "$REPOS" >&2
    local port; port=$(free_port)
    RUST_LOG=s3s::ops=debug "$S3S" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3s" >"$WORK/s3s.log" 2>&1 &
    PIDS+=($!); wait_port s3s-fs "$!" "$port" "$WORK/s3s.log"
    reqs() { grep -c 'resolved route' "$WORK/s3s.log" || true; }
    local before blobs_b blobs_d
    blobs_b=$(count_files "$WORK/s3s/berth/blobs")
    before=$(reqs)
    measure berth-s3s "$BERTH" gc --storage s3://berth --s3-endpoint "http://127.0.0.1:$port" \
        --s3-region us-east-1 --s3-allow-http --json
    local b_secs=$SECS b_rss=$RSS_MIB b_reqs=$(( $(reqs) - before ))
    local b_left; b_left=$(count_files "$WORK/s3s/berth/blobs")
    before=$(reqs)
    measure berth-s3s-again "$BERTH" gc --storage s3://berth --s3-endpoint "http://127.0.0.1:$port" \
        --s3-region us-east-1 --s3-allow-http --json
    local a_secs=$SECS a_rss=$RSS_MIB a_reqs=$(( $(reqs) - before ))
    dist_config "$WORK/dist-s3s.yml" "$(s3_yaml "$port" dist)"
    blobs_d=$(count_files "$WORK/s3s/dist/docker/registry/v2/blobs")
    before=$(reqs)
    measure dist-s3s env -u AWS_CA_BUNDLE docker-registry garbage-collect "$WORK/dist-s3s.yml"
    local d_reqs=$(( $(reqs) - before ))
    local d_left; d_left=$(count_files "$WORK/s3s/dist/docker/registry/v2/blobs")
    row s3s-fs berth "$b_secs" "$b_reqs" "$b_rss" "blobs $blobs_b -> $b_left"
    row s3s-fs "berth again" "$a_secs" "$a_reqs" "$a_rss" "(nothing to do)"
    row s3s-fs distribution "$SECS" "$d_reqs" "$RSS_MIB" "blobs $blobs_d -> $d_left"
    RATIOS+=("s3s-fs: berth $(ratio "$b_secs" "$SECS") faster, $(ratio "$b_reqs" "$d_reqs") fewer S3 requests")
}

part_moto() {
    if ! python3 -c 'import moto.server' 2>/dev/null; then
        echo "== moto: not installed (pip install 'moto[server]'): skipped" >&2
        RATIOS+=("moto: skipped (not installed)")
        return
    fi
    echo "== moto: $MOTO_REPOS repositories, $((MOTO_REPOS * 20)) blobs (uploading...)" >&2
    mkdir -p "$WORK/moto-src/berth" "$WORK/moto-src/dist"
    python3 "$FIXTURE" berth-s3 "$WORK/moto-src/berth" --repos "$MOTO_REPOS" >&2
    python3 "$FIXTURE" distribution "$WORK/moto-src/dist" --repos "$MOTO_REPOS" >&2
    local port; port=$(free_port)
    $MOTO -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1 &
    PIDS+=($!); wait_port moto "$!" "$port" "$WORK/moto.log"
    env -u AWS_CA_BUNDLE python3 - "$port" "$WORK/moto-src" <<'EOF'
import os, sys, concurrent.futures, boto3
port, src = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
for bucket in ("berth", "dist"):
    s3.create_bucket(Bucket=bucket)
    base = os.path.join(src, bucket)
    files = [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]
    def put(path):
        with open(path, "rb") as f:
            s3.put_object(Bucket=bucket, Key=os.path.relpath(path, base), Body=f.read())
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
EOF
    # moto keeps its own LastModified (now): collect with no grace, as nothing else writes.
    reqs() { grep -c '" [0-9][0-9][0-9] ' "$WORK/moto.log" || true; }
    local before
    before=$(reqs)
    measure berth-moto "$BERTH" gc --storage s3://berth --s3-endpoint "http://127.0.0.1:$port" \
        --s3-region us-east-1 --s3-allow-http --grace 0s --json
    local b_secs=$SECS b_rss=$RSS_MIB b_reqs=$(( $(reqs) - before )) b_out
    b_out=$(jq -r '"removed \(.blobs_removed) blobs"' "$WORK/berth-moto.out" 2>/dev/null || cat "$WORK/berth-moto.out")
    before=$(reqs)
    measure berth-moto-again "$BERTH" gc --storage s3://berth --s3-endpoint "http://127.0.0.1:$port" \
        --s3-region us-east-1 --s3-allow-http --grace 0s --json
    local a_secs=$SECS a_rss=$RSS_MIB a_reqs=$(( $(reqs) - before ))
    dist_config "$WORK/dist-moto.yml" "$(s3_yaml "$port" dist)"
    before=$(reqs)
    measure dist-moto env -u AWS_CA_BUNDLE docker-registry garbage-collect "$WORK/dist-moto.yml"
    local d_reqs=$(( $(reqs) - before ))
    local d_out; d_out="removed $(grep -c 'Deleting blob' "$WORK/dist-moto.out" || true) blobs"
    row moto berth "$b_secs" "$b_reqs" "$b_rss" "$b_out"
    row moto "berth again" "$a_secs" "$a_reqs" "$a_rss" "(nothing to do)"
    row moto distribution "$SECS" "$d_reqs" "$RSS_MIB" "$d_out"
    RATIOS+=("moto: berth $(ratio "$b_secs" "$SECS") faster, $(ratio "$b_reqs" "$d_reqs") fewer S3 requests")
}

part_disk() {
    echo "== disk: $DISK_REPOS repositories, $((DISK_REPOS * 20)) blobs" >&2
    python3 "$FIXTURE" berth-fs "$WORK/disk/berth" --repos "$DISK_REPOS" >&2
    python3 "$FIXTURE" distribution "$WORK/disk/dist" --repos "$DISK_REPOS" >&2
    local blobs_b blobs_d
    blobs_b=$(count_files "$WORK/disk/berth/blobs")
    measure berth-disk "$BERTH" gc --storage "$WORK/disk/berth" --json
    local b_secs=$SECS b_rss=$RSS_MIB b_left; b_left=$(count_files "$WORK/disk/berth/blobs")
    measure berth-disk-again "$BERTH" gc --storage "$WORK/disk/berth" --json
    local a_secs=$SECS a_rss=$RSS_MIB
    dist_config "$WORK/dist-disk.yml" "  filesystem:
    rootdirectory: $WORK/disk/dist"
    blobs_d=$(count_files "$WORK/disk/dist/docker/registry/v2/blobs")
    measure dist-disk docker-registry garbage-collect "$WORK/dist-disk.yml"
    local d_left; d_left=$(count_files "$WORK/disk/dist/docker/registry/v2/blobs")
    row disk berth "$b_secs" - "$b_rss" "blobs $blobs_b -> $b_left"
    row disk "berth again" "$a_secs" - "$a_rss" "(nothing to do)"
    row disk distribution "$SECS" - "$RSS_MIB" "blobs $blobs_d -> $d_left"
    RATIOS+=("disk: berth $(ratio "$b_secs" "$SECS") faster")
}

RATIOS=()
for part in $PARTS; do "part_$part"; done

echo
echo "Garbage collection, 20 blobs per repository, half garbage (scripts/bench-gc.sh)"
echo
echo "| storage   | collector    | time (s) | S3 reqs   | RSS MiB  | outcome             |"
echo "|-----------|--------------|----------|-----------|----------|---------------------|"
printf '%s\n' "${ROWS[@]}"
echo
printf '%s\n' "${RATIOS[@]}"
