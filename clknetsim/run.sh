#!/usr/bin/env bash
# The shared clknetsim harness (../shared/clknetsim, read-only) with this repository's
# own scenarios added: the master role (reference clocks, a leap second).
# Usage: clknetsim/run.sh NTIMED_BINARY [-n SEEDS] [-s FIRST] [--ntimed-only] [scenario...]
# Options as the shared run.sh; without a scenario, this directory's scenarios run.
# Needs what the shared harness needs (gcc, g++, make, Debian's chrony, tzdata for
# right/UTC). Nothing touches the real clock: every simulated daemon runs with
# CAP_SYS_TIME out of its bounding set.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
shared=${NTIMED_SHARED_CLKNETSIM:-$here/../../shared/clknetsim}
[ -x "$shared/run.sh" ] || { echo "no clknetsim harness at $shared" >&2; exit 2; }
work=${CLKNETSIM_WORK:-/tmp/ntimed-clknetsim}
copy=$work/harness
mkdir -p "$work"
rm -rf "$copy"
# -p keeps client.c's time, so the harness reuses a clknetsim it already built.
cp -rp "$shared" "$copy"
chmod -R u+w "$copy"
cp "$here"/scenarios/* "$copy/scenarios/"
named=
for arg in "${@:2}"; do [ -f "$copy/scenarios/$arg" ] && named=1; done
[ -n "$named" ] && exec bash "$copy/run.sh" "$@"
exec bash "$copy/run.sh" "$@" $(cd "$here/scenarios" && ls)
