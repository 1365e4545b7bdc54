#!/usr/bin/env bash
# Benchmark the deployer: `berth deploy` of examples/origin/app.yml against the equivalent
# Ansible playbook (community.docker, scripts/bench-deploy/app.yml) and against the docker
# CLI floor (scripts/bench-deploy/cli-floor.sh: plain `docker` commands, the hosts and each
# host's independent steps in parallel, no health wait), on the same three Docker hosts, in
# the same run, rotating which tool goes first. Per tool and variant (web with its
# healthcheck, and without: BENCH_VARIANTS) it times a first deploy (fresh hosts: no
# containers, networks or images), an unchanged re-run (not the floor) and an update from
# image v3 to v4 (the same app with another page); it checks after every deploy that all
# containers run with the right settings and image (and web is healthy when it has a
# check), after every re-run that nothing changed, and after every update that both
# containers were replaced. Prints median and min-max per tool, variant and phase, and the
# ratios berth/floor (the issue's target: at most 1.15) and ansible/berth.
#
#   sudo scripts/bench-deploy.sh
#
# Environment knobs (all optional):
#   BENCH_RUNS=3            rounds (each: every tool and variant: first deploy, re-run, update)
#   BENCH_VARIANTS="health nohealth"  which variants of the app to run
#   BENCH_RESULTS=FILE      also write the summary there
#   BENCH_KEEP=1            keep the temporary folder (logs of every deploy)
#   BENCH_ANSIBLE_NO_WAIT=1 the playbook does not wait for web's healthcheck (berth always
#                           does); the check after the deploy waits for it instead, untimed
#   BENCH_BERTH=PATH        another berth binary (e.g. a debug build, for trying the script)
#
# Needs root (network namespaces, dockerd). Installs from Debian what is missing (ansible
# with community.docker, python3-requests, docker.io, busybox-static, runc, iproute2,
# iptables). Uses ${CARGO_TARGET_DIR:-target}/release/berth, building it only if missing.
# The hosts are network namespaces with their own dockerd (scripts/docker-hosts.sh); the
# registry (`berth serve`) listens on their bridge's host address. Traffic goes only to
# addresses inside those namespaces and that bridge. Everything is torn down on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${BENCH_RUNS:-3}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BERTH=${BENCH_BERTH:-$TARGET_DIR/release/berth}
HOSTS=3
APP=app_example

log() { echo "== $*" >&2; }
die() { echo "bench-deploy.sh: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (network namespaces and dockerd)"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive number, not '$RUNS'"

# --- tools ---------------------------------------------------------------------------------
missing=()
for pair in ansible-playbook:ansible dockerd:docker.io docker:docker.io busybox:busybox-static \
    runc:runc ip:iproute2 iptables:iptables curl:curl python3:python3; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
# community.docker 3.x talks to the Engine API with its own client on top of requests
# (the Docker SDK for Python is not needed for the modules used here); Ansible runs its
# modules with Debian's python3.
/usr/bin/python3 -c 'import requests' 2>/dev/null || missing+=(python3-requests)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    # shellcheck disable=SC2046
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >&2
fi
ansible-galaxy collection list community.docker 2>/dev/null | grep -q '^community\.docker' ||
    die "Ansible has no community.docker collection (Debian's ansible package ships it)"
COLLECTION_VERSION=$(ansible-galaxy collection list community.docker 2>/dev/null |
    awk '$1=="community.docker"{print $2; exit}')

if [[ ! -x "$BERTH" ]]; then
    log "building berth (release)"
    cargo build --release --bin berth >&2
fi

# --- hosts and registry --------------------------------------------------------------------
WORK=$(mktemp -d /tmp/berth-bench-deploy.XXXXXX)
SERVE_PID=
cleanup() {
    local status=$?
    if [[ -n "$SERVE_PID" ]]; then
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    "$ROOT/scripts/docker-hosts.sh" down "$WORK/hosts" >/dev/null 2>&1 ||
        echo "bench-deploy.sh: docker-hosts.sh down $WORK/hosts failed" >&2
    if [[ "${BENCH_KEEP:-0}" == 1 || $status -ne 0 ]]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting $HOSTS docker hosts"
"$ROOT/scripts/docker-hosts.sh" up "$WORK/hosts" "$HOSTS" >"$WORK/hosts-up.log" 2>&1 ||
    { cat "$WORK/hosts-up.log" >&2; die "docker-hosts.sh up failed"; }
# shellcheck disable=SC1091
source "$WORK/hosts/hosts.env"
for i in $(seq 1 "$HOSTS"); do
    addr_var="H${i}_ADDR"
    sock_var="H${i}_SOCK"
    [[ -n "${!addr_var:-}" && -S "${!sock_var:-}" ]] || die "hosts.env lacks host $i"
    export "H${i}_ADDR"
done

# The registry listens on the bridge's host side, where every host can reach it.
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('$BRIDGE_ADDR',0)); print(s.getsockname()[1])")
REGISTRY="$BRIDGE_ADDR:$PORT"
BERTH_LOG=warn "$BERTH" serve --addr "$REGISTRY" --storage "$WORK/registry" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do
    curl -fs "http://$REGISTRY/v2/" >/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "berth serve exited"; }
    sleep 0.1
