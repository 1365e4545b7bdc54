#!/usr/bin/env bash
# How long the web UI's catalog and repository pages take over a filesystem storage with
# REPOS repositories of TAGS tags each (issue 21 asks for 10,000 x 20 under 200 ms each).
#   scripts/bench-ui.sh [DIR] [REPOS] [TAGS]     (defaults: /var/tmp/berth-ui-bench 10000 20)
# 1. In-process (registry/examples/ui_bench.rs, release): seeds DIR once (32 repositories at
#    once through the storage API; reused while DIR/seeded-REPOSxTAGS exists), then renders
#    each page cold (a new server) and warm (median of 5).
# 2. Over HTTP: a real `berth serve` on DIR, restarted before each page (cold = its first
#    request once the catalog index it builds at start is ready; the OS page cache stays
#    warm), then 5 more requests (warm); curl's time_total.
# Seeding a disk with slow fsyncs or a busy journal is slow (renames serialise): run the
# seeding under `eatmydata`, or use a folder on tmpfs (what docs/ui.md's numbers used).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/berth-ui-bench}
REPOS=${2:-10000}
TAGS=${3:-20}
mkdir -p "$DIR"
cargo build --release -p berth-registry --example ui_bench
cargo build --release --bin berth
BIN=${CARGO_TARGET_DIR:-target}/release

echo "== in-process; load: $(uptime | sed 's/.*load/load/')"
"$BIN/examples/ui_bench" "$DIR" "$REPOS" "$TAGS"

name() { printf 'team-%02d/app-%05d' $(($1 % 50)) "$1"; }
MIDDLE=$(name $((REPOS / 2)))
PAGES=(
  "catalog,_page_1 /ui/"
  "catalog,_middle_page /ui/?page=$(( (REPOS + 99) / 100 ))"
  "catalog,_filtered /ui/?q=app-0001"
  "repository /ui/r/$MIDDLE"
  "repository_by_size /ui/r/$MIDDLE?sort=size"
)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
PID=
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=
}
trap 'stop; rm -f "$LOG"' EXIT
start() {
  "$BIN/berth" serve --storage "$DIR" --addr "127.0.0.1:$PORT" >>"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 200); do
    # The catalog API waits for the index that serve builds at start (one walk of the tree).
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/v2/_catalog?n=1" && return 0
    sleep 0.1
  done
  echo "berth serve did not start:"; cat "$LOG"; exit 1
}
ms() { awk '{printf "%.1f", $1 * 1000}'; }

echo "== over HTTP (berth serve on 127.0.0.1:$PORT); load: $(uptime | sed 's/.*load/load/')"
for entry in "${PAGES[@]}"; do
  what=${entry%% *}; path=${entry#* }
  start
  url="http://127.0.0.1:$PORT$path"
  cold=$(curl -s -o /dev/null -w '%{time_total}' "$url" | ms)
  warm=$(for _ in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done | sort -n)
  median=$(echo "$warm" | sed -n 3p | ms)
  lo=$(echo "$warm" | head -1 | ms); hi=$(echo "$warm" | tail -1 | ms)
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url")
  printf '%-22s cold %8s ms   warm median %8s ms (min %s, max %s)  HTTP %s\n' \
    "${what//_/ }" "$cold" "$median" "$lo" "$hi" "$code"
  stop
done
