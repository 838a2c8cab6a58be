"""`tunesmith eval identity|retention`: did the identity take, and what did it break?"""

from __future__ import annotations

import argparse

from tunesmith.eval.identity import default_old_names
from tunesmith.fileio import check_new_output


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate identity and retention of a fine-tune")
    group = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    ident = group.add_parser(
        "identity",
        help="ask held-out 'who are you' questions (zh, en) and score the answers",
        description="Ask a shipped set of identity questions, worded unlike the training data, "
        "and score each answer: the new name, the new author where asked, no old identity.",
    )
    _model_args(ident)
    ident.add_argument("--name", required=True, help="the assistant's new name")
    ident.add_argument("--author", required=True, help="who made it (the new author)")
    ident.add_argument("--questions", help="a JSON file of questions (default: the shipped set)")
    ident.add_argument(
        "--old-names",
        help="comma-separated names the model must no longer claim "
        "(default for embedded models: their own, e.g. SmolLM,Hugging Face)",
    )
    ident.set_defaults(func=run_identity)

    ret = group.add_parser(
        "retention",
        help="compare a fine-tune with its base: facts kept, drift, identity leakage",
        description="Score short factual/coding prompts on the base and the tuned model, the "
        "tuned model's log-likelihood of the base's own answers (drift), and answers that "
        "mention the new name or author unasked (leakage; needs --name/--author).",
    )
    _model_args(ret)
    ret.add_argument("--base", required=True, help="the base model the fine-tune started from")
    ret.add_argument("--name", help="the new name (to measure leakage)")
    ret.add_argument("--author", help="the new author (to measure leakage)")
    ret.add_argument("--prompts", help="a JSON file of facts/general prompts (default: shipped)")
    ret.set_defaults(func=run_retention)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model dir, cached hub id or embedded alias")
    parser.add_argument("--adapter", help="a PEFT adapter dir to apply on top of MODEL")
    parser.add_argument("--system", help="system prompt (default: the model's own template's)")
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json OUT")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def split_names(names: str | None) -> list[str] | None:
    if names is None:
        return None
    return [n.strip() for n in names.split(",") if n.strip()]


def run_identity(args) -> int:
    from tunesmith.data.identity import check_text
    from tunesmith.eval.identity import evaluate_identity, load_questions
    from tunesmith.eval.report import identity_text, write_json
    from tunesmith.model.generate import Generator, fit_threads_to_load

    name, author = check_text("name", args.name), check_text("author", args.author)
    if args.json:  # checked before the model loads, not after the eval
        check_new_output(args.json, force=args.force, what="report")
    fit_threads_to_load()
    questions = load_questions(args.questions)
    old = split_names(args.old_names)
    old = default_old_names(args.model) if old is None else old
    lm = Generator.load(args.model, args.adapter, device=args.device)
    report = evaluate_identity(lm, name, author, questions, old_names=old, system=args.system)
    report["model"], report["adapter"] = args.model, args.adapter
    print(identity_text(report))
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    return 0


def run_retention(args) -> int:
    from tunesmith.eval import retention
    from tunesmith.eval.report import retention_text, write_json
    from tunesmith.model.generate import Generator, fit_threads_to_load

    if args.json:
        check_new_output(args.json, force=args.force, what="report")
    fit_threads_to_load()
    prompts = retention.load_prompts(args.prompts)
    base_lm = Generator.load(args.base, device=args.device)
    base = retention.measure(base_lm, prompts)
    del base_lm
    tuned_lm = Generator.load(args.model, args.adapter, device=args.device)
    tuned = retention.measure(tuned_lm, prompts, system=args.system, base_general=base["general"])
    report = retention.compare(base, tuned, prompts, name=args.name, author=args.author)
    report.update(model=args.model, adapter=args.adapter, base=args.base)
    print(retention_text(report))
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    return 0
