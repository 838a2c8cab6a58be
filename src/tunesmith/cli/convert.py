"""`tunesmith convert pth_to_hf | merge | gguf`: checkpoints to HF directories and GGUF files."""

from __future__ import annotations

from pathlib import Path

GGUF_TYPES = "f32 | f16 | bf16 | q8_0 | q4_0"


def register(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="export checkpoints: pth_to_hf, merge, gguf")
    sub = convert.add_subparsers(dest="convert_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "pth_to_hf",
        help="a training checkpoint -> a PEFT adapter dir (LoRA/QLoRA) or an HF model (full)",
    )
    p.add_argument("config", metavar="CONFIG", help="the training config (name or YAML path)")
    p.add_argument("checkpoint", metavar="CKPT", help="work_dir/iter_N, a work_dir, or latest")
    p.add_argument("out", metavar="OUT", help="the directory to create")
    p.add_argument("--fp32", action="store_true", help="save fp32 weights (default: fp16/bf16)")
    p.add_argument("--max-shard-size", default="2GB", help="full models only (default 2GB)")
    p.set_defaults(func=run_pth_to_hf)

    m = sub.add_parser("merge", help="base model + adapter -> a standalone HF model dir")
    m.add_argument("base", metavar="BASE", help="base model: dir, embedded alias or hub id")
    m.add_argument("adapter", metavar="ADAPTER", help="a PEFT adapter dir (from pth_to_hf)")
    m.add_argument("out", metavar="OUT", help="the directory to create")
    m.add_argument("--max-shard-size", default="2GB")
    m.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    m.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: the base model's dtype")  # fmt: skip
    m.add_argument("--format", default="auto", choices=("auto", "llama", "internlm2"),
                   help="auto: the base's own layout (InternLM2 stays InternLM2)")  # fmt: skip
    m.add_argument("--gguf", nargs="?", const="f16", default=None, metavar="OUTTYPE",
                   help=f"also write OUT-OUTTYPE.gguf + Modelfile beside OUT ({GGUF_TYPES}; "
                   "default f16)")  # fmt: skip
    m.set_defaults(func=run_merge)

    g = sub.add_parser(
        "gguf", help="an HF model dir -> one GGUF file (+ Ollama Modelfile) for llama.cpp / Ollama"
    )
    g.add_argument("model", metavar="MODEL_DIR", help="a merged model dir (or embedded alias)")
    g.add_argument("out", metavar="OUT.gguf", help="the file to create")
    g.add_argument("--outtype", default="f16", help=f"{GGUF_TYPES} (default f16)")
    g.add_argument("--no-modelfile", action="store_true", help="skip OUT.Modelfile (Ollama)")
    g.set_defaults(func=run_gguf)
    convert.set_defaults(func=lambda args: convert.print_help() or 2)


def run_pth_to_hf(args) -> int:
    from tunesmith.export.adapter import export_checkpoint

    result = export_checkpoint(
        args.config, args.checkpoint, args.out, fp32=args.fp32, max_shard_size=args.max_shard_size
    )
    for note in result.notes:
        print(f"note: {note}")
    what = "PEFT adapter" if result.kind == "adapter" else "HF model"
    print(f"exported {result.checkpoint} as a {what} to {result.out_dir}:")
    _list_dir(result.out_dir)
    return 0


def run_merge(args) -> int:
    from tunesmith.export.merge import merge

    gguf_out = None
    if args.gguf is not None:  # checked before the merge writes anything
        from tunesmith.export.gguf import check_source, check_target, gguf_sibling

        gguf_out = gguf_sibling(args.out, args.gguf)
        check_target(gguf_out, args.gguf)
        check_source(args.base)
    result = merge(
        args.base,
        args.adapter,
        args.out,
        max_shard_size=args.max_shard_size,
        device=args.device,
        dtype=args.dtype,
        fmt=args.format,
    )
    for note in result.notes:
        print(f"note: {note}")
    dtype = str(result.dtype).removeprefix("torch.")
    print(
        f"merged {args.adapter} into {args.base} ({result.format} layout, {dtype}) -> {result.out_dir}:"
    )
    _list_dir(result.out_dir)
    if gguf_out is not None:
        from tunesmith.export.gguf import export_gguf

        print_gguf(export_gguf(result.out_dir, gguf_out, args.gguf))
    return 0


def run_gguf(args) -> int:
    from tunesmith.export.gguf import export_gguf

    print_gguf(export_gguf(args.model, args.out, args.outtype, modelfile=not args.no_modelfile))
    return 0


def print_gguf(result) -> None:
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"wrote {result.path} ({result.architecture}, {result.outtype}, {result.tensors} tensors, "
        f"{_human(result.bytes)})"
    )
    if result.modelfile is not None:
        print(f"wrote {result.modelfile} (Ollama: ollama create NAME -f {result.modelfile})")
    print(f"llama.cpp: llama-cli -m {result.path} -cnv")


def _list_dir(path: Path) -> None:
    for file in sorted(path.iterdir()):
        size = file.stat().st_size
        print(f"  {file.name:<40} {_human(size):>10}")


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"
