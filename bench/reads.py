#!/usr/bin/env python3
"""The read measurements of bench.py alone, for any number of binaries, one after another
on the same machine: how the regressions of issue 19 were bisected.

    python3 bench/reads.py LABEL=path/to/commerce-api [LABEL=path ...]

Each binary gets a fresh database seeded by itself (BENCH_PRODUCTS, 100,000) and a fresh
Redis prefix; then GET /healthz, random listing pages, random details and the best sellers
with wrk (2 threads × 64 connections, BENCH_SECONDS each, median of BENCH_REPEATS), each
read as a ratio to /healthz of the same binary in the same run, a soak of random details
(BENCH_SOAK_SECONDS, 60), and the server's peak RSS. One JSON line per binary on stdout,
and a table at the end.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the harness: Server, wrk, get_bench)

SOAK = int(os.environ.get("BENCH_SOAK_SECONDS", "60"))


def measure(label, binary):
    bench.BIN = pathlib.Path(binary).resolve()
    bench.mariadb(f"DROP DATABASE IF EXISTS {bench.DB_NAME}", db=None)
    subprocess.run(f"redis-cli --scan --pattern '{bench.PREFIX}*' | xargs -r -n 500 redis-cli DEL >/dev/null",
                   shell=True, check=True)
    server = bench.Server(seed=True, name=label)
    try:
        # What the seed allocated is not what reads keep: the peak after start-up is noted
        # on its own.
        seeded = server.peak_rss_mib()
        static = bench.get_bench("/healthz", 1)
        result = {"label": label, "rss_after_seed": round(seeded), "healthz": round(static["rps"])}
        for name, template, maximum in [
            ("pages", "/v1/products?page={n}", max(1, bench.PRODUCTS // 20)),
            ("details", "/v1/products/{n}", bench.PRODUCTS),
            ("top", "/v1/products/top?days={n}", 7),
        ]:
            r = bench.get_bench(template, maximum)
            result[name] = round(r["rps"] / static["rps"], 3)
            result[f"{name}_p99"] = round(r["p99_ms"], 1)
        start_rss = bench.rss_mib(server.proc.pid)
        soaked, samples = bench.soak(server, SOAK)
        result["soak_rss"] = [round(start_rss)] + [round(m) for _, m in samples]
        result["peak_rss"] = round(server.peak_rss_mib())
        return result
    finally:
        server.stop()


def main():
    bench.SOAK_SECONDS = SOAK
    results = []
    for arg in sys.argv[1:]:
        label, binary = arg.split("=", 1)
        bench.log(f"{label}: {binary}")
        result = measure(label, binary)
        print(json.dumps(result), flush=True)
        results.append(result)
        time.sleep(2)
    print("\n| binary | pages | details | top | worst p99 ms | peak RSS MiB | after seed | soak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        worst = max(r["pages_p99"], r["details_p99"], r["top_p99"])
        print(f"| {r['label']} | {r['pages']:.2f} | {r['details']:.2f} | {r['top']:.2f} | {worst} | "
              f"{r['peak_rss']} | {r['rss_after_seed']} | {' → '.join(map(str, r['soak_rss']))} |")


if __name__ == "__main__":
    main()
