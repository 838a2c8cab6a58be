import json

import pytest
from data_helpers import ALPACA, MULTI_TURN, write_jsonl

from tunesmith.data.formats import Conversation, Turn, load_conversations
from tunesmith.errors import UserError


def roles(conv: Conversation) -> list[tuple[str, str, bool]]:
    return [(t.role, t.content, t.trainable) for t in conv.turns]


def test_alpaca_joins_instruction_and_input(alpaca_file):
    convs = load_conversations(alpaca_file)
    assert roles(convs[1]) == [
        ("user", "Add the numbers.\n2 and 3", False),
        ("assistant", "2 + 3 = 5.", True),
    ]
    assert roles(convs[2])[0] == ("user", "Say hello in French.", False)


def test_conversation_multi_turn_keeps_system_and_order(multi_turn_file):
    (conv,) = load_conversations(multi_turn_file)
    assert conv.system == "You are Tuney."
    assert [t.role for t in conv.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.turns[4] == Turn("assistant", "The tunesmith team made me.", True)


def test_conversation_output_with_loss_false_is_not_trainable(tmp_path):
    record = {
        "conversation": [
            {"input": "a", "output": "b", "output_with_loss": False},
            {"input": "c", "output": "d"},
        ]
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "x.jsonl", [record]))
    assert [t.trainable for t in conv.turns if t.role == "assistant"] == [False, True]


def test_messages_format_with_loss_flag(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A1", "loss": False},
            {"role": "user", "content": "U2"},
            {"role": "assistant", "content": "A2"},
        ]
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "m.jsonl", [record]))
    assert roles(conv) == [
        ("system", "S", False),
        ("user", "U", False),
        ("assistant", "A1", False),
        ("user", "U2", False),
        ("assistant", "A2", True),
    ]


def test_sharegpt_maps_human_gpt_system(tmp_path):
    record = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
        ]
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "s.jsonl", [record]))
    assert roles(conv) == [
        ("system", "S", False),
        ("user", "hi", False),
        ("assistant", "hello", True),
    ]


def test_json_list_and_parquet_read_like_jsonl(tmp_path, alpaca_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    pq.write_table(
        pa.Table.from_pylist([dict(r, input=r.get("input", "")) for r in ALPACA]),
        tmp_path / "a.parquet",
    )
    expected = [roles(c) for c in load_conversations(alpaca_file)]
    assert [roles(c) for c in load_conversations(tmp_path / "a.json")] == expected
    assert [roles(c) for c in load_conversations(tmp_path / "a.parquet")] == expected


def test_format_can_be_forced(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [MULTI_TURN])
    with pytest.raises(UserError, match="missing 'output'"):
        load_conversations(path, fmt="alpaca")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"instruction": "a", "output": "b"}', '{"instruction": "a", "output": '],
            r"x\.jsonl:2: not valid JSON",
        ),
        (['{"instruction": "a", "input": "b"}'], r"x\.jsonl:1: missing 'output'"),
        (
            ['{"instruction": "a", "input": {"text": "b"}, "output": "c"}'],
            r"x\.jsonl:1: 'input' must be a string, got dict",
        ),
        (
            ['{"messages": [{"role": "bot", "content": "x"}]}'],
            r"x\.jsonl:1: .*unknown 'role' 'bot'",
        ),
        (
            ['{"instruction": "Who are you?", "output": "I am {{name}}."}'],
            r"x\.jsonl:1: .*placeholder \{\{name\}\}",
        ),
        (['{"conversations": [{"from": "alien", "value": "x"}]}'], r"unknown 'from' 'alien'"),
        (["", "  "], r"x\.jsonl: the file is empty"),
    ],
    ids=[
        "malformed-line",
        "missing-output",
        "nested-input",
        "unknown-role",
        "placeholder",
        "sharegpt-role",
        "empty",
    ],
)
def test_bad_input_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message):
        load_conversations(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such data file"):
        load_conversations(tmp_path / "nope.jsonl")


def test_template_braces_in_code_data_are_not_placeholders(tmp_path):
    record = {
        "instruction": "Show a Vue binding.",
        "output": "<p>{{ message }}</p> and {{item.title}}",
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "code.jsonl", [record]))
    assert conv.turns[-1].content == record["output"]


def test_parquet_null_loss_flags_mean_trainable(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "conversation": [
                {"input": "a", "output": "b", "output_with_loss": False},
                {"input": "c", "output": "d"},
            ]
        },
        {"conversation": [{"input": "e", "output": "f"}]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    first, second = load_conversations(tmp_path / "c.parquet")
    assert [t.trainable for t in first.turns if t.role == "assistant"] == [False, True]
    assert [t.trainable for t in second.turns if t.role == "assistant"] == [True]


def test_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ALPACA[0]).encode() + b"\n")
    (conv,) = load_conversations(path)
    assert conv.turns[0].content == ALPACA[0]["instruction"]


def test_json_list_errors_name_the_line(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n')
    with pytest.raises(UserError, match=r"list\.json:3: missing 'output'"):
        load_conversations(path)


def test_json_list_missing_comma_is_a_user_error(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[{"instruction": "a", "output": "b"}\n {"instruction": "c", "output": "d"}]')
    with pytest.raises(UserError, match=r"list\.json:2: expected ',' or '\]'"):
        load_conversations(path)


def test_json_file_with_one_record_object(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(MULTI_TURN, indent=2))
    (conv,) = load_conversations(path)
    assert conv.system == "You are Tuney."
