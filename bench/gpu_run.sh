#!/usr/bin/env bash
# The one device command: tunesmith's GPU benchmark beside the plain HF + PEFT baseline, same call,
# same card. Run from the repo root with the carried (git-ignored) folders:
#
#   .whl    Python 3.12 wheels the GPU image lacks, made here with
#             pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#               --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#               --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2 liger-kernel \
#               pydantic pydantic_core annotated-types typing-inspection hjson
#             (cd /tmp && DS_BUILD_OPS=0 pip wheel --no-deps deepspeed -w /work/main/.whl)
#   .bench  baseline_hf_peft.py (from ../shared/bench/), tok/ (tokenizer.json, tokenizer_config.json,
#           chat_template.jinja of smollm2-135m-instruct, for the recipe runs), and for the
#           xtuner case xtuner/ (../shared/bench/xtuner) and wheels/ (.whl less bitsandbytes and
#           deepspeed), carried with .xt (XTuner's wheels, see ../shared/bench/xtuner/README.md)
#
#   bash bench/gpu_run.sh single     # 1 GPU: baseline qlora/lora, tunesmith qlora/lora, variants
#   bash bench/gpu_run.sh multi      # 2 GPUs: tunesmith qlora on 1 GPU, then ZeRO-2 on 2
#   bash bench/gpu_run.sh cli        # 2 GPUs: `tunesmith train ... --deepspeed deepspeed_zero2`
#                                    #   on 1 GPU, then with NPROC_PER_NODE=2
#   bash bench/gpu_run.sh xtuner     # 1 GPU: baseline, tunesmith and XTuner 0.2.0 (carry .xt, .bench)
#   bash bench/gpu_run.sh dpo        # 1 GPU: DPO QLoRA, tunesmith vs TRL DPOTrainer (bench/gpu_dpo.py)
#   bash bench/gpu_run.sh speed      # 1 GPU, issue 15 part a: baseline, XTuner, `tunesmith train` with
#                                    #   memory_budget = XTuner's peak and auto (bench/gpu_speed.py)
#   bash bench/gpu_run.sh speed2     # 1 GPU, issue 15 part b: lean bs 1 in 7 GiB, LoRA bf16, InternLM2
#                                    #   layout, Unsloth (if its wheels are carried)
#   bash bench/gpu_run.sh identity7b # 1 GPU, issue 12 item 5: `tunesmith identity` with the tutorial
#                                    #   recipe on a random-init InternLM2.5-7B-layout model
#                                    #   (bench/identity_7b_gpu.py; carry .whl and .bench/internlm2;
#                                    #   STEPS=N caps train.max_steps, default the recipe's e3;
#                                    #   FILL_GB=N takes N GB of the disk first, to see the cache
#                                    #   make room on a smaller disk; SET=KEY=VALUE one more override;
#                                    #   ANSWERS=1 then times the evals' answers in a fresh process)
#   bash bench/gpu_run.sh genfirst   # 1 GPU: the evals' greedy answers, first run in a process vs
#                                    #   later ones (bench/generate_first_run_gpu.py)
#
# Each run's log and the JSON results land in $OUT (results.jsonl); the last lines print a table.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUTD=${OUT:-/tmp/gpu_out}
mkdir -p "$OUTD"
# the carried wheels: .whl (all of them), or .bench/wheels + bitsandbytes from .xt (XTuner's call)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site $(ls .whl/*.whl .bench/wheels/*.whl .xt/bitsandbytes-*.whl 2>/dev/null) || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import inspect, torch, transformers, peft, accelerate
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "accelerate", accelerate.__version__)
try:
    from torch.nn.attention.varlen import varlen_attn
    print("varlen_attn", list(inspect.signature(varlen_attn).parameters))
except ImportError as err:
    print("no varlen_attn:", err)
EOF

# run NAME SECONDS CMD...: one benchmark process, its log in $OUT/NAME.log
run() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUTD/$name.log" 2>&1
  echo "rc=$? $(grep -E '^RESULT|made random' "$OUTD/$name.log" | tr '\n' ' ' | cut -c1-600)"
  grep -E 'Error|error:' "$OUTD/$name.log" | grep -v Warning | tail -3
  grep -h '^RESULT' "$OUTD/$name.log" | sed "s/^RESULT /{\"run\": \"$name\", \"r\": /; s/\$/}/" >> "$OUTD/all.jsonl"
}

