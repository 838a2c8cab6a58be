#!/usr/bin/env bash
# GPU acceptance of the distributed paths (issue 9), on a machine with 2 GPUs and no network.
# Run from the repo root with .whl (bitsandbytes, liger-kernel, deepspeed, pydantic, fastapi,
# uvicorn, starlette, opentelemetry-api, openai + jiter/distro/sniffio, ...: see gpu_run.sh) and
# .bench/tok (SmolLM2's tokenizer.json, tokenizer_config.json, chat_template.jinja):
#
#   bash bench/gpu_accept.sh [--gpus 2,1] [--engines none,zero2,...] [--methods lora,qlora,full]
#
# The whole matrix of issue 9 in one call on nvidia-h200-x2 (38 cases incl. the two ZeRO-3 LoRA
# "try" cases, side by side; call 2 of 2026-11-30 ran the 36 it had then with --jobs 18
# --deadline 300 inside one 600 s call):
#
#   WHL=.whl SERVE=1 bash bench/gpu_accept.sh --gpus 2,1 --jobs 20 --deadline 330
#
# It builds a random-init InternLM2-layout model, runs bench/gpu_accept.py (the real CLI per
# engine x method x GPUs: train with chat samples, SIGTERM mid-run, resume, pth_to_hf, merge,
# chat --prompt; one table row each) and, with SERVE=1, `tunesmith serve` on one GPU answering
# the `openai` client. Logs of failed cases and rows.jsonl land in $OUT.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# NVLink multicast stays off on shared hosts (KINDS.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUTD=${OUT:-/tmp/accept_out}
ROOT=${ACCEPT_ROOT:-/tmp/accept}
mkdir -p "$OUTD" "$ROOT"
WHL=${WHL:-.whl}  # the folder of carried wheels
if ls "$WHL"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHL"/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sort | uniq -c | tr '\n' ' ')
versions=$(python3 -c "import torch, transformers, peft, accelerate, deepspeed; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', \
accelerate.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | grep -v Warning | tail -1)
when=$(date -u +"%Y-%m-%d %H:%M UTC")
echo "$card"; echo "$versions"; echo "date $when"

[ -d "$ROOT/model" ] || python3 bench/gpu_accept.py prepare "$ROOT" 2>&1 | tail -1
python3 bench/gpu_accept.py run "$ROOT" "$@" 2>&1 | tee "$OUTD/accept.txt" | grep -v '^|'
# the docs/gpu.md section (machine, versions, date, the table, how many rows pass)
python3 bench/gpu_accept.py table "$ROOT" --markdown "$OUTD/gpu_md_section.md" \
  --versions "Measured $when on $card; $versions; commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), command \`bash bench/gpu_accept.sh $*\`"
cp "$ROOT/rows.jsonl" "$OUTD/" 2>/dev/null
# the logs of failed cases, tails only (the files that come back are few and small)
python3 - "$ROOT" "$OUTD/failed_logs.txt" <<'EOF'
import json, sys
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
text = []
for line in (root / "rows.jsonl").read_text().splitlines():
    row = json.loads(line)
    if row["result"] == "FAIL":
        for log in sorted((root / "cases" / row["case"]).glob("*.log")):
            lines = [l for l in log.read_text(errors="replace").splitlines() if "Warning" not in l]
            errors = list(dict.fromkeys(l for l in lines if "Error" in l or "error:" in l))[:12]
            text.append(f"==== {row['case']} {log.name}\n" + "\n".join(l[:400] for l in errors + lines[-8:]))
out.write_text("\n".join(text)[-3_000_000:])
EOF

if [ "${SERVE:-0}" = 1 ]; then
  merged=$ROOT/cases/1gpu_none_lora/merged
  [ -d "$merged" ] || merged=$ROOT/model
  echo "== serve $merged on GPU 0, openai client"
  CUDA_VISIBLE_DEVICES=0 python3 -m tunesmith.cli.main serve "$merged" --port 18080 \
    --model-name tuney > "$OUTD/serve.log" 2>&1 &
  server=$!
  python3 - <<'EOF'
import time
import openai
client = openai.OpenAI(base_url="http://127.0.0.1:18080/v1", api_key="none")
for _ in range(120):
    try:
        models = client.models.list()
        break
    except openai.APIConnectionError:
        time.sleep(1)
reply = client.chat.completions.create(model="tuney", messages=[{"role": "user", "content": "Who are you?"}], max_tokens=8, temperature=0)
text = reply.choices[0].message.content
stream = client.chat.completions.create(model="tuney", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True)
pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
print(f"serve: openai {openai.__version__} models={[m.id for m in models.data]} "
      f"answer={text!r} streamed {len(pieces)} chunks -> {'pass' if text is not None and pieces else 'FAIL'}")
EOF
  kill $server; wait $server 2>/dev/null
fi
