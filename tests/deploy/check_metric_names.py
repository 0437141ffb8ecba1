#!/usr/bin/python3
"""Checks that the alert rules and the Grafana dashboard read only metrics
the code registers (or the few listed as pending), and that the dashboard
is a Grafana dashboard.

Usage: check_metric_names.py SOURCE_DIR
"""

import json
import os
import sys

# Import the shared helper without leaving __pycache__ in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import promql_names
except ImportError as e:  # PyYAML: python3-yaml, from scripts/install-deps.sh
    print(f"SKIP: {e} (Debian: python3-yaml)")
    sys.exit(77)

# Series Prometheus itself adds to every scrape.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def read_pending(path):
    with open(path) as f:
        return {line.strip() for line in f
                if line.strip() and not line.startswith("#")}


def check_dashboard_shape(path, failures):
    with open(path) as f:
        dashboard = json.load(f)
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dashboard:
            failures.append(f"dashboard: no {key!r}")
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    ids = []
    for panel in dashboard.get("panels", []):
        ids.append(panel.get("id"))
        if "gridPos" not in panel:
            failures.append(f"dashboard panel {panel.get('title')!r}: no gridPos")
        if panel.get("type") != "row":
            uid = panel.get("datasource", {}).get("uid", "")
            # A fixed datasource uid exists only in the Grafana it came from.
            if uid.strip("${}") not in variables:
                failures.append(f"dashboard panel {panel.get('title')!r}: datasource "
                                f"{uid!r} is not a dashboard variable")
            if not panel.get("targets"):
                failures.append(f"dashboard panel {panel.get('title')!r}: no query")
    if len(ids) != len(set(ids)):
        failures.append("dashboard: panel ids repeat")


def main():
    source_dir = sys.argv[1]
    deploy_dir = os.path.join(source_dir, "deploy")
    here = os.path.dirname(os.path.abspath(__file__))
    failures = []
    dashboard = os.path.join(deploy_dir, "grafana", "tlserve-dashboard.json")
    try:
        check_dashboard_shape(dashboard, failures)
        exprs = [("dashboard " + t, e) for t, e in promql_names.dashboard_exprs(dashboard)]
    except (OSError, ValueError) as e:
        print(f"FAIL: {dashboard}: {e}")
        return 1
    exprs += [("alert " + n, e) for n, e in promql_names.rule_exprs(
        os.path.join(deploy_dir, "prometheus", "alerts.yml"))]

    families, series = promql_names.registered_metrics(source_dir)
    if not families:
        print("FAIL: found no prometheus-cpp metric families in server/, worker/, common/")
        return 1
    pending = read_pending(os.path.join(here, "pending_metrics.txt"))
    pending_series = {p + s for p in pending for s in ("", "_bucket", "_sum", "_count")}

    used = set()
    for where, expr in exprs:
        names = promql_names.metric_names(promql_names.grafana_to_promql(expr))
        if not names:
            failures.append(f"{where}: reads no metric: {expr}")
        for name in names:
            used.add(name)
            if name not in series and name not in pending_series and name not in SCRAPE_SERIES:
                failures.append(f"{where}: {name} is not a metric the code registers "
                                "(nor listed in tests/deploy/pending_metrics.txt)")
    for name in sorted(pending & set(families)):
        failures.append(f"{name} is registered now: delete it from "
                        "tests/deploy/pending_metrics.txt")
    unused = sorted(p for p in pending
                    if not used & {p + s for s in ("", "_bucket", "_sum", "_count")})
    for name in unused:
        failures.append(f"{name} is listed as pending but nothing in deploy/ reads it")

    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    from_code = sorted({series[n] for n in used if n in series})
    waiting = sorted(p for p in pending)
    print(f"PASS: {len(exprs)} expressions read {len(from_code)} registered families "
          f"({', '.join(from_code)}) and {len(waiting)} pending ones "
          f"({', '.join(waiting)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
