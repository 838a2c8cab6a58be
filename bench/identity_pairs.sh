#!/usr/bin/env bash
# `tunesmith identity` for the three name / author pairs of issue 12, each cold (an empty
# TUNESMITH_CACHE: GGUF conversion, base answers and base evals all computed), one after
# the other, on the embedded SmolLM2-135M. Writes OUT/pairs.md: a markdown snippet for
# docs/benchmarks.md (machine, load average before/after each run, wall clock, the
# report's table per pair), and keeps every report.md / report.json under OUT/.
#
#   bash bench/identity_pairs.sh [OUT] [extra args for tunesmith identity, e.g. --fast]
#
# Run it from the repo root on an idle machine (check `uptime` first). TUNESMITH=... picks
# the command (default: `python -m tunesmith.cli.main` with this checkout's src/).
set -euo pipefail

OUT=${1:-/tmp/identity-pairs}
shift || true
EXTRA=("$@")
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${TUNESMITH:-}" ]]; then
    read -r -a CMD <<<"$TUNESMITH"
else
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    CMD=("$PY" -m tunesmith.cli.main)
fi
mkdir -p "$OUT"
MD="$OUT/pairs.md"

NAMES=("星火" "Ada" "Nova-7")
AUTHORS=("青禾实验室" "Tunesmith Lab" "北辰 AI Lab")
SLUGS=("xinghuo" "ada" "nova7")

{
    echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GB;"
    echo "$("$PY" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")');"
    echo "$(date -u '+%Y-%m-%d') UTC; each pair cold (empty TUNESMITH_CACHE), one after the other."
    echo
    echo "| pair | start (UTC) | load avg before (1/5/15 min) | load avg after | wall clock | strict identity en / zh | keyword en / zh | old claimed | kept | leakage |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} >"$MD"

for i in 0 1 2; do
    name=${NAMES[$i]} author=${AUTHORS[$i]} slug=${SLUGS[$i]}
    work="$OUT/$slug" cache="$OUT/cache-$slug"
    rm -rf "$work" "$cache"
    before=$(cut -d' ' -f1-3 /proc/loadavg)
    start=$(date -u +%H:%M)
    t0=$(date +%s.%N)
    if ! TUNESMITH_CACHE="$cache" /usr/bin/time -v -o "$OUT/$slug.time" \
        "${CMD[@]}" identity --name "$name" --author "$author" --work-dir "$work" "${EXTRA[@]}" \
        >"$OUT/$slug.log" 2>&1; then
        echo "| $name / $author | $start | $before | | failed: see $OUT/$slug.log | | | | | |" >>"$MD"
        continue
    fi
    t1=$(date +%s.%N)
    after=$(cut -d' ' -f1-3 /proc/loadavg)
    wall=$("$PY" -c "print(f'{$t1 - $t0:.0f} s')")
    row=$("$PY" - "$work/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t, ret = r["identity"]["tuned"], r["retention"]
def frac(h, n):
    return f"{100 * h / n:.0f}% ({h}/{n})" if n else "n/a"
langs = t["by_lang"]
strict = " / ".join(frac(langs[l]["hits"], langs[l]["questions"]) for l in ("en", "zh"))
keyword = " / ".join(frac(langs[l]["keyword_hits"], langs[l]["questions"]) for l in ("en", "zh"))
f, leak = ret["facts"], ret["leakage"]
print(f"{strict} | {keyword} | {t['old_claims']} | {frac(f['kept'], f['base_correct'])} | "
      f"{frac(leak['leaked'], leak['answers'])}")
EOF
)
    echo "| $name / $author | $start | $before | $after | $wall | $row |" >>"$MD"
done

{
    echo
    for i in 0 1 2; do
        slug=${SLUGS[$i]}
        [[ -f "$OUT/$slug/report.md" ]] || continue
        echo "<details><summary>${NAMES[$i]} / ${AUTHORS[$i]}: report.md</summary>"
        echo
        sed 's/^# /#### /' "$OUT/$slug/report.md"
        echo "Peak RSS: $(awk -F': ' '/Maximum resident/{printf "%.1f GiB", $2/1048576}' "$OUT/$slug.time")."
        echo
        echo "</details>"
        echo
    done
} >>"$MD"
echo "wrote $MD"
