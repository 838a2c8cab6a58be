"""`tunesmith convert pth_to_hf`: checkpoints -> PEFT adapter dirs and full HF model dirs."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import SYSTEM, logits_of

from tunesmith.cli.main import main


def _export(config_path, ckpt, out, *flags) -> int:
    return main(["convert", "pth_to_hf", str(config_path), str(ckpt), str(out), *flags])


def test_exported_adapter_gives_the_trained_models_logits(trained_lora, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config_path, work_dir, recipe = trained_lora
    assert _export(config_path, work_dir, tmp_path / "adapter", "--fp32") == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_logits = logits_of(base, tokenizer)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    trained = recipe.accelerator.unwrap_model(recipe.model)
    expected = logits_of(trained, tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-3)  # training changed the model
    torch.testing.assert_close(logits_of(loaded, tokenizer), expected, atol=1e-5, rtol=1e-5)


def test_default_export_is_half_precision_and_close(trained_lora, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config_path, work_dir, recipe = trained_lora
    assert _export(config_path, work_dir, tmp_path / "adapter") == 0
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    expected = logits_of(recipe.accelerator.unwrap_model(recipe.model), tokenizer)
    torch.testing.assert_close(logits_of(loaded, tokenizer), expected, atol=2e-2, rtol=1e-2)


def test_adapter_dir_has_config_base_tokenizer_template_and_resolved_config(
    trained_lora, tiny_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    config_path, work_dir, _ = trained_lora
    out = tmp_path / "adapter"
    assert _export(config_path, work_dir, out) == 0
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]) == Path(tiny_model_dir).resolve()
    saved = yaml.safe_load((out / "tunesmith_config.yaml").read_text())
    assert saved["data"]["system"] == SYSTEM and saved["lora"]["r"] == 8
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert SYSTEM in prompt  # the training default system prompt is in the template
    assert "SmolLM" not in prompt


@pytest.mark.parametrize("which", ["iter", "work_dir", "latest"])
def test_checkpoint_can_be_named_by_iter_dir_work_dir_or_latest(
    trained_lora, tmp_path, which, monkeypatch
):
    config_path, work_dir, recipe = trained_lora
    ckpt = {"iter": work_dir / "iter_3", "work_dir": work_dir, "latest": "latest"}[which]
    assert _export(config_path, ckpt, tmp_path / "out") == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_missing_checkpoint_is_a_user_error(trained_lora, tmp_path, capsys):
    config_path, _, _ = trained_lora
    assert _export(config_path, tmp_path / "nope", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_is_never_overwritten(trained_lora, tmp_path, capsys):
    config_path, work_dir, _ = trained_lora
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export(config_path, work_dir, out) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_qlora_adapter_exports_without_bitsandbytes(trained_lora, tmp_path, monkeypatch):
    """A QLoRA checkpoint holds plain float adapter tensors: exporting needs no bnb, no GPU."""
    import shutil

    config_path, work_dir, _ = trained_lora
    qwork = tmp_path / "qlora-work"
    shutil.copytree(work_dir / "iter_3", qwork / "iter_3")
    (qwork / "latest").write_text("iter_3\n")
    cfg = yaml.safe_load((qwork / "iter_3" / "config.yaml").read_text())
    cfg["quantization"] = {"bits": 4}
    (qwork / "iter_3" / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # any import of it now fails
    assert _export(config_path, qwork, tmp_path / "out") == 0
    saved = yaml.safe_load((tmp_path / "out" / "tunesmith_config.yaml").read_text())
    assert saved["quantization"]["bits"] == 4


def test_full_finetune_exports_sharded_model_that_loads(tiny_model_dir, smollm_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.config.loader import dump_config
    from tunesmith.config.schema import Config

    cfg = Config.model_validate(
        {"model": {"path": str(tiny_model_dir)}, "lora": None, "data": {"system": SYSTEM},
         "runtime": {"work_dir": str(tmp_path / "work")}}
    )  # fmt: skip
    ckpt = tmp_path / "work" / "iter_5"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(ckpt / "model")
    (ckpt / "config.yaml").write_text(dump_config(cfg))
    (ckpt / "trainer_state.json").write_text('{"step": 5}')
    config_path = tmp_path / "full.yaml"
    config_path.write_text(dump_config(cfg))

    out = tmp_path / "hf"
    assert _export(config_path, ckpt, out, "--fp32", "--max-shard-size", "1MB") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(
        logits_of(reloaded, smollm_tokenizer), logits_of(model, smollm_tokenizer)
    )
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert smollm_tokenizer.convert_tokens_to_ids("<|im_end|>") in eos


def test_a_checkpoint_with_nan_weights_is_not_exported(trained_lora, tmp_path, capsys):
    """A diverged run's adapter (NaN values) is refused by pth_to_hf and by merge, naming the
    tensor; nothing is written (pth_to_hf exported it with exit 0)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunesmith.train import checkpoint as ckpt

    config_path, work_dir, _ = trained_lora
    poisoned = tmp_path / "work" / "iter_9"
    shutil.copytree(ckpt.find_latest(work_dir), poisoned)
    weights = poisoned / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights)
    out = tmp_path / "out"
    assert main(["convert", "pth_to_hf", str(config_path), str(poisoned), str(out)]) == 2
    assert name in capsys.readouterr().err and not out.exists()
    # the adapter as merge reads it (a PEFT dir with the same weights)
    assert (
        main(["convert", "pth_to_hf", str(config_path), str(ckpt.find_latest(work_dir)), str(out)])
        == 0
    )
    save_file(tensors, out / "adapter_model.safetensors")
    merged = tmp_path / "merged"
    base = yaml.safe_load((poisoned / "config.yaml").read_text())["model"]["path"]
    capsys.readouterr()
    assert main(["convert", "merge", base, str(out), str(merged)]) == 2
    assert "NaN" in capsys.readouterr().err and not merged.exists()


def test_a_config_that_differs_from_the_checkpoints_is_named_not_silently_ignored(
    trained_lora, tmp_path, capsys
):
    # XTuner exports with the CONFIG it is given; tunesmith exports with the config the
    # checkpoint was trained with (it holds the run's overrides) and says where they differ
    config_path, work_dir, _ = trained_lora
    cfg = yaml.safe_load(Path(config_path).read_text())
    cfg.setdefault("lora", {})["r"] = 3
    data = cfg.setdefault("data", {})
    data.pop("prompt_template", None)
    data["template"] = "chatml"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert _export(other, work_dir, tmp_path / "adapter") == 0
    out = capsys.readouterr().out
    assert "note:" in out and "lora.r: 3 (CONFIG)" in out and "data.template: 'chatml'" in out
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] != 3  # the checkpoint's shape is what is exported

    capsys.readouterr()
    assert _export(config_path, work_dir, tmp_path / "same") == 0
    assert "note:" not in capsys.readouterr().out
