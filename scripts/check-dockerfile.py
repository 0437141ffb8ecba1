#!/usr/bin/python3
"""Checks tlserve's Dockerfile against the rules its images rely on, in the
manner of hadolint (which Debian does not package).

Usage: scripts/check-dockerfile.py [Dockerfile]
Prints one line per problem, "RULE line N: message", and exits 1 if any.

Target stages are the stages no other stage builds on or copies from
(server, worker, worker-cuda): the images people run.
"""

import json
import re
import shlex
import sys

# Image names with one of these tags move under a rebuilt image.
UNPINNED_TAGS = {"", "latest", "stable", "testing", "unstable", "sid", "bookworm", "12"}
REQUIRED_TARGETS = {"server": "tlserve", "worker": "tlworker"}


class Instruction:
    def __init__(self, line, keyword, text):
        self.line, self.keyword, self.text = line, keyword.upper(), text


class Stage:
    def __init__(self, line, base, name):
        self.line, self.base, self.name = line, base, name
        self.instructions = []


def parse(text):
    """Instructions with their first line number; continuations joined and
    comments dropped."""
    instructions, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, rest = pending.partition(" ")
        instructions.append(Instruction(start, keyword, rest.strip()))
        pending = ""
    return instructions


def split_stages(instructions):
    global_args, stages = {}, []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.text.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(ins.line, words[0], name))
        elif not stages:
            if ins.keyword == "ARG":
                key, _, value = ins.text.partition("=")
                global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def expand(value, args):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def is_exec_form(text):
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


