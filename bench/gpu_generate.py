"""GPU generation benchmark: the generation core next to plain `transformers` `generate`, same call.

Three parts, each on a random-init model with InternLM2.5-7B's dimensions (Llama layout, the
DIMS of bench/gpu_train.py), greedy decoding, tokens counted as generated:

- samples  chat samples during QLoRA training: tunesmith's model path (load_model 4-bit ->
           apply_lora with gradient checkpointing (config.use_cache=False) ->
           optimize_for_training), a few training steps, then `ChatSampler` (the recipe's hook:
           `Generator.answer_batch` of the evaluation inputs) and one `Generator.answer`.
           Target: >= 20 tokens/s.
- serve    bf16 model: one prompt through plain `model.generate`, through `Generator.stream`,
           and through `tunesmith serve`'s app (uvicorn on 127.0.0.1 in this process, one
           streamed request read with http.client). Target: serve >= 90% of plain.
- batch    bf16 model: 64 prompts through one left-padded plain `generate` and through
           `Generator.answer_batch(batch_size=64)`.

The tokenizer is a small byte-level BPE built here with `tokenizers` (chatml template), so
nothing is downloaded; the random model's ids above its vocabulary decode to nothing, which
does not change the token counts. Results: one `RESULT {json}` line per part, and all of
them in $OUT/gpu_generate.json (or --out).

Usage (repo root, wheels from /work/main/.whl installed into /tmp/site, see bench/gpu_run.sh):
    PYTHONPATH=$PWD/src:/tmp/site python3 bench/gpu_generate.py all
    python bench/gpu_generate.py all --tiny      # CPU smoke test: tiny dimensions, seconds
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import DIMS, MODEL_DIR, make_random_7b  # noqa: E402 (bench/ sibling)

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,
    max_position_embeddings=4096,
    rope_theta=1e6,
    rms_norm_eps=1e-5,
)
QUESTIONS = [
    "Who are you?",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity to a child.",
]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_tokenizer(path: Path):
    """A byte-level BPE (~1k tokens) with chatml special tokens and chat template, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [q * 20 for q in QUESTIONS] + ["the quick brown fox jumps over the lazy dog"] * 50
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=1000, special_tokens=specials, show_progress=False)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def prompts(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}] for i in range(n)
    ]


def model_dir(args) -> Path:
    if args.tiny:
        path = Path(tempfile.mkdtemp(prefix="tiny-gen-"))
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(LlamaConfig(**TINY)).save_pretrained(path)
        return path
    make_random_7b(MODEL_DIR)
    return MODEL_DIR


def part_samples(args, path: Path, tokenizer, device: str) -> dict:
    """The recipe's model path and its chat-sample hook, after a few QLoRA steps."""
    from tunesmith.config.schema import (
        Config,
        DataConfig,
        LoraConfig,
        ModelConfig,
        QuantizationConfig,
        TrainConfig,
    )
    from tunesmith.data.templates import get_template
    from tunesmith.model.adapters import apply_lora
    from tunesmith.model.fast import optimize_for_training
    from tunesmith.model.generate import Generator, Sampling
    from tunesmith.model.load import load_model
    from tunesmith.train.hooks import ChatSampler

    cfg = Config(
        model=ModelConfig(path=str(path), dtype="bf16"),
        quantization=QuantizationConfig(compute_dtype="bf16"),
        lora=LoraConfig(r=64, alpha=16, dropout=0.1, target_modules="all-linear"),
        data=DataConfig(max_length=args.seq, pack_to_max_length=True),
        train=TrainConfig(
            batch_size=1, max_steps=args.steps, gradient_checkpointing=True, mixed_precision="bf16"
        ),
    )
    model = load_model(cfg.model, cfg.quantization, device=device)
    model = apply_lora(model, cfg.lora, gradient_checkpointing=True)
    model = optimize_for_training(model, cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    vocab = model.config.vocab_size
    for _ in range(args.steps):
        ids = torch.randint(3, vocab, (1, args.seq), device=device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _sync()
    assert model.config.use_cache is False  # what the recipe leaves for the samples

    def generator_factory(m):
        return Generator(m, tokenizer, get_template("auto", tokenizer))

    inputs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.samples)]
    sampler = ChatSampler(generator_factory, inputs, args.new, Path(tempfile.mkdtemp()) / "s.jsonl")
    start = time.perf_counter()
    records = sampler(model, step=args.steps)
    _sync()
    batch_s = time.perf_counter() - start
    batch_tokens = sum(r["tokens"] for r in records)
    model.eval()
    generator = generator_factory(model)
    start = time.perf_counter()
    one = generator.answer(prompts(1)[0], Sampling.greedy(args.new))
    _sync()
    one_s = time.perf_counter() - start
    model.train()
    return {
        "part": "samples",
        "chat_samples": len(inputs),
        "samples_tokens": batch_tokens,
        "samples_seconds": round(batch_s, 2),
        "samples_tok_s": round(batch_tokens / batch_s, 1),
        "one_answer_tokens": one.completion_tokens,
        "one_answer_tok_s": round(one.completion_tokens / one_s, 1),
        "target_tok_s": 20,
    }


