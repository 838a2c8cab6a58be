from tunesmith.cli.main import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: tunesmith" in capsys.readouterr().out


def test_overrides_after_options_reach_the_command():
    import tunesmith.cli.main as cli

    parser = cli.build_parser()
    args = cli._parse(
        parser, ["train", "smollm2_135m_instruct_lora_identity", "--seed", "3", "train.lr=1e-4"]
    )
    assert args.overrides == ["train.lr=1e-4"]
    assert args.seed == 3


def test_unknown_option_is_still_an_error(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["train", "smollm2_135m_instruct_lora_identity", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_a_closed_stdout_pipe_ends_quietly_without_a_traceback(monkeypatch):
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["list-cfg"]) == 141  # `tunesmith list-cfg | head -1`: the reader left
