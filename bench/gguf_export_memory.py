"""Peak memory of `tunesmith convert gguf` on a random model with InternLM2-1.8B's dimensions.

Writes a random-init Llama-layout checkpoint (hidden 2048, 24 layers, FFN 8192, 16 heads /
8 KV heads, vocab 92544; ~1.89B parameters, bf16, 2 GB shards) one tensor at a time, so
making it needs no more memory than the export does. Then time it with:

    python bench/gguf_export_memory.py /tmp/rand-1p8b          # make the checkpoint (once)
    /usr/bin/time -v tunesmith convert gguf /tmp/rand-1p8b /tmp/rand-1p8b-f16.gguf

and read "Maximum resident set size" (recorded in docs/export_and_chat.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig

from tunesmith.export.shards import ShardWriter
from tunesmith.model.embedded import embedded_dir

DIMS = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=8,
    vocab_size=92544,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def main(out: Path) -> None:
    from transformers import AutoTokenizer

    config = LlamaConfig(**DIMS, dtype="bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir("smollm2-135m-instruct", False))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(0)
    h, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    writer = ShardWriter(out, 2 * 10**9)
    writer.add("model.embed_tokens.weight", rand(config.vocab_size, h))
    for i in range(n):
        p = f"model.layers.{i}."
        for name, shape in (
            ("self_attn.q_proj.weight", (h, h)),
            ("self_attn.k_proj.weight", (kv, h)),
            ("self_attn.v_proj.weight", (kv, h)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (f, h)),
            ("mlp.up_proj.weight", (f, h)),
            ("mlp.down_proj.weight", (h, f)),
        ):
            writer.add(p + name, rand(*shape))
        writer.add(p + "input_layernorm.weight", torch.ones(h, dtype=torch.bfloat16))
        writer.add(p + "post_attention_layernorm.weight", torch.ones(h, dtype=torch.bfloat16))
        print(f"layer {i + 1}/{n}", flush=True)
    writer.add("model.norm.weight", torch.ones(h, dtype=torch.bfloat16))
    writer.add("lm_head.weight", rand(config.vocab_size, h))
    writer.close()
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"{out}: {writer.total_bytes / 1e9:.2f} GB of bf16 weights")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
