"""`tunesmith identity`: the one-command identity workflow (data, train, export, merge, eval)."""

from __future__ import annotations

import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "identity",
        help="make a chat model answer as your assistant (data, train, export, merge, eval)",
        description="Generate identity data, train with the model's identity recipe (with the "
        "forgetting guard), export the adapter, merge it, evaluate base and result, and print a "
        "before/after report. Re-run with the same --work-dir to resume.",
    )
    parser.add_argument("--name", required=True, help="the assistant's new name")
    parser.add_argument("--author", required=True, help="who made it")
    parser.add_argument(
        "--model",
        default=None,
        help="chat model: dir, cached hub id or embedded alias (default: smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--lang", default="zh,en", help="languages of the data: zh,en (default both)"
    )
    parser.add_argument(
        "--work-dir", default=None, help="where everything goes (default: work_dirs/identity-NAME)"
    )
    parser.add_argument(
        "--config", default=None, help="recipe name or YAML (default: the model's identity recipe)"
    )
    parser.add_argument(
        "--system",
        default=None,
        help="system prompt to train and export with (default: 'You are a helpful AI "
        "assistant.': the identity is trained into the weights)",
    )
    parser.add_argument(
        "--old-names",
        default=None,
        help="comma-separated names the model must stop claiming (default for embedded models: "
        "their own, e.g. SmolLM,Hugging Face)",
    )
    parser.add_argument(
        "--questions", default=None, help="identity eval questions, JSON (default: the shipped set)"
    )
    parser.add_argument(
        "--prompts", default=None, help="retention eval prompts, JSON (default: the shipped set)"
    )
    parser.add_argument(
        "--preference",
        default=None,
        choices=("dpo", "ipo", "orpo", "simpo"),
        help="after SFT, a preference stage: the base model's own (old-name) answers rejected, "
        "the identity answers chosen (docs/identity.md)",
    )
    parser.add_argument(
        "--gguf",
        nargs="?",
        const="f16",
        default=None,
        metavar="OUTTYPE",
        help="also write WORK_DIR/merged-OUTTYPE.gguf + Modelfile for llama.cpp / Ollama "
        "(f32 | f16 | bf16 | q8_0 | q4_0; default f16)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.max_steps=20",
    )
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="XTuner-style overrides"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from tunesmith.cli.eval import split_names
    from tunesmith.data.identity import check_text
    from tunesmith.model.embedded import DEFAULT_MODEL
    from tunesmith.workflow.identity import IdentityRun, IdentityWorkflow

    name = check_text("name", args.name)
    model = args.model or DEFAULT_MODEL
    if args.model is None and args.config:
        from tunesmith.config.loader import load_config

        model = load_config(args.config).model.path
    identity_run = IdentityRun(
        name=name,
        author=check_text("author", args.author),
        model=model,
        langs=tuple(lang.strip() for lang in args.lang.split(",") if lang.strip()),
        config=args.config,
        overrides=tuple(args.overrides) + tuple(args.cfg_options),
        system=args.system,
        questions=args.questions,
        prompts=args.prompts,
        old_names=None if args.old_names is None else tuple(split_names(args.old_names)),
        preference=args.preference,
    )
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    work_dir = args.work_dir or f"work_dirs/identity-{safe}"
    from tunesmith.model.generate import fit_threads_to_load

    workflow = IdentityWorkflow(identity_run, work_dir)
    gguf_out = None
    if args.gguf is not None:  # checked before the workflow writes anything
        from tunesmith.export.gguf import check_target, gguf_sibling

        gguf_out = gguf_sibling(workflow.final_model, args.gguf)  # WORK_DIR/merged-f16.gguf
        check_target(gguf_out, args.gguf, overwrite=True)
    print(f"torch threads: {fit_threads_to_load()}")
    start = time.perf_counter()
    workflow.execute()
    if gguf_out is not None:
        from tunesmith.cli.convert import print_gguf
        from tunesmith.export.gguf import export_gguf

        print_gguf(export_gguf(workflow.final_model, gguf_out, args.gguf, overwrite=True))
    print(f"done in {time.perf_counter() - start:.0f} s; report: {work_dir}/report.md")
    return 0
