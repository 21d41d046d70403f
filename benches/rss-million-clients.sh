#!/bin/bash
# Peak memory of a server asked once by each of 2^20 distinct client addresses (all of
# 127.16.0.0/12), ntimed next to chronyd 4.3 in the same run, both with their per-client
# rate limits on (ntimed `rate-limit`, chronyd `ratelimit`). Requests are raw packets
# with spoofed sources, sent from a network namespace of the script's own, where the
# replies to those addresses are dropped. Memory is VmHWM (peak resident set) summed
# over every process of the server (privsep children too), from /proc, and the
# proportional set size after (Pss: pages the processes share counted once).
#
# Usage (root; python3): benches/rss-million-clients.sh
# Environment: NTIMED, CHRONYD (binaries), RATE (requests/s, default 50000), CLIENTS
# (ntimed's `clients`, default its own).
set -euo pipefail
cd "$(dirname "$0")/.."
NTIMED=${NTIMED:-$PWD/target/release/ntimed}
CHRONYD=${CHRONYD:-/usr/sbin/chronyd}
RATE=${RATE:-50000}
NS=ntimed-rss-$$
DIR=$(mktemp -d /tmp/ntimed-rss.XXXXXX)
chmod 755 "$DIR"
. benches/common.sh

make_namespace
in_ns iptables -t raw -A OUTPUT -s 127.0.0.1 -d 127.16.0.0/12 -j DROP

cat > "$DIR/ntimed.toml" <<CONF
[local]
stratum = 1
[[server]]
listen = "127.0.0.1:123"
rate-limit = { interval = 2, burst = 16 }
${CLIENTS:+clients = $CLIENTS}
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
ratelimit interval 1 burst 16
pidfile $DIR/chronyd.pid
CONF

# One NTP client request from each address of 127.16.0.0/12, at RATE per second.
cat > "$DIR/flood.py" <<'PY'
import socket, struct, sys, time
rate = int(sys.argv[1])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
request = bytes([0x23]) + bytes(39) + struct.pack("!Q", 42)
udp_len = 8 + len(request)
start = time.monotonic()
for i in range(1 << 20):
    source = (127 << 24) | (16 << 16) | i
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                     source, 0x7F000001)
    udp = struct.pack("!HHHH", 10000 + (i & 0x3FFF), 123, udp_len, 0)
    raw.sendto(ip + udp + request, ("127.0.0.1", 0))
    if i % 1000 == 999:
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
PY

# Replies the server sent to the flood's addresses (dropped on the way out), counted.
replies() {
    in_ns iptables -t raw -L OUTPUT -v -x -n | awk '$3 == "DROP" {print $1}'
}

# The server's proportional set size (each shared page split among its sharers), MiB.
server_pss() {
    for p in $(server_pids); do
        awk '$1 == "Pss:" {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null
    done | awk '{s += $1} END {printf "%.1f MiB", s / 1024}'
}

echo "| server | resident before | peak after 2^20 clients (VmHWM) | proportional after (Pss) | replies |"
echo "|---|---|---|---|---|"
for server in ntimed chronyd; do
    case $server in
        # ip execs setpriv, which execs the server: SERVER_PID is the server's own.
        ntimed) ip netns exec "$NS" setpriv --bounding-set -sys_time -- \
            "$NTIMED" run --config "$DIR/ntimed.toml" >"$DIR/ntimed.log" 2>&1 &;;
        chronyd) ip netns exec "$NS" setpriv --bounding-set -sys_time -- \
            "$CHRONYD" -x -d -u root -f "$DIR/chrony.conf" >"$DIR/chronyd.log" 2>&1 &;;
    esac
    SERVER_PID=$!
    sleep 2
    before=$(server_memory VmRSS)
    in_ns iptables -t raw -Z OUTPUT
    in_ns python3 "$DIR/flood.py" "$RATE"
    sleep 1
    echo "| $server | $before | $(server_memory VmHWM) | $(server_pss) | $(replies) |"
    stop_server
done
