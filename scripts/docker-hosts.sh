#!/usr/bin/env bash
# Brings up / tears down N real Docker hosts on this machine, each a dockerd in its own network
# namespace, joined by a Linux bridge (the recipe in shared/ENVIRONMENT.md, "Several real hosts
# on one machine"). For the deployer's end-to-end test and benchmarks. Needs root.
#
#   scripts/docker-hosts.sh up DIR N     # N hosts (1..20); state, sockets and logs under DIR
#   scripts/docker-hosts.sh down DIR     # stop and remove everything `up DIR` made (idempotent)
#
# `up` reserves a free 10.250.X.0/24 (atomically: mkdir /run/berth-docker-hosts/X, so runs at
# the same time never clash), makes bridge bdh-X (10.250.X.1, the host side: run the registry
# the hosts pull from on that address), namespaces bdh-X-1..N (10.250.X.11.., no default route,
# so nothing leaves the machine) and one dockerd in each, listening on DIR/hI/docker.sock and
# tcp://10.250.X.(10+i):2375 (plain TCP: reachable only from this machine), treating
# 10.250.X.0/24 as an insecure (plain HTTP) registry range. It writes DIR/hosts.env
# (shell-sourceable: N, SLOT, BRIDGE, BRIDGE_ADDR, INSECURE_CIDR, then H1_NAME, H1_ADDR,
# H1_SOCK, H1_TCP, H1_PID, H1_LOG, ... per host) and prints it. An `up` that fails part-way
# cleans up after itself.
set -euo pipefail

RES_ROOT=/run/berth-docker-hosts
MAX_HOSTS=20
READY_TIMEOUT=${BDH_READY_TIMEOUT:-30}

die() { printf 'docker-hosts: %s\n' "$*" >&2; exit 1; }
log() { printf 'docker-hosts: %s\n' "$*" >&2; }
ipt() { iptables -w 10 "$@"; }

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_tools() {
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, bridges, iptables, dockerd)"
    local t
    for t in ip iptables nsenter dockerd curl setsid; do
        command -v "$t" >/dev/null || die "$t not found on PATH"
    done
}

