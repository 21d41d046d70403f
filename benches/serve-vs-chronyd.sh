#!/bin/bash
# Server CPU per answered request, ntimed next to chronyd 4.3 in the same run: ntpperf
# at a fixed rate from 127.18.0.0/16 in a network namespace of its own, the server
# pinned to core 0 and ntpperf to core 1. CPU is the scheduler's run time of every
# thread of the server (privsep children too) over the requests answered. PROFILE=1
# also samples the server's core with perf and gives the share of the server's time
# spent in the kernel, the part no user-space work can go below.
#
# Usage (root; ntpperf built by /work/shared/ntpperf/build.sh target/ntpperf):
#   benches/serve-vs-chronyd.sh [REPEATS]
# Environment: NTIMED, CHRONYD, NTPPERF (binaries), SECONDS_PER_RUN, PLAIN_RATE,
# NTS_RATE, SWEEP=1 to also find the highest rate answered with < 1 % loss, BASELINE
# (another ntimed binary, measured in the same run as "ntimed-baseline"), LATENCY_RATE
# to also give response times while ntpperf loads the server with plain requests at
# that rate: `ntimed bench` probes it at 1000 requests/s from 10 clients (on core 1
# with ntpperf) and reports the probe's p50 and p99. XLEAVE=1 also gives the CPU per
# interleaved request (ntpperf -I at XLEAVE_RATE, default 32000/s) and runs ntpperf's
# interleaved requests from 1000 to 64000/s against each server, printing its table
# after the others: the share of replies that were interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
NTIMED=${NTIMED:-$PWD/target/release/ntimed}
CHRONYD=${CHRONYD:-/usr/sbin/chronyd}
NTPPERF=${NTPPERF:-$PWD/target/ntpperf/ntpperf}
RUN_SECONDS=${SECONDS_PER_RUN:-5}
PLAIN_RATE=${PLAIN_RATE:-100000}
NTS_RATE=${NTS_RATE:-50000}
NS=ntimed-bench-$$
DIR=$(mktemp -d /tmp/ntimed-bench.XXXXXX)
chmod 755 "$DIR"
. benches/common.sh
[ -n "${KEEP_LOGS:-}" ] && trap "cp $DIR/*.log /tmp/ 2>/dev/null; cleanup" EXIT

make_namespace
in_ns iptables -t raw -A PREROUTING -d 127.18.0.0/16 -j DROP

CERTS=$PWD/certs
# Both servers refuse a private key others may read.
install -m 600 "$CERTS/srv.key" "$DIR/srv.key"
cat > "$DIR/ntimed.toml" <<CONF
[local]
stratum = 1
[[server]]
listen = "127.0.0.1:123"
[[nts-ke-server]]
listen = "127.0.0.1:4460"
certificate-chain = "$CERTS/srv-chain.pem"
private-key = "$DIR/srv.key"
name = "localhost"
ntp-port = 123
[nts]
key-dir = "$DIR/ntimed-jail/nts"
[control]
enabled = false
[sandbox]
user = "nobody"
state-dir = "$DIR/ntimed-jail"
CONF
cat > "$DIR/chrony.conf" <<CONF
local stratum 1
allow
port 123
cmdport 0
ntsserverkey $DIR/srv.key
ntsservercert $CERTS/srv-chain.pem
ntsprocesses 1
ntsdumpdir $DIR/chrony-nts
pidfile $DIR/chronyd.pid
CONF

start_server() {
    case $1 in
        ntimed-baseline) ip netns exec "$NS" taskset -c 0 setpriv --bounding-set -sys_time -- \
            "$BASELINE" run --config "$DIR/ntimed.toml" >"$DIR/ntimed.log" 2>&1 &;;
        ntimed) ip netns exec "$NS" taskset -c 0 setpriv --bounding-set -sys_time -- \
            "$NTIMED" run --config "$DIR/ntimed.toml" >"$DIR/ntimed.log" 2>&1 &;;
        chronyd) ip netns exec "$NS" taskset -c 0 setpriv --bounding-set -sys_time -- \
            "$CHRONYD" -x -d -u root -f "$DIR/chrony.conf" >"$DIR/chronyd.log" 2>&1 &;;
    esac
    SERVER_PID=$!
    sleep 2
}

# Runs ntpperf at one rate; prints "answered lost%" from its line.
load() {
    local mode=$1 rate=$2 seconds=$3
    in_ns taskset -c 1 "$NTPPERF" -i lo -m 00:00:00:00:00:00 -d 127.0.0.1 \
        -s 127.18.0.0/16 $mode -r "$rate-$rate" -t "$seconds" -l 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ {print}' | tail -1
}

nts_option() {
    local out c2s cookie
    out=$(in_ns "$NTIMED" ke --ca "$CERTS/ca.pem" --export 127.0.0.1:4460 2>&1) || return 1
    c2s=$(echo "$out" | awk '$1 == "C2S" {print $3; exit}')
    cookie=$(echo "$out" | awk '$1 == "cookie" && $2 == "0" {print $3; exit}')
    [ -n "$c2s" ] && [ -n "$cookie" ] || return 1
    echo "-B -S $c2s,$cookie"
}

