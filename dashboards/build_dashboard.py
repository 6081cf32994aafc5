#!/usr/bin/env python3
"""Writes dashboards/commerce-api.json, the Grafana dashboard of commerce-api.

One source for the dashboard: edit the panels here, run `python3 dashboards/build_dashboard.py`,
commit both. Queries are written to return a series even when nothing has happened yet
(`or vector(0)`, ratios over a clamped denominator), so a panel says 0, not "No data";
`scripts/check-dashboards.py` proves that on a real Prometheus in the test command.

Variables: `datasource` (any Prometheus), `job` and `instance` (all by default), so the
dashboard imports anywhere; most panels break down by instance, so two instances behind a
balancer can be told apart.
"""

import json
import pathlib

SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def sel(extra=""):
    return "{" + SEL + (", " + extra if extra else "") + "}"


def rate(metric, extra="", by=None):
    inner = f"rate({metric}{sel(extra)}[{RATE}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def zero(expr):
    """`expr`, or 0 when no series exists yet (a counter that never moved)."""
    return f"({expr}) or vector(0)"


def ratio(num, den):
    return f"({zero(num)}) / clamp_min({zero(den)}, 1e-9)"


def p(q, metric, extra="", by="route"):
    """The `q` quantile of a histogram (0 before its first observation)."""
    return zero(f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) (rate({metric}_bucket{sel(extra)}[{RATE}])))")