# The slot (X of 10.250.X.0/24) that DIR holds, from DIR/.bdh-slot or the reservations' owner
# files; empty if none.
slot_of() {
    local dir="$1" s
    if [ -s "$dir/.bdh-slot" ]; then
        cat "$dir/.bdh-slot"
        return 0
    fi
    for s in "$RES_ROOT"/*/owner; do
        [ -f "$s" ] || continue
        if [ "$(cat "$s")" = "$dir" ]; then
            basename "$(dirname "$s")"
            return 0
        fi
    done
}

# PIDs of Docker's own processes (dockerd, its containerd, shims, port proxies) whose command
# line mentions DIR: the ones a dockerd killed with SIGKILL leaves behind.
pids_under() {
    local dir="$1" p cmd comm
    for p in /proc/[0-9]*; do
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        case "$comm" in dockerd|containerd|containerd-shim*|docker-proxy|runc) ;; *) continue ;; esac
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        case "$cmd" in *"$dir/"*) echo "${p#/proc/}" ;; esac
    done
}

# Removes every container of the dockerd on SOCK, if it still answers: faster than letting the
# daemon stop them at shutdown (busybox httpd ignores SIGTERM, so that waits 10 s each), and a
# removed container is not restarted by its restart policy.
remove_containers() {
    local sock="$1" ids
    command -v docker >/dev/null || return 0
    [ -S "$sock" ] || return 0
    ids=$(timeout 10 docker -H "unix://$sock" ps -aq 2>/dev/null) || return 0
    [ -n "$ids" ] || return 0
    # shellcheck disable=SC2086 # one word per container id
    timeout 30 docker -H "unix://$sock" rm -f $ids >/dev/null 2>&1 || true
}

# True while PID runs. A zombie (dead, not yet reaped by its parent: the daemons are
# re-parented to PID 1 once `up` exits) counts as gone.
alive() {
    local state
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

stop_pid() {
    local pid="$1" what="$2"
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        alive "$pid" || return 0
        sleep 0.2
    done
    log "$what (pid $pid) did not stop within 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Kills every process left in the cgroups named NAME (the dockerd's --cgroup-parent: its
# containers) and removes those cgroups, deepest first.
clear_cgroups() {
    local name="$1" d p found=""
    for d in /sys/fs/cgroup/*/"$name" /sys/fs/cgroup/"$name"; do
        [ -d "$d" ] || continue
        found=1
        find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | while read -r p; do
            kill -KILL "$p" 2>/dev/null || true
        done
    done
    [ -n "$found" ] || return 0
    # Give the killed processes a moment to leave their cgroups, or rmdir fails (EBUSY).
    sleep 0.2
    for d in /sys/fs/cgroup/*/"$name" /sys/fs/cgroup/"$name"; do
        [ -d "$d" ] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

delete_marked_rules() {
    local marker="$1" chain rule
    for chain in FORWARD DOCKER-USER INPUT; do
        ipt -S "$chain" >/dev/null 2>&1 || continue
        # Delete one at a time: each deletion may renumber the rest.
        while rule=$(ipt -S "$chain" | grep -m1 -E -- "--comment \"?$marker\"?( |\$)"); do
            # shellcheck disable=SC2086 # the rule's words, as iptables printed them
            eval "ipt -D ${rule#-A }" || break
        done
    done
}

do_down() {
    local dir="$1" slot pid i f
    slot=$(slot_of "$dir")

    # 1. The daemons: dockerd by PID (its containerd and shims stop with it), then anything
    #    still running from DIR (a dockerd killed with SIGKILL leaves its containerd behind).
    for f in "$dir"/h*/docker.sock; do
        remove_containers "$f"
    done
    # All daemons get SIGTERM at once, then are waited for: one by one would add their
    # shutdown times up.
    local pids=()
    for f in "$dir"/h*/dockerd.pid "$dir"/h*/pid; do
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        # A stale PID file may name a PID reused by an unrelated process: only stop it if its
        # command line still mentions DIR.
        if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$dir/"; then
            kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        fi
    done
    for pid in ${pids[@]+"${pids[@]}"} $(pids_under "$dir"); do
        stop_pid "$pid" "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-60)"
    done

    if [ -n "$slot" ]; then
        # 2. Container processes that outlived their daemon, and the cgroups.
        for i in $(seq 1 "$MAX_HOSTS"); do
            clear_cgroups "bdh-$slot-$i"
        done
    fi

    # 3. Mounts below DIR (overlay layers, netns bind mounts, shm), deepest first.
    { grep -o " $dir/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done

    if [ -n "$slot" ]; then
        # 4. Namespaces (deleting one deletes its veth pair too), veths, bridge, rules.
        for i in $(seq 1 "$MAX_HOSTS"); do
            if [ -e "/var/run/netns/bdh-$slot-$i" ]; then
                ip netns del "bdh-$slot-$i" 2>/dev/null || true
            fi
            if ip link show "bdhv-$slot-$i" >/dev/null 2>&1; then
                ip link del "bdhv-$slot-$i" 2>/dev/null || true
            fi
        done
        if ip link show "bdh-$slot" >/dev/null 2>&1; then
            ip link del "bdh-$slot" 2>/dev/null || true
        fi
        delete_marked_rules "berth-docker-hosts-$slot"
    fi

    # 5. State: the daemons' data (the logs stay for whoever reads them), then the reservation.
    for f in "$dir"/h*; do
        [ -d "$f" ] || continue
        rm -rf --one-file-system "$f/data" "$f/exec" "$f/docker.sock" "$f/pid" "$f/dockerd.pid" \
            2>/dev/null || true
    done
    rm -f "$dir/hosts.env" "$dir/.bdh-slot"
    if [ -n "$slot" ] && [ -d "$RES_ROOT/$slot" ] \
        && [ "$(cat "$RES_ROOT/$slot/owner" 2>/dev/null)" = "$dir" ]; then
        rm -rf "${RES_ROOT:?}/$slot"
    fi
}

# Reserves a free X for DIR: the mkdir is the atomic step; a slot whose bridge or subnet is in
# use anyway (made by hand, or a leftover) is skipped.
reserve_slot() {
    local dir="$1" x
    mkdir -p "$RES_ROOT"
    for x in $(seq 1 254); do
        mkdir "$RES_ROOT/$x" 2>/dev/null || continue
        local addrs
        addrs=$(ip -4 -o addr show)
        if ip link show "bdh-$x" >/dev/null 2>&1 || [[ "$addrs" == *" 10.250.$x."* ]]; then
            rmdir "$RES_ROOT/$x"
            continue
        fi
        echo "$dir" >"$RES_ROOT/$x/owner"
        echo "$$" >"$RES_ROOT/$x/pid"
        echo "$x" >"$dir/.bdh-slot"
        echo "$x"
        return 0
    done
    die "no free 10.250.X.0/24 slot (see $RES_ROOT; stale ones go with '$0 down OWNER_DIR')"
}

start_dockerd() {
    local dir="$1" i="$2" slot="$3" addr="$4" driver="$5"
    local h="$dir/h$i"
    mkdir -p "$h/data" "$h/exec"
    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then fails
    # ("Devices cgroup isn't mounted"). setsid: the daemon must outlive this script's session.
    setsid nsenter --net="/var/run/netns/bdh-$slot-$i" dockerd \
        --data-root "$h/data" \
        --exec-root "$h/exec" \
        --pidfile "$h/dockerd.pid" \
        -H "unix://$h/docker.sock" \
        -H "tcp://$addr:2375" \
        --bip "10.251.$i.1/24" \
        --insecure-registry "10.250.$slot.0/24" \
        --cgroup-parent "/bdh-$slot-$i" \
        --storage-driver "$driver" \
        --tls=false \
        >>"$h/dockerd.log" 2>&1 </dev/null &
    echo $! >"$h/pid"
}

wait_ready() {
    local dir="$1" i="$2" h="$1/h$2" pid
    pid=$(cat "$h/pid")
    local deadline=$(( $(date +%s) + READY_TIMEOUT ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if curl -sf --max-time 2 --unix-socket "$h/docker.sock" http://d/_ping >/dev/null 2>&1; then
            return 0
        fi
        alive "$pid" || return 1
        sleep 0.2
    done
    return 1
}

do_up() {
    local dir="$1" n="$2"
    case "$n" in ''|*[!0-9]*) die "N must be a number, got '$n'" ;; esac
    [ "$n" -ge 1 ] && [ "$n" -le "$MAX_HOSTS" ] || die "N must be 1..$MAX_HOSTS, got $n"
    [ ! -e "$dir/hosts.env" ] || die "$dir already has hosts up ($dir/hosts.env); run '$0 down $dir' first"
    [ -z "$(slot_of "$dir")" ] || die "$dir already holds a slot; run '$0 down $dir' first"

    local slot
    slot=$(reserve_slot "$dir")
    # From here on a failure anywhere undoes everything made so far.
    UP_DIR="$dir"
    trap 'rc=$?; set +e; if [ $rc -ne 0 ]; then log "up failed: cleaning up"; do_down "$UP_DIR"; fi' EXIT

    local br="bdh-$slot" net="10.250.$slot" marker="berth-docker-hosts-$slot" i ns addr
    ip link add "$br" type bridge
    ip addr add "$net.1/24" dev "$br"
    ip link set "$br" up
    for i in $(seq 1 "$n"); do
        ns="bdh-$slot-$i"
        addr="$net.$((10 + i))"
        ip netns add "$ns"
        ip link add "bdhv-$slot-$i" type veth peer name "bdhp-$slot-$i" netns "$ns"
        ip link set "bdhv-$slot-$i" master "$br" up
        ip -n "$ns" link set "bdhp-$slot-$i" name eth0
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done

    # Host-to-host traffic crosses the host's FORWARD chain (bridge netfilter), whose policy a
    # dockerd on the host sets to DROP; DOCKER-USER is the chain dockerd leaves to users. The
    # FORWARD rule covers the time before any host dockerd made DOCKER-USER and its jump.
    ipt -N DOCKER-USER 2>/dev/null || true
    ipt -I DOCKER-USER -i "$br" -o "$br" -m comment --comment "$marker" -j ACCEPT
    ipt -I FORWARD -i "$br" -o "$br" -m comment --comment "$marker" -j ACCEPT
    # The hosts pull from a registry on the bridge's host address: let that in whatever the
    # INPUT policy is.
    ipt -I INPUT -i "$br" -m comment --comment "$marker" -j ACCEPT

    local driver=overlay2
    for i in $(seq 1 "$n"); do
        start_dockerd "$dir" "$i" "$slot" "$net.$((10 + i))" "$driver"
    done
    for i in $(seq 1 "$n"); do
        if ! wait_ready "$dir" "$i"; then
            # overlay2 fails where DIR itself is on overlayfs: fall back to vfs (slow, but works).
            if [ "$driver" = overlay2 ] && grep -qiE 'error initializing graphdriver|overlay.*not supported' "$dir/h$i/dockerd.log"; then
                log "host $i: overlay2 failed, retrying with vfs"
                stop_pid "$(cat "$dir/h$i/pid")" dockerd
                start_dockerd "$dir" "$i" "$slot" "$net.$((10 + i))" vfs
                wait_ready "$dir" "$i" && continue
            fi
            log "host $i: dockerd did not answer /_ping within ${READY_TIMEOUT}s; log tail:"
            tail -n 40 "$dir/h$i/dockerd.log" >&2 || true
            exit 1
        fi
    done

    {
        echo "N=$n"
        echo "SLOT=$slot"
        echo "BRIDGE=$br"
        echo "BRIDGE_ADDR=$net.1"
        echo "INSECURE_CIDR=$net.0/24"
        for i in $(seq 1 "$n"); do
            local pid
            pid=$(cat "$dir/h$i/pid")
            [ -s "$dir/h$i/dockerd.pid" ] && pid=$(cat "$dir/h$i/dockerd.pid")
            echo "H${i}_NAME=bdh-$slot-$i"
            echo "H${i}_ADDR=$net.$((10 + i))"
            echo "H${i}_SOCK=$dir/h$i/docker.sock"
            echo "H${i}_TCP=tcp://$net.$((10 + i)):2375"
            echo "H${i}_PID=$pid"
            echo "H${i}_LOG=$dir/h$i/dockerd.log"
        done
    } >"$dir/hosts.env.tmp"
    mv "$dir/hosts.env.tmp" "$dir/hosts.env"
    trap - EXIT
    cat "$dir/hosts.env"
}

[ $# -ge 2 ] || usage
cmd="$1"
need_tools
mkdir -p "$2"
DIR="$(cd "$2" && pwd -P)"
case "$cmd" in
    up)
        [ $# -eq 3 ] || usage
        do_up "$DIR" "$3"
        ;;
    down)
        [ $# -eq 2 ] || usage
        do_down "$DIR"
        ;;
    *) usage ;;
esac
