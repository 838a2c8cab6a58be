"""GPU check, not a unit test: a random InternLM2.5-7B checkpoint in the original layout,
loaded through tunesmith's InternLM2 path (map once to Llama, then 4-bit NF4), LoRA r=64
all-linear, a few training steps. Prints the conversion and load times and peak memory.

    PYTHONPATH=src python3 tests/model/gpu_check_internlm2.py /tmp/internlm2-7b
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from tunesmith.config.schema import LoraConfig, ModelConfig, QuantizationConfig
from tunesmith.model.adapters import apply_lora
from tunesmith.model.internlm2 import llama_checkpoint
from tunesmith.model.load import load_model

CONFIG = {
    "architectures": ["InternLM2ForCausalLM"],
    "model_type": "internlm2",
    "bias": False,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 92544,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def write_random(out: Path, layers_per_shard: int = 4) -> None:
    """Random bf16 weights in InternLM2's names, in shards of a few layers."""
    c = CONFIG
    hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head_dim = hidden // c["num_attention_heads"]
    qkv_rows = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * head_dim

    def rand(*shape):
        return (torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()

    out.mkdir(parents=True, exist_ok=True)
    layers = c["num_hidden_layers"]
    for shard, first in enumerate(range(0, layers, layers_per_shard)):
        sd = {}
        for i in range(first, min(first + layers_per_shard, layers)):
            p = f"model.layers.{i}."
            sd[p + "attention.wqkv.weight"] = rand(qkv_rows, hidden)
            sd[p + "attention.wo.weight"] = rand(hidden, hidden)
            sd[p + "feed_forward.w1.weight"] = rand(inter, hidden)
            sd[p + "feed_forward.w3.weight"] = rand(inter, hidden)
            sd[p + "feed_forward.w2.weight"] = rand(hidden, inter)
            sd[p + "attention_norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
            sd[p + "ffn_norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        if first == 0:
            sd["model.tok_embeddings.weight"] = rand(vocab, hidden)
            sd["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
            sd["output.weight"] = rand(vocab, hidden)
        save_file(sd, out / f"model-{shard:05d}.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(CONFIG))


def main() -> None:
    out = Path(sys.argv[1])
    start = time.time()
    write_random(out)
    print(f"wrote random InternLM2.5-7B layout: {time.time() - start:.1f}s", flush=True)

    start = time.time()
    llama_checkpoint(out)
    print(f"mapped InternLM2 -> Llama safetensors (once, cached): {time.time() - start:.1f}s")

    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    model = load_model(ModelConfig(path=str(out)), QuantizationConfig(), device="cuda")
    print(
        f"QLoRA load (nf4 + double quant): {time.time() - start:.1f}s, dtype {model.dtype}, "
        f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak"
    )
    model = apply_lora(
        model, LoraConfig(r=64, lora_alpha=16, dropout=0.0), gradient_checkpointing=True
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 2048), device="cuda")
    losses = []
    for step in range(4):
        torch.cuda.synchronize()
        start = time.time()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.cuda.synchronize()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}, {time.time() - start:.2f}s", flush=True)
    print(f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; losses {losses}")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