# CPU µs per answered request at a fixed rate.
cpu_per_request() {
    local mode=$1 rate=$2 before after line sent lost answered kernel=
    before=$(server_cpu_ns)
    if [ -n "${PROFILE:-}" ]; then
        perf record -q -o "$DIR/perf.data" -e cpu-clock -F 4000 -C 0 -- \
            sleep "$RUN_SECONDS" >/dev/null 2>&1 &
        local perf_pid=$!
    fi
    line=$(load "$mode" "$rate" "$RUN_SECONDS")
    after=$(server_cpu_ns)
    if [ -n "${PROFILE:-}" ]; then
        wait "$perf_pid"
        kernel=", $(kernel_share)"
    fi
    # ntpperf: rate clients lost invalid ...; lost and invalid in %.
    lost=$(echo "$line" | awk '{print $3}')
    answered=$(awk -v r="$rate" -v s="$RUN_SECONDS" -v l="$lost" 'BEGIN {print r * s * (1 - l / 100)}')
    awk -v t=$((after - before)) -v a="$answered" -v l="$lost" \
        -v k="$kernel" 'BEGIN {printf "%.1f µs%s (%.2f %% lost)", t / 1e3 / a, k, l}'
}

# Of the samples on the server's core that are not idle, the share in the kernel:
# system calls, UDP and IP, loopback delivery (and, in the server's context, the copy
# ntpperf's capture takes of each reply). The rest is the server's own code.
kernel_share() {
    perf report -i "$DIR/perf.data" --no-children --sort comm,dso -g none 2>/dev/null |
        awk '$1 ~ /%$/ && $2 != "swapper" && $2 !~ /^kworker|^kdamond|^ksoftirqd/ {
                 p = $1 + 0; total += p; if ($3 == "[kernel.kallsyms]") kernel += p }
             END {printf "%.0f %% in the kernel", total ? 100 * kernel / total : 0}'
}

# The probe's response times (p50 / p99) while ntpperf sends plain requests at a rate.
probe_under_load() {
    local rate=$1
    in_ns taskset -c 1 "$NTPPERF" -i lo -m 00:00:00:00:00:00 -d 127.0.0.1 \
        -s 127.18.0.0/16 -B -r "$rate-$rate" -t $((RUN_SECONDS + 2)) -l >/dev/null 2>&1 &
    local generator=$!
    sleep 1
    in_ns taskset -c 1 "$NTIMED" bench 127.0.0.1:123 --rate 1000 --clients 10 \
        --duration "$RUN_SECONDS" --json 2>/dev/null |
        python3 -c 'import json, sys
s = json.loads(sys.stdin.readline())
print("p50 %.0f µs, p99 %.0f µs (%.2f %% lost)" % (s["p50_us"], s["p99_us"], s["lost_percent"]))'
    wait "$generator"
}

max_rate() {
    local mode=$1
    in_ns taskset -c 1 "$NTPPERF" -i lo -m 00:00:00:00:00:00 -d 127.0.0.1 \
        -s 127.18.0.0/16 $mode -r 20000-1000000 -x 1.15 -t 1 -l 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ && $3 + $4 < 1 {best = $1} END {print best + 0}'
}

XLEAVE_RATE=${XLEAVE_RATE:-32000}
echo "| run | server | plain @ $PLAIN_RATE/s | NTS @ $NTS_RATE/s |${SWEEP:+ max plain | max NTS |}${LATENCY_RATE:+ probe @ $LATENCY_RATE/s |}${XLEAVE:+ interleaved @ $XLEAVE_RATE/s |}"
echo "|---|---|---|---|${SWEEP:+---|---|}${LATENCY_RATE:+---|}${XLEAVE:+---|}"
for run in $(seq "$REPEATS"); do
    for server in ntimed ${BASELINE:+ntimed-baseline} chronyd; do
        start_server "$server"
        plain=$(cpu_per_request -B "$PLAIN_RATE")
        nts=$(nts_option) && nts=$(cpu_per_request "$nts" "$NTS_RATE") || nts="no NTS-KE"
        extra=
        if [ -n "${SWEEP:-}" ]; then
            extra=" $(max_rate -B) | $(nts_option >/dev/null && max_rate "$(nts_option)") |"
        fi
        if [ -n "${LATENCY_RATE:-}" ]; then
            extra="$extra $(probe_under_load "$LATENCY_RATE") |"
        fi
        if [ -n "${XLEAVE:-}" ]; then
            extra="$extra $(cpu_per_request -I "$XLEAVE_RATE") |"
            echo "run $run, $server, ntpperf -I" >>"$DIR/xleave.txt"
            in_ns taskset -c 1 "$NTPPERF" -i lo -m 00:00:00:00:00:00 -d 127.0.0.1 \
                -s 127.18.0.0/16 -I -r 1000-64000 -x 2 -t 2 -l 2>/dev/null >>"$DIR/xleave.txt"
        fi
        echo "| $run | $server | $plain | $nts |$extra"
        stop_server
    done
done
[ -f "$DIR/xleave.txt" ] && cat "$DIR/xleave.txt"
