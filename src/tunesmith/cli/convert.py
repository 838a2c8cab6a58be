"""`tunesmith convert pth_to_hf` and `tunesmith convert merge`: checkpoints to HF directories."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="export checkpoints: pth_to_hf, merge")
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
    m.set_defaults(func=run_merge)
    convert.set_defaults(func=lambda args: convert.print_help() or 2)


def run_pth_to_hf(args) -> int:
    from tunesmith.export.adapter import export_checkpoint

    result = export_checkpoint(
        args.config, args.checkpoint, args.out, fp32=args.fp32, max_shard_size=args.max_shard_size
    )
    what = "PEFT adapter" if result.kind == "adapter" else "HF model"
    print(f"exported {result.checkpoint} as a {what} to {result.out_dir}:")
    _list_dir(result.out_dir)
    return 0


def run_merge(args) -> int:
    from tunesmith.export.merge import merge

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
    return 0


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
