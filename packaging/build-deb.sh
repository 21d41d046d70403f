#!/usr/bin/env bash
# Builds the Debian package into target/debian/: the release binary, then the man pages
# and shell completions that binary makes of its own command line (`ntimed generate`),
# then `cargo deb` packs them with the unit, the example config and the maintainer
# scripts ([package.metadata.deb] in Cargo.toml). Prints the .deb's path last.
# Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null; then
  echo "build-deb.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
fi
# NTIMED_DEB_PROFILE=dev packs the debug build instead: CI checks the package's
# contents with the binary its tests built, rather than spend minutes on a release build.
profile="${NTIMED_DEB_PROFILE:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "build-deb.sh: NTIMED_DEB_PROFILE is release or dev" >&2; exit 1 ;;
esac
cargo build --profile "$profile" --locked
# Generated fresh each time: they must describe exactly the binary being packed.
rm -rf target/assets
"${CARGO_TARGET_DIR:-target}/$dir/ntimed" generate --out target/assets >/dev/null
# --no-build: the binary just built is the one the pages describe.
cargo deb --no-build --locked --profile "$profile" "$@"
