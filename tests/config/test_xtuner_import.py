"""convert-cfg: XTuner .py configs read with ast, never executed, mapped knob by knob."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.cli.main import main
from tunesmith.config.loader import load_config, load_config_dict
from tunesmith.config.xtuner_import import (
    SYSTEM_TEMPLATES,
    Ref,
    convert_xtuner_config,
    read_xtuner_config,
)

DATA = Path(__file__).parent / "data"
TUTORIAL = DATA / "tutorial_config.py"


def _local_variant() -> Path:
    """The tutorial config as a user edits it: a local model dir and a json data file
    (written at collection, removed when the test process exits)."""
    import atexit
    import shutil
    import tempfile

    src = TUTORIAL.read_text(encoding="utf-8")
    src = src.replace(
        "'/root/finetune/models/internlm2_5-7b-chat'", "'/root/models/internlm2_5-7b-chat'"
    )
    src = src.replace(
        "'/root/finetune/data/assistant_Tuner_change.jsonl'", "'datas/assistant.json'"
    )
    out = Path(tempfile.mkdtemp(prefix="tutorial-local-")) / "tutorial_local_config.py"
    atexit.register(shutil.rmtree, out.parent, ignore_errors=True)
    out.write_text(src, encoding="utf-8")
    return out


TUTORIAL_LOCAL = _local_variant()


@pytest.fixture(scope="module")
def tutorial_cfg():
    data, notes = convert_xtuner_config(TUTORIAL_LOCAL)
    return load_config_dict(data), notes


def test_tutorial_model_and_quantization_come_across(tutorial_cfg):
    cfg, _ = tutorial_cfg
    assert cfg.model.path == "/root/models/internlm2_5-7b-chat"
    assert cfg.model.dtype == "fp16"
    assert cfg.method == "qlora"
    q = cfg.quantization
    assert (q.bits, q.quant_type, q.double_quant, q.compute_dtype) == (4, "nf4", True, "fp16")


def test_tutorial_lora_comes_across(tutorial_cfg):
    cfg, _ = tutorial_cfg
    lora = cfg.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.bias) == (64, 16, 0.1, "none")
    assert lora.target_modules == "all-linear"


def test_tutorial_data_comes_across(tutorial_cfg):
    cfg, _ = tutorial_cfg
    assert [(f.path, f.format) for f in cfg.data.files] == [
        ("datas/assistant.json", "conversation")
    ]
    assert cfg.data.template == "internlm2_chat"
    assert (cfg.data.max_length, cfg.data.pack_to_max_length) == (2048, True)
    assert cfg.data.system == SYSTEM_TEMPLATES["alpaca"]
    assert cfg.data.system.startswith("Below is an instruction")


def test_tutorial_schedule_comes_across(tutorial_cfg):
    cfg, _ = tutorial_cfg
    t = cfg.train
    assert (t.batch_size, t.accumulative_counts, t.max_epochs) == (4, 1, 3)
    assert t.lr == pytest.approx(2e-4)
    assert t.betas == (0.9, 0.999)
    assert (t.weight_decay, t.max_norm, t.warmup_ratio) == (0, 1, 0.03)
    assert t.gradient_checkpointing is True
    assert t.mixed_precision == "fp16"


def test_tutorial_runtime_comes_across(tutorial_cfg):
    cfg, _ = tutorial_cfg
    r = cfg.runtime
    assert (r.save_steps, r.save_total_limit, r.evaluation_freq) == (500, 2, 500)
    assert r.evaluation_inputs == ["请介绍一下你自己", "Please introduce yourself"]
    assert r.logging_steps == 10 and r.tensorboard is True


def test_tutorial_loses_only_what_tunesmith_does_differently(tutorial_cfg):
    _, notes = tutorial_cfg
    joined = "\n".join(notes)
    assert "trust_remote_code" in joined and "use_varlen_attn" in joined
    assert "SYSTEM became data.system" in joined  # same knob, wider use: said so
    assert len(notes) == 3, notes


def test_original_tutorial_config_converts_with_its_jsonl_path():
    data, _ = convert_xtuner_config(TUTORIAL)
    cfg = load_config_dict(data)
    assert cfg.model.path == "/root/finetune/models/internlm2_5-7b-chat"
    assert cfg.data.files[0].path == "/root/finetune/data/assistant_Tuner_change.jsonl"


def test_reader_evaluates_names_arithmetic_and_calls(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(
        "import torch\nfrom xtuner.utils import PROMPT_TEMPLATE\n"
        "a = 2\nb = a * 3 + 1\nb *= 2\nc = dict(x=a, y=[a, (b, -1)])\n"
        "d = torch.bfloat16\nt = PROMPT_TEMPLATE.qwen_chat\nn = 'x' if a > 1 else 'y'\n"
        "m = dict(type=torch.nn.Linear, inner=dict(k=b))\n",
        encoding="utf-8",
    )
    names = read_xtuner_config(path).names
    assert names["b"] == 14
    assert names["c"] == {"x": 2, "y": [2, (14, -1)]}
    assert names["d"] == Ref("torch.bfloat16")
    assert names["t"].last == "qwen_chat"
    assert names["n"] == "x"
    assert names["m"] == {"type": Ref("torch.nn.Linear"), "inner": {"k": 14}}


def test_config_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    src = TUTORIAL_LOCAL.read_text(encoding="utf-8")
    evil = (
        f"import os\nos.system('touch {marker}')\nopen('{marker}', 'w').write('x')\n"
        f"raise SystemExit('configs must not run')\n"
    )
    path = tmp_path / "evil_config.py"
    path.write_text(evil + src, encoding="utf-8")
    data, notes = convert_xtuner_config(path)
    cfg = load_config_dict(data)
    assert not marker.exists()
    assert cfg.model.path == "/root/models/internlm2_5-7b-chat" and cfg.train.lr == pytest.approx(
        2e-4
    )
    assert any("raise SystemExit" in n and "not run" in n for n in notes)


def test_alpaca_map_fn_and_hub_dataset_are_reported(tmp_path):
    src = TUTORIAL_LOCAL.read_text(encoding="utf-8")
    src = src.replace(
        "dataset=dict(type=load_dataset, path='json', data_files=dict(train=alpaca_en_path))",
        "dataset=dict(type=load_dataset, path='tatsu-lab/alpaca')",
    )
    src = src.replace("dataset_map_fn=None", "dataset_map_fn=alpaca_map_fn")
    src = src.replace("lr = 2e-4", "lr = 1e-4\nmystery_knob = 3")
    path = tmp_path / "alpaca.py"
    path.write_text(src, encoding="utf-8")
    data, notes = convert_xtuner_config(path)
    cfg = load_config_dict(data)
    assert [(f.path, f.format) for f in cfg.data.files] == [("tatsu-lab/alpaca", "alpaca")]
    assert cfg.train.lr == pytest.approx(1e-4)
    assert any("tatsu-lab/alpaca" in n and "never downloads" in n for n in notes)
    assert any("mystery_knob" in n for n in notes)


def test_full_finetune_config_has_no_lora(tmp_path):
    src = TUTORIAL_LOCAL.read_text(encoding="utf-8")
    start = src.index("        quantization_config=dict(")
    end = src.index("task_type='CAUSAL_LM'))") + len("task_type='CAUSAL_LM'))")
    src = src[:start] + "        torch_dtype_unused=None))" + src[end:]
    path = tmp_path / "full.py"
    path.write_text(src, encoding="utf-8")
    data, _ = convert_xtuner_config(path)
    cfg = load_config_dict(data)
    assert cfg.method == "full" and cfg.quantization is None and cfg.lora is None


def test_convert_cfg_cli_writes_yaml_that_loads(tmp_path, capsys):
    out = tmp_path / "tutorial.yaml"
    assert main(["convert-cfg", str(TUTORIAL_LOCAL), str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("note: ") == 3
    assert str(out) in printed
    assert load_config(str(out)) == load_config_dict(convert_xtuner_config(TUTORIAL_LOCAL)[0])


def test_convert_cfg_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "x.yaml"
    out.write_text("keep\n", encoding="utf-8")
    assert main(["convert-cfg", str(TUTORIAL_LOCAL), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "keep\n"


def test_convert_cfg_bad_python_is_user_error(tmp_path, capsys):
    src = tmp_path / "broken.py"
    src.write_text("lr = 2e-4\nmodel = dict(\n", encoding="utf-8")
    assert main(["convert-cfg", str(src), str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{src}:" in err and "not valid Python" in err
    assert main(["convert-cfg", str(tmp_path / "missing.py"), str(tmp_path / "o.yaml")]) == 2


def test_template_tunesmith_lacks_becomes_auto_with_a_note(tmp_path):
    src = TUTORIAL_LOCAL.read_text(encoding="utf-8")
    path = tmp_path / "mistral.py"
    path.write_text(
        src.replace("PROMPT_TEMPLATE.internlm2_chat", "PROMPT_TEMPLATE.mistral"), encoding="utf-8"
    )
    data, notes = convert_xtuner_config(path)
    assert load_config_dict(data).data.template == "auto"
    assert any("template mistral" in n for n in notes)


FULL_FINETUNE = """
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR
from torch.optim import AdamW
from transformers import AutoModelForCausalLM
from xtuner.model import SupervisedFinetune
from xtuner.utils import PROMPT_TEMPLATE
from datasets import load_dataset
from xtuner.dataset import process_hf_dataset