def _plain(model, tokenizer, texts: list[str], new: int, stop_ids: list[int]) -> tuple[int, float]:
    inputs = tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(model.device)
    _sync()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
    _sync()
    seconds = time.perf_counter() - start
    tokens = 0
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        ends = [i for i, t in enumerate(row) if t in stop_ids]
        tokens += ends[0] + 1 if ends else len(row)
    return tokens, seconds


def _serve_stream(generator, new: int) -> tuple[int, float]:
    """One streamed request to the real app (uvicorn, 127.0.0.1, this process)."""
    import socket

    import uvicorn

    from tunesmith.infer.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(generator, model_name="bench")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    body = {
        "model": "bench",
        "messages": prompts(1)[0],
        "max_tokens": new,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start = time.perf_counter()
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        tokens = 0
        for line in response:
            if line.startswith(b"data: {") and b'"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
        seconds = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return tokens, seconds


def part_serve_and_batch(args, path: Path, tokenizer, device: str, parts: set[str]) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from tunesmith.data.templates import get_template
    from tunesmith.model.generate import Answer, Generator, Sampling

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device)
    model.eval()
    generator = Generator(model, tokenizer, get_template("auto", tokenizer))
    stop_ids = generator.eos_token_ids
    greedy = Sampling.greedy(args.new)
    one = prompts(1)
    _plain(model, tokenizer, [generator.prompt(one[0])], 8, stop_ids)  # warm-up
    results = []
    if "serve" in parts:
        plain_tokens, plain_s = _plain(
            model, tokenizer, [generator.prompt(one[0])], args.new, stop_ids
        )
        # The first stream starts the generator's worker thread: timed apart (as the plain
        # path's warm-up above), so a one-time cost there is not read as a per-token one.
        _sync()
        start = time.perf_counter()
        for _ in generator.stream(one[0], Sampling.greedy(8)):
            pass
        _sync()
        first_stream_s = time.perf_counter() - start
        answer = Answer()
        _sync()
        start = time.perf_counter()
        for _ in generator.stream(one[0], greedy, answer=answer):
            pass
        _sync()
        stream_s = time.perf_counter() - start
        plain_rate = plain_tokens / plain_s
        result = {
            "part": "serve",
            "plain_tokens": plain_tokens,
            "plain_tok_s": round(plain_rate, 1),
            "stream_tokens": answer.completion_tokens,
            "stream_tok_s": round(answer.completion_tokens / stream_s, 1),
            "stream_vs_plain": round(answer.completion_tokens / stream_s / plain_rate, 3),
            "first_stream_8_tokens_s": round(first_stream_s, 3),
            "target_serve_vs_plain": 0.9,
        }
        try:
            serve_tokens, serve_s = _serve_stream(generator, args.new)
            result.update(
                serve_tokens=serve_tokens,
                serve_tok_s=round(serve_tokens / serve_s, 1),
                serve_vs_plain=round(serve_tokens / serve_s / plain_rate, 3),
            )
        except ImportError as err:  # fastapi / uvicorn or one of their dependencies missing
            result["serve_error"] = repr(err)
        results.append(result)
    if "batch" in parts:
        many = prompts(args.batch)
        plain_tokens, plain_s = _plain(
            model, tokenizer, [generator.prompt(c) for c in many], args.new, stop_ids
        )
        _sync()
        start = time.perf_counter()
        answers = generator.answer_batch(many, greedy, batch_size=args.batch)
        _sync()
        batch_s = time.perf_counter() - start
        batch_tokens = sum(a.completion_tokens for a in answers)
        results.append(
            {
                "part": "batch",
                "prompts": args.batch,
                "plain_tokens": plain_tokens,
                "plain_tok_s": round(plain_tokens / plain_s, 1),
                "answer_batch_tokens": batch_tokens,
                "answer_batch_tok_s": round(batch_tokens / batch_s, 1),
                "answer_batch_vs_plain": round(
                    batch_tokens / batch_s / (plain_tokens / plain_s), 3
                ),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="?", default="all", help="all | samples,serve,batch")
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (CPU smoke test)")
    parser.add_argument("--new", type=int, default=128, help="new tokens per answer")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="chat-sample prompts")
    parser.add_argument("--steps", type=int, default=2, help="QLoRA steps before the samples")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--out", help="JSON file (default: $OUT/gpu_generate.json)")
    args = parser.parse_args()
    parts = {"samples", "serve", "batch"} if args.parts == "all" else set(args.parts.split(","))
    if args.tiny:
        args.seq = min(args.seq, 64)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = model_dir(args)
    tokenizer = make_tokenizer(Path(tempfile.mkdtemp(prefix="tok-")))
    import transformers

    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dims": TINY if args.tiny else DIMS,
        "new_tokens": args.new,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    results = []
    if "samples" in parts:
        results.append(part_samples(args, path, tokenizer, device))
        print("RESULT " + json.dumps(results[-1]), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    if parts & {"serve", "batch"}:
        for result in part_serve_and_batch(args, path, tokenizer, device, parts):
            results.append(result)
            print("RESULT " + json.dumps(result), flush=True)
    out = args.out or (
        Path(os.environ["OUT"]) / "gpu_generate.json" if "OUT" in os.environ else None
    )
    if out:
        Path(out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"written to {out}")


if __name__ == "__main__":
    main()
