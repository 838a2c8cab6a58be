"""Peak memory of one DPO step's log-probs on CPU: whole-batch logits (before) against
chunked log-probs through the lm_head from the hidden states (now, `train/preference.py`).

    OMP_NUM_THREADS=1 python bench/dpo_logits_memory.py [--vocab 49152] [--pairs 4] [--side 512]

A random Llama (hidden 256, 2 layers, `--vocab`, fp32) with LoRA r=16 on every decoder
linear; `--pairs` pairs, each in its own packed row of chosen + rejected documents of
`--side` tokens (a quarter prompt, three quarters answer). For each way a fresh process
builds the model and batch, then runs the sigmoid-DPO loss forward and backward (reference
log-probs with the adapter disabled, as the recipe does) and reports the growth of its peak
RSS over the RSS before the step (VmHWM reset through /proc/self/clear_refs), the loss and
the step time. Both ways must give the same loss; the difference in peak memory is what
the (B, L, V) logits and their fp32 copies cost.

- `before`: `model(...).logits` for the whole batch, then the fp32 log-softmax per 1,024
  positions, recomputed in backward (the code before commit 70456be, 2026-11-30);
- `now`: `forward_logps` (hidden states, labelled positions only, `LOGP_CHUNK` at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import torch, torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from tunesmith.train import preference

way, vocab, pairs, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
# init_lora_weights=False: random B, so the policy differs from the reference and the loss from log 2
model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
model.train()
prompt = side // 4
ids = torch.randint(0, vocab, (pairs, 2 * side))
position_ids = torch.arange(side).repeat(pairs, 2)
labels = ids.clone()
for start in (0, side):
    labels[:, start : start + prompt + 1] = -100  # the prompt, and each document's first token
index = torch.cat([torch.zeros(side, dtype=torch.long), torch.ones(side, dtype=torch.long)])
index = index[None] + 2 * torch.arange(pairs)[:, None]
batch = {"input_ids": ids, "position_ids": position_ids, "labels": labels, "sequence_index": index}
n = 2 * pairs

def before(m):
    logits = m(input_ids=ids, position_ids=position_ids, use_cache=False).logits
    lab, idx = labels[:, 1:], index[:, 1:]
    mask = lab != -100
    def ce(lg, lb):
        return -F.cross_entropy(lg.float(), lb, reduction="none", ignore_index=-100)
    from torch.utils.checkpoint import checkpoint
    parts = []
    for row in range(lab.shape[0]):
        for s in range(0, lab.shape[1], 1024):
            e = min(s + 1024, lab.shape[1])  # logits[:, -1] predicts nothing here
            lg, lb = logits[row, s:e], lab[row, s:e]
            parts.append(checkpoint(ce, lg, lb, use_reentrant=False) if lg.requires_grad else ce(lg, lb))
    tok = torch.cat(parts)[mask.reshape(-1)]
    return tok.new_zeros(n).index_add(0, idx[mask], tok)

def now(m):
    return preference.forward_logps(m, batch, n)[0]

logps = before if way == "before" else now
def rss(key):
    return int(dict(l.split(":", 1) for l in open("/proc/self/status"))[key].split()[0]) / 1024
with torch.no_grad(), model.disable_adapter():  # the reference, as the recipe's first step
    ref = logps(model)
base = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
start = time.perf_counter()
with torch.no_grad(), model.disable_adapter():
    ref = logps(model)
sums = logps(model)
ratios = sums - ref
loss = preference.dpo_loss(ratios[0::2], ratios[1::2], 0.1).mean()
loss.backward()
seconds = time.perf_counter() - start
print(json.dumps({"way": way, "loss": float(loss), "step_s": round(seconds, 2),
                  "rss_before_mib": round(base), "peak_growth_mib": round(rss("VmHWM") - base)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)  # SmolLM2's
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--side", type=int, default=512, help="tokens of chosen and of rejected")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    for way in ("before", "now"):
        cmd = [sys.executable, "-c", CHILD, way, str(args.vocab), str(args.pairs), str(args.side)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{way} failed:\n{done.stderr[-3000:]}")
        out = done.stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    positions = args.pairs * 2 * args.side
    meta = {
        "vocab": args.vocab,
        "pairs": args.pairs,
        "side": args.side,
        "logits_fp32_mib": round(positions * args.vocab * 4 / 2**20),
        "load_avg_before": [round(x, 1) for x in load],
        "load_avg_after": [round(x, 1) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print("RESULT " + json.dumps({"rows": rows, "meta": meta}))


if __name__ == "__main__":
    main()
