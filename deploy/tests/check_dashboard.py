#!/usr/bin/env python3
"""Check the Grafana dashboard and the alerting rules against the daemon's metrics.

Usage:
    check_dashboard.py DASHBOARD.json RULES.yml DESIGN.md [--scrape FILE]

Checks that the dashboard is a Grafana dashboard JSON model that imports as is: a
`datasource` variable of type datasource for Prometheus, every panel and query using
it, unique panel ids, and a panel for each view that operators expect. Every metric
name that a dashboard query or an alert expression uses must be in the metrics table
of DESIGN.md (histograms with their `_bucket`, `_sum` and `_count` series). With
--scrape, every metric family in that /metrics body must be in the table too.

Prints each problem and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

# Panel titles that operators look for. The dashboard may have more.
REQUIRED_PANELS = (
    "Intake backlog",
    "Intake outcomes",
    "Admission latency",
    "Dead letters",
    "Jobs by state",
    "Tasks by state",
    "Workers by backend",
    "Lease expiries",
    "Duplicates suppressed",
    "Task runtime",
    "Task wait",
)
DATASOURCE_UID = "${datasource}"
# Series that Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}
METRIC_NAME = re.compile(r"\bspillway_[a-z0-9_]+\b")
TABLE_ROW = re.compile(r"^\|\s*`(spillway_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|")


def documented_series(design: Path) -> set[str]:
    """Return every series name that the metrics table of the design notes defines."""
    names = set()
    for line in design.read_text(encoding="utf-8").splitlines():
        match = TABLE_ROW.match(line)
        if not match:
            continue
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def scraped_series(body: str) -> set[str]:
    """Return the series names in a Prometheus or OpenMetrics text body."""
    names = set()
    for line in body.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def check_datasource(where: str, datasource: object, problems: list[str]) -> None:
    if not isinstance(datasource, dict) or datasource.get("uid") != DATASOURCE_UID:
        problems.append(f"{where}: datasource is {datasource!r}; expected uid {DATASOURCE_UID}")


def check_dashboard(dashboard: dict, problems: list[str]) -> list[str]:
    """Check the dashboard's structure and return the PromQL expressions of its panels."""
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dashboard:
            problems.append(f"dashboard: missing top-level key {key!r}")
    if "__inputs" in dashboard:
        problems.append("dashboard: has __inputs; use the datasource variable instead")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("datasource")
    if datasource is None:
        problems.append("dashboard: no templating variable named 'datasource'")
    elif datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append("dashboard: variable 'datasource' must have type datasource and query prometheus")
    for name, variable in variables.items():
        if variable.get("type") == "query":
            check_datasource(f"variable {name}", variable.get("datasource"), problems)

    expressions = []
    ids = set()
    titles = set()
    for panel in dashboard.get("panels", []):
        title = panel.get("title", "<untitled>")
        titles.add(title)
        panel_id = panel.get("id")
        if not isinstance(panel_id, int) or panel_id in ids:
            problems.append(f"panel {title!r}: id {panel_id!r} is missing or not unique")
        ids.add(panel_id)
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")) or grid.get("x", 0) + grid.get("w", 0) > 24:
            problems.append(f"panel {title!r}: gridPos {grid!r} is incomplete or wider than 24 columns")
        if panel.get("type") == "row":
            continue

        check_datasource(f"panel {title!r}", panel.get("datasource"), problems)
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"panel {title!r}: no queries")
        ref_ids = [target.get("refId") for target in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.append(f"panel {title!r}: refIds {ref_ids} are missing or repeated")
        for target in targets:
            check_datasource(f"panel {title!r} query {target.get('refId')}", target.get("datasource"), problems)
            expression = target.get("expr", "")
            if not expression.strip():
                problems.append(f"panel {title!r} query {target.get('refId')}: empty expr")
            expressions.append(expression)

    for title in REQUIRED_PANELS:
        if title not in titles:
            problems.append(f"dashboard: no panel titled {title!r}")
    return expressions


def rule_expressions(rules: dict, problems: list[str]) -> list[str]:
    expressions = []
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook"):
                if not annotations.get(key):
                    problems.append(f"alert {name}: missing annotation {key!r}")
            if rule.get("labels", {}).get("severity") not in ("page", "warning"):
                problems.append(f"alert {name}: severity label must be page or warning")
            expressions.append(rule.get("expr", ""))
    return expressions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboard", type=Path)
    parser.add_argument("rules", type=Path)
    parser.add_argument("design", type=Path, help="design notes with the metrics table")
    parser.add_argument("--scrape", type=Path, help="a /metrics body to compare with the table")
    args = parser.parse_args()

    problems: list[str] = []
    try:
        dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        print(f"{args.dashboard}: invalid JSON: {error}")
        return 1
    rules = yaml.safe_load(args.rules.read_text(encoding="utf-8"))
    known = documented_series(args.design)
    if not known:
        problems.append(f"{args.design}: no metrics table found")

    expressions = check_dashboard(dashboard, problems)
    expressions += rule_expressions(rules, problems)
    for expression in expressions:
        for name in sorted(set(METRIC_NAME.findall(expression))):
            if name not in known:
                problems.append(f"query uses {name}, which the metrics table in {args.design} does not list: {expression}")

    if args.scrape:
        for name in sorted(scraped_series(args.scrape.read_text(encoding="utf-8")) - known - PROMETHEUS_SERIES):
            problems.append(f"/metrics exports {name}, which the metrics table in {args.design} does not list")

    for problem in problems:
        print(problem)
    print(f"checked {len(expressions)} expressions against {len(known)} documented series: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
