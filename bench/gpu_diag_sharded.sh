#!/usr/bin/env bash
# two variants of the failing sharded cases at once: Liger off, packing off
# Run from the repo root after copying the tree into .dist (carry .dist and .whl); results: docs/gpu.md, call 4
cd .dist
C=2gpu_zero3_lora,2gpu_fsdp2_lora,2gpu_fsdp2_full,1gpu_fsdp2_lora
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl || exit 1
(ACCEPT_ROOT=/tmp/acc_noliger ACCEPT_OVERRIDES="model.use_liger=false" OUT=$OUT/noliger WHL=/nonexistent bash bench/gpu_accept.sh --cases $C --jobs 4 --deadline 150 > $OUT/noliger.txt 2>&1) &
(ACCEPT_ROOT=/tmp/acc_nopack ACCEPT_OVERRIDES="data.pack_to_max_length=false" OUT=$OUT/nopack WHL=/nonexistent bash bench/gpu_accept.sh --cases $C --jobs 4 --deadline 150 > $OUT/nopack.txt 2>&1) &
wait
tail -20 $OUT/noliger.txt; tail -20 $OUT/nopack.txt
