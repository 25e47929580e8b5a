#!/usr/bin/env python3
"""Checks of the chart's monitoring files that promtool alone does not make (.ci/check-deploy).

  check-monitoring.py dashboard-rules DASHBOARD.json OUT.yaml
      Writes every PromQL expression of the Grafana dashboard (panel targets, also in collapsed
      rows, and the selectors of label_values() variables) as a recording rule, Grafana's
      variables replaced by sample values, so that `promtool check rules OUT.yaml` parses them.
      Each rule is named after its panel and query (dashboard:panel_<id>_<refId>), so promtool's
      error names the query; the file's comments give the panels' titles.

  check-monitoring.py conventions RULES.yaml TESTS.yaml OPERATIONS.md DASHBOARD.json
      Every alert has a severity label, summary and description annotations and a runbook_url
      docs/OPERATIONS.md#<anchor> whose heading exists; the promtool tests have, for every
      alert, a case where it fires and one where it does not, and name no unknown alert; every
      courier_* metric the alerts and the dashboard use is listed in OPERATIONS.md's
      "Metrics" section (skipped, with a note, while that section lists none).

  check-monitoring.py rendered RENDERED.yaml DASHBOARD.json OUT.yaml
      In a `helm template` output with monitoring enabled: writes the PrometheusRule's groups
      to OUT.yaml (for `promtool check rules`), checks that the dashboard ConfigMap holds
      DASHBOARD.json unchanged, and that every Deployment's Service is scraped by a
      ServiceMonitor whose selector finds it and whose port it has.

Exit status 1 with one line per problem.
"""
import json
import re
import sys

import yaml

SEVERITIES = {"critical", "warning", "info"}
# Grafana's built-in interval variables, and a value for every other variable (they are used
# inside label matchers' quotes).
GRAFANA_INTERVALS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)
METRIC = re.compile(r"\b(courier_[a-z0-9_]+)\b")
# Target labels the chart's ServiceMonitors add: they look like metric names but are not.
TARGET_LABELS = {"courier_release", "courier_component"}


def substitute(expr):
    def value(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return GRAFANA_INTERVALS.get(name, "sample")

    return VARIABLE.sub(value, expr)


def panels_of(dashboard):
    """Every panel, rows' nested panels included."""
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        yield panel
        stack[0:0] = panel.get("panels", [])


def dashboard_exprs(dashboard):
    """(record name, where, PromQL) for every query of the dashboard."""
    out = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                record = f'dashboard:panel_{panel.get("id")}_{target.get("refId")}'
                where = f'panel {panel.get("id")} "{panel.get("title")}", target {target.get("refId")}'
                out.append((record, where, expr))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        m = LABEL_VALUES.match(query or "")
        record, where = f'dashboard:variable_{var["name"]}', f'variable ${var["name"]}'
        if m:
            out.append((record, where, m.group(1)))
        elif query:
            out.append((record, where, query))
    return out


def dashboard_rules(dashboard_path, out_path):
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    rules, lines = [], []
    for record, where, expr in dashboard_exprs(dashboard):
        rules.append({"record": record, "expr": substitute(expr)})
        lines.append(f"# {record}: {where}")
    if not rules:
        print(f"{dashboard_path}: no PromQL expression found", file=sys.stderr)
        return 1
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    print(f"{len(rules)} dashboard expressions written to {out_path}")
    return 0


def anchors(markdown):
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def documented_metrics(markdown):
    m = re.search(r"^## Metrics\s*$(.*?)^## ", markdown, re.M | re.S)
    section = re.sub(r"<!--.*?-->", "", m.group(1), flags=re.S) if m else ""
    return set(METRIC.findall(section))


def conventions(rules_path, tests_path, operations_path, dashboard_path):
    problems = []
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    with open(tests_path) as f:
        tests = yaml.safe_load(f)
    with open(operations_path) as f:
        operations = f.read()
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    headings = anchors(operations)

    alerts = []
    used = set()
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            used.update(METRIC.findall(rule.get("expr", "")))
            name = rule.get("alert")
            if not name:
                continue
            alerts.append(name)
            where = f"{rules_path}: alert {name}"
            labels = rule.get("labels") or {}
            notes = rule.get("annotations") or {}
            if labels.get("severity") not in SEVERITIES:
                problems.append(f"{where}: label severity must be one of {sorted(SEVERITIES)}, got {labels.get('severity')!r}")
            for key in ("summary", "description"):
                if not str(notes.get(key, "")).strip():
                    problems.append(f"{where}: annotation {key} is missing")
            runbook = str(notes.get("runbook_url", ""))
            m = re.fullmatch(r"docs/OPERATIONS\.md#([\w-]+)", runbook)
            if not m:
                problems.append(f"{where}: runbook_url must be docs/OPERATIONS.md#<anchor>, got {runbook!r}")
            elif m.group(1) not in headings:
                problems.append(f"{where}: runbook_url {runbook}: {operations_path} has no heading with anchor #{m.group(1)} (add '### {name}')")

    fires, quiet = set(), set()
    for case in tests.get("tests", []):
        for check in case.get("alert_rule_test", []) or []:
            name = check.get("alertname")
            if name not in alerts:
                problems.append(f"{tests_path}: test {case.get('name')!r} checks unknown alert {name!r}")
            (fires if check.get("exp_alerts") else quiet).add(name)
    for name in alerts:
        if name not in fires:
            problems.append(f"{tests_path}: no case where {name} fires (an alert_rule_test with exp_alerts)")
        if name not in quiet:
            problems.append(f"{tests_path}: no case where {name} does not fire (an alert_rule_test with exp_alerts: [])")

    for _, _, expr in dashboard_exprs(dashboard):
        used.update(METRIC.findall(expr))
    documented = documented_metrics(operations)
    if not documented:
        print(f"note: {operations_path} lists no courier_* metric under '## Metrics' yet; "
              "metric names of the alerts and dashboard not checked")
    else:
        for name in sorted(used - TARGET_LABELS):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if not ({name, base} & documented):
                problems.append(f"metric {name} (alerts or dashboard) is not listed under '## Metrics' in {operations_path}")

    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{len(alerts)} alerts: labels, annotations, runbooks and tests in order; "
              f"{len(used - TARGET_LABELS)} metric names used")
    return 1 if problems else 0


