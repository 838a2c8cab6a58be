#!/usr/bin/env bash
# Set up (scripts/setup.sh --dev), install headless Chromium for the web UI test, llama.cpp
# (scripts/llama_cpp_wheel.sh: a cached CPU build of llama-cpp-python) for the GGUF test,
# and run the whole test suite, slow end-to-end tests included; under CI also the
# library-facing fast tests against the oldest declared versions (.ci/oldest.sh).
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev || exit 1
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped"
fi
# llama.cpp for the GGUF runtime test: built from source once, the wheel cached outside the clone
bash scripts/llama_cpp_wheel.sh || echo "warning: llama-cpp-python did not build; the llama.cpp test will fail"
# The suite writes a few GB of models under the temp folder at its peak: say so before it starts
# when the disk is short, so that a failure from a full disk is recognised as one.
free_gb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print int($4 / 1048576)}')
[[ -n "$free_gb" && "$free_gb" -lt 8 ]] \
  && echo "warning: only ${free_gb} GB free under ${TMPDIR:-/tmp}; the suite needs about 8 GB"
.venv/bin/python -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no test: that is a failure, not a pass.
if [[ $rc -eq 5 ]]; then echo "no tests ran: failing"; exit 1; fi
[[ $rc -ne 0 ]] && exit $rc
# The oldest-versions job (CI only, or TUNESMITH_OLDEST=1): the fast tests against the lowest
# declared versions, in a second venv (.ci/oldest.sh).
if [[ -n "${CI:-}" || -n "${TUNESMITH_OLDEST:-}" ]]; then
  bash .ci/oldest.sh -q || exit 1
fi
exit 0