done
curl -fs "http://$REGISTRY/v2/" >/dev/null || die "berth serve did not answer on $REGISTRY"
export BENCH_REGISTRY=$REGISTRY

# The example's image, built as `berth ship` would: a busybox base pushed first, then
# examples/origin/app built FROM it and pushed as the app file's image.
log "building the example image into $REGISTRY"
export BERTH_STORE="$WORK/store" BERTH_BUILD_CACHE="$WORK/build-cache" DOCKER_CONFIG="$WORK/docker-config"
export BERTH_INSECURE_REGISTRIES=$REGISTRY
mkdir -p "$WORK/rootfs/bin" "$DOCKER_CONFIG"
cp "$(command -v busybox)" "$WORK/rootfs/bin/busybox"
ln -s busybox "$WORK/rootfs/bin/sh"
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" bin
"$BERTH" import --quiet "$WORK/rootfs.tar" "$REGISTRY/busybox:stable" -c 'CMD ["/bin/sh"]' \
    >"$WORK/import.log" 2>&1 || { cat "$WORK/import.log" >&2; die "berth import failed"; }
IMAGE="$REGISTRY/$APP""_image:v3"
"$BERTH" build --quiet -t "$IMAGE" --push --build-arg "BASE=$REGISTRY/busybox:stable" \
    examples/origin/app >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; die "berth build failed"; }
# The update's image: the same app with another page, as v4.
cp -r examples/origin/app "$WORK/app-v4"
sed -i 's/deployed by Berth\./deployed by Berth (v4)./' "$WORK/app-v4/index.html"
"$BERTH" build --quiet -t "$REGISTRY/$APP""_image:v4" --push --build-arg "BASE=$REGISTRY/busybox:stable" \
    "$WORK/app-v4" >"$WORK/build-v4.log" 2>&1 || { cat "$WORK/build-v4.log" >&2; die "berth build (v4) failed"; }
# The no-healthcheck variant: the app file without web's healthcheck.
python3 - examples/origin/app.yml "$WORK/app-nohealth.yml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
out = re.sub(r"\n    healthcheck:\n(      .*\n)+", "\n", text)
assert out != text and "healthcheck:" not in out, "no healthcheck removed"
open(sys.argv[2], "w").write(out)
PY

# berth's inventory: the testing environment's variables, the hosts reached over TCP.
INV="$WORK/inventory"
mkdir -p "$INV/group_vars"
{
    echo "all:"
    echo "  children:"
    echo "    back:"
    echo "      hosts:"
    for i in $(seq 1 "$HOSTS"); do
        addr_var="H${i}_ADDR"
        echo "        web-back$i.testing: { docker_host: \"tcp://${!addr_var}:2375\" }"
    done
} >"$INV/hosts.yml"
printf 'app_env: testing\nregistry: "%s"\n' "$REGISTRY" >"$INV/group_vars/all.yml"

docker_on() { # HOST_INDEX ARGS...
    local sock_var="H${1}_SOCK"
    shift
    docker -H "unix://${!sock_var}" "$@"
}

