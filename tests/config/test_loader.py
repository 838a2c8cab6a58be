"""load_config: recipes, YAML files, flat XTuner names, overrides, and the errors users see."""

from __future__ import annotations

import pytest

from tunesmith.config.loader import (
    FLAT_KEYS,
    config_name,
    dump_config,
    list_recipes,
    load_config,
    load_config_dict,
    parse_value,
    valid_keys,
)
from tunesmith.errors import UserError

IDENTITY = "smollm2_135m_instruct_lora_identity"


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_nested_key_names_path_file_line_and_nearest(tmp_path):
    path = write(tmp_path, "model:\n  path: x\ntrain:\n  lr: 1.0e-4\n  lrr: 1\n")
    with pytest.raises(UserError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert f"{path}:5" in msg
    assert "'train.lrr'" in msg
    assert "'lr'" in msg
    assert "\n" not in msg


def test_unknown_key_in_list_item_is_named_with_index(tmp_path):
    path = write(tmp_path, "data:\n  files:\n    - path: a.json\n      formt: alpaca\n")
    with pytest.raises(UserError, match=r"data\.files\[0\]\.formt.*'format'") as err:
        load_config(str(path))
    assert f"{path}:4" in str(err.value)


def test_key_in_wrong_part_points_to_its_part(tmp_path):
    path = write(tmp_path, "train:\n  max_length: 512\n")
    with pytest.raises(UserError, match=r"'train\.max_length'.*'data\.max_length'"):
        load_config(str(path))


def test_unknown_top_level_key_suggests_flat_name(tmp_path):
    path = write(tmp_path, "learning_rat: 1\n")
    with pytest.raises(UserError, match="unknown config key 'learning_rat'"):
        load_config(str(path))
    with pytest.raises(UserError, match="'max_length'"):
        load_config(str(write(tmp_path, "max_lenght: 5\n", "b.yaml")))


def test_unknown_override_key_names_override_and_nearest():
    with pytest.raises(UserError) as err:
        load_config(IDENTITY, ["train.lrr=1"])
    msg = str(err.value)
    assert "override 'train.lrr=1'" in msg
    assert "'lr'" in msg


def test_unknown_key_of_an_override_made_part_names_the_override():
    with pytest.raises(UserError) as err:
        load_config(IDENTITY, ["trian.lr=1"])
    assert "override 'trian.lr=1'" in str(err.value) and "'train'" in str(err.value)


def test_overrides_on_a_raw_config_dict_are_named_in_errors():
    """`tunesmith data check file.jsonl train.lrr=1` builds its config from a dict."""
    with pytest.raises(UserError) as err:
        load_config_dict({"data": {"files": ["x.jsonl"]}}, "x.jsonl", ["train.lrr=1"])
    assert "override 'train.lrr=1'" in str(err.value) and "'lr'" in str(err.value)
    cfg = load_config_dict({"data": {"files": ["x.jsonl"]}}, "x.jsonl", ["lr=0.5"])
    assert cfg.train.lr == 0.5


def test_first_unknown_key_in_file_order_comes_before_bad_values(tmp_path):
    path = write(tmp_path, "train:\n  lr: -1\n  lrr: 3\nzzz: 1\n")
    with pytest.raises(UserError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: unknown config key 'train.lrr'")
    assert "(and 2 more problems)" in msg


def test_field_set_by_name_and_xtuner_alias_names_both(tmp_path):
    path = write(tmp_path, "model:\n  pretrained_model_name_or_path: a\n  path: b\n")
    with pytest.raises(UserError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert f"{path}:3" in msg and "'model.path'" in msg
    assert "'model.pretrained_model_name_or_path'" in msg and "both set" in msg


def test_bad_value_names_key_and_override():
    with pytest.raises(UserError) as err:
        load_config(IDENTITY, ["lr=-1"])
    msg = str(err.value)
    assert "'train.lr'" in msg and "lr=-1" in msg and "greater than 0" in msg


def test_bad_value_in_file_names_key_and_line(tmp_path):
    path = write(tmp_path, "model:\n  dtype: float17\n")
    with pytest.raises(UserError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert f"{path}:2" in msg and "'model.dtype'" in msg and "float17" in msg
    assert "validation error" not in msg  # pydantic's own text never reaches the user raw


def test_flat_xtuner_names_at_top_level_map_into_parts(tmp_path):
    text = (
        "pretrained_model_name_or_path: /models/m\n"
        "max_length: 1024\npack_to_max_length: false\nbatch_size: 3\naccumulative_counts: 5\n"
        "max_epochs: 2\nlr: 3e-5\nbetas: [0.8, 0.95]\nweight_decay: 0.01\nmax_norm: 0.5\n"
        "warmup_ratio: 0.1\nsave_steps: 7\nsave_total_limit: -1\nevaluation_freq: 9\n"
        "SYSTEM: You are Ada.\nevaluation_inputs: [hi, who are you]\n"
        "prompt_template: qwen_chat\nr: 8\nlora_alpha: 4\nlora_dropout: 0.0\n"
    )
    cfg = load_config(str(write(tmp_path, text)))
    assert cfg.model.path == "/models/m"
    assert (cfg.data.max_length, cfg.data.pack_to_max_length) == (1024, False)
    assert (cfg.train.batch_size, cfg.train.accumulative_counts, cfg.train.max_epochs) == (3, 5, 2)
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.train.betas == (0.8, 0.95)
    assert (cfg.train.weight_decay, cfg.train.max_norm, cfg.train.warmup_ratio) == (0.01, 0.5, 0.1)
    assert (cfg.runtime.save_steps, cfg.runtime.save_total_limit) == (7, -1)
    assert cfg.runtime.evaluation_freq == 9
    assert cfg.runtime.evaluation_inputs == ["hi", "who are you"]
    assert cfg.data.system == "You are Ada."
    assert cfg.data.template == "qwen_chat"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 4, 0.0)


def test_every_flat_key_targets_a_real_field():
    keys = set(valid_keys())
    assert {target for target in FLAT_KEYS.values()} <= keys


def test_flat_and_nested_conflict_is_an_error(tmp_path):
    path = write(tmp_path, "lr: 1.0e-4\ntrain:\n  lr: 2.0e-4\n")
    with pytest.raises(UserError, match="'lr' and 'train.lr'"):
        load_config(str(path))


def test_xtuner_aliases_inside_parts(tmp_path):
    text = (
        "model:\n  pretrained_model_name_or_path: /m\n"
        "quantization:\n  bnb_4bit_quant_type: fp4\n  bnb_4bit_use_double_quant: false\n"
        "lora:\n  lora_alpha: 7\ndata:\n  SYSTEM: sys\n  prompt_template: llama3_chat\n"
    )
    cfg = load_config(str(write(tmp_path, text)))
    assert cfg.model.path == "/m"
    assert (cfg.quantization.quant_type, cfg.quantization.double_quant) == ("fp4", False)
    assert cfg.lora.alpha == 7
    assert (cfg.data.system, cfg.data.template) == ("sys", "llama3_chat")
    assert cfg.method == "qlora"


def test_overrides_set_nested_flat_and_structured_values():
    cfg = load_config(
        IDENTITY,
        [
            "train.lr=1e-4",
            "max_length=128",
            "betas=[0.9, 0.95]",
            "SYSTEM=Note: you are Ada",
            "data.files=my.jsonl",
            "runtime.evaluation_inputs=[a, b]",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.max_length == 128
    assert cfg.train.betas == (0.9, 0.95)
    assert cfg.data.system == "Note: you are Ada"
    assert [f.path for f in cfg.data.files] == ["my.jsonl"]
    assert cfg.runtime.evaluation_inputs == ["a", "b"]


def test_overrides_switch_method():
    base = load_config(IDENTITY)
    assert base.method == "lora"
    assert load_config(IDENTITY, ["quantization.bits=4"]).method == "qlora"
    assert load_config(IDENTITY, ["lora=null"]).method == "full"


def test_override_without_equals_is_an_error():
    with pytest.raises(UserError, match="not key=value"):
        load_config(IDENTITY, ["train.lr"])


def test_parse_value_reads_yaml_scalars_and_keeps_sentences():
    assert parse_value("2e-4") == pytest.approx(2e-4)
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("null") is None
    assert parse_value("None") is None
    assert parse_value("a: b") == "a: b"
    assert parse_value("") == ""


def test_scientific_notation_in_yaml_is_a_float(tmp_path):
    cfg = load_config(str(write(tmp_path, "train:\n  lr: 5e-5\n")))
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(5e-5)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=rf"{path}:\d+: not valid YAML"):
        load_config(str(path))


def test_config_that_is_not_a_mapping_is_an_error(tmp_path):
    with pytest.raises(UserError, match="mapping of parts"):
        load_config(str(write(tmp_path, "- a\n- b\n")))


def test_missing_file_and_unknown_recipe_are_errors():
    with pytest.raises(UserError, match="does not exist"):
        load_config("nope/missing.yaml")
    with pytest.raises(UserError, match="smollm2_135m_instruct_lora_identity"):
        load_config("smollm2_lora_identity")


def test_data_files_need_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(IDENTITY, ["data.files=[missing/a.jsonl, b.json]"])
    assert [f.path for f in cfg.data.files] == ["missing/a.jsonl", "b.json"]
    assert not (tmp_path / "missing").exists()


def test_dump_config_round_trips(tmp_path):
    cfg = load_config("internlm2_5_chat_7b_qlora_alpaca_e3", ["lr=3e-4", "SYSTEM=two\nlines"])
    path = write(tmp_path, dump_config(cfg), "dumped.yaml")
    assert load_config(str(path)) == cfg


def test_config_name_is_recipe_name_or_file_stem(tmp_path):
    assert config_name(IDENTITY) == IDENTITY
    assert config_name(str(tmp_path / "my_run.yaml")) == "my_run"


def test_list_recipes_has_the_required_recipes():
    assert {
        "internlm2_5_chat_7b_qlora_alpaca_e3",
        "internlm2_5_chat_7b_lora_alpaca_e3",
        "internlm2_5_chat_7b_full_custom_e1",
        "qwen2_5_7b_instruct_qlora_e3",
        "llama3_8b_instruct_qlora_e3",
        IDENTITY,
    } <= set(list_recipes())


def test_data_files_accept_string_mapping_or_list_and_reject_others():
    one = load_config(IDENTITY, ["data.files=x.jsonl"]).data.files
    mapping = load_config(IDENTITY, ["data.files={path: y.json, format: alpaca}"]).data.files
    assert [(f.path, f.format) for f in one] == [("x.jsonl", "auto")]
    assert [(f.path, f.format) for f in mapping] == [("y.json", "alpaca")]
    with pytest.raises(UserError, match="'data.files'"):
        load_config(IDENTITY, ["data.files=5"])


def test_duplicate_key_in_yaml_is_an_error(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-4\n  batch_size: 2\n  lr: 2.0e-4\n")
    with pytest.raises(UserError, match=rf"{path}:4: 'train.lr' is set twice \(also on line 2\)"):
        load_config(str(path))


def test_every_key_is_in_the_config_reference():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "configs.md").read_text(encoding="utf-8")
    missing = [key for key in valid_keys() if f"| `{key}` |" not in doc]
    assert not missing, f"add these keys to docs/configs.md: {missing}"


def test_xtuner_python_config_points_to_convert_cfg(tmp_path):
    path = write(tmp_path, "lr = 2e-4\n", "my_xtuner_cfg.py")
    with pytest.raises(
        UserError, match=r"tunesmith convert-cfg .*my_xtuner_cfg\.py my_xtuner_cfg\.yaml"
    ):
        load_config(str(path))


def test_a_bare_no_for_mixed_precision_is_the_word_not_false():
    # YAML reads `no` as false; `train.mixed_precision=no` was refused as "bad value False"
    assert load_config(IDENTITY, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(IDENTITY, ["mixed_precision=bf16"]).train.mixed_precision == "bf16"
    with pytest.raises(UserError, match="mixed_precision"):
        load_config(IDENTITY, ["train.mixed_precision=yes"])


def test_shuffle_before_pack_is_read_flat_and_nested():
    assert load_config(IDENTITY, ["shuffle_before_pack=true"]).data.shuffle_before_pack
    assert not load_config(IDENTITY, ["data.shuffle_before_pack=false"]).data.shuffle_before_pack
