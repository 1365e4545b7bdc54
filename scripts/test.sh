#!/usr/bin/env bash
# Runs Berth's whole test suite: the one command for CI and for a fresh Debian 12 machine.
#
#   scripts/test.sh            # as root (installs packages, starts a private dockerd)
#
# Steps:
#   1. install the tools the end-to-end tests drive (docker.io, skopeo, docker-registry,
#      busybox-static, umoci, openssl, runc, podman, buildah) with apt-get, unless they are all present already, and
#      kubectl and kubernetes-validate (pip) for the export tests, and
#      the S3 server the S3 tests run against (s3s-fs, with cargo install into ~/.cargo/bin,
#      which CI machines may keep between runs; skipped when it is on PATH already);
#   2. start a private dockerd (own data/exec roots, pidfile and socket; never the system
#      one) and export DOCKER_HOST to it; a trap stops it by PID on any exit;
#   3. cargo fmt --check, cargo build, cargo clippy -D warnings, cargo test (2 test threads).
#
# Every step runs even if an earlier check step failed (except when the build fails), and the
# script exits non-zero if anything failed. Environment knobs:
#   CI               default true: a test that cannot run (missing tool, daemon, root) fails;
#                    CI=false lets such tests skip (a developer's choice, named in the summary)
#   BERTH_TEST_TMP   where the private dockerd keeps its state (default /var/tmp)
#   BERTH_TEST_ARGS  extra arguments for `cargo test` before `--` (e.g. "--test resume")
#   BERTH_TEST_TIMEOUT  seconds before a hung `cargo test` is killed (default 2400)
#   BERTH_TEST_CHECK_ONLY=1  stop after step 1 (packages and tools present), before dockerd
# Knobs that narrow or redirect what the run proves (CI other than true, BERTH_TEST_ARGS,
# BERTH_CONFORMANCE_ONLY, BERTH_TEST_SERVER, BERTH_BUILD_ISOLATION) are named in the final
# summary line, so a narrowed run never reads as a whole one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# The whole suite, not skip mode: the tests turn "cannot run here" into a failure with CI=true.
export CI="${CI:-true}"
narrowing=()
case "${CI,,}" in
    true|1) ;;
    *) narrowing+=("CI=$CI (tests that cannot run here skip)") ;;
esac
for knob in BERTH_TEST_ARGS BERTH_CONFORMANCE_ONLY BERTH_TEST_SERVER BERTH_BUILD_ISOLATION; do
    if [ -n "${!knob:-}" ]; then narrowing+=("$knob=${!knob}"); fi
done
narrowed() {
    if [ "${#narrowing[@]}" -gt 0 ]; then
        local IFS=';'
        printf ' (NARROWED:%s)' "${narrowing[*]/#/ }"
    fi
}
step "CI=$CI$(narrowed)"

# --- 1. packages -------------------------------------------------------------------------------
# runc before podman/buildah: they depend on "crun | runc", and crun does not work here
# (ENVIRONMENT.md); with runc already installed apt never picks crun.
# openssh-server: the deployer's ssh:// test runs its own sshd on loopback (never the system
# service: policy-rc.d below keeps apt from starting it).
# docker-compose (1.29): tests/compose_e2e.rs deploys the same compose file with it and berth.
# iproute2, iptables, curl (and util-linux's nsenter/setsid): scripts/docker-hosts.sh, which
# tests/deploy_hosts_e2e.rs uses to run dockerds in network namespaces.
# prometheus (promtool too): tests/metrics_e2e.rs checks and scrapes `berth serve`'s /metrics.
# containerd (ctr too): tests/mirror_daemons_e2e.rs pulls through a hosts.toml mirror (`?ns=`).
# chromium, chromium-driver: tests/ui_e2e.rs drives the web UI in headless chromium (WebDriver).
PACKAGES=(docker.io skopeo docker-registry busybox-static umoci openssl runc podman buildah
          openssh-client openssh-server iproute2 iptables curl dnsmasq ansible-core git docker-compose
          prometheus containerd chromium chromium-driver)
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    step "packages: all present (${PACKAGES[*]})"
else
    step "packages: installing ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # Packages with services (docker.io, openssh-server) must not start them: the tests start
    # their own daemons on private sockets and loopback ports.
    no_services=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        no_services=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 install -y runc
    apt-get -o DPkg::Lock::Timeout=600 install -y "${PACKAGES[@]}"
    [ -z "$no_services" ] || rm -f /usr/sbin/policy-rc.d