# Back to fresh hosts: no app containers (kept or half-made ones included), networks or
# images. Not timed.
clean_hosts() {
    local i ids
    for i in $(seq 1 "$HOSTS"); do
        ids=$(docker_on "$i" ps -aq --filter "name=${APP}_")
        [[ -z "$ids" ]] || docker_on "$i" rm -f $ids >/dev/null
        for nw in test_nw test_nw2; do
            docker_on "$i" network rm "$nw" >/dev/null 2>&1 || true
        done
        ids=$(docker_on "$i" image ls -aq)
        [[ -z "$ids" ]] || docker_on "$i" image rm -f $ids >/dev/null
        [[ -z "$(docker_on "$i" ps -aq)$(docker_on "$i" image ls -aq)" ]] ||
            die "host $i is not clean"
        ! docker_on "$i" network inspect test_nw test_nw2 >/dev/null 2>&1 ||
            die "host $i still has the app's networks"
    done
}

# Checks every host holds the app as the example describes it, with image TAG, and web with
# or without its healthcheck; prints the containers' ids (so a re-run can be checked to have
# replaced nothing, and an update to have replaced both).
verify() { # TOOL TAG health|nohealth
    local i out
    for i in $(seq 1 "$HOSTS"); do
        docker_on "$i" inspect "${APP}_web_1" "${APP}_nodes_1" >"$WORK/inspect.json" ||
            die "$1: containers missing on host $i"
        docker_on "$i" network inspect test_nw test_nw2 >"$WORK/networks.json" ||
            die "$1: networks missing on host $i"
        python3 - "$WORK/inspect.json" "$WORK/networks.json" "$REGISTRY" "$1" "$i" "$2" "$3" <<'PY' ||
import json, sys
containers = {c["Name"].lstrip("/"): c for c in json.load(open(sys.argv[1]))}
networks = {n["Name"]: n for n in json.load(open(sys.argv[2]))}
registry, tool, host, tag, health = sys.argv[3:8]
problems = []
def check(what, got, want):
    if got != want:
        problems.append(f"{what}: {got!r}, expected {want!r}")
def ipam(name):
    cfg = (networks[name]["IPAM"].get("Config") or [{}])[0]
    return cfg.get("Subnet"), cfg.get("Gateway")
def check_test(healthcheck):
    test = (healthcheck or {}).get("Test")
    # The docker CLI's --health-cmd is a shell form of the same command.
    if test and test[0] == "CMD-SHELL":
        test = ["CMD"] + test[1].split()
    return test
check("test_nw subnet/gateway", ipam("test_nw"), ("10.1.4.0/24", "10.1.4.100"))
check("test_nw2 subnet", ipam("test_nw2")[0], "10.2.3.0/24")
web_check = ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/"]
want = {
    "web": dict(env={"APP_ENV=testing", "LOG_LEVEL=info"}, ports={"8000/tcp": [("0.0.0.0", "80")]},
                nets={"test_nw": "10.1.4.10"}, cpus=10**9, memory=256 << 20,
                health=web_check if health == "health" else None),
    "nodes": dict(env={"APP_ENV=testing", "ROLE=nodes"}, ports={"8000/tcp": [("127.0.0.1", "8000")]},
                  nets={"test_nw": "10.1.4.2", "test_nw2": "10.2.3.2"}, cpus=0, memory=0, health=None),
}
for service, w in want.items():
    c = containers[f"app_example_{service}_1"]
    hc, cfg = c["HostConfig"], c["Config"]
    check(f"{service} running", c["State"]["Running"], True)
    check(f"{service} image", cfg["Image"].split("@")[0], f"{registry}/app_example_image:{tag}")
    check(f"{service} command", cfg["Cmd"], ["httpd", "-f", "-p", "8000", "-h", "/www"])
    check(f"{service} env", w["env"] - set(cfg.get("Env") or []), set())
    check(f"{service} ports", {k: [(b["HostIp"], b["HostPort"]) for b in v]
                               for k, v in (hc.get("PortBindings") or {}).items()}, w["ports"])
    check(f"{service} networks", {k: (v.get("IPAMConfig") or {}).get("IPv4Address")
                                  for k, v in c["NetworkSettings"]["Networks"].items()}, w["nets"])
    check(f"{service} addresses", {k: v.get("IPAddress") for k, v in c["NetworkSettings"]["Networks"].items()},
          w["nets"])
    check(f"{service} restart", hc["RestartPolicy"]["Name"], "unless-stopped")
    check(f"{service} stop timeout", cfg.get("StopTimeout"), 2)
    check(f"{service} cpus", hc.get("NanoCpus") or 0, w["cpus"])
    check(f"{service} memory", hc.get("Memory") or 0, w["memory"])
    check(f"{service} healthcheck", check_test(cfg.get("Healthcheck")), w["health"])
web = containers["app_example_web_1"]
check("web health", web["State"].get("Health", {}).get("Status"),
      "healthy" if health == "health" else None)
if problems:
    sys.exit(f"{tool}, host {host}: " + "; ".join(problems))
for name in sorted(containers):
    print(containers[name]["Id"])
PY
            die "$1: host $i is not as the example describes"
        local addr_var="H${i}_ADDR" page="Hello from the origin example, deployed by Berth."
        [[ "$2" == v3 ]] || page="Hello from the origin example, deployed by Berth ($2)."
        out=$(curl -fsS --max-time 5 "http://${!addr_var}:80/") || die "$1: web on host $i does not answer"
        [[ "$out" == *"$page"* ]] || die "$1: web on host $i answered: $out"
    done
}

