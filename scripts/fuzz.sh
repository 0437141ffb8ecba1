#!/usr/bin/env bash
# Longer fuzzing by hand: scripts/fuzz.sh <target> [seconds] [jobs]
#   target: idx, tar_dataset, image, job_spec or torchscript_archive
#           (tests/fuzz/<target>_fuzzer.cc)
# Builds the fuzzer in build-sanitize (make sanitize's tree) if needed,
# fuzzes for `seconds` (default 600) in `jobs` processes (default 1), then
# merges the inputs that add coverage into tests/fuzz/corpus/<target>, to
# be committed. A crash leaves its input in build-sanitize/fuzz-artifacts/
# and exits non-zero; reproduce it with
#   build-sanitize/tests/fuzz/<target>_fuzzer <that file>
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: scripts/fuzz.sh <target> [seconds] [jobs]}"
seconds="${2:-600}"
jobs="${3:-1}"
BUILD="${BUILD:-build-sanitize}"
corpus="tests/fuzz/corpus/${target}"
[ -d "$corpus" ] || { echo "fuzz.sh: no corpus folder $corpus" >&2; exit 2; }

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DTLSERVE_SANITIZE=ON \
    -DPython3_EXECUTABLE=/usr/bin/python3 >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)" --target "${target}_fuzzer"
fuzzer="$BUILD/tests/fuzz/${target}_fuzzer"

# New inputs go to a scratch folder first; only the merge below touches
# the committed corpus, and only with inputs that add coverage.
found="$(mktemp -d)"
trap 'rm -rf "$found"' EXIT
mkdir -p "$BUILD/fuzz-artifacts"
# -jobs runs each job in a child process logging to fuzz-<n>.log here.
parallel=()
[ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")
rc=0
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  "${parallel[@]}" -print_final_stats=1 \
  -artifact_prefix="$BUILD/fuzz-artifacts/${target}-" \
  "$found" "$corpus" || rc=$?
before=$(ls "$corpus" | wc -l)
"$fuzzer" -merge=1 -rss_limit_mb=2048 -timeout=10 "$corpus" "$found" \
  >/dev/null 2>&1
after=$(ls "$corpus" | wc -l)
echo "fuzz.sh: $target: corpus $before -> $after files ($corpus)"
exit "$rc"
