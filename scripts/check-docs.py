#!/usr/bin/env python3
"""Opens /docs of a running service in headless Chromium (Debian's package) and checks that
the page the browser built lists every operation of /openapi.json, each once.

    python3 scripts/check-docs.py http://127.0.0.1:18181

Swagger UI renders each operation as an element of class `opblock opblock-<method>` with
a `data-path` of its path; the DOM is read after the page's scripts ran (--dump-dom with a
virtual time budget). Chromium runs with a fresh profile and without its background
networking (this machine has no internet).
"""

import json
import re
import subprocess
import sys
import tempfile
import urllib.request

METHODS = ("get", "post", "put", "patch", "delete")


def main(base):
    spec = json.load(urllib.request.urlopen(f"{base}/openapi.json", timeout=10))
    expected = sorted(
        (method, path) for path, ops in spec["paths"].items() for method in ops if method in METHODS
    )
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", f"{base}/docs/"],
            capture_output=True, text=True, timeout=120,
        ).stdout
    rendered = sorted(
        (m.group(1), m.group(2))
        for m in re.finditer(r'class="opblock opblock-(\w+)[^"]*".*?data-path="([^"]+)"', dom, re.S)
    )
    missing = sorted(set(expected) - set(rendered))
    if missing or len(rendered) != len(expected):
        sys.exit(f"/docs shows {len(rendered)} operations, /openapi.json has {len(expected)}; "
                 f"missing: {missing}; DOM starts: {dom[:500]!r}")
    print(f"/docs: all {len(expected)} operations of /openapi.json rendered by Swagger UI in Chromium")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
