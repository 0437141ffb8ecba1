#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given
# binaries load, one per line: the runtime image installs exactly these, so
# its package list follows the build's (scripts/install-deps.sh) instead of
# being kept by hand. Libraries no package owns (a LibTorch unpacked under
# /opt, say) are listed on stderr and left to the caller to copy.
set -euo pipefail

[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

libs=$(for binary in "$@"; do
  ldd "$binary" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }'
done | sort -u)

# dpkg records merged-/usr files under /lib or /usr/lib, and alternatives
# (libblas.so.3) point elsewhere: ask about every spelling in one call.
spellings() {
  local real
  real=$(readlink -f "$1")
  printf '%s\n' "$1" "$real" "${real#/usr}" "/usr$1" | sort -u
}
owned=$(for lib in $libs; do spellings "$lib"; done |
  xargs dpkg-query -S 2>/dev/null || true)

for lib in $libs; do
  found=""
  for s in $(spellings "$lib"); do
    found=$(awk -v p="$s" '$NF == p { sub(/:.*/, "", $1); print $1; exit }' <<<"$owned")
    [ -n "$found" ] && break
  done
  if [ -n "$found" ]; then echo "$found"; else echo "runtime-packages: no package owns $lib" >&2; fi
done | sort -u
