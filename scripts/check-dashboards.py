#!/usr/bin/env python3
"""Proves the dashboards and the alert rules on a real Prometheus (scripts/api-checks.sh).

    check-dashboards.py http://127.0.0.1:9090 dashboards/commerce-api.json

Every query of every panel, with the dashboard's variables replaced the way Grafana does
(a multi-value variable left at "All" becomes its allValue `.*`; `$__rate_interval` four
scrape intervals or a minute), must parse and return at least one series: a rate of
something that has not happened must say 0, not nothing. Every variable's query must
find values. The alert rules must be loaded and healthy.
"""

import json
import sys
import urllib.parse
import urllib.request

RATE_INTERVAL = "1m"


def get(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def substitute(expr, variables):
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def main(base, dashboards):
    failures, checked = [], 0
    for path in dashboards:
        dashboard = json.load(open(path))
        variables = {}
        for var in dashboard.get("templating", {}).get("list", []):
            if var["type"] == "datasource":
                continue
            variables[var["name"]] = var.get("allValue") or ".*"
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(<selector>, <label>): the label's values among the selector's series.
            inner = query[len("label_values("):-1]
            selector, label = inner.rsplit(",", 1)
            values = get(base, f"/api/v1/label/{label.strip()}/values",
                         **{"match[]": substitute(selector.strip(), variables)})
            checked += 1
            if not values.get("data"):
                failures.append(f"{path}: variable {var['name']} finds no values ({query})")
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = substitute(target["expr"], variables)
                checked += 1
                try:
                    answer = get(base, "/api/v1/query", query=expr)
                except urllib.error.HTTPError as e:
                    failures.append(f"{path}: {panel['title']}: does not parse: {e.read().decode()[:300]}\n    {expr}")
                    continue
                if answer["status"] != "success" or not answer["data"]["result"]:
                    failures.append(f"{path}: {panel['title']}: no series\n    {expr}")
    groups = get(base, "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    checked += 1
    if not rules:
        failures.append("no alert rules are loaded")
    for rule in rules:
        if rule.get("health") not in ("ok", "unknown"):
            failures.append(f"rule {rule['name']}: {rule.get('health')} {rule.get('lastError')}")
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{checked} dashboard queries, variables and rule sets checked on {base}: "
          f"{len(failures)} failed; {len(rules)} alert rules loaded")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
