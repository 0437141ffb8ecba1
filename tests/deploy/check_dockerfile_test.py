#!/usr/bin/python3
"""The Dockerfile passes scripts/check-dockerfile.py, and the checker
rejects each rule's violation: every case below breaks the real Dockerfile
in one place (the first match of its text) and expects exactly that rule to fire.

Usage: check_dockerfile_test.py SOURCE_DIR
"""

import importlib.util
import os
import sys

# (rule, what the case breaks, text in the Dockerfile, its replacement)
CASES = [
    ("DF-PIN", "a moving base tag",
     "ARG DEBIAN_IMAGE=debian:12.11-slim", "ARG DEBIAN_IMAGE=debian:bookworm"),
    ("DF-PIN", "an untagged base",
     "ARG DEBIAN_IMAGE=debian:12.11-slim", "ARG DEBIAN_IMAGE=debian"),
    ("DF-USER", "the server running as root",
     "USER 10001:10001\nWORKDIR /var/lib/tlserve", "USER root\nWORKDIR /var/lib/tlserve"),
    ("DF-USER", "a worker with no USER",
     "USER 10001:10001\nWORKDIR /var/cache/tlworker\n# The worker",
     "WORKDIR /var/cache/tlworker\n# The worker"),
    ("DF-UPGRADE", "apt-get upgrade",
     "RUN groupadd", "RUN apt-get update && apt-get -y upgrade && rm -rf /var/lib/apt/lists/*\nRUN groupadd"),
    ("DF-RECOMMENDS", "recommended packages",
     "apt-get install -y --no-install-recommends", "apt-get install -y"),
    ("DF-APT-LISTS", "apt lists kept in a layer",
     "RUN /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*",
     "RUN /src/scripts/install-deps.sh"),
    ("DF-ADD-URL", "a download during the build",
     "COPY . /src", "ADD https://example.com/libtorch.zip /opt/\nCOPY . /src"),
    ("DF-ENTRYPOINT", "a shell-form entrypoint",
     'ENTRYPOINT ["/usr/local/bin/tlserve"]', "ENTRYPOINT /usr/local/bin/tlserve"),
    ("DF-HEALTHCHECK", "a target without HEALTHCHECK",
     "HEALTHCHECK NONE\nENTRYPOINT [\"/usr/local/bin/tlworker\"]\nCMD [\"--cache_dir=/var/cache/tlworker\", \"--device=cpu\"]",
     "ENTRYPOINT [\"/usr/local/bin/tlworker\"]\nCMD [\"--cache_dir=/var/cache/tlworker\", \"--device=cpu\"]"),
    ("DF-SHARED-DEPS", "a package list of its own",
     "RUN /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*",
     "RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ "
     "&& rm -rf /var/lib/apt/lists/*"),
    ("DF-BUILD-IN-RUNTIME", "a runtime image with the build toolchain",
     "FROM runtime AS server", "FROM build AS server"),
    ("DF-TARGETS", "no worker image",
     "FROM runtime AS worker\n", "FROM runtime AS worker-cpu\n"),
    ("DF-TARGETS", "the worker image starting the server",
     'ENTRYPOINT ["/usr/local/bin/tlworker"]\nCMD ["--cache_dir=/var/cache/tlworker", "--device=cpu"]',
     'ENTRYPOINT ["/usr/local/bin/tlserve"]\nCMD ["--cache_dir=/var/cache/tlworker", "--device=cpu"]'),
    ("DF-WORKDIR", "a relative WORKDIR", "WORKDIR /src", "WORKDIR src"),
    ("DF-SECRET", "a token baked into the image",
     "ENV LD_LIBRARY_PATH=/opt/libtorch/lib", "ENV TLSERVE_TOKEN=abc LD_LIBRARY_PATH=/opt/libtorch/lib"),
]


def main():
    source_dir = sys.argv[1]
    spec = importlib.util.spec_from_file_location(
        "check_dockerfile", os.path.join(source_dir, "scripts", "check-dockerfile.py"))
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    with open(os.path.join(source_dir, "Dockerfile")) as f:
        dockerfile = f.read()

    failures = []
    problems = checker.check(dockerfile)
    if problems:
        failures.append("the Dockerfile breaks its rules:\n    " + "\n    ".join(problems))
    for rule, what, old, new in CASES:
        if old not in dockerfile:
            failures.append(f"case {what!r}: its text is not in the Dockerfile; "
                            "update the case with the Dockerfile")
            continue
        fired = {p.split()[0] for p in checker.check(dockerfile.replace(old, new, 1))}
        if fired != {rule}:
            failures.append(f"case {what!r}: expected {rule}, got {sorted(fired) or 'nothing'}")

    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print(f"PASS: Dockerfile follows its rules; {len(CASES)} broken variants rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
