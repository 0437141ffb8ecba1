#!/usr/bin/python3
"""Checks deploy/prometheus with promtool: the alert rules parse and pass
their unit tests (alerts_test.yml), the scrape configuration loads, and
every dashboard query is valid PromQL.

Usage: check_alert_rules.py SOURCE_DIR WORK_DIR
Exit 77 (ctest: skipped) when promtool is not installed.
"""

import os
import shutil
import subprocess
import sys

# Import the shared helper without leaving __pycache__ in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import yaml
    import promql_names
except ImportError as e:  # python3-yaml, from scripts/install-deps.sh
    print(f"SKIP: {e} (Debian: python3-yaml)")
    sys.exit(77)


def promtool(*args):
    result = subprocess.run(["promtool", *args], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def main():
    source_dir, work_dir = os.path.abspath(sys.argv[1]), sys.argv[2]
    prometheus_dir = os.path.join(source_dir, "deploy", "prometheus")
    if shutil.which("promtool") is None:
        print("SKIP: promtool is not installed (Debian: prometheus; "
              "scripts/install-deps.sh installs it)")
        return 77
    os.makedirs(work_dir, exist_ok=True)
    failures = []
    notes = []

    for args in (("check", "rules", os.path.join(prometheus_dir, "alerts.yml")),
                 ("test", "rules", os.path.join(prometheus_dir, "alerts_test.yml"))):
        rc, output = promtool(*args)
        if rc != 0:
            failures.append(f"promtool {' '.join(args[:2])}:\n{output}")

    # promtool parses PromQL in rule files: the dashboard's queries become
    # recording rules so that a typo in a panel fails here, not in Grafana.
    dashboard = os.path.join(source_dir, "deploy", "grafana", "tlserve-dashboard.json")
    rules = [{"record": f"dashboard:query_{i}",
              "expr": promql_names.grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(promql_names.dashboard_exprs(dashboard))]
    dashboard_rules = os.path.join(work_dir, "dashboard_queries.yml")
    with open(dashboard_rules, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    rc, output = promtool("check", "rules", dashboard_rules)
    if rc != 0:
        failures.append(f"dashboard queries are not valid PromQL:\n{output}")

    config = os.path.join(prometheus_dir, "prometheus.yml")
    rc, output = promtool("check", "config", config)
    if rc != 0 and "kubernetes_sd_configs not found" in output:
        # Debian's Prometheus is built without Kubernetes discovery: check
        # the rest of the file (relabelling, rule files) with static targets.
        with open(config) as f:
            parsed = yaml.safe_load(f)
        for job in parsed["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
        parsed["rule_files"] = [os.path.join(prometheus_dir, r) for r in parsed["rule_files"]]
        static_config = os.path.join(work_dir, "prometheus-static.yml")
        with open(static_config, "w") as f:
            yaml.safe_dump(parsed, f)
        rc, output = promtool("check", "config", static_config)
        notes.append("this promtool has no Kubernetes discovery: prometheus.yml checked "
                     "with static targets in its place")
    if rc != 0:
        failures.append(f"promtool check config:\n{output}")

    if failures:
        print("FAIL:\n" + "\n".join(failures))
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"PASS: alert rules checked and unit-tested, {len(rules)} dashboard queries "
          "parsed, scrape config loads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
