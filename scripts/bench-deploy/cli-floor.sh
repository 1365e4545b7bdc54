#!/usr/bin/env bash
# The docker CLI floor of scripts/bench-deploy.sh: examples/origin/app.yml deployed with
# plain `docker` commands, the three hosts at the same time, each host as parallel as the
# app allows (both networks and the pull at once, then web and nodes at once). The same
# networks, containers and settings as the app file and the playbook; it does not wait
# for web's healthcheck (the floor is the daemon's own work), and it knows nothing of what
# the hosts run (no re-run: it would fail on the existing names).
#
#   cli-floor.sh first TAG health|nohealth     # fresh hosts: networks, pull, containers
#   cli-floor.sh update TAG health|nohealth    # pull TAG, then per container stop (its own
#                                              # 2 s stop timeout), remove, run the new one
#
# Needs BENCH_REGISTRY and H1_ADDR..H3_ADDR (scripts/bench-deploy.sh exports them); the
# hosts' daemons are reached as berth and Ansible reach them, at tcp://ADDR:2375.
set -euo pipefail

MODE=${1:?first or update}
TAG=${2:?image tag}
HEALTH=${3:?health or nohealth}
IMAGE="$BENCH_REGISTRY/app_example_image:$TAG"
CHECK=()
if [[ "$HEALTH" == health ]]; then
    CHECK=(--health-cmd "wget -q -O /dev/null http://127.0.0.1:8000/" --health-interval 5s
        --health-timeout 2s --health-retries 3)
fi

# Waits for every PID; fails when any failed (after all ended).
all() {
    local pid failed=0
    for pid in "$@"; do wait "$pid" || failed=1; done
    return "$failed"
}

web() { # DOCKER...
    "$@" run -d -q --name app_example_web_1 --network test_nw --ip 10.1.4.10 \
        -p 0.0.0.0:80:8000/tcp -e APP_ENV=testing -e LOG_LEVEL=info \
        --restart unless-stopped --cpus 1 --memory 256m "${CHECK[@]}" --stop-timeout 2 \
        "$IMAGE" httpd -f -p 8000 -h /www >/dev/null
}

nodes() { # DOCKER...
    "$@" create -q --name app_example_nodes_1 --network test_nw --ip 10.1.4.2 \
        -p 127.0.0.1:8000:8000/tcp -e APP_ENV=testing -e ROLE=nodes \
        --restart unless-stopped --stop-timeout 2 \
        "$IMAGE" httpd -f -p 8000 -h /www >/dev/null
    "$@" network connect --ip 10.2.3.2 test_nw2 app_example_nodes_1
    "$@" start app_example_nodes_1 >/dev/null
}

replace() { # CONTAINER DOCKER...
    local name=$1
    shift
    "$@" stop "$name" >/dev/null
    "$@" rm "$name" >/dev/null
    case "$name" in
        app_example_web_1) web "$@" ;;
        app_example_nodes_1) nodes "$@" ;;
    esac
}

one_host() { # ADDR
    local d=(docker -H "tcp://$1:2375")
    if [[ "$MODE" == first ]]; then
        "${d[@]}" network create --driver bridge --subnet 10.1.4.0/24 --gateway 10.1.4.100 \
            test_nw >/dev/null &
        local n1=$!
        "${d[@]}" network create --driver bridge --subnet 10.2.3.0/24 test_nw2 >/dev/null &
        local n2=$!
        "${d[@]}" pull -q "$IMAGE" >/dev/null &
        all "$n1" "$n2" $!
        web "${d[@]}" &
        local w=$!
        nodes "${d[@]}" &
        all "$w" $!
    else
        "${d[@]}" pull -q "$IMAGE" >/dev/null
        replace app_example_web_1 "${d[@]}" &
        local w=$!
        replace app_example_nodes_1 "${d[@]}" &
        all "$w" $!
    fi
}

pids=()
for i in 1 2 3; do
    addr_var="H${i}_ADDR"
    one_host "${!addr_var:?H${i}_ADDR not set}" &
    pids+=($!)
done
all "${pids[@]}"
