"""`tunesmith train CONFIG`: fine-tune with a config (LoRA / DoRA, QLoRA or full).

Exit codes: 0 done; 2 a user error (bad config, data, a NaN loss, a checkpoint that does not
fit); 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint (continue with
`--resume auto`). With NPROC_PER_NODE / NNODES the command re-launches itself under torchrun
(train/distributed.py) and passes those signals on to every worker.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from tunesmith.cli.config import add_override_args, collect_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model with a config (LoRA, QLoRA or full)",
        description="Train with CONFIG (a built-in recipe name or a YAML file). Checkpoints go "
        "to the work dir (default work_dirs/<config name>). Ctrl-C saves a checkpoint and stops; "
        "--resume auto continues from it.",
    )
    p.add_argument("config", metavar="CONFIG", help="built-in recipe name (list-cfg) or YAML path")
    add_override_args(p)
    p.add_argument("--work-dir", "--work_dir", dest="work_dir", help="where checkpoints go")
    p.add_argument(
        "--deepspeed",
        metavar="NAME|PATH",
        help="zero1 | zero2 | zero2_offload | zero3 | zero3_offload (deepspeed_* too) | fsdp2 | a JSON",
    )
    p.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="auto: continue from the newest whole checkpoint in the work dir; or an iter_N dir",
    )
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.add_argument(
        "--master-port",
        "--master_port",
        dest="master_port",
        type=int,
        help="port of the rank-0 process with NPROC_PER_NODE / NNODES (default: PORT, else a "
        "free one on one node, 29500 on several)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from tunesmith.config.loader import config_name, load_config
    from tunesmith.errors import UserError
    from tunesmith.train.distributed import (
        check_resume_world_size,
        check_strategy,
        maybe_relaunch_distributed,
    )

    overrides = collect_overrides(args)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.deepspeed:
        overrides.append(f"train.deepspeed={args.deepspeed}")
    cfg = load_config(args.config, overrides)
    if not cfg.data.files:  # named with the file the user edits (the recipe cannot know it)
        raise UserError(
            f"{args.config}: data.files is empty; list at least one .jsonl/.json/.parquet file"
        )
    work_dir = (
        args.work_dir or cfg.runtime.work_dir or str(Path("work_dirs") / config_name(args.config))
    )
    # before a launcher starts processes that would each fail alone
    check_strategy(cfg)
    _check_work_dir_outside_data(work_dir, cfg)
    check_resume_world_size(args.resume, work_dir)
    if args.master_port is not None:
        os.environ["PORT"] = str(args.master_port)
    from tunesmith.train.worklock import work_dir_lock

    # one run per work dir, for the run's whole life (the launcher's, when it re-launches)
    with work_dir_lock(work_dir):
        code = maybe_relaunch_distributed(sys.argv[1:])
        if code is not None:
            return code
        return _train(cfg, work_dir, args, overrides)


def _check_work_dir_outside_data(work_dir: str, cfg) -> None:
    """Refuse a work dir that holds (at any depth) one of the data files: checkpoints would be
    written among the data. A work dir beside the data (data.jsonl + work/) is fine."""
    from tunesmith.errors import UserError

    work = Path(work_dir).expanduser().resolve()
    for entry in cfg.data.files:
        data = Path(entry.path).expanduser()
        if not data.is_file():
            continue  # a hub dataset name, or missing: reported where the data is read
        if work in data.resolve().parents:
            raise UserError(
                f"{work_dir}: the work dir holds the data file {entry.path}; checkpoints would be "
                "written among the data: pick a work dir outside it (--work-dir)"
            )


def _train(cfg, work_dir: str, args, overrides: list[str]) -> int:
    from tunesmith.train.distributed import LAUNCHED_ENV
    from tunesmith.train.recipe import TrainRecipe

    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"work_dir": work_dir})})
    recipe = TrainRecipe(cfg, work_dir, resume=args.resume)
    recipe.setup()
    result = recipe.train()
    if recipe.is_main:
        rerun = _rerun_command(args.config, work_dir, overrides)
        print(result.summary(rerun), flush=True)
    if os.environ.get(LAUNCHED_ENV) and result.stopped_by_signal:
        return 0  # saved on the launcher's signal: torchrun waits for every rank
    return result.exit_code


def _rerun_command(config: str, work_dir: str, overrides: list[str]) -> str:
    parts = ["tunesmith", "train", config, *overrides, "--work-dir", work_dir, "--resume", "auto"]
    return " ".join(shlex.quote(p) for p in parts)
