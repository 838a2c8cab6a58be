"""`tunesmith chat`, `tunesmith webui` and `tunesmith serve`: talk to a model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunesmith.config.schema import TEMPLATE_NAMES
from tunesmith.errors import UserError

# Run by `streamlit run`, never imported here (importing it would start the app).
WEBUI_APP = Path(__file__).resolve().parent.parent / "infer" / "webui_app.py"


def register(subparsers) -> None:
    chat = subparsers.add_parser(
        "chat", help="chat with a model in the terminal (streaming, history)"
    )
    _model_args(chat)
    chat.add_argument("--system", help="system prompt")
    chat.add_argument(
        "--prompt-template",
        choices=TEMPLATE_NAMES,
        help="a named template (chatml, internlm2_chat, ...); default: the tokenizer's own",
    )
    chat.add_argument("--bits", type=int, choices=(4, 8), help="load the model in 4 or 8 bit")
    chat.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _sampling_args(chat)
    chat.add_argument(
        "--no-streamer", action="store_true", help="print each answer when it is complete"
    )
    chat.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="answer this prompt (one-turn) and exit; repeatable; for scripts",
    )
    chat.set_defaults(func=run_chat)

    webui = subparsers.add_parser("webui", help="chat in the browser (streamlit)")
    _model_args(webui)
    webui.add_argument("--host", default="127.0.0.1")
    webui.add_argument("--port", type=port, default=8501)
    webui.add_argument("--system", help="initial system prompt")
    webui.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    webui.set_defaults(func=run_webui)

    serve = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models)"
    )
    _model_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8000)
    serve.add_argument(
        "--api-key",
        default=os.environ.get("TUNESMITH_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $TUNESMITH_API_KEY, else none)",
    )
    serve.add_argument(
        "--model-name", help="the model id clients use (default: the MODEL path's name)"
    )
    serve.add_argument("--system", help="system prompt for requests that have none")
    serve.add_argument(
        "--prompt-template",
        choices=TEMPLATE_NAMES,
        help="a named template; default: the tokenizer's own",
    )
    serve.add_argument("--bits", type=int, choices=(4, 8))
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    serve.set_defaults(func=run_serve)


def port(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    value = at_least(1, int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1..65535)")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = at_least(0.0, exclusive=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return value


def at_least(low: float, kind: type = float, exclusive: bool = False):
    """An argparse type: a number of `kind` that is >= low (> low when `exclusive`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (exclusive and value == low):
            raise argparse.ArgumentTypeError(f"{value} must be {'>' if exclusive else '>='} {low}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model directory, embedded alias or hub id")
    parser.add_argument("--adapter", metavar="DIR", help="a PEFT adapter dir to put on top")


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=at_least(0.0), default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=probability, default=0.9)
    parser.add_argument("--top-k", type=at_least(0, int), default=40, help="0 = no limit")
    parser.add_argument("--repetition-penalty", type=at_least(0.0, exclusive=True), default=1.0)
    parser.add_argument("--max-new-tokens", type=at_least(1, int), default=512)
    parser.add_argument("--seed", type=int)


def _sampling(args):
    from tunesmith.model.generate import Sampling

    return Sampling(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def _generator(args):
    from tunesmith.infer.chat import load_generator

    return load_generator(
        args.model,
        adapter=args.adapter,
        template=args.prompt_template,
        system=args.system,
        bits=args.bits,
        device=args.device,
    )


def run_chat(args) -> int:
    from tunesmith.infer import chat

    sampling = _sampling(args)  # checked before the model loads
    for n, text in enumerate(args.prompt or (), 1):
        if not text.strip():
            raise UserError(f"--prompt (number {n}) is empty; give the text to answer")
        _check_text(text, f"--prompt (number {n})")
    _check_text(args.system, "--system")
    generator = _generator(args)
    stream = not args.no_streamer
    if args.prompt:
        chat.answer_prompts(generator, args.prompt, sampling, stream)
    else:
        chat.interactive(generator, sampling, stream)
    return 0


def _check_text(text: str | None, flag: str) -> None:
    """Text given as an argument must be UTF-8: other bytes reach Python as lone surrogates,
    on which the tokenizer fails with a TypeError."""
    from tunesmith.model.generate import lone_surrogate

    if text and (bad := lone_surrogate(text)):
        raise UserError(f"{flag} is not UTF-8 text ({bad}); pass it in UTF-8")


def run_webui(args) -> int:
    from tunesmith.model.generate import check_adapter_dir
    from tunesmith.model.resolve import resolve_model_path

    _check_text(args.system, "--system")
    resolve_model_path(args.model, with_weights=False)  # fail here, not in the browser
    if args.adapter:
        check_adapter_dir(args.adapter)
    app_args = ["--model", args.model, "--device", args.device]
    if args.adapter:
        app_args += ["--adapter", args.adapter]
    if args.system:
        app_args += ["--system", args.system]
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(WEBUI_APP),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
        *app_args,
    ]
    print(f"web UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    # Become the streamlit process, so Ctrl-C and kill reach it directly.
    os.execv(sys.executable, command)


def run_serve(args) -> int:
    from tunesmith.infer.server import check_address, serve

    check_address(args.host, args.port)  # before the model loads, not after (uvicorn's exit 3)
    _check_text(args.system, "--system")
    if args.api_key is not None and (
        not args.api_key.strip() or args.api_key != args.api_key.strip() or " " in args.api_key
    ):
        # "" (an unset shell variable) made a key that `Bearer ` matches; a space, one that no
        # `Authorization: Bearer KEY` header can carry
        raise UserError(
            "--api-key (or $TUNESMITH_API_KEY) is empty or holds spaces; give a key without "
            "spaces, or leave it out for no key"
        )
    generator = _generator(args)
    name = args.model_name or Path(args.model.rstrip("/")).name
    print(
        f"OpenAI-compatible API on http://{args.host}:{args.port}/v1 (model id: {name})", flush=True
    )
    serve(generator, name, host=args.host, port=args.port, api_key=args.api_key)
    return 0
