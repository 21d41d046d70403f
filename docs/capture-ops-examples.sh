#!/bin/bash
# The README's `ntimed ctl` and /metrics examples, captured from a build: as root, from
# the repository's top, after `cargo build`. Three privilege-separated daemons on
# loopback (ports 24123-24126, 29975-29976), simulated clocks, no CAP_SYS_TIME (setpriv):
#   a: NTS server from the local clock, [metrics] on 127.0.0.1:29975;
#   b: keyed server whose simulated clock is 0.5 s ahead (a falseticker);
#   c: the client: a over NTS and plain, b keyed, a peer that never answers,
#      [metrics] on 127.0.0.1:29976.
# After WAIT seconds (default 25) the outputs are written to $OUT and all three stop.
set -u
BIN=${BIN:-$PWD/target/debug/ntimed}
OUT=${OUT:-/tmp/ntimed-ops-capture}
R=$OUT/run; rm -rf $OUT; mkdir -p $R/a $R/b $R/c
CERTS=$OUT/certs; cp -r $PWD/certs $CERTS; chmod 600 $CERTS/*.key
echo "7 SHA256 HEX:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $R/site.keys; chmod 600 $R/site.keys
cp $R/site.keys $R/b/site.keys; cp $R/site.keys $R/c/site.keys
mkdir -p $R/a/state && chown nobody:nogroup $R/a/state
# a: NTS server from the local clock.
cat > $R/a/ntimed.toml <<T
[local]
stratum = 1
[[server]]
listen = "127.0.0.1:24123"
[[nts-ke-server]]
listen = "127.0.0.1:24460"
certificate-chain = "$CERTS/srv-chain.pem"
private-key = "$CERTS/srv.key"
name = "localhost"
[nts]
key-dir = "state"
[metrics]
listen = "127.0.0.1:29975"
[control]
socket = "ctl.sock"
[sandbox]
user = "nobody"
state-dir = "."
T
# b: a keyed server whose (simulated) clock is 0.5 s ahead: a falseticker.
cat > $R/b/ntimed.toml <<T
[clock]
mode = "simulated"
simulated-offset = 0.5
[keys]
file = "site.keys"
[local]
stratum = 1
[[server]]
listen = "127.0.0.1:24124"
[control]
socket = "ctl.sock"
[sandbox]
user = "nobody"
state-dir = "."
T
# c: the client: a over NTS and plain, b keyed, one that never answers; serves, metrics.
cat > $R/c/ntimed.toml <<T
[clock]
mode = "simulated"
simulated-offset = 0.1
[keys]
file = "site.keys"
[[source]]
address = "localhost:24123"
nts = { ke = "localhost:24460", ca = "$CERTS/ca.pem" }
iburst = true
[[source]]
address = "127.0.0.1:24123"
insecure = true
iburst = true
[[source]]
address = "127.0.0.1:24124"
key = 7
iburst = true
[[peer]]
address = "127.0.0.1:24125"
insecure = true
[[server]]
listen = "127.0.0.1:24126"
[metrics]
listen = "127.0.0.1:29976"
[control]
socket = "ctl.sock"
[sandbox]
user = "nobody"
state-dir = "."
T
for d in a b c; do
  setpriv --pdeathsig KILL --bounding-set -sys_time -- $BIN run --config $R/$d/ntimed.toml > $R/$d.log 2>&1 &
  echo $! > $R/$d.pid
done
sleep ${WAIT:-25}
C="$BIN ctl --socket $R/c/ctl.sock"; A="$BIN ctl --socket $R/a/ctl.sock"
{
echo '$ ntimed ctl status'; $C status
echo '$ ntimed ctl sources'; $C sources
echo '$ ntimed ctl server    # on the NTS server'; $A server
echo '$ ntimed ctl status --json'; $C status --json
echo '$ ntimed ctl sources --json'; $C sources --json
echo '$ ntimed ctl server --json    # on the NTS server'; $A server --json
} > $OUT/ctl.txt 2>&1
curl -s -i http://127.0.0.1:29976/metrics > $OUT/client-metrics.txt
curl -s -i http://127.0.0.1:29975/metrics > $OUT/server-metrics.txt
curl -s -i http://127.0.0.1:29975/ > $OUT/404.txt
curl -s -i -X POST http://127.0.0.1:29975/metrics > $OUT/405.txt
curl -s -i -H "X-Filler: $(head -c 20000 /dev/zero | tr '\0' a)" http://127.0.0.1:29975/metrics > $OUT/431.txt
for d in a b c; do kill $(cat $R/$d.pid); done
wait
