import json

import pytest
from data_helpers import write_jsonl

from tunesmith.data.replace import replace_file, replace_in_value
from tunesmith.errors import UserError


def test_replaces_in_nested_string_values_not_keys():
    record = {"name": "x {{n}}", "{{n}}": ["{{n}}", {"deep": "a{{n}}b{{n}}"}, 3, None]}
    out, count = replace_in_value(record, "{{n}}", "Tuney")
    assert out == {"name": "x Tuney", "{{n}}": ["Tuney", {"deep": "aTuneybTuney"}, 3, None]}
    assert count == 4


def test_jsonl_replace_writes_every_record(tmp_path):
    records = [
        {"conversation": [{"input": "Who?", "output": f"I am {{{{name}}}} #{i}"}]}
        for i in range(50)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    counts = replace_file(src, tmp_path / "out.jsonl", "{{name}}", "小调", progress=False)
    out = [
        json.loads(line)
        for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert counts == {"records": 50, "replacements": 50}
    assert [r["conversation"][0]["output"] for r in out] == [f"I am 小调 #{i}" for i in range(50)]


def test_json_list_replace_streams_items(tmp_path, monkeypatch):
    from tunesmith.data import jsonio

    monkeypatch.setattr(jsonio, "CHUNK", 7)  # items straddle many chunk boundaries
    records = [{"instruction": "q {{x}}", "output": "a\n{{x}}", "n": i} for i in range(30)]
    (tmp_path / "in.json").write_text(json.dumps(records, indent=2))
    replace_file(tmp_path / "in.json", tmp_path / "out.json", "{{x}}", "Y", progress=False)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == [{"instruction": "q Y", "output": "a\nY", "n": i} for i in range(30)]


def test_bad_line_names_the_line_and_leaves_no_output(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": "x"}\n{"a": "y"}\n{"a": \n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match=r"in\.jsonl:3: not valid JSON"):
        replace_file(src, out, "x", "z", progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]  # no temp file left behind


def test_bad_line_keeps_an_existing_output_untouched(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": "x"}\nnot json\n')
    out = tmp_path / "out.jsonl"
    out.write_text("previous result\n")
    with pytest.raises(UserError, match=":2:"):
        replace_file(src, out, "x", "z", progress=False, force=True)
    assert out.read_text() == "previous result\n"


def test_bad_json_list_item_names_its_line(tmp_path):
    (tmp_path / "in.json").write_text('[\n {"a": "x"},\n {"a": x}\n]\n')
    with pytest.raises(UserError, match=r"in\.json:3: not valid JSON"):
        replace_file(tmp_path / "in.json", tmp_path / "out.json", "x", "y", progress=False)
    assert not (tmp_path / "out.json").exists()
