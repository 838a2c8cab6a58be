#!/usr/bin/env bash
# Lead's GPU call: GPU0 DPO (tunesmith vs TRL), GPU1 generation bench then the identity 7B path.
# Carry .whl (wheels, see gpu_run.sh), .bench (tok/ and internlm2/tokenizer.model from ../shared/assets) and run from the repo root:
#   bash bench/gpu_lead.sh      (one nvidia-h200-x2 call, about 5.5 minutes)
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site TUNESMITH_INTERNLM2_TOKENIZER=$PWD/.bench/internlm2/tokenizer.model
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__)"
date -u
T0=$SECONDS
timeout 150 python3 bench/gpu_train.py prepare > $OUT/prepare.log 2>&1; echo "prepare rc=$? $((SECONDS-T0))s"
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 110 python3 bench/gpu_dpo.py tunesmith --steps 8 > $OUT/ts_dpo.log 2>&1; echo "ts_dpo rc=$?"
  timeout 160 python3 bench/gpu_dpo.py trl --steps 8 > $OUT/trl_dpo.log 2>&1; echo "trl_dpo rc=$?"
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 150 python3 bench/gpu_generate.py all --out $OUT/gpu_generate.json > $OUT/gen.log 2>&1; echo "gen rc=$?"
  timeout 150 python3 bench/identity_7b_gpu.py /tmp/id7b --steps 4 > $OUT/id7b.log 2>&1; echo "id7b rc=$?"
  cp /tmp/id7b/timing.json $OUT/id7b_timing.json 2>/dev/null
  cp /tmp/id7b/work/report.json $OUT/id7b_report.json 2>/dev/null
) &
wait
echo "total $((SECONDS-T0))s"
for f in ts_dpo trl_dpo gen id7b; do echo "== $f"; grep -E "^RESULT|Error|error" $OUT/$f.log | tail -6; done
tail -5 $OUT/id7b.log
