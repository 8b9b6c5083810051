#!/usr/bin/env bash
# Creates tools/.venv (if missing) with the pinned reference stack used to write the
# test fixtures: transformers on CPU PyTorch plus image and tokenizer libraries.
# Idempotent: re-running only checks that the pins are satisfied. Prints the python path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python_bin" -m venv "$venv" >&2
fi

pins=(
    "torch==2.15.0"
    "transformers==5.24.0"
    "huggingface_hub==2.4.0"
    "tokenizers==0.23.3"
    "safetensors==0.8.0"
    "scikit-image==0.26.0"
    "pillow==13.0.0"
    "numpy==2.4.6"
    "pycocoevalcap==1.2"
    "openai==3.51.0" # tools/serve/check_openai.py: the official client against `glimpse serve`
)

# Skip pip entirely when every pin is already installed (keeps re-runs offline and fast).
if ! "$venv/bin/python" - "${pins[@]}" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
PY
then
    # Everything from PyPI (the only Python registry reachable here). PyPI's torch
    # wheel carries CUDA libraries it does not need on CPU; it still runs on CPU.
    "$venv/bin/python" -m pip install --quiet "${pins[@]}" >&2
fi

echo "$venv/bin/python"
