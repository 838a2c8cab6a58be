"""The data commands as a user types them."""

import json

from data_helpers import ALPACA, write_jsonl

from tunesmith.cli.main import main


def test_data_replace_command_accepts_both_option_spellings(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Who?", "output": "I am {{name}}."}])
    assert (
        main(
            [
                "data",
                "replace",
                str(src),
                str(tmp_path / "a.jsonl"),
                "--old-text",
                "{{name}}",
                "--new-text",
                "Ada",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "replace",
                str(src),
                str(tmp_path / "b.jsonl"),
                "--old_text",
                "{{name}}",
                "--new_text",
                "Ada",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "a.jsonl").read_text())["output"] == "I am Ada."
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert "1 replacements" in capsys.readouterr().out


def test_data_replace_bad_line_exits_2_with_the_line(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n{oops}\n')
    assert (
        main(
            [
                "data",
                "replace",
                str(src),
                str(tmp_path / "out.jsonl"),
                "--old-text",
                "a",
                "--new-text",
                "b",
            ]
        )
        == 2
    )
    assert "in.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_data_identity_command_writes_conversation_records(tmp_path, capsys):
    out = tmp_path / "identity.jsonl"
    assert (
        main(
            [
                "data",
                "identity",
                "--name",
                "Ada",
                "--author",
                "Lovelace Labs",
                "-o",
                str(out),
                "--lang",
                "en",
                "--repeat",
                "2",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) > 100
    assert all("Ada" in r["conversation"][0]["output"] for r in records)
    assert f"{len(records)} records" in capsys.readouterr().out


def test_data_identity_rejects_a_placeholder_name(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "identity",
                "--name",
                "{{name}}",
                "--author",
                "X",
                "-o",
                str(tmp_path / "x.jsonl"),
            ]
        )
        == 2
    )
    assert "--name" in capsys.readouterr().err


def test_check_prints_counts_lengths_and_truncation(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    assert (
        main(["check-custom-dataset", str(path), "--template", "chatml", "--max-length", "20"]) == 0
    )
    out = capsys.readouterr().out
    assert f"{len(ALPACA)} records (alpaca {len(ALPACA)})" in out
    assert "truncated at max_length 20:" in out
    assert "ok: every record is valid" in out


def test_check_reports_every_bad_record_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "b"}\n'
        '{"instruction": "a", "input": {"nested": 1}, "output": "b"}\n'
        '{"instruction": "a"}\n'
    )
    assert main(["data", "check", str(path)]) == 2
    out = capsys.readouterr().out
    assert "bad.jsonl:2: 'input' must be a string" in out
    assert "bad.jsonl:3: missing 'output'" in out


def test_show_masked_text_marks_tokens_without_loss(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    argv = [
        "log-dataset",
        str(path),
        f"data.cache_dir={tmp_path / 'cache'}",
        "SYSTEM=Be exact.",
        "--index",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "[[<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\nAdd the numbers.\n2 and 3<|im_end|>\n<|im_start|>assistant\n]]2 + 3 = 5.<|im_end|>"
        in out
    )


def test_show_out_of_range_index_is_a_user_error(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    assert (
        main(["data", "show", str(path), f"data.cache_dir={tmp_path / 'cache'}", "--index", "99"])
        == 2
    )
    assert "--index 99 is out of range" in capsys.readouterr().err


def test_check_names_records_left_without_loss(tmp_path, capsys):
    long_prompt = {"instruction": "word " * 200, "output": "short answer"}
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA + [long_prompt])
    assert main(["data", "check", str(path), "--template", "chatml", "--max-length", "64"]) == 2
    out = capsys.readouterr().out
    assert f"{path}:4: no answer token is left within max_length=64" in out
    assert "truncated at max_length 64: 1 of 4 records" in out
    assert "left out (no token with loss within max_length): 1 records" in out


def test_check_and_show_read_a_config_file(tmp_path, capsys):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    config = tmp_path / "my.yaml"
    config.write_text(
        f"data:\n  files: [{data}]\n  template: chatml\n  max_length: 64\n"
        f"  cache_dir: {tmp_path / 'cache'}\nSYSTEM: You are Ada.\n"
    )
    assert main(["data", "check", str(config)]) == 0
    assert f"{len(ALPACA)} records (alpaca {len(ALPACA)})" in capsys.readouterr().out
    assert main(["data", "show", str(config), "--show", "text"]) == 0
    assert "<|im_start|>system\nYou are Ada.<|im_end|>" in capsys.readouterr().out