case "${1:-single}" in
single)
  run base_qlora 200 python3 .bench/baseline_hf_peft.py qlora 2048 4 ckpt
  run ts_qlora 120 python3 bench/gpu_train.py qlora --check-attn
  run ts_qlora_sdpa 100 python3 bench/gpu_train.py qlora --attn sdpa
  run ts_qlora_noliger 100 python3 bench/gpu_train.py qlora --liger off
  run base_lora 120 python3 .bench/baseline_hf_peft.py lora 2048 4 ckpt
  run ts_lora 100 python3 bench/gpu_train.py lora
  run ts_qlora_flex 100 python3 bench/gpu_train.py qlora --attn flex_attention
  ;;
multi)
  python3 bench/gpu_train.py prepare > "$OUTD/prepare.log" 2>&1 || tail -5 "$OUTD/prepare.log"
  run ts_recipe_qlora_1gpu 150 python3 bench/gpu_train.py qlora --engine recipe
  run ts_recipe_qlora_zero2_2gpu 200 torchrun --nproc_per_node 2 bench/gpu_train.py qlora --engine recipe --deepspeed zero2
  [ $SECONDS -lt 420 ] && run ts_loop_qlora_zero2_2gpu 120 torchrun --nproc_per_node 2 bench/gpu_train.py qlora --deepspeed zero2
  [ $SECONDS -lt 460 ] && run ts_loop_qlora_1gpu 90 python3 bench/gpu_train.py qlora
  [ $SECONDS -lt 470 ] && run base_qlora 110 python3 .bench/baseline_hf_peft.py qlora 2048 4 ckpt
  tail -n 3 /tmp/ts_bench_work/*/metrics.jsonl 2>/dev/null | cut -c1-200
  ;;
xtuner)
  run base_qlora 200 python3 .bench/baseline_hf_peft.py qlora 2048 4 ckpt
  run ts_qlora 100 python3 bench/gpu_train.py qlora
  echo "== xtuner (tutorial config, Llama layout)"
  WHEELS=.xt XT_S=330 OUT=$OUTD bash .bench/xtuner/run.sh 2>&1 | tail -8
  [ $SECONDS -lt 500 ] && run ts_qlora_ckpt16 80 python3 bench/gpu_train.py qlora --ckpt-layers 16
  ;;
cli)
  # the real command line, as a user types it (config: bench/configs/gpu_qlora_7b.yaml)
  python3 bench/gpu_train.py prepare > "$OUTD/prepare.log" 2>&1 || tail -5 "$OUTD/prepare.log"
  echo "== tunesmith train --deepspeed deepspeed_zero2, one GPU"
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m tunesmith.cli.main train bench/configs/gpu_qlora_7b.yaml \
    --deepspeed deepspeed_zero2 --work-dir /tmp/cli1 > "$OUTD/cli_1gpu.log" 2>&1
  echo "rc=$?"; grep -E "Error|error:" "$OUTD/cli_1gpu.log" | tail -3
  echo "== NPROC_PER_NODE=2 tunesmith train --deepspeed deepspeed_zero2"
  NPROC_PER_NODE=2 timeout 240 python3 -m tunesmith.cli.main train bench/configs/gpu_qlora_7b.yaml \
    --deepspeed deepspeed_zero2 --work-dir /tmp/cli2 > "$OUTD/cli_2gpu.log" 2>&1
  echo "rc=$?"; grep -E "Error|error:|launching" "$OUTD/cli_2gpu.log" | tail -3
  for n in 1 2; do
    cp /tmp/cli$n/metrics.jsonl "$OUTD/cli${n}_metrics.jsonl" 2>/dev/null
    python3 - /tmp/cli$n/metrics.jsonl $n <<'EOF2'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rates = sorted(r["tokens_per_s"] for r in rows if r["step"] > 3)
print(f"cli {sys.argv[2]} GPU(s): steps {len(rows)}, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, "
      f"median tok/s per process {rates[len(rates) // 2]:.0f}, all GPUs {rates[len(rates) // 2] * int(sys.argv[2]):.0f}")
EOF2
  done
  exit 0
  ;;
dpo)
  # DPO QLoRA, 4 pairs x 2 x 1024 (issue 13): tunesmith's objective, then TRL's DPOTrainer
  # (.whl must hold trl, datasets, dill, multiprocess besides the SFT wheels)
  python3 bench/gpu_train.py prepare > "$OUTD/prepare.log" 2>&1 || tail -5 "$OUTD/prepare.log"
  run ts_dpo_qlora 120 python3 bench/gpu_dpo.py tunesmith --steps 8
  run trl_dpo_qlora 270 python3 bench/gpu_dpo.py trl --steps 8
  ;;
speed|speed2)
  # issue 15 (bench/gpu_speed.py): part a = baseline, XTuner, `tunesmith train` under XTuner's peak
  # and with memory_budget auto; part b = all layers checkpointed, lean bs 1 in 7 GiB, LoRA bf16
  # (CLI + loop A/B), InternLM2 layout, Unsloth. Carry .whl, .xt, .bench as for `xtuner`.
  python3 bench/gpu_speed.py $([ "$1" = speed ] && echo a || echo b) 2>&1 | tail -40
  exit 0
  ;;
identity7b)
  # Disk: random checkpoint, merged model and their Llama-layout copies, 15.5 GB each (62 GB);
  # ~47 GB where the disk is short (model/internlm2.py removes the base's copy to make room
  # for the merged one's); the random checkpoint goes to /dev/shm where the disk holding /tmp
  # has less than 55 GB free
  D=/tmp/gpu7b-id7b
  mkdir -p $D
  export TUNESMITH_INTERNLM2_TOKENIZER=$PWD/.bench/internlm2/tokenizer.model TUNESMITH_CACHE=$D/cache
  df -BG / /tmp /dev/shm; free -g | head -2; nproc
  python3 -m pytest -q -p no:cacheprovider tests/compat/test_liger_internals.py 2>&1 | tail -2
  MODEL=$D/model
  if [ "$(df --output=avail -BG /tmp | tail -1 | tr -dc 0-9)" -lt 55 ]; then MODEL=/dev/shm/gpu7b-model; fi
  echo "model dir: $MODEL"
  [ -n "${FILL_GB:-}" ] && fallocate -l "${FILL_GB}G" $D/fill && echo "filled ${FILL_GB} GiB"
  timeout 530 python3 bench/identity_7b_gpu.py $D --model-dir $MODEL ${STEPS:+--steps $STEPS} ${TINY:+--tiny} \
    ${SET:+--set "$SET"} > "$OUTD/identity7b.log" 2>&1
  echo "rc=$?"
  if [ -n "${ANSWERS:-}" ]; then
    # the evals' answers of base and merged model in a fresh process (no training before it,
    # empty answer cache): is tuned_eval's slower answering the model's or the process's?
    rm -rf $D/cache $D/fill
    timeout 200 python3 - $MODEL $D/work/merged <<'EOF3' 2>&1 | grep -v "it/s\]\|q/s\]\|file/s\]"
import sys, time
from tunesmith.eval import identity as ie, retention
from tunesmith.model.generate import Generator
asked = ie.requests(ie.load_questions(None)) + retention.requests(retention.load_prompts(None))
for model in sys.argv[1:]:
    lm = Generator.load(model)
    for run in (1, 2):
        lm._given.clear()
        start = time.perf_counter()
        answers = lm.greedy_batch([lm.prompt_ids([{"role": "user", "content": p}]) for p, _ in asked],
                                  [n for _, n in asked], 128)
        print(f"FRESH {model}: run {run}, {len(asked)} answers in {time.perf_counter() - start:.1f} s, "
              f"{sum(a.finish_reason == 'stop' for a in answers)} stopped, "
              f"{sum(a.completion_tokens for a in answers)} tokens", flush=True)
    del lm
EOF3
  fi
  cp $D/timing.json $D/work/report.md $D/work/report.json $D/work/manifest.json "$OUTD/" 2>/dev/null
  grep -E "Error|error:|note:|Traceback|steps, |\[[0-9]/8\]" "$OUTD/identity7b.log" | tail -30
  df -BG /tmp /dev/shm; du -sh $D/* $D/work/* $D/cache/* $MODEL 2>/dev/null
  cat $D/timing.json
  exit 0
  ;;
genfirst)
  # bench/generate_first_run_gpu.py: the evals' answers three times in a process, per mode
  export TUNESMITH_INTERNLM2_TOKENIZER=$PWD/.bench/internlm2/tokenizer.model TUNESMITH_CACHE=/tmp/gpu7b-gen
  for mode in default no-cudnn profile; do
    timeout 150 python3 bench/generate_first_run_gpu.py $mode 2>&1 | grep -v Warning | tail -40
  done
  exit 0
  ;;
lora)
  # LoRA inputs kept in bf16 under autocast (default) vs peft's fp32 copy of them
  run ts_lora 100 python3 bench/gpu_train.py lora
  run ts_lora_peftcast 80 python3 bench/gpu_train.py lora --peft-cast
  ;;
*)
  shift
  run custom 580 "$@"
  ;;
esac

python3 - "$OUTD/all.jsonl" <<'EOF'
import json, sys
print(f"{'run':24} {'tok/s':>7} {'step s':>7} {'peak GiB':>8} {'attn':>18} liger world")
for line in open(sys.argv[1]):
    row = json.loads(line); r = row["r"]
    print(f"{row['run']:24} {r['tok_s']:>7} {r['step_s']:>7} {r['peak_gib']:>8} "
          f"{str(r.get('attn', 'sdpa')):>18} {str(r.get('liger', '-')):5} {r.get('world', 1)}")
EOF
