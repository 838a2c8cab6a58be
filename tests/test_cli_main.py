from tunesmith.cli.main import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: tunesmith" in capsys.readouterr().out
