#!/usr/bin/env bash
# Fresh Python 3.11 machine -> virtualenv with jaxalign[test,hf] -> the whole test suite
# (the hf extra brings torch CPU + transformers, so the Hugging Face parity tests run too).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,hf]"
# Two workers (pytest-xdist), each test file on one worker so its module fixtures are built once; the
# workers share one XLA compilation cache (tests/conftest.py).
.venv/bin/python -m pytest -q -n 2 --dist loadfile tests "$@"
