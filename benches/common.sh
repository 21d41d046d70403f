# Sourced by the server benchmarks: a server started in the background (SERVER_PID),
# stopped by pid only, and what its processes use. The sourcing script sets DIR (its
# scratch directory) and NS (its network namespace, or empty) before sourcing.
SERVER_PID=

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
cleanup() {
    stop_server
    [ -n "${NS:-}" ] && ip netns del "$NS" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT

# The server's process and all its descendants (privsep children too).
server_pids() {
    local pids=$SERVER_PID more
    more=$(pgrep -P "$SERVER_PID" || true)
    while [ -n "$more" ]; do
        pids="$pids $more"
        more=$(for p in $more; do pgrep -P "$p" || true; done)
    done
    echo "$pids"
}

# Nanoseconds of CPU used so far by the server's processes: the scheduler's run time of
# each thread (/proc/PID/task/TID/schedstat), where utime and stime are sampled at clock
# ticks and scatter by a tenth over a few seconds.
server_cpu_ns() {
    for p in $(server_pids); do
        cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{print $1}'
    done | awk '{s += $1} END {printf "%.0f\n", s}'
}

# Sum of a /proc/PID/status field (kB) over the server's processes, in MiB.
server_memory() {
    for p in $(server_pids); do
        awk -v f="$1:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null
    done | awk '{s += $1} END {printf "%.1f MiB", s / 1024}'
}

in_ns() { ip netns exec "$NS" "$@"; }

# Creates NS with its loopback up and set for clients from any 127/8 address, sent as
# raw packets (ntpperf, spoofed sources): accepted as local, not filtered by route.
make_namespace() {
    ip netns add "$NS"
    in_ns ip link set lo up
    in_ns sysctl -qw net.ipv4.conf.lo.route_localnet=1 net.ipv4.conf.all.route_localnet=1 \
        net.ipv4.conf.lo.accept_local=1 net.ipv4.conf.all.accept_local=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.lo.rp_filter=0
}
