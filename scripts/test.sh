#!/usr/bin/env bash
# Fresh Python 3.11 machine -> virtualenv with jaxalign[test,hf] -> the whole test suite
# (the hf extra brings torch CPU + transformers, so the Hugging Face parity tests run too).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,hf]"
.venv/bin/python -m pytest -q tests "$@"
