#!/usr/bin/env bash
# How long the web UI's catalog and repository pages take over a filesystem storage with
# REPOS repositories of TAGS tags each (issue 21 asks for 10,000 x 20 under 200 ms).
# Seeds DIR once through the storage API (slow on disks with costly fsync: about 0.4 s per
# repository of 20 tags here), then renders each page in-process, cold and warm.
#   scripts/bench-ui.sh [DIR] [REPOS] [TAGS]     (defaults: /var/tmp/berth-ui-bench 10000 20)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/var/tmp/berth-ui-bench}
REPOS=${2:-10000}
TAGS=${3:-20}
mkdir -p "$DIR"
cargo run --release -p berth-registry --example ui_bench -- "$DIR" "$REPOS" "$TAGS"
