#!/usr/bin/env bash
# What logins cost: manifest GETs per second through `berth serve` with no auth, with a
# Bearer token (our token flow), and with Basic auth (bcrypt once, then cached), next to
# Debian's `docker-registry` (distribution 2.8) with htpasswd Basic auth, in one run.
#
#   scripts/bench-auth.sh            # 10 s per case, wrk with 2 threads and 16 connections
#   SECONDS_PER_CASE=20 scripts/bench-auth.sh
#
# Needs: wrk, htpasswd (apache2-utils), curl, docker-registry; builds berth in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${SECONDS_PER_CASE:-10}"
for tool in wrk htpasswd curl docker-registry sha256sum; do
    command -v "$tool" >/dev/null || { echo "bench-auth: $tool is missing (apt-get install wrk apache2-utils curl docker-registry)"; exit 1; }
done
cargo build --release -p berth -q
BERTH="$PWD/target/release/berth"
WORK="$(mktemp -d /tmp/berth-bench-auth.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# htpasswd -B with its default cost (5), as most users write the file.
htpasswd -Bbn bench benchpw > "$WORK/htpasswd"
cat > "$WORK/token.toml" <<EOF
[auth]
htpasswd = "$WORK/htpasswd"
token_key = "$WORK/token-key.pem"
EOF
cat > "$WORK/basic.toml" <<EOF
[auth]
htpasswd = "$WORK/htpasswd"
scheme = "basic"
EOF

wait_up() {
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start"; exit 1
}
start_berth() { # port config-or-empty
    local args=(serve --addr "127.0.0.1:$1" --storage "$WORK/data-$1")
    [ -n "$2" ] && args+=(--config "$2")
    BERTH_LOG=warn "$BERTH" "${args[@]}" >"$WORK/berth-$1.log" 2>&1 &
    PIDS+=($!)
    wait_up "$1"
}
start_berth 17001 ""
start_berth 17002 "$WORK/token.toml"
start_berth 17003 "$WORK/basic.toml"
cat > "$WORK/distribution.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/dist-data}}
http: {addr: 127.0.0.1:17004, secret: bench}
auth: {htpasswd: {realm: bench, path: $WORK/htpasswd}}
EOF
env -u AWS_CA_BUNDLE docker-registry serve "$WORK/distribution.yml" >"$WORK/dist.log" 2>&1 &
PIDS+=($!)
wait_up 17004

# One small image per server: a config blob and a manifest.
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > "$WORK/config.json"
CONFIG_DIGEST="sha256:$(sha256sum "$WORK/config.json" | cut -d' ' -f1)"
CONFIG_SIZE=$(stat -c %s "$WORK/config.json")
# distribution refuses a manifest without layers: one small (fake) layer.
head -c 4096 /dev/urandom > "$WORK/layer.tar"
LAYER_DIGEST="sha256:$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":4096}]}' \
    "$CONFIG_DIGEST" "$CONFIG_SIZE" "$LAYER_DIGEST" > "$WORK/manifest.json"
push() { # port authorization-header-or-empty
    local auth=()
    [ -n "$2" ] && auth=(-H "Authorization: $2")
    local file digest location
    # POST then PUT: distribution ignores a digest on the POST.
    for file in config.json layer.tar; do
        digest="sha256:$(sha256sum "$WORK/$file" | cut -d' ' -f1)"
        location=$(curl -sf "${auth[@]}" -X POST -D - -o /dev/null \
            "http://127.0.0.1:$1/v2/bench/app/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
        case "$location" in http*) ;; *) location="http://127.0.0.1:$1$location" ;; esac
        case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
        curl -sf "${auth[@]}" -X PUT -H "Content-Type: application/octet-stream" \
            --data-binary @"$WORK/$file" "$location" -o /dev/null
    done
    curl -sf "${auth[@]}" -X PUT -H "Content-Type: application/vnd.oci.image.manifest.v1+json" \
        --data-binary @"$WORK/manifest.json" "http://127.0.0.1:$1/v2/bench/app/manifests/v1" -o /dev/null
}
BASIC="Basic $(printf 'bench:benchpw' | base64)"
TOKEN="$(curl -sf -H "Authorization: $BASIC" \
    "http://127.0.0.1:17002/token?service=berth&scope=repository:bench/app:pull,push" \
    | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"
[ -n "$TOKEN" ] || { echo "no token from the token endpoint"; exit 1; }
push 17001 ""
push 17002 "Bearer $TOKEN"
push 17003 "$BASIC"
push 17004 "$BASIC"

rate() { # port authorization-or-empty
    local hdr=(-H "Accept: application/vnd.oci.image.manifest.v1+json")
    [ -n "$2" ] && hdr+=(-H "Authorization: $2")
    wrk -t2 -c16 -d"${SECS}s" "${hdr[@]}" "http://127.0.0.1:$1/v2/bench/app/manifests/v1" \
        | awk '/Requests\/sec/ {print $2}'
}
echo "manifest GETs per second, ${SECS}s each (wrk -t2 -c16):"
NOAUTH=$(rate 17001 "");          echo "  berth, no auth:              $NOAUTH"
BEARER=$(rate 17002 "Bearer $TOKEN"); echo "  berth, Bearer token:         $BEARER"
BBASIC=$(rate 17003 "$BASIC");    echo "  berth, Basic (bcrypt cached): $BBASIC"
DBASIC=$(rate 17004 "$BASIC");    echo "  distribution, Basic:         $DBASIC"
awk -v n="$NOAUTH" -v b="$BEARER" -v s="$BBASIC" -v d="$DBASIC" 'BEGIN {
    printf "berth Bearer / berth no auth = %.2fx; berth Basic / distribution Basic = %.1fx\n", b / n, s / d
}'