now() { date +%s.%N; }

# Where a deploy's time went on host 1: the daemon's events, in seconds since the deploy
# started (kept with BENCH_KEEP=1; not timed).
timeline() { # T0 T1
    docker_on 1 events --since "$1" --until "$2" \
        --format '{{.TimeNano}} {{.Type}} {{.Action}} {{.Actor.Attributes.name}}' |
        awk -v t0="$1" '{ printf "%6.2f %s %s %s\n", $1 / 1e9 - t0, $2, $3, $4 }'
}
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# Each tool's deploy: LOG TAG VARIANT.
berth_deploy() {
    local app=examples/origin/app.yml
    [[ "$3" == health ]] || app="$WORK/app-nohealth.yml"
    "$BERTH" deploy "$app" -i "$INV" --insecure "$REGISTRY" -e "image_tag=$2" --timings >"$1" 2>&1
}
ANSIBLE_EXTRA=()
[[ "${BENCH_ANSIBLE_NO_WAIT:-0}" != 1 ]] || ANSIBLE_EXTRA=(-e wait_healthy=false)
ansible_deploy() {
    local health=true
    [[ "$3" == health ]] || health=false
    ANSIBLE_CONFIG="$ROOT/scripts/bench-deploy/ansible.cfg" \
        ansible-playbook -i "$ROOT/scripts/bench-deploy/inventory.yml" "${ANSIBLE_EXTRA[@]}" \
        -e "image_tag=$2" -e "with_healthcheck=$health" \
        "$ROOT/scripts/bench-deploy/app.yml" >"$1" 2>&1
}
# The floor has no re-run (it does not read the hosts); its update is its own script mode.
FLOOR_MODE=first
floor_deploy() {
    "$ROOT/scripts/bench-deploy/cli-floor.sh" "$FLOOR_MODE" "$2" "$3" >"$1" 2>&1
}

# The CLI floor and BENCH_ANSIBLE_NO_WAIT=1 return before web is healthy: give it the time
# the healthcheck needs before checking (berth's deploys are healthy at once). Not timed.
until_healthy() { # health|nohealth
    [[ "$1" == health ]] || return 0
    local i status
    for i in $(seq 1 "$HOSTS"); do
        for _ in $(seq 1 150); do
            status=$(docker_on "$i" inspect -f '{{.State.Health.Status}}' "${APP}_web_1" 2>/dev/null || true)
            [[ "$status" != starting ]] && break
            sleep 0.2
        done
    done
}

