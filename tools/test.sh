#!/usr/bin/env bash
# The test suite, once per backend (ARCHITECTURE rule 1). Extra arguments go to pytest (e.g. tools/test.sh tests/ops).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
status=0
ran=0
for backend in torch mindspore; do
  echo "=== MMX_BACKEND=$backend ==="
  start=$(date +%s)
  MMX_BACKEND=$backend "$PY" -m pytest -q -p no:cacheprovider "$@"
  rc=$?
  echo "=== MMX_BACKEND=$backend: pytest exit $rc in $(( $(date +%s) - start ))s ==="
  # pytest exits 5 when every selected test was deselected for this backend (e.g. a backend-specific file):
  # fine for one backend, but a selection that runs nothing on either backend is a failure.
  case $rc in
    0) ran=1 ;;
    5) echo "(no test selected for $backend)" ;;
    *) status=1 ;;
  esac
done
[ $ran -eq 1 ] || { echo "no test ran on any backend"; status=1; }
exit $status
