"""`tunesmith chat`: the interactive loop fed through stdin, and the --prompt form."""

import io

from tunesmith.cli.main import main
from tunesmith.infer import chat

GREEDY = ["--temperature", "0", "--max-new-tokens", "6", "--device", "cpu"]


def test_prompt_flag_prints_each_answer_and_exits(tiny_model_dir, tiny_engine, capsys):
    code = main(["chat", str(tiny_model_dir), *GREEDY, "--prompt", "Hi", "--prompt", "Bye"])
    assert code == 0
    out = capsys.readouterr().out
    expected = [
        tiny_engine.generate([{"role": "user", "content": p}], temperature=0, max_new_tokens=6)
        for p in ("Hi", "Bye")
    ]
    assert out == "".join(f"{answer}\n" for answer in expected)


def test_interactive_chat_reads_stdin_until_exit(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nHow are you?\n/exit\nnever read\n"))
    assert main(["chat", str(tiny_model_dir), *GREEDY, "--no-streamer"]) == 0
    out = capsys.readouterr().out
    assert chat.BANNER in out
    assert out.count(">>> ") == 3


def test_interactive_history_grows_and_reset_clears_it(tiny_engine):
    lines = iter(["first question", "second question", "RESET", "third question", "EXIT"])
    seen = []

    def spy_stream(messages, **sampling):
        seen.append([m["content"] for m in messages])
        yield "ok"

    engine = type("Spy", (), {"stream": staticmethod(spy_stream)})()
    history = chat.interactive(engine, {}, read=lambda _: next(lines), out=io.StringIO())
    assert seen == [
        ["first question"],
        ["first question", "ok", "second question"],
        ["third question"],
    ]
    assert history == [
        {"role": "user", "content": "third question"},
        {"role": "assistant", "content": "ok"},
    ]


def test_interactive_chat_streams_answers_to_the_terminal(tiny_engine):
    out = io.StringIO()
    lines = iter(["Hello"])

    def read(_):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    history = chat.interactive(
        tiny_engine, {"temperature": 0, "max_new_tokens": 6}, read=read, out=out
    )
    answer = tiny_engine.generate(
        [{"role": "user", "content": "Hello"}], temperature=0, max_new_tokens=6
    )
    assert history[-1] == {"role": "assistant", "content": answer}
    assert answer + "\n" in out.getvalue()


def test_chat_with_missing_model_exits_2(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