def rendered(rendered_path, dashboard_path, out_path):
    problems = []
    with open(rendered_path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)

    rules = by_kind.get("PrometheusRule", [])
    if len(rules) != 1:
        problems.append(f"expected one PrometheusRule, found {len(rules)}")
    else:
        with open(out_path, "w") as f:
            yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f, sort_keys=False)

    with open(dashboard_path) as f:
        want = json.load(f)
    maps = [c for c in by_kind.get("ConfigMap", []) if "courier.json" in (c.get("data") or {})]
    if len(maps) != 1:
        problems.append(f"expected one ConfigMap with courier.json, found {len(maps)}")
    elif json.loads(maps[0]["data"]["courier.json"]) != want:
        problems.append(f"the dashboard ConfigMap's courier.json differs from {dashboard_path}")

    services = by_kind.get("Service", [])
    monitors = by_kind.get("ServiceMonitor", [])
    scraped = set()
    for sm in monitors:
        name = sm["metadata"]["name"]
        selector = sm["spec"]["selector"].get("matchLabels", {})
        found = [s for s in services
                 if selector.items() <= (s["metadata"].get("labels") or {}).items()]
        if len(found) != 1:
            problems.append(f"ServiceMonitor {name}: its selector finds {len(found)} Services, expected 1")
            continue
        ports = {p.get("name") for p in found[0]["spec"].get("ports", [])}
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in ports:
                problems.append(f"ServiceMonitor {name}: Service {found[0]['metadata']['name']} has no port {ep.get('port')!r}")
            if ep.get("path") != "/metrics":
                problems.append(f"ServiceMonitor {name}: path {ep.get('path')!r}, expected /metrics")
        scraped.add(found[0]["metadata"]["name"])
    for dep in by_kind.get("Deployment", []):
        pod_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
        svcs = [s["metadata"]["name"] for s in services
                if (s["spec"].get("selector") or {}).items() <= pod_labels.items()]
        if not any(s in scraped for s in svcs):
            problems.append(f"Deployment {dep['metadata']['name']}: no ServiceMonitor scrapes it "
                            f"(Services selecting its pods: {svcs or 'none'})")

    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{len(monitors)} ServiceMonitors cover {len(by_kind.get('Deployment', []))} Deployments; "
              f"PrometheusRule written to {out_path}; dashboard ConfigMap matches")
    return 1 if problems else 0


def main(argv):
    if len(argv) == 5 and argv[1] == "rendered":
        return rendered(*argv[2:])
    if len(argv) == 4 and argv[1] == "dashboard-rules":
        return dashboard_rules(argv[2], argv[3])
    if len(argv) == 6 and argv[1] == "conventions":
        return conventions(*argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
