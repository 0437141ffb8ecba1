#!/usr/bin/env bash
# Copies a tlserve data dir (tlserve.db and blobs/) to DEST while the server
# runs, consistently: first the database through SQLite's online backup (a
# snapshot that WAL writers do not disturb), then the blobs. Blobs are
# immutable, content-addressed and written by temp file + rename, so every
# blob the snapshot names is complete by then; blobs newer than the
# snapshot are copied too and are harmless (nothing references them).
#
#   scripts/backup-data-dir.sh /var/lib/tlserve /backup/tlserve-2026-11-30
#
# Restore: stop tlserve, put DEST's tlserve.db and blobs/ in the data dir,
# start tlserve. Needs sqlite3 (Debian package sqlite3).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DATA_DIR DEST" >&2
  exit 2
fi
src=$1
dest=$2
if [ ! -f "$src/tlserve.db" ]; then
  echo "backup-data-dir: $src/tlserve.db not found: is $src a tlserve --data_dir?" >&2
  exit 1
fi
command -v sqlite3 >/dev/null || {
  echo "backup-data-dir: needs sqlite3 (apt-get install sqlite3)" >&2
  exit 1
}
if [ -e "$dest/tlserve.db" ]; then
  echo "backup-data-dir: $dest/tlserve.db exists; pick an empty DEST" >&2
  exit 1
fi
mkdir -p "$dest"

# The server holds the database open: .backup waits out a busy writer for
# up to 10 s rather than failing at once.
sqlite3 "$src/tlserve.db" ".timeout 10000" ".backup '$dest/tlserve.db'"
check=$(sqlite3 "$dest/tlserve.db" "PRAGMA integrity_check;")
if [ "$check" != "ok" ]; then
  echo "backup-data-dir: the copy fails integrity_check: $check" >&2
  exit 1
fi

# Blobs: uploads in progress (*.tmp-*, under tmp/) are not part of the state.
if [ -d "$src/blobs" ]; then
  mkdir -p "$dest/blobs"
  (cd "$src/blobs" && find . -type f ! -name '*.tmp*' ! -path './tmp/*' -print0) |
    (cd "$src/blobs" && xargs -0 -r cp --parents --preserve=timestamps -t "$dest/blobs")
fi
blobs=$(find "$dest/blobs" -type f 2>/dev/null | wc -l)
echo "backup-data-dir: $dest: tlserve.db ($(stat -c %s "$dest/tlserve.db") bytes), $blobs blobs"
