#!/usr/bin/env python3
"""The hot product's rows of bench.py alone — winners of an everyone-wins sale (wrk,
order + pay), sold-out refusals (wrk) and cart lines (wrk: 3 lines of 20 hot products,
paid) against GET /healthz of the same binary — for any
number of binaries, one after another on the same machine, in rounds (A B A B …) so that
the machine's drift falls on every binary alike: how a change to the checkout is checked
against the one-product group commit before and after.

    python3 bench/wins.py LABEL=path/to/commerce-api [LABEL=path ...]

Each binary gets a fresh database (BENCH_PRODUCTS 1,000, BENCH_USERS 2,048) and Redis
prefix per round. One JSON line per binary and round on stdout, and the medians at the end.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
os.environ.setdefault("BENCH_PRODUCTS", "1000")
os.environ.setdefault("BENCH_USERS", "2048")
import bench  # noqa: E402  (the harness: Server, wrk, wins_wrk, refusals)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def measure(label, binary):
    bench.BIN = pathlib.Path(binary).resolve()
    bench.mariadb(f"DROP DATABASE IF EXISTS {bench.DB_NAME}", db=None)
    subprocess.run(f"redis-cli --scan --pattern '{bench.PREFIX}*' | xargs -r -n 500 redis-cli DEL >/dev/null",
                   shell=True, check=True)
    server = bench.Server(seed=True, name=label)
    try:
        static = bench.wrk("get.lua", PATH_TEMPLATE="/healthz", MAX="1")
        tokens = bench.tokens_for(range(1, 2049))
        wins = bench.wins_wrk(tokens, bench.CONNS)
        _, zero = bench.api("POST", "/v1/admin/products", {"name": "bench sold out", "price": 1000, "stock": 0})
        refused = bench.refusals(zero["id"], tokens[1])
        try:
            carts = bench.carts_wrk(tokens, bench.CONNS)
        except subprocess.CalledProcessError:
            carts = None  # a binary from before orders of several products
        return {"label": label, "healthz": round(static["rps"]), "winners": round(wins["rps"]),
                "winners_p99_ms": round(wins["p99_ms"], 1), "refusals": round(refused["rps"]),
                "winners_per_healthz": round(wins["rps"] / static["rps"], 4),
                "refusals_per_healthz": round(refused["rps"] / static["rps"], 3),
                "cart_lines": round(carts["rps"]) if carts else 0,
                "cart_p99_ms": round(carts["p99_ms"], 1) if carts else 0,
                "cart_lines_per_winner": round(carts["rps"] / wins["rps"], 3) if carts else 0}
    finally:
        server.stop()


def main():
    binaries = [arg.split("=", 1) for arg in sys.argv[1:]]
    if not binaries:
        sys.exit(__doc__)
    results = {label: [] for label, _ in binaries}
    for _ in range(ROUNDS):
        for label, binary in binaries:
            r = measure(label, binary)
            print(json.dumps(r), flush=True)
            results[label].append(r)
    print("| binary | winners/s | p99 ms | refusals/s | /healthz | winners ÷ /healthz | refusals ÷ /healthz "
          "| cart lines/s | cart p99 ms | cart lines ÷ winners |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "label"}
        print(f"| {label} | {med['winners']:,.0f} | {med['winners_p99_ms']} | {med['refusals']:,.0f} | "
              f"{med['healthz']:,.0f} | {med['winners_per_healthz']:.3f} | {med['refusals_per_healthz']:.3f} | "
              f"{med['cart_lines']:,.0f} | {med['cart_p99_ms']} | {med['cart_lines_per_winner']:.2f} |")


if __name__ == "__main__":
    main()
