"""`tunesmith chat`: the interactive loop fed through stdin, and the --prompt form."""

import io

from tunesmith.cli.main import main
from tunesmith.infer import chat
from tunesmith.model.generate import Sampling

GREEDY6 = Sampling.greedy(6)
GREEDY = ["--temperature", "0", "--max-new-tokens", "6", "--device", "cpu"]


def test_prompt_flag_prints_each_answer_and_exits(tiny_model_dir, tiny_generator, capsys):
    code = main(["chat", str(tiny_model_dir), *GREEDY, "--prompt", "Hi", "--prompt", "Bye"])
    assert code == 0
    out = capsys.readouterr().out
    expected = [
        tiny_generator.generate([{"role": "user", "content": p}], Sampling.greedy(6))
        for p in ("Hi", "Bye")
    ]
    assert out == "".join(f"{answer}\n" for answer in expected)


def test_interactive_chat_reads_stdin_until_exit(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nHow are you?\n/exit\nnever read\n"))
    assert main(["chat", str(tiny_model_dir), *GREEDY, "--no-streamer"]) == 0
    out = capsys.readouterr().out
    assert chat.BANNER in out
    assert out.count(">>> ") == 3


def test_interactive_history_grows_and_reset_clears_it(tiny_generator):
    lines = iter(["first question", "second question", "RESET", "third question", "EXIT"])
    seen = []

    def spy_stream(messages, sampling):
        seen.append([m["content"] for m in messages])
        yield "ok"

    engine = type("Spy", (), {"stream": staticmethod(spy_stream)})()
    history = chat.interactive(engine, GREEDY6, read=lambda _: next(lines), out=io.StringIO())
    assert seen == [
        ["first question"],
        ["first question", "ok", "second question"],
        ["third question"],
    ]
    assert history == [
        {"role": "user", "content": "third question"},
        {"role": "assistant", "content": "ok"},
    ]


def test_interactive_chat_streams_answers_to_the_terminal(tiny_generator):
    out = io.StringIO()
    lines = iter(["Hello"])

    def read(_):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    history = chat.interactive(tiny_generator, GREEDY6, read=read, out=out)
    answer = tiny_generator.generate([{"role": "user", "content": "Hello"}], GREEDY6)
    assert history[-1] == {"role": "assistant", "content": answer}
    assert answer + "\n" in out.getvalue()


def test_chat_with_missing_model_exits_2(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ctrl_c_during_an_answer_stops_it_and_the_chat_goes_on(tiny_generator):
    """Ctrl-C while an answer streams cancels its generation (the model is free at once)
    and returns to the prompt; the next question is answered."""

    class CtrlCAfterFirstPiece(io.StringIO):
        pieces = 0

        def write(self, text):
            if text.strip() and not text.startswith((chat.BANNER, "\n")):
                self.pieces += 1
                if self.pieces == 1:
                    raise KeyboardInterrupt
            return super().write(text)

    out = CtrlCAfterFirstPiece()
    lines = iter(["tell me a long story", "Hello", "/exit"])
    long = Sampling(temperature=1, max_new_tokens=800)
    history = chat.interactive(tiny_generator, long, read=lambda _: next(lines), out=out)
    assert chat.STOPPED in out.getvalue()
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert tiny_generator.queued == 0


def test_a_line_that_is_not_utf8_is_asked_again_not_a_traceback(tiny_generator):
    """Latin-1 bytes from the terminal reach Python as lone surrogates: the tokenizer raised a
    TypeError and the chat ended with a traceback."""
    lines = iter(["caf\udce9?", "hello", "/exit"])
    seen = []

    def spy_stream(messages, sampling):
        seen.append([m["content"] for m in messages])
        yield "ok"

    engine = type("Spy", (), {"stream": staticmethod(spy_stream)})()
    out = io.StringIO()
    chat.interactive(engine, GREEDY6, read=lambda _: next(lines), out=out)
    assert seen == [["hello"]]
    assert "(that line is not UTF-8 text: set the terminal to UTF-8" in out.getvalue()
