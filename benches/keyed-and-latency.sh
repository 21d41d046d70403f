#!/bin/bash
# Server CPU per answered request and response-time percentiles, plain and keyed
# (SHA256 and AES128-CMAC MACs), ntimed next to chronyd 4.3 in the same run: `ntimed
# bench` at a fixed rate from 100 loopback addresses, the server pinned to core 0 and
# the generator to core 1. CPU is the scheduler's run time of every thread of the
# server (privsep children too) over the requests answered; p50/p99 are the
# generator's request to response times (to the kernel's receive time of the reply).
#
# Usage (root): benches/keyed-and-latency.sh [REPEATS]
# Environment: NTIMED, CHRONYD (binaries), RATE (requests/s, default 20000),
# SECONDS_PER_RUN (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
NTIMED=${NTIMED:-$PWD/target/release/ntimed}
CHRONYD=${CHRONYD:-/usr/sbin/chronyd}
RATE=${RATE:-20000}
RUN_SECONDS=${SECONDS_PER_RUN:-5}
PORT=12323
DIR=$(mktemp -d /tmp/ntimed-keyed.XXXXXX)
chmod 755 "$DIR"
NS=
. benches/common.sh

# Fake secrets, for this benchmark only.
cat > "$DIR/keys" <<KEYS
1 SHA256 HEX:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
2 AES128 HEX:000102030405060708090a0b0c0d0e0f
KEYS
chmod 600 "$DIR/keys"
cat > "$DIR/ntimed.toml" <<CONF
[local]
stratum = 1
[keys]
file = "$DIR/keys"
[[server]]
listen = "127.0.0.1:$PORT"
[control]
enabled = false
[sandbox]
user = "nobody"
state-dir = "$DIR/ntimed-jail"
CONF
cat > "$DIR/chrony.conf" <<CONF
local stratum 1
allow
port $PORT
bindaddress 127.0.0.1
cmdport 0
keyfile $DIR/keys
pidfile $DIR/chronyd.pid
CONF

start_server() {
    case $1 in
        ntimed) taskset -c 0 setpriv --bounding-set -sys_time -- \
            "$NTIMED" run --config "$DIR/ntimed.toml" >"$DIR/ntimed.log" 2>&1 &;;
        chronyd) taskset -c 0 setpriv --bounding-set -sys_time -- \
            "$CHRONYD" -x -d -u root -f "$DIR/chrony.conf" >"$DIR/chronyd.log" 2>&1 &;;
    esac
    SERVER_PID=$!
    sleep 2
}

# One fixed-rate step: "CPU µs/answer, p50, p99, answered %".
measure() {
    local before after line
    before=$(server_cpu_ns)
    line=$(taskset -c 1 "$NTIMED" bench "127.0.0.1:$PORT" --rate "$RATE" \
        --duration "$RUN_SECONDS" "$@" | awk '$1 ~ /^[0-9]+$/' | tail -1)
    after=$(server_cpu_ns)
    # rate sent answered% lost% rejected p50 p99 max
    echo "$line" | awk -v t=$((after - before)) \
        '{a = $2 * $3 / 100; printf "%.1f µs, p50 %.0f µs, p99 %.0f µs (%s)", t / 1e3 / a, $6, $7, $3}'
}

# Keyed runs are bracketed by a plain run before and after, and compared with their
# mean, so that a drift of the machine between runs does not pass for the MAC's cost.
echo "| run | server | plain @ $RATE/s | SHA256 | AES128-CMAC | plain again | SHA256 / plain | AES128-CMAC / plain |"
echo "|---|---|---|---|---|---|---|---|"
declare -A ratios
for run in $(seq "$REPEATS"); do
    for server in ntimed chronyd; do
        start_server "$server"
        plain=$(measure)
        sha=$(measure --key "$DIR/keys" --key-id 1)
        cmac=$(measure --key "$DIR/keys" --key-id 2)
        again=$(measure)
        ratio=$(echo "$plain|$sha|$cmac|$again" | awk -F'|' '{
            p = ($1 + $4) / 2; printf "%.2f %.2f", $2 / p, $3 / p}')
        ratios[$server]+="$ratio"$'\n'
        echo "| $run | $server | $plain | $sha | $cmac | $again | ${ratio/ / | } |"
        stop_server
    done
done
for server in ntimed chronyd; do
    printf '%s' "${ratios[$server]}" | sort -n -k1,1 | awk -v s="$server" '{a[NR] = $1} END {
        printf "%s: keyed / plain, median of %d runs: SHA256 %.2f", s, NR, a[int((NR + 1) / 2)]}'
    printf '%s' "${ratios[$server]}" | sort -n -k2,2 | awk '{a[NR] = $2} END {
        printf ", AES128-CMAC %.2f\n", a[int((NR + 1) / 2)]}'
done
