"""`tunesmith data replace|identity|check|show` and XTuner's aliases
`check-custom-dataset` (= data check) and `log-dataset` (= data show)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunesmith.errors import UserError

SHOW_CHOICES = ("text", "masked_text", "input_ids", "labels", "all")


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare and inspect training data")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    p = sub.add_parser("replace", help="replace a text in every string of every record")
    p.add_argument("input", metavar="IN", help=".jsonl or .json file")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--old-text", "--old_text", dest="old_text", required=True)
    p.add_argument("--new-text", "--new_text", dest="new_text", required=True)
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_replace)

    p = sub.add_parser("identity", help="write a self-cognition dataset (who am I)")
    p.add_argument("--name", required=True, help="the assistant's name")
    p.add_argument("--author", required=True, help="who made it")
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    p.add_argument("--lang", default="zh,en", help="comma-separated: zh,en (default both)")
    p.add_argument("--repeat", type=int, default=1, help="times each question appears")
    p.add_argument("--system", default=None, help="system prompt to put in every record")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite OUT.jsonl if it exists")
    p.set_defaults(func=_identity)

    for parent, name in ((sub, "check"), (subparsers, "check-custom-dataset")):
        p = parent.add_parser(name, help="validate a data file or a config's data, print stats")
        _check_args(p)
    for parent, name in ((sub, "show"), (subparsers, "log-dataset")):
        p = parent.add_parser(name, help="show one processed record as the model sees it")
        _show_args(p)


def _check_args(p: argparse.ArgumentParser) -> None:
    from tunesmith.cli.config import add_override_args

    p.add_argument("target", metavar="FILE|CONFIG", help="a data file, a config name or YAML")
    p.add_argument(
        "--model", default=None, help="tokenizer for a data file (default: the config's)"
    )
    p.add_argument("--template", default=None, help="chat template (default: the config's, auto)")
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None)
    add_override_args(p)
    p.set_defaults(func=_check)


def _show_args(p: argparse.ArgumentParser) -> None:
    from tunesmith.cli.config import add_override_args

    p.add_argument("config", metavar="CONFIG", help="a config name or YAML path (or a data file)")
    p.add_argument("--model", default=None, help="tokenizer to use (default: the config's)")
    p.add_argument("--template", default=None, help="chat template (default: the config's)")
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None)
    p.add_argument("--show", choices=SHOW_CHOICES, default="masked_text")
    p.add_argument(
        "--index", type=int, default=0, help="which record, or pair for preference data (default 0)"
    )
    add_override_args(p)
    p.set_defaults(func=_show)


def _replace(args) -> int:
    from tunesmith.data.replace import replace_file

    counts = replace_file(args.input, args.output, args.old_text, args.new_text, force=args.force)
    print(
        f"wrote {args.output}: {counts['records']} records, "
        f"{counts['replacements']} replacements of {args.old_text!r}"
    )
    return 0


def _identity(args) -> int:
    from tunesmith.data.identity import generate_identity, write_jsonl
    from tunesmith.fileio import check_new_output

    check_new_output(args.output, force=args.force)
    langs = [x.strip() for x in args.lang.split(",") if x.strip()]
    records = generate_identity(
        args.name, args.author, langs=langs, repeat=args.repeat, system=args.system, seed=args.seed
    )
    write_jsonl(records, args.output)
    print(f"wrote {args.output}: {len(records)} records ({','.join(langs)})")
    return 0


def _config_for(target: str, args):
    """The config of a `data check/show` target: a data file gets the default config around it."""
    from tunesmith.cli.config import collect_overrides
    from tunesmith.config.loader import CONFIG_SUFFIXES, load_config, load_config_dict
    from tunesmith.data.formats import SUFFIXES
    from tunesmith.data.inspect import target_is_data

    overrides = collect_overrides(args)
    suffix = Path(target).suffix.lower()
    is_data = target_is_data(target)
    if Path(target).is_file() and not is_data and suffix not in CONFIG_SUFFIXES:
        raise UserError(
            f"{target}: unsupported data file type {suffix}; give a data file "
            f"({', '.join(SUFFIXES)}) or a .yaml config"
        )
    if is_data:
        cfg = load_config_dict({"data": {"files": [target]}}, source=target, overrides=overrides)
    else:
        cfg = load_config(target, overrides)
    updates = {}
    if getattr(args, "template", None):
        updates["template"] = args.template
    if getattr(args, "max_length", None):
        updates["max_length"] = args.max_length
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    if getattr(args, "model", None):
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": args.model})})
    return cfg


def _check(args) -> int:
    from tunesmith.data.inspect import check_files, format_report
    from tunesmith.data.templates import get_template
    from tunesmith.model.load import load_tokenizer

    cfg = _config_for(args.target, args)
    if not cfg.data.files:
        raise UserError(f"{args.target}: data.files is empty; nothing to check")
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    template = get_template(cfg.data.template, tokenizer)
    reports = check_files(cfg.data.files, tokenizer, template, cfg.data.system, cfg.data.max_length)
    print(format_report(reports, cfg.data.max_length, template.name))
    errors = sum(len(r.errors) for r in reports)
    if errors:
        print(
            f"error: {errors} record(s) bad or left out by training; fix them and check again",
            file=sys.stderr,
        )
        return 2
    print("ok: every record is valid")
    return 0


def _show(args) -> int:
    from tunesmith.data.dataset import build_dataset
    from tunesmith.data.inspect import show_document, show_pair
    from tunesmith.data.preference import build_preference_dataset, holds_pairs
    from tunesmith.model.load import load_tokenizer

    cfg = _config_for(args.config, args)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.preference is not None or (cfg.data.files and holds_pairs(cfg.data.files[0].path)):
        dataset = build_preference_dataset(cfg, tokenizer)
        print(show_pair(dataset, tokenizer, args.index, args.show))
        return 0
    dataset = build_dataset(cfg, tokenizer)
    print(show_document(dataset, tokenizer, args.index, args.show))
    return 0
