#!/usr/bin/env bash
# Checks what a built ntimed .deb holds, without installing it: unpacked with dpkg -x
# into a throwaway directory. Usage: packaging/check-deb.sh target/debian/ntimed_*.deb
set -euo pipefail
deb=${1:?usage: check-deb.sh PACKAGE.deb}
root=$(mktemp -d)
control=$(mktemp -d)
trap 'rm -rf "$root" "$control"' EXIT
failures=0
fail() { echo "check-deb: $*" >&2; failures=$((failures + 1)); }
has() { [ -f "$root/$1" ] || fail "missing $1"; }

info=$(dpkg-deb --info "$deb")
echo "$info"
# The maintainer scripts are in the control archive (dpkg-deb lists them, executable).
for script in postinst postrm prerm; do
  grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$script " <<<"$info" || fail "no $script script"
done
dpkg -x "$deb" "$root"
dpkg-deb --control "$deb" "$control"

# The binary runs, and its man pages and completions are there.
"$root/usr/bin/ntimed" --version || fail "usr/bin/ntimed does not run"
has usr/share/man/man8/ntimed.8.gz
for sub in run check ctl query ke keygen demo sim; do
  has "usr/share/man/man8/ntimed-$sub.8.gz"
done
if [ -f "$root/usr/share/man/man8/ntimed.8.gz" ]; then
  zcat "$root/usr/share/man/man8/ntimed.8.gz" | grep -q 'ntimed\\-ctl(8)' \
    || fail "ntimed.8 does not name ntimed-ctl(8)"
fi
has usr/share/bash-completion/completions/ntimed
has usr/share/zsh/vendor-completions/_ntimed
has usr/share/fish/vendor_completions.d/ntimed.fish
has usr/share/doc/ntimed/README.md
has usr/share/doc/ntimed/copyright

# The unit (cargo-deb puts it under lib/ or usr/lib/, by version), as written.
unit=$(find "$root" -path '*/systemd/system/ntimed.service' | head -1)
if [ -z "$unit" ]; then
  fail "missing the systemd unit ntimed.service"
else
  echo "unit: ${unit#"$root"/}"
  for line in 'Type=notify' 'ExecStart=/usr/bin/ntimed run --config /etc/ntimed/ntimed.toml' \
              'ExecReload=/bin/kill -HUP $MAINPID' 'ProtectSystem=strict' 'StateDirectory=ntimed'; do
    grep -qxF "$line" "$unit" || fail "unit lacks $line"
  done
fi

# The example config, as a conffile.
has etc/ntimed/ntimed.toml
grep -qxF /etc/ntimed/ntimed.toml "$control/conffiles" 2>/dev/null \
  || fail "/etc/ntimed/ntimed.toml is not a conffile"

# Maintainer scripts: the user and state directory, and systemd's bookkeeping.
grep -q 'adduser --system --group' "$control/postinst" 2>/dev/null || fail "postinst makes no user"
grep -q 'install -d -o root -g root -m 0755 /var/lib/ntimed' "$control/postinst" \
  || fail "postinst makes no state directory"
grep -q 'deb-systemd-helper' "$control/postinst" || fail "postinst does not register the unit"
grep -q 'rm -rf /var/lib/ntimed' "$control/postrm" 2>/dev/null || fail "postrm purges no state"

if [ "$failures" -ne 0 ]; then
  echo "check-deb: $failures problems in $deb" >&2
  exit 1
fi
echo "check-deb: $(find "$root" -type f | wc -l) files, all expected ones present: $deb"