# An unchanged re-run must report nothing changed on any host (both tools print Ansible's
# recap: `HOST : ok=N changed=N unreachable=N failed=N ...`).
unchanged() { # TOOL LOG
    local n
    n=$(grep -cE '^web-back[0-9]+\.testing +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$2" || true)
    [[ "$n" == "$HOSTS" ]] || { cat "$2" >&2; die "$1: the unchanged re-run changed something"; }
}

# timed TOOL LOG TAG VARIANT: runs one deploy, prints its seconds; dies when it failed.
timed() {
    local t0 t1
    t0=$(now)
    "${1}_deploy" "$2" "$3" "$4" || { cat "$2" >&2; die "$1: deploy failed ($2)"; }
    t1=$(now)
    timeline "$t0" "$t1" >"${2%.log}.events"
    elapsed "$t0" "$t1"
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# one TOOL VARIANT RUN: first deploy (v3), check, unchanged re-run, check, update to v4,
# check; appends the three times (no re-run for the floor).
one() {
    local tool=$1 variant=$2 run=$3 first rerun=- update before after updated
    local log="$WORK/$tool-$variant-$run"
    clean_hosts
    sync
    FLOOR_MODE=first
    first=$(timed "$tool" "$log-first.log" v3 "$variant")
    until_healthy "$variant"
    before=$(verify "$tool" v3 "$variant")
    if [[ "$tool" != floor ]]; then
        rerun=$(timed "$tool" "$log-rerun.log" v3 "$variant")
        unchanged "$tool" "$log-rerun.log"
        after=$(verify "$tool" v3 "$variant")
        [[ "$before" == "$after" ]] || die "$tool: the unchanged re-run replaced containers"
    fi
    FLOOR_MODE=update
    update=$(timed "$tool" "$log-update.log" v4 "$variant")
    until_healthy "$variant"
    updated=$(verify "$tool" v4 "$variant")
    [[ -z "$(comm -12 <(sort <<<"$before") <(sort <<<"$updated"))" ]] ||
        die "$tool: the update kept a v3 container"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$variant" "$run" "$first" "$rerun" "$update" >>"$RESULTS"
    printf '%-3s %-8s %-8s first %6ss   re-run %6ss   update %6ss\n' \
        "$run" "$tool" "$variant" "$first" "$rerun" "$update"
}

VARIANTS=${BENCH_VARIANTS:-health nohealth}
TOOLS=(berth ansible floor)
log "$RUNS runs ($VARIANTS): berth $("$BERTH" --version 2>/dev/null | awk '{print $NF}'), ansible-core $(ansible-playbook --version | awk 'NR==1{print $NF}' | tr -d ']'), community.docker $COLLECTION_VERSION, dockerd $(dockerd --version | awk '{print $3}' | tr -d ,), docker CLI $(docker --version | awk '{print $3}' | tr -d ,)"
for run in $(seq 1 "$RUNS"); do
    for variant in $VARIANTS; do
        # Each run starts with another tool, so none always runs on the warmest hosts.
        for k in 0 1 2; do
            one "${TOOLS[$(((run + k) % 3))]}" "$variant" "$run"
        done
    done
done
clean_hosts

python3 - "$RESULTS" "$RUNS" "${BENCH_RESULTS:-}" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
runs, out = int(sys.argv[2]), sys.argv[3]
times = {}
for tool, variant, _run, *phases in rows:
    for phase, value in zip(("first deploy", "unchanged re-run", "v3->v4 update"), phases):
        if value != "-":
            times.setdefault((variant, phase, tool), []).append(float(value))
def cell(values):
    if not values:
        return f"{'-':>21}"
    return f"{statistics.median(values):6.2f} ({min(values):5.2f}-{max(values):5.2f})"
def ratio(a, b):
    return f"{statistics.median(a) / statistics.median(b):5.2f}x" if a and b else "    -"
lines = [f"examples/origin/app.yml to 3 hosts, {runs} runs (seconds: median (min-max))",
         f"{'':28} {'berth':>21} {'ansible':>21} {'docker CLI floor':>21}   berth/floor ansible/berth"]
for variant in ("health", "nohealth"):
    for phase in ("first deploy", "unchanged re-run", "v3->v4 update"):
        b, a, f = (times.get((variant, phase, tool), []) for tool in ("berth", "ansible", "floor"))
        if not (b or a or f):
            continue
        lines.append(f"{variant + ' ' + phase:28} {cell(b)} {cell(a)} {cell(f)}"
                     f"   {ratio(b, f):>11} {ratio(a, b):>13}")
text = "\n".join(lines)
print(text)
if out:
    open(out, "w").write(text + "\n")
PY
