"""The metric names a PromQL expression reads, and the Grafana dashboard's
and the alert rules' expressions, shared by the deploy/ checks."""

import json
import os
import re

import yaml

# Identifiers that are PromQL syntax, not metrics.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
             "bool", "and", "or", "unless", "offset", "inf", "nan"}


def grafana_to_promql(expr):
    """Fills in Grafana's variables with values PromQL parses."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr):
    """Metric names in a PromQL expression: identifiers outside strings,
    label matchers, ranges and grouping lists that are not functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
                  " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        is_function = re.match(r"\s*\(", text[match.end():]) is not None
        is_duration = re.match(r"\d", text[max(0, match.start() - 1):match.start()] or "x")
        if not is_function and not is_duration and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def dashboard_exprs(path):
    """(panel title, PromQL) for every query in a Grafana dashboard JSON,
    template variables included."""
    with open(path) as f:
        dashboard = json.load(f)
    exprs = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    exprs.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.match(r"label_values\((\w+)", query or "")
        if match:
            exprs.append((f"variable {variable['name']}", match.group(1)))
    return exprs


def rule_exprs(path):
    """(rule name, PromQL) for every rule in a Prometheus rules file."""
    with open(path) as f:
        rules = yaml.safe_load(f)
    return [(rule.get("alert") or rule.get("record"), rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def registered_metrics(source_dir, folders=("server", "worker", "common")):
    """Metric families the code builds with prometheus-cpp
    (Build{Counter,Gauge,Histogram,Summary}().Name("...")), and the series
    names each one exposes."""
    families = {}
    for folder in folders:
        for root, _, files in os.walk(os.path.join(source_dir, folder)):
            for name in files:
                if not name.endswith((".cc", ".h")):
                    continue
                with open(os.path.join(root, name), errors="replace") as f:
                    text = f.read()
                for match in re.finditer(
                        r"Build(Counter|Gauge|Histogram|Summary)\(\)\s*"
                        r"\.Name\(\s*\"([A-Za-z_:][A-Za-z0-9_:]*)\"", text):
                    families[match.group(2)] = match.group(1)
    series = {}
    for family, kind in families.items():
        suffixes = {"Histogram": ("_bucket", "_sum", "_count"),
                    "Summary": ("", "_sum", "_count")}.get(kind, ("",))
        for suffix in suffixes:
            series[family + suffix] = family
    return families, series
