#!/usr/bin/env bash
# How long `_catalog?n=100` and `tags/list?n=100&last=...` pages take with REPOS repositories
# and one repository of TAGS tags (issue 22 asks for 100,000 of each: a page under 20 ms on
# disk, under 100 ms on S3). Seeds through the storage API with 64 writes in flight (on disk
# once per DIR; on S3 into a fresh s3s-fs each run), then times each page in-process.
#   scripts/bench-catalog.sh [DIR] [REPOS] [TAGS] [S3_REPOS] [S3_TAGS]
#   (defaults: /var/tmp/berth-catalog-bench 100000 100000 100000 100000)
#   CATALOG_WHERE="fs s3s moto" (default all three), MOTO_REPOS / MOTO_TAGS (default
#   20000 each: moto seeds at a few hundred writes a second)
# Caveat: neither S3 server here lists from an index. s3s-fs answers every ListObjectsV2
# without a delimiter by walking the whole bucket folder on disk; moto (in memory, through
# scripts/moto-serial.py) looks at every key of the bucket in Python and sorts the matches.
# So their pages cost O(objects in the bucket) whatever the registry asks; AWS S3 and MinIO
# answer start-after and max-keys from their index. Each page line says how many S3
# requests it cost (berth asks for max-keys = n + 1 from start-after).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/berth-catalog-bench}
REPOS=${2:-100000}
TAGS=${3:-100000}
S3_REPOS=${4:-$REPOS}
S3_TAGS=${5:-$TAGS}
mkdir -p "$DIR"
cargo build --release -p berth-registry --example catalog_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples/catalog_bench
WHERE=${CATALOG_WHERE:-fs s3s moto}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ " $WHERE " == *" fs "* ]]; then
  echo "== disk"
  "$bin" fs "$DIR" "$REPOS" "$TAGS"
fi
if [[ " $WHERE " == *" s3s "* ]]; then
  if command -v s3s-fs >/dev/null || [ -x "$HOME/.cargo/bin/s3s-fs" ]; then
    echo "== S3 (s3s-fs)"
    "$bin" s3 "$S3_REPOS" "$S3_TAGS"
  else
    echo "== S3 skipped: s3s-fs not installed"
  fi
fi
if [[ " $WHERE " == *" moto "* ]]; then
  if python3 -c 'import moto.server' 2>/dev/null; then
    echo "== S3 (moto)"
    port=$((20000 + RANDOM % 30000))
    log=$(mktemp /tmp/berth-catalog-moto.XXXXXX)
    python3 scripts/moto-serial.py -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    moto_pid=$!
    trap 'kill $moto_pid 2>/dev/null; wait $moto_pid 2>/dev/null; rm -f "$log"' EXIT
    curl -fsS --retry 20 --retry-connrefused --retry-delay 1 -X PUT "http://127.0.0.1:$port/catalog" >/dev/null
    AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret \
      "$bin" s3-at "http://127.0.0.1:$port" catalog "${MOTO_REPOS:-20000}" "${MOTO_TAGS:-20000}"
  else
    echo "== moto skipped: pip install 'moto[server]'"
  fi
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