# (title, unit, [(expr, legend)], description)
PANELS = [
    # The first row: what a person needs first.
    ("Requests per second by instance", "reqps",
     [(rate("http_requests_total", by="instance"), "{{instance}}")],
     "Every request, by instance: two instances behind a balancer should carry about the same."),
    ("Error ratio (5xx / all)", "percentunit",
     [(ratio(rate("http_requests_total", 'status=~"5.."'), rate("http_requests_total")), "5xx"),
      (ratio(rate("http_requests_total", 'status=~"4.."'), rate("http_requests_total")), "4xx")],
     "5xx are infrastructure failures (alert: CommerceApiErrorRatioHigh); 4xx include every sold-out refusal."),
    ("Latency p99 by route", "s",
     [(p(0.99, "http_request_duration_seconds"), "{{route}}")],
     "Alert CommerceApiLatencyHigh compares this with the SLO."),
    ("Sold-out refusals per second", "reqps",
     [(zero(rate("stock_reservations_total", 'outcome=~"sold_out|sold_out_local"', by="outcome")), "{{outcome}}")],
     "sold_out: refused by the Redis gate; sold_out_local: refused from the instance's memory, no round trip."),
    ("Winners per second (payments completed)", "reqps",
     [(zero(rate("payments_total", 'outcome="completed"', by="instance")), "{{instance}}"),
      (zero(rate("orders_total", 'outcome="placed"')), "orders placed")],
     "Buyers who got their unit: a flash sale's throughput."),
    ("MySQL pool: saturation and waits", "percentunit",
     [(ratio("sum by (instance) (db_pool_connections" + sel('state="in_use"') + ")",
             "sum by (instance) (db_pool_max_connections" + sel() + ")"), "in use {{instance}}"),
      (p(0.99, "db_pool_acquire_duration_seconds", by=""), "p99 wait for a connection (s)")],
     "Alert CommerceApiMysqlPoolSaturated at 90 % in use."),
    ("Redis circuit (0 closed, 1 half-open, 2 open)", "none",
     [(f"max by (instance) (redis_circuit_state{sel()})", "{{instance}}")],
     "Open: Redis is down or hanging and the service runs on MySQL alone (alert CommerceApiRedisCircuitOpen)."),
    # Where the time goes.
    ("Requests per second by route", "reqps",
     [(rate("http_requests_total", by="route"), "{{route}}")], ""),
    ("Latency p50 / p95 by route", "s",
     [(p(0.5, "http_request_duration_seconds"), "p50 {{route}}"),
      (p(0.95, "http_request_duration_seconds"), "p95 {{route}}")], ""),
    ("Checkout batches: requests per transaction", "none",
     [(p(0.5, "checkout_batch_size", by=""), "p50"), (p(0.99, "checkout_batch_size", by=""), "p99"),
      (zero(rate("checkout_batch_size_count")), "batches/s")],
     "Group commit: orders and payments of one product per transaction."),
    ("Checkout batch duration", "s",
     [(p(0.5, "checkout_batch_duration_seconds", by=""), "p50"), (p(0.99, "checkout_batch_duration_seconds", by=""), "p99")],
     "One transaction of a product's batch, commit included."),
    ("In-flight requests, timeouts, rate limits", "none",
     [(f"sum by (instance) (http_requests_in_flight{sel()})", "in flight {{instance}}"),
      (zero(rate("http_request_timeouts_total")), "timeouts/s"),
      (zero(rate("rate_limited_total", by="limit")), "rate limited/s {{limit}}")], ""),
    ("Cache hit ratio by cache and layer", "percentunit",
     [(ratio(rate("cache_requests_total", 'result="hit"', by="cache, layer"),
             rate("cache_requests_total", by="cache, layer")), "{{cache}} {{layer}}")], ""),
    ("Stock reservations by outcome", "reqps",
     [(rate("stock_reservations_total", by="outcome"), "{{outcome}}")], ""),
    ("Payments and orders by outcome", "reqps",
     [(rate("payments_total", by="outcome"), "payment {{outcome}}"),
      (rate("orders_total", by="outcome"), "order {{outcome}}")], ""),
    ("MySQL retries and replica", "none",
     [(zero(rate("db_transaction_retries_total")), "transaction retries/s"),
      (f"max by (instance) (db_replica_lag_seconds{sel()}) or vector(-1)", "replica lag s ({{instance}}; -1 none)"),
      (f"max by (instance) (db_replica_in_use{sel()}) or vector(0)", "reads on the replica ({{instance}})")],
     "A replica further behind than REPLICA_MAX_LAG_SECS is not read."),
    ("Outbox and Kafka relay", "none",
     [(f"max(outbox_oldest_age_seconds{sel()})", "oldest unpublished (s)"),
      (f"max(outbox_backlog{sel()})", "unpublished"),
      (zero(rate("events_published_total")), "published/s"),
      (zero(rate("events_publish_failures_total")), "publish failures/s")],
     "Alerts CommerceApiOutboxBacklogOld and CommerceApiKafkaPublishFailing."),
    ("Live stock feed", "none",
     [(zero(rate("stock_live_messages_total")), "messages applied/s"),
      (f"min by (instance) (stock_live_feed_up{sel()})", "feed up ({{instance}})"),
      (zero(rate("stock_prewarms_total")), "sales pre-warmed/s")],
     "The stock gate's scripts publish every change of a product's figures; each instance keeps them in memory. While the feed is down (0) every read asks Redis."),
    ("Redis errors and repairs", "none",
     [(zero(rate("redis_errors_total", by="kind")), "errors/s {{kind}}"),
      (zero(f"sum(increase(stock_drift_repaired_total{sel()}[15m]))"), "stock drift repaired (15 min)"),
      (zero(f"sum(increase(orders_expired_total{sel()}[15m]))"), "orders expired (15 min)")],
     "Alert CommerceApiStockDriftRepaired."),
]


def panel(i, title, unit, targets, description):
    first_row = i < 7
    width = 8 if first_row and i < 6 else (24 if i == 6 else 12)
    if first_row:
        x, y = (i % 3) * 8, (i // 3) * 7 if i < 6 else 14
        h = 7 if i < 6 else 5
    else:
        j = i - 7
        x, y, h = (j % 2) * 12, 19 + (j // 2) * 8, 8
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": width, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for k, (expr, legend) in enumerate(targets)
        ],
    }


def variable(name, label, query):
    return {
        "name": name, "label": label, "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query, "refresh": 2, "includeAll": True, "multi": True,
        "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1,
    }


dashboard = {
    "title": "commerce-api",
    "uid": "commerce-api",
    "tags": ["commerce-api"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 2,
    "refresh": "5s",
    "time": {"from": "now-15m", "to": "now"},
    "editable": True,
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        variable("job", "Job", "label_values(http_requests_total, job)"),
        variable("instance", "Instance", 'label_values(http_requests_total{job=~"$job"}, instance)'),
    ]},
    "panels": [panel(i, *spec) for i, spec in enumerate(PANELS)],
}

out = pathlib.Path(__file__).with_name("commerce-api.json")
out.write_text(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {out} ({len(PANELS)} panels)")
