#!/usr/bin/env python3
"""bench/load_gen --echo: a real load against a real gRPC echo server in a
child process, on loopback, bounded in time; the child stops with load_gen."""
import argparse
import json
import os
import random
import subprocess
import sys
import time


def processes_with(marker):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build_dir", required=True)
    args = parser.parse_args()
    load_gen = os.path.join(args.build_dir, "bench", "load_gen")
    # A seed no other process has on its command line: finds the child.
    seed = str(random.randrange(10**12, 10**13))
    run = subprocess.run(
        [load_gen, "--echo", "--model=a,b", "--tensor_shape=3,1,4,4",
         "--concurrency=2", "--warmup_seconds=0.2", "--seconds=1",
         f"--seed={seed}"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr + run.stdout
    result = json.loads(next(line[7:] for line in run.stdout.splitlines()
                             if line.startswith("RESULT ")))
    assert result["target"].startswith("127.0.0.1:"), result
    assert result["completed"] > 10, result
    assert result["errors"] == 0 and result["window_errors"] == 0, result
    assert result["inputs_per_request"] == 3, result
    assert 0 < result["p50_ms"] <= result["p99_ms"], result
    # The echo server went with load_gen.
    deadline = time.time() + 10
    while processes_with(f"--seed={seed}") and time.time() < deadline:
        time.sleep(0.1)
    assert not processes_with(f"--seed={seed}"), "the echo server outlived load_gen"

    # No inputs: refused before anything starts, saying what to give.
    bad = subprocess.run([load_gen, "--echo", "--model=a"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2, bad
    assert "--image FILE or --tensor_shape" in bad.stderr, bad.stderr
    print("load_gen --echo: %d calls, p50 %.3f ms; child stopped" %
          (result["completed"], result["p50_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
