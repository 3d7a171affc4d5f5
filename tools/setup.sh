#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment in .venv with mmx (editable), both backends
# (torch + MindSpore) and the test tools, at the exact versions in constraints.txt. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mmx-installed
want=$(cat setup.cfg setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[all]" -c constraints.txt
  echo "$want" > "$stamp"
fi
.venv/bin/mmx backends