def check(text):
    problems = []

    def problem(rule, line, message):
        problems.append(f"{rule} line {line}: {message}")

    instructions = parse(text)
    global_args, stages = split_stages(instructions)
    if len(stages) < 2:
        problem("DF-MULTISTAGE", 1, "build and runtime must be separate stages")
    names = {s.name for s in stages if s.name}

    # Stages another stage builds on or copies from; the rest are targets.
    used = set()
    for stage in stages:
        used.add(stage.base)
        for ins in stage.instructions:
            match = re.search(r"--from=(\S+)", ins.text)
            if ins.keyword == "COPY" and match:
                used.add(match.group(1))
    targets = [s for s in stages if s.name not in used]
    by_name = {s.name: s for s in stages if s.name}

    def ancestry(stage):
        chain = [stage]
        while chain[-1].base in by_name:
            chain.append(by_name[chain[-1].base])
        return chain

    for stage in stages:
        if stage.base in names:
            continue
        image = expand(stage.base, global_args)
        if "$" in image:
            problem("DF-PIN", stage.line, f"base image {stage.base} has no default")
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if "@sha256:" not in image and tag in UNPINNED_TAGS:
            problem("DF-PIN", stage.line, f"base image {image} is not pinned to a "
                    "release (e.g. debian:12.11-slim)")

    shares_package_list = False
    for ins in instructions:
        if ins.keyword == "RUN":
            command = ins.text
            if re.search(r"\bapt(-get)?\s+(-\S+\s+)*(upgrade|dist-upgrade|full-upgrade)\b", command):
                problem("DF-UPGRADE", ins.line, "no apt-get upgrade: rebuild on a newer "
                        "pinned base image instead")
            if re.search(r"\bsudo\b", command):
                problem("DF-SUDO", ins.line, "no sudo: the build runs as root until USER")
            installs = re.findall(r"apt-get\s+((?:-\S+\s+)*)install\b([^&;|]*)", command)
            for options, args in installs:
                if "--no-install-recommends" not in options + args:
                    problem("DF-RECOMMENDS", ins.line, "apt-get install without "
                            "--no-install-recommends")
                if not re.search(r"(^|\s)(-y|--yes|--assume-yes|-q+y)(\s|$)", options + args):
                    problem("DF-RECOMMENDS", ins.line, "apt-get install without -y")
                literal = [w for w in shlex.split(args.replace('"', ""))
                           if not w.startswith("-")]
                if literal and "xargs" not in command:
                    problem("DF-SHARED-DEPS", ins.line, "packages named in the Dockerfile "
                            f"({' '.join(literal)}): take them from scripts/install-deps.sh "
                            "or scripts/runtime-packages.sh")
            if "install-deps.sh" in command:
                shares_package_list = True
            if (installs or "install-deps.sh" in command or "apt-get update" in command) and \
                    "rm -rf /var/lib/apt/lists" not in command:
                problem("DF-APT-LISTS", ins.line, "apt lists left in the layer: end the "
                        "same RUN with rm -rf /var/lib/apt/lists/*")
        elif ins.keyword == "ADD":
            if re.search(r"https?://|git@", ins.text):
                problem("DF-ADD-URL", ins.line, "ADD of a URL: download nothing during the "
                        "build; pass files in the context or a --build-context")
            else:
                problem("DF-ADD-URL", ins.line, "ADD of local files: use COPY")
        elif ins.keyword == "WORKDIR" and not expand(ins.text, global_args).startswith("/"):
            problem("DF-WORKDIR", ins.line, f"WORKDIR {ins.text} is not absolute")
        elif ins.keyword in ("ENV", "ARG") and re.search(
                r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*\s*=", ins.text, re.I):
            problem("DF-SECRET", ins.line, "a secret in ENV/ARG stays in the image history")
    if not shares_package_list:
        problem("DF-SHARED-DEPS", 1, "no stage installs through scripts/install-deps.sh")

    for stage in targets:
        label = stage.name or f"stage at line {stage.line}"
        chain = ancestry(stage)
        for ancestor in chain:
            if any("install-deps.sh" in i.text for i in ancestor.instructions):
                problem("DF-BUILD-IN-RUNTIME", stage.line, f"target {label} builds on "
                        f"{ancestor.name or 'a stage'} with the whole build toolchain")
        # The USER in effect: the stage's last one, else its base's.
        users = [[i for i in s.instructions if i.keyword == "USER"][-1:] for s in chain]
        users = [u[0] for u in users if u]
        user = users[0].text.split(":")[0] if users else None
        if user is None or user in ("root", "0"):
            problem("DF-USER", stage.line, f"target {label} runs as root: add USER with a "
                    "numeric non-root uid")
        elif not user.isdigit():
            problem("DF-USER", users[0].line, f"target {label}: USER {user} is not numeric, "
                    "so Kubernetes cannot verify runAsNonRoot")
        own = stage.instructions
        for keyword in ("ENTRYPOINT", "CMD"):
            for ins in own:
                if ins.keyword == keyword and not is_exec_form(ins.text):
                    problem("DF-ENTRYPOINT", ins.line, f"{keyword} in shell form: use a "
                            "JSON array so signals reach the process")
        if not any(i.keyword == "ENTRYPOINT" for i in own):
            problem("DF-ENTRYPOINT", stage.line, f"target {label} has no ENTRYPOINT")
        if not any(i.keyword == "HEALTHCHECK" for i in own):
            problem("DF-HEALTHCHECK", stage.line, f"target {label} has no HEALTHCHECK "
                    "(write HEALTHCHECK NONE where nothing can be probed)")

    for name, binary in REQUIRED_TARGETS.items():
        stage = by_name.get(name)
        if stage is None or stage not in targets:
            problem("DF-TARGETS", 1, f"no target stage {name!r}")
            continue
        entrypoints = [i for i in stage.instructions if i.keyword == "ENTRYPOINT"]
        if entrypoints and is_exec_form(entrypoints[-1].text) and \
                not json.loads(entrypoints[-1].text)[0].endswith("/" + binary):
            problem("DF-TARGETS", entrypoints[-1].line, f"target {name} must start {binary}")
    return problems


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "Dockerfile"
    with open(path) as f:
        problems = check(f.read())
    for line in problems:
        print(f"{path}: {line}")
    if not problems:
        print(f"{path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
