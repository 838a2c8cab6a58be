"""Config commands: list-cfg, copy-cfg, convert-cfg; and the override arguments other commands share.

Commands that take a config call `add_override_args(parser)` and pass
`collect_overrides(args)` to `load_config`:

    tunesmith train CONFIG train.lr=1e-4 max_length=1024 --cfg-options batch_size=2
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text


def add_override_args(parser: argparse.ArgumentParser) -> None:
    """Add `KEY=VALUE ...` positionals and XTuner's `--cfg-options KEY=VALUE ...`."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config values, e.g. train.lr=1e-4 max_length=1024 SYSTEM='You are Ada.'",
    )
    parser.add_argument(
        "--cfg-options",
        "--cfg_options",
        dest="cfg_options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="XTuner's spelling of the same overrides",
    )


def collect_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides from both spellings, in order; each must be KEY=VALUE."""
    overrides = list(getattr(args, "overrides", None) or []) + list(
        getattr(args, "cfg_options", None) or []
    )
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not KEY=VALUE (e.g. train.lr=1e-4)")
    return overrides


def register(subparsers) -> None:
    p = subparsers.add_parser("list-cfg", help="list the built-in configs")
    p.add_argument("-p", "--pattern", help="only names containing PATTERN (or matching a glob)")
    p.set_defaults(func=list_cfg)

    p = subparsers.add_parser("copy-cfg", help="copy a built-in config to DIR/NAME_copy.yaml")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite an existing copy")
    p.set_defaults(func=copy_cfg)

    p = subparsers.add_parser(
        "convert-cfg", help="convert an XTuner .py config to tunesmith YAML (never runs it)"
    )
    p.add_argument("src", metavar="XTUNER_CONFIG.py", type=Path)
    p.add_argument("out", metavar="OUT.yaml", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite OUT.yaml if it exists")
    p.set_defaults(func=convert_cfg)


def list_cfg(args: argparse.Namespace) -> int:
    from tunesmith.config.loader import list_recipes, load_config

    pattern = args.pattern
    names = list_recipes()
    if pattern:
        if any(c in pattern for c in "*?["):
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        else:
            names = [n for n in names if pattern.lower() in n.lower()]
    if not names:
        print(f"no built-in config matches '{pattern}'")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        cfg = load_config(name)
        print(f"{name:<{width}}  {cfg.method:<5}  {cfg.model.path}")
    return 0


def copy_cfg(args: argparse.Namespace) -> int:
    from tunesmith.config.loader import recipe_path

    src = recipe_path(args.name)
    if args.dir.exists() and not args.dir.is_dir():
        raise UserError(f"{args.dir} is a file; give a directory to copy into")
    out = args.dir / f"{args.name}_copy.yaml"
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    args.dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out)
    print(f"copied {args.name} to {out}")
    return 0


def convert_cfg(args: argparse.Namespace) -> int:
    from tunesmith.config.loader import dump_config, load_config_dict
    from tunesmith.config.xtuner_import import convert_xtuner_config

    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to overwrite it")
    data, notes = convert_xtuner_config(args.src)
    cfg = load_config_dict(data, source=f"{args.src} (converted)")
    header = (
        f"# Converted by `tunesmith convert-cfg` from {args.src.name}.\n"
        f"# Run it: tunesmith train {args.out}\n"
    )
    if notes:
        header += "# Not carried over, or carried with a difference:\n"
        header += "".join(f"#   {n}\n" for n in notes)
    atomic_write_text(args.out, header + "\n" + dump_config(cfg))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out} ({cfg.method}, model {cfg.model.path})")
    return 0
