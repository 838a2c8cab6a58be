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