fi
if command -v crun >/dev/null; then
    echo "warning: crun is installed; podman may pick it and fail (tests pass --runtime runc)"
fi
not_found=()
for tool in dockerd docker skopeo docker-registry busybox umoci openssl gzip tar runc podman \
            buildah ssh sshd ssh-keygen ip iptables nsenter setsid curl dnsmasq ansible-inventory \
            docker-compose prometheus promtool containerd ctr chromium chromedriver; do
    command -v "$tool" >/dev/null || not_found+=("$tool")
done
[ "${#not_found[@]}" -eq 0 ] \
    || die "not found on PATH: ${not_found[*]} (PATH=$PATH; their packages: ${PACKAGES[*]})"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain first"
# s3s-fs: a real S3 server (SigV4, conditional writes, multipart) for the S3 backend's tests.
# 0.14.1 is the last release that builds with rustc 1.95; --locked keeps its dependencies
# at versions that do too.
S3S_FS_VERSION=0.14.1
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if command -v s3s-fs >/dev/null; then
    step "s3s-fs: present ($(command -v s3s-fs))"
else
    step "s3s-fs: installing $S3S_FS_VERSION with cargo install (a few minutes, once)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
    command -v s3s-fs >/dev/null || die "s3s-fs not on PATH after cargo install"
fi
# Kubernetes tools for tests/export_e2e.rs (`berth export kubernetes`): `kubectl kustomize`
# builds the exported kustomizations and kubernetes-validate (PyPI, schemas offline) checks
# them. Machines of this project's kind ship Google's `kubectl` package, which the configured
# apt sources cannot install; elsewhere Debian's kubernetes-client provides kubectl.
if ! command -v kubectl >/dev/null; then
    step "kubectl: installing Debian's kubernetes-client"
    [ "$(id -u)" -eq 0 ] || die "need root to install kubernetes-client"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get -o DPkg::Lock::Timeout=600 install -y kubernetes-client
fi
if ! command -v kubernetes-validate >/dev/null; then
    step "kubernetes-validate: installing from PyPI"
    python3 -m pip install --quiet kubernetes-validate \
        || python3 -m pip install --quiet --break-system-packages kubernetes-validate
    hash -r
    command -v kubernetes-validate >/dev/null \
        || die "kubernetes-validate not on PATH after pip install (PATH=$PATH)"
fi
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing (rustup component add rustfmt)"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing (rustup component add clippy)"
if [ "${BERTH_TEST_CHECK_ONLY:-}" = 1 ]; then
    step "BERTH_TEST_CHECK_ONLY=1: every package and tool is present; stopping here"
    exit 0
fi