pretrained_model_name_or_path = 'internlm/internlm2_5-7b-chat'
use_varlen_attn = True
data_files = ['/data/a.json', '/data/b.json']
prompt_template = PROMPT_TEMPLATE.internlm2_chat
max_length = 32768
lr = 4e-5
max_epochs = 2
warm_up_ratio = 0.025
SYSTEM = ''
model = dict(type=SupervisedFinetune, use_varlen_attn=use_varlen_attn,
             llm=dict(type=AutoModelForCausalLM.from_pretrained,
                      pretrained_model_name_or_path=pretrained_model_name_or_path))
train_dataset = dict(type=process_hf_dataset,
                     dataset=dict(type=load_dataset, path='json', data_files=data_files),
                     max_length=max_length, dataset_map_fn=None, pack_to_max_length=True)
train_dataloader = dict(batch_size=1, dataset=train_dataset)
optim_wrapper = dict(type=AmpOptimWrapper, optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.95),
                     weight_decay=0.01), clip_grad=dict(max_norm=1), accumulative_counts=1,
                     loss_scale='dynamic')
param_scheduler = [
    dict(type='LinearLR', start_factor=1 / 40, by_epoch=True, begin=0,
         end=warm_up_ratio * max_epochs, convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=lr * 0.15, by_epoch=True,
         begin=warm_up_ratio * max_epochs, end=max_epochs, convert_to_iter_based=True),
]
"""


def test_full_finetune_custom_dataset_style_config(tmp_path):
    path = tmp_path / "full_custom.py"
    path.write_text(FULL_FINETUNE, encoding="utf-8")
    data, notes = convert_xtuner_config(path)
    cfg = load_config_dict(data)
    assert cfg.method == "full"
    assert [(f.path, f.format) for f in cfg.data.files] == [
        ("/data/a.json", "conversation"),
        ("/data/b.json", "conversation"),
    ]
    assert cfg.data.max_length == 32768 and cfg.data.system is None
    assert cfg.train.warmup_ratio == pytest.approx(0.025)  # read back from the LinearLR's end
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.betas) == (4e-5, 0.01, (0.9, 0.95))
    assert cfg.train.mixed_precision == "fp16"
    joined = "\n".join(notes)
    assert "eta_min" in joined
    assert "warm_up_ratio" not in joined and "use_varlen_attn" not in joined
