#!/usr/bin/env python3
"""A picture of bench/results/latest.json: every measured path against its ceiling.

Left, throughput: one bar per measurement, its length the ratio to the ceiling measured in
the same run (the line at 1.0 is the ceiling; a tick marks the target where there is one),
with both rates written beside it. Right, latency: p50 (dot) and p99 (bar end) on a log
scale, the ceiling's p50–p99 in grey under it where the ceiling has latencies.

Plain SVG written by hand (no plotting library on the machine, none needed):
    python3 bench/chart.py [latest.json] [latest.svg]
"""

import json
import math
import pathlib
import sys
from html import escape

ROW_H = 26
LABEL_W = 470
BAR_W = 330
LAT_W = 300
GAP = 70
TOP = 70
MAX_RATIO = 2.0
LAT_MIN, LAT_MAX = 0.1, 2000.0  # ms, log scale


def _x_ratio(ratio):
    return LABEL_W + BAR_W * min(ratio, MAX_RATIO) / MAX_RATIO


def _x_ms(ms):
    ms = min(max(ms, LAT_MIN), LAT_MAX)
    span = math.log10(LAT_MAX) - math.log10(LAT_MIN)
    return LABEL_W + BAR_W + GAP + LAT_W * (math.log10(ms) - math.log10(LAT_MIN)) / span


def _rate(v):
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _short(text, n=72):
    return text if len(text) <= n else text[: n - 1] + "…"


def svg(data):
    rows = data["rows"]
    width = LABEL_W + BAR_W + GAP + LAT_W + 20
    height = TOP + ROW_H * len(rows) + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="22" font-size="15" font-weight="bold">commerce-api: each path against its ceiling '
        "(same run)</text>",
        f'<text x="{LABEL_W}" y="48" font-weight="bold">throughput ÷ ceiling (bar; 1.0 = the ceiling, '
        "▼ = target)</text>",
        f'<text x="{LABEL_W + BAR_W + GAP}" y="48" font-weight="bold">latency ms, log: ● p50 — p99 '
        "(grey: the ceiling's)</text>",
    ]
    bottom = TOP + ROW_H * len(rows)
    # Axes: ratio gridlines and latency decades.
    for r in (0.25, 0.5, 1.0, 1.5, 2.0):
        x = _x_ratio(r)
        colour, dash = ("#333", "") if r == 1.0 else ("#ddd", ' stroke-dasharray="3,3"')
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{bottom}" stroke="{colour}"{dash}/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{r:g}</text>')
    ms = LAT_MIN
    while ms <= LAT_MAX:
        x = _x_ms(ms)
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 8}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd" stroke-dasharray="3,3"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{ms:g}</text>')
        ms *= 10
    for i, row in enumerate(rows):
        y = TOP + ROW_H * i
        mid = y + ROW_H / 2
        if i % 2:
            out.append(f'<rect x="0" y="{y}" width="{width}" height="{ROW_H}" fill="#f6f6f6"/>')
        out.append(f'<text x="10" y="{mid + 4:.1f}"><title>{escape(row["name"])}</title>{escape(_short(row["name"]))}</text>')
        ratio = row.get("ratio")
        if ratio is not None:
            target = row.get("target")
            met = target is None or ratio >= target
            colour = "#3a7d44" if met else "#c0392b"
            out.append(
                f'<rect x="{LABEL_W}" y="{y + 5}" width="{_x_ratio(ratio) - LABEL_W:.1f}" height="{ROW_H - 10}" '
                f'fill="{colour}" opacity="0.8"><title>{ratio:.2f} of {escape(row["ceiling_name"] or "")}</title></rect>'
            )
            if ratio > MAX_RATIO:
                out.append(f'<text x="{_x_ratio(MAX_RATIO) - 4:.1f}" y="{mid + 4:.1f}" text-anchor="end" fill="white">»</text>')
            if target is not None:
                tx = _x_ratio(target)
                out.append(f'<text x="{tx:.1f}" y="{y + 8}" text-anchor="middle" font-size="10">▼</text>')
            label = f'{ratio:.2f}: {_rate(row["rps"])} / {_rate(row["ceiling"])}'
            lx = min(_x_ratio(ratio), _x_ratio(MAX_RATIO) - 150) + 4
            out.append(f'<text x="{lx:.1f}" y="{mid + 4:.1f}" font-size="10">{label}</text>')
        else:
            out.append(f'<text x="{LABEL_W + 4}" y="{mid + 4:.1f}" fill="#555">{_rate(row["rps"])} /s</text>')
        for p50, p99, colour, dy in ((row.get("ceiling_p50"), row.get("ceiling_p99"), "#aaa", 5),
                                     (row.get("p50"), row.get("p99"), "#2c5d8f", -3)):
            if p50 is None or p99 is None:
                continue
            out.append(f'<line x1="{_x_ms(p50):.1f}" y1="{mid + dy:.1f}" x2="{_x_ms(p99):.1f}" y2="{mid + dy:.1f}" '
                       f'stroke="{colour}" stroke-width="3"><title>p50 {p50:.2f} ms, p99 {p99:.2f} ms</title></line>')
            out.append(f'<circle cx="{_x_ms(p50):.1f}" cy="{mid + dy:.1f}" r="3.5" fill="{colour}"/>')
            if colour != "#aaa":
                out.append(f'<text x="{_x_ms(p99) + 4:.1f}" y="{mid + 1:.1f}" font-size="9">{p99:.1f}</text>')
    out.append(f'<text x="10" y="{bottom + 40}" fill="#555">Green: target met or none set; red: below its target. '
               "Numbers beside a bar: service / ceiling, per second. Latency: the service's p99 in ms beside its bar.</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(source, target):
    target.write_text(svg(json.loads(pathlib.Path(source).read_text())))


if __name__ == "__main__":
    here = pathlib.Path(__file__).resolve().parent / "results"
    src = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else here / "latest.json"
    dst = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else here / "latest.svg"
    write(src, dst)
    print(f"written {dst}")