# --- 2. private dockerd ------------------------------------------------------------------------
DOCKER_TMP="$(mktemp -d "${BERTH_TEST_TMP:-/var/tmp}/berth-test-docker.XXXXXX")"
DOCKERD_PID=""
STEP_PGID=""
cleanup() {
    local rc=$?
    set +e
    # Interrupted in the middle of a step: stop that step's whole process group (cargo, the
    # test binaries and any registry they started).
    if [ -n "$STEP_PGID" ] && kill -0 "$STEP_PGID" 2>/dev/null; then
        step "interrupted: stopping the running step (process group $STEP_PGID)"
        kill -TERM -- "-$STEP_PGID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$STEP_PGID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$STEP_PGID" 2>/dev/null
    fi
    if [ -n "$DOCKERD_PID" ]; then
        step "stopping private dockerd (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            echo "dockerd did not stop within 30 s: SIGKILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        fi
    fi
    # Unmount anything dockerd left below its directories, then remove them.
    if [ -d "$DOCKER_TMP" ]; then
        { grep -o " $DOCKER_TMP/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null
        done
        rm -rf --one-file-system "$DOCKER_TMP" 2>/dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting private dockerd in $DOCKER_TMP"
# No default bridge and no iptables changes: the tests run containers with --network none,
# and this way the daemon cannot clash with another dockerd on the machine.
setsid dockerd \
    --data-root "$DOCKER_TMP/data" \
    --exec-root "$DOCKER_TMP/exec" \
    --pidfile "$DOCKER_TMP/dockerd.pid" \
    -H "unix://$DOCKER_TMP/docker.sock" \
    --storage-driver overlay2 \
    --bridge none \
    --iptables=false \
    --tls=false \
    >"$DOCKER_TMP/dockerd.log" 2>&1 </dev/null &
DOCKERD_PID=$!
export DOCKER_HOST="unix://$DOCKER_TMP/docker.sock"
ready=""
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
done
if [ -z "$ready" ]; then
    echo "---- dockerd log ----"; tail -n 50 "$DOCKER_TMP/dockerd.log" || true
    die "private dockerd did not become ready"
fi
# dockerd's own record of its PID wins over $! (they differ only if setsid had to fork).
if [ -s "$DOCKER_TMP/dockerd.pid" ]; then
    DOCKERD_PID="$(cat "$DOCKER_TMP/dockerd.pid")"
fi
echo "dockerd $(docker version --format '{{.Server.Version}}') ready, pid $DOCKERD_PID, DOCKER_HOST=$DOCKER_HOST"

# --- 3. cargo ------------------------------------------------------------------------------------
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A clean clone gains nothing from incremental compilation, and its caches cost gigabytes of
# the disk the big-blob tests need (CI once ran out of space in tests/client_big.rs).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Free space where the tests write (their temporary files, the registry's blobs) and what the
# build took, printed before the tests so a "No space left on device" failure explains itself.
disk_report() {
    local tmp="${TMPDIR:-/tmp}"
    echo "disk: $(df -h --output=avail "$tmp" | tail -n 1 | tr -d ' ') free in $tmp," \
         "$(df -h --output=avail "$ROOT" | tail -n 1 | tr -d ' ') free in $ROOT," \
         "target/ $(du -sh target 2>/dev/null | cut -f1)"
}
failures=()
run_step() {
    local name="$1"; shift
    step "$name: $*"
    local t0; t0=$(date +%s)
    # Each step runs in its own process group, in the background, so that a signal to this
    # script is handled at once (bash defers traps while a foreground child runs) and the
    # trap can stop the whole step.
    setsid "$@" &
    STEP_PGID=$!
    # A hung step must fail with its output on record, well inside CI's time limit, not run
    # until CI gives up: after STEP_TIMEOUT seconds its whole process group is killed.
    local watchdog=""
    if [ -n "${STEP_TIMEOUT:-}" ]; then
        # The sleep is killed with the watchdog, so no stray process keeps CI's output open.
        ( sleep "$STEP_TIMEOUT" >/dev/null 2>&1 </dev/null &
          sleeper=$!
          trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
          wait "$sleeper" || exit 0
          echo "--- $name: still running after ${STEP_TIMEOUT}s; killing process group $STEP_PGID"
          ps -o pid,stat,etime,wchan:20,args --forest -s "$STEP_PGID" || true
          kill -TERM -- "-$STEP_PGID" 2>/dev/null; sleep 10; kill -KILL -- "-$STEP_PGID" 2>/dev/null
        ) &
        watchdog=$!
    fi
    local ok=1
    wait "$STEP_PGID" || ok=""
    if [ -n "$watchdog" ]; then kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null; fi
    STEP_PGID=""
    if [ -n "$ok" ]; then
        echo "--- $name: ok ($(( $(date +%s) - t0 ))s)"
    else
        echo "--- $name: FAILED ($(( $(date +%s) - t0 ))s)"
        failures+=("$name")
        return 1
    fi
}

rustc --version; cargo --version
run_step fmt cargo fmt --all --check || true
run_step build cargo build --workspace --all-targets \
    || die "build failed: not running tests (failed so far: ${failures[*]})"
run_step clippy cargo clippy --workspace --all-targets -- -D warnings || true
disk_report
# shellcheck disable=SC2086 # BERTH_TEST_ARGS is meant to split into words
STEP_TIMEOUT="${BERTH_TEST_TIMEOUT:-2400}" run_step test cargo test --workspace --no-fail-fast ${BERTH_TEST_ARGS:-} -- --test-threads=2 || true

step "done in $(( $(date +%s) - START ))s"
disk_report
if [ "${#failures[@]}" -gt 0 ]; then
    echo "FAILED: ${failures[*]}$(narrowed)"
    exit 1
fi
echo "ALL PASSED: fmt, build, clippy, test$(narrowed)"
