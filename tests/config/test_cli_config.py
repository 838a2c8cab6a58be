"""list-cfg, copy-cfg and the override arguments, run through the real CLI entry point."""

from __future__ import annotations

import argparse

import pytest

from tunesmith.cli.config import add_override_args, collect_overrides
from tunesmith.cli.main import main
from tunesmith.config.loader import list_recipes, load_config, recipe_path
from tunesmith.errors import UserError


def test_list_cfg_lists_every_recipe(capsys):
    assert main(["list-cfg"]) == 0
    out = capsys.readouterr().out
    for name in list_recipes():
        assert name in out
    assert "qlora" in out and "internlm/internlm2_5-7b-chat" in out


def test_list_cfg_pattern_filters(capsys):
    assert main(["list-cfg", "-p", "qwen"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qwen2_5_7b_instruct_qlora_e3")
    assert main(["list-cfg", "-p", "internlm2_5*lora_alpaca*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert sorted(names) == [
        "internlm2_5_chat_7b_lora_alpaca_e3",
        "internlm2_5_chat_7b_qlora_alpaca_e3",
    ]


def test_copy_cfg_writes_copy_that_loads_to_equal_config(tmp_path, capsys):
    name = "internlm2_5_chat_7b_qlora_alpaca_e3"
    assert main(["copy-cfg", name, str(tmp_path / "cfgs")]) == 0
    out = tmp_path / "cfgs" / f"{name}_copy.yaml"
    assert str(out) in capsys.readouterr().out
    assert load_config(str(out)) == load_config(name)
    assert out.read_text(encoding="utf-8") == recipe_path(name).read_text(encoding="utf-8")


def test_copy_cfg_refuses_to_overwrite_without_force(tmp_path, capsys):
    name = "smollm2_135m_instruct_lora_identity"
    out = tmp_path / f"{name}_copy.yaml"
    out.write_text("mine\n", encoding="utf-8")
    assert main(["copy-cfg", name, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert out.read_text(encoding="utf-8") == "mine\n"
    assert main(["copy-cfg", name, str(tmp_path), "--force"]) == 0
    assert load_config(str(out)) == load_config(name)


def test_copy_cfg_unknown_name_suggests_nearest(tmp_path, capsys):
    assert main(["copy-cfg", "internlm2_5_chat_7b_qlora_alpaca", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "internlm2_5_chat_7b_qlora_alpaca_e3" in err
    assert not list(tmp_path.iterdir())


def _parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    add_override_args(parser)
    return parser.parse_args(argv)


def test_override_args_collect_both_spellings_in_order():
    args = _parse(
        [
            "cfg.yaml",
            "train.lr=1e-4",
            "max_length=64",
            "--cfg-options",
            "batch_size=2",
            "SYSTEM=a b",
        ]
    )
    assert collect_overrides(args) == [
        "train.lr=1e-4",
        "max_length=64",
        "batch_size=2",
        "SYSTEM=a b",
    ]
    args = _parse(["cfg.yaml", "--cfg_options", "lr=1"])
    assert collect_overrides(args) == ["lr=1"]


def test_override_arg_without_equals_is_user_error():
    with pytest.raises(UserError, match="'oops' is not KEY=VALUE"):
        collect_overrides(_parse(["cfg.yaml", "oops"]))


def test_cli_unknown_override_key_exits_2_with_one_line(capsys, monkeypatch):
    """A command wired with add_override_args: `train.lrr=1` -> exit 2, one line mentioning `lr`."""
    import tunesmith.cli.main as cli_main

    def register(subparsers):
        p = subparsers.add_parser("probe")
        p.add_argument("config")
        add_override_args(p)
        p.set_defaults(func=lambda a: load_config(a.config, collect_overrides(a)) and 0)

    real_build = cli_main.build_parser

    def build_parser():
        parser = real_build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        register(sub)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build_parser)
    code = main(["probe", "smollm2_135m_instruct_lora_identity", "train.lrr=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "train.lrr" in err and "'lr'" in err
    assert main(["probe", "smollm2_135m_instruct_lora_identity", "--cfg-options", "lr=0.001"]) == 0
