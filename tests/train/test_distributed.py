"""Distributed setup without GPUs: strategy names, the DeepSpeed JSON, the torchrun re-launch."""

from __future__ import annotations

import json
import sys

import pytest

from tunesmith.config.schema import Config
from tunesmith.errors import UserError
from tunesmith.train import distributed as dist


def make_cfg(**train) -> Config:
    return Config.model_validate({"train": train})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("deepspeed_zero1", "zero1"),
        ("deepspeed_zero2", "zero2"),
        ("deepspeed_zero2_offload", "zero2_offload"),
        ("deepspeed_zero3", "zero3"),
        ("deepspeed_zero3_offload", "zero3_offload"),
        ("zero2", "zero2"),
        ("ZeRO3", "zero3"),
        ("fsdp", "fsdp2"),
        ("fsdp2", "fsdp2"),
    ],
)
def test_strategy_names_accept_xtuner_and_short_names(name, expected):
    assert dist.strategy_name(name) == expected


def test_unknown_strategy_is_a_user_error_listing_the_names():
    with pytest.raises(UserError, match="deepspeed_zero2"):
        dist.strategy_name("zero4")


def test_zero2_json_takes_batch_accumulation_and_clipping_from_the_config():
    cfg = make_cfg(batch_size=4, accumulative_counts=16, max_norm=0.5)
    ds = dist.deepspeed_config("deepspeed_zero2", cfg, precision="bf16")
    assert ds["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in ds["zero_optimization"]
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 16
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is True
    assert ds["fp16"]["enabled"] is False
    assert "optimizer" not in ds and "scheduler" not in ds
    json.dumps(ds)  # a plain JSON document


def test_zero3_offload_offloads_optimizer_and_parameters():
    ds = dist.deepspeed_config("zero3_offload", make_cfg(), precision="fp16")
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert ds["zero_force_ds_cpu_optimizer"] is False  # torch's AdamW on the offloaded state
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False


def test_zero2_offload_offloads_only_the_optimizer():
    zero = dist.deepspeed_config("deepspeed_zero2_offload", make_cfg())["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in zero


def test_user_json_keeps_its_values_and_fills_auto_ones(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 1},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": 8,
                "bf16": {"enabled": "auto"},
            }
        )
    )
    ds = dist.deepspeed_config(str(path), make_cfg(batch_size=2, accumulative_counts=4))
    assert ds["zero_optimization"] == {"stage": 1}
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 8
    assert ds["bf16"]["enabled"] is True


def test_user_json_with_an_optimizer_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(UserError, match="optimizer"):
        dist.deepspeed_config(str(path), make_cfg())


def test_broken_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2,}\n}')
    with pytest.raises(UserError, match=r"ds\.json:2"):
        dist.deepspeed_config(str(path), make_cfg())


def test_missing_json_file_says_what_to_give():
    with pytest.raises(UserError, match="not found"):
        dist.deepspeed_config("/nonexistent/ds.json", make_cfg())


@pytest.mark.parametrize(
    ("wanted", "cuda", "bf16", "expected"),
    [
        ("auto", False, False, "no"),
        ("bf16", False, True, "bf16"),  # asked for: CPU autocast (was dropped silently)
        ("no", False, True, "no"),
        ("auto", True, True, "bf16"),
        ("auto", True, False, "fp16"),
        ("fp16", True, True, "fp16"),
    ],
)
def test_mixed_precision_follows_the_device(wanted, cuda, bf16, expected):
    assert dist.mixed_precision(make_cfg(mixed_precision=wanted), cuda=cuda, bf16=bf16) == expected


def test_fp16_on_a_cpu_is_refused():
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        dist.mixed_precision(make_cfg(mixed_precision="fp16"), cuda=False)


def test_accelerator_kwargs_plain_run_has_no_plugins():
    kwargs = dist.accelerator_kwargs(make_cfg(accumulative_counts=3), cuda=False)
    # cpu=True: under torchrun on a CPU the processes join one gloo group instead of each
    # training alone (accelerate only does that when told it runs on the CPU)
    assert kwargs == {"mixed_precision": "no", "gradient_accumulation_steps": 3, "cpu": True}


def test_accelerator_kwargs_for_zero2_carry_the_generated_json():
    kwargs = dist.accelerator_kwargs(
        make_cfg(batch_size=2), "deepspeed_zero2", cuda=True, bf16=True, world_size=2
    )
    plugin = kwargs["deepspeed_plugin"]
    assert plugin.zero_stage == 2
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 2
    assert kwargs["mixed_precision"] == "bf16"


def test_zero_without_offload_in_one_process_trains_without_deepspeed():
    kwargs = dist.accelerator_kwargs(
        make_cfg(), "deepspeed_zero2", cuda=True, bf16=True, world_size=1
    )
    assert "deepspeed_plugin" not in kwargs
    assert kwargs["mixed_precision"] == "bf16"


def test_zero_offload_in_one_process_keeps_deepspeed():
    kwargs = dist.accelerator_kwargs(
        make_cfg(), "zero2_offload", cuda=True, bf16=True, world_size=1
    )
    assert kwargs["deepspeed_plugin"].zero_stage == 2


def test_accelerator_kwargs_for_fsdp2_use_fsdp_version_2():
    kwargs = dist.accelerator_kwargs(
        Config.model_validate({"lora": None}), "fsdp2", cuda=True, bf16=True
    )
    assert kwargs["fsdp_plugin"].fsdp_version == 2
    assert "deepspeed_plugin" not in kwargs


def test_make_accelerator_without_deepspeed_installed_says_how(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"tunesmith\[deepspeed\]"):
        dist.make_accelerator(make_cfg(), deepspeed="zero2")


def test_relaunch_command_runs_tunesmith_under_torchrun():
    cmd = dist.relaunch_command(
        ["train", "cfg.yaml", "--deepspeed", "deepspeed_zero2"],
        {"NPROC_PER_NODE": "2"},
        python="py",
    )
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd
    assert cmd[cmd.index("-m", 3) :] == [
        "-m",
        "tunesmith.cli.main",
        "train",
        "cfg.yaml",
        "--deepspeed",
        "deepspeed_zero2",
    ]


def test_relaunch_command_multi_node_reads_xtuner_variables():
    env = {
        "NPROC_PER_NODE": "8",
        "NNODES": "2",
        "NODE_RANK": "1",
        "ADDR": "10.0.0.1",
        "PORT": "29600",
    }
    cmd = dist.relaunch_command(["cfg.yaml"], env, python="py")
    for flag in ("--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29600"):
        assert flag in cmd
    assert cmd[-2:] == ["train", "cfg.yaml"]


@pytest.mark.parametrize(
    "env",
    [{}, {"NPROC_PER_NODE": "1"}, {"NPROC_PER_NODE": "2", "LOCAL_RANK": "0"}],
    ids=["unset", "one", "already-a-worker"],
)
def test_no_relaunch_for_a_single_process_or_inside_torchrun(env):
    assert dist.relaunch_command(["train", "cfg.yaml"], env) is None


def test_relaunch_with_a_bad_process_count_names_the_variable():
    with pytest.raises(UserError, match="NPROC_PER_NODE"):
        dist.relaunch_command(["train"], {"NPROC_PER_NODE": "two"})


def test_maybe_relaunch_returns_none_without_nproc(monkeypatch):
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)
    monkeypatch.delenv("NNODES", raising=False)
    assert dist.maybe_relaunch_distributed(["train", "cfg.yaml"]) is None


def test_maybe_relaunch_returns_the_launchers_exit_code(monkeypatch):
    seen = {}

    class FakePopen:
        pid = 1

        def __init__(self, cmd, **kwargs):
            seen["cmd"], seen["env"] = cmd, kwargs["env"]

        def wait(self):
            return 3

    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(dist.subprocess, "Popen", FakePopen)
    assert dist.maybe_relaunch_distributed(["train", "cfg.yaml"]) == 3
    assert "--nproc_per_node=2" in seen["cmd"]
    assert seen["env"][dist.LAUNCHED_ENV] == "1"


def test_single_process_env_makes_a_world_of_one():
    env = dist.single_process_env({})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("0", "0", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(env["MASTER_PORT"]) < 65536


def test_single_process_env_leaves_a_launched_process_alone():
    assert dist.single_process_env({"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}) == {}


@pytest.mark.parametrize("name", ["deepspeed_zero3", "zero3_offload", "fsdp2"])
def test_weight_sharding_with_qlora_is_refused_with_advice(name):
    cfg = Config.model_validate({"quantization": {"bits": 4}})
    with pytest.raises(UserError, match="zero2"):
        dist.accelerator_kwargs(cfg, name, cuda=True, bf16=True, world_size=2)


@pytest.mark.parametrize("name", ["zero2", "zero3_offload"])
def test_deepspeed_without_gpus_is_refused_naming_ddp_and_fsdp2(name):
    full = Config.model_validate({"lora": None})
    with pytest.raises(UserError, match=f"--deepspeed {name} needs CUDA GPUs.*DDP.*fsdp2"):
        dist.accelerator_kwargs(full, name, cuda=False, world_size=2)


def test_fsdp2_runs_on_cpu_processes():
    # torch's FSDP2 shards over gloo; tests/train/test_multiprocess.py trains with it
    kwargs = dist.accelerator_kwargs(make_cfg(), "fsdp2", cuda=False, world_size=2)
    assert kwargs["cpu"] is True and kwargs["mixed_precision"] == "no"
    assert kwargs["fsdp_plugin"].fsdp_version == 2


def test_zero2_with_qlora_is_allowed():
    cfg = Config.model_validate({"quantization": {"bits": 4}})
    kwargs = dist.accelerator_kwargs(cfg, "deepspeed_zero2", cuda=True, bf16=True, world_size=2)
    assert kwargs["deepspeed_plugin"].zero_stage == 2


@pytest.mark.parametrize("name", ["deepspeed_zero3", "zero3_offload"])
def test_zero3_with_lora_on_two_gpus_is_refused_naming_fsdp2_and_zero2(name):
    cfg = Config.model_validate({"lora": {"r": 8}})
    with pytest.raises(UserError, match="with LoRA on several processes.*fsdp2.*zero2"):
        dist.accelerator_kwargs(cfg, name, cuda=True, bf16=True, world_size=2)


def test_the_acceptance_run_may_try_zero3_lora(monkeypatch):
    cfg = Config.model_validate({"lora": {"r": 8}})
    monkeypatch.setenv(dist.TRY_REFUSED_ENV, "zero3")
    assert dist.check_strategy(cfg, "zero3", cuda=True, world_size=2) == "zero3"
    with pytest.raises(UserError):  # only the one named
        dist.check_strategy(cfg, "zero3_offload", cuda=True, world_size=2)


@pytest.mark.parametrize("cuda", [True, False], ids=["gpus", "cpu"])
def test_fsdp2_with_lora_is_allowed(cuda):
    lora = Config.model_validate({"lora": {"r": 8}})
    kwargs = dist.accelerator_kwargs(lora, "fsdp2", cuda=cuda, bf16=True, world_size=2)
    assert kwargs["fsdp_plugin"].fsdp_version == 2


def test_the_launcher_refuses_lora_with_zero3_from_nproc_per_node(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    cfg = Config.model_validate({"lora": {"r": 8}})
    with pytest.raises(UserError, match="zero2"):
        dist.check_strategy(cfg, "zero3", cuda=True)


def test_zero3_lora_on_one_process_and_fsdp2_full_are_allowed():
    lora = Config.model_validate({"lora": {"r": 8}})
    assert dist.accelerator_kwargs(lora, "zero3", cuda=True, bf16=True, world_size=1)
    full = Config.model_validate({"lora": None})
    assert "fsdp_plugin" in dist.accelerator_kwargs(
        full, "fsdp2", cuda=True, bf16=True, world_size=2
    )


# in a process of its own (accelerate's state is one per process): a world of one on gloo
FSDP2_GENERATE = """
import os, sys
from tunesmith.train.distributed import single_process_env
os.environ.update(single_process_env(os.environ))
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from tunesmith.config.schema import Config
from tunesmith.train import distributed as dist

cfg = Config.model_validate({"lora": {"r": 4}, "train": {"deepspeed": "fsdp2"}})
accelerator = dist.make_accelerator(cfg)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
model, optimizer = accelerator.prepare(model, optimizer)
if sys.argv[2] == "registered":
    dist.gather_weights_in_generate(model, accelerator)
ids = torch.tensor([[1, 2, 3]])
with torch.no_grad():
    out = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
print("generated", out.shape[1] - ids.shape[1])
"""


@pytest.mark.slow  # a process each: 60 s each, measured on 2 cores shared with other runs
@pytest.mark.parametrize("how", ["registered", "plain"])
def test_fsdp2_peft_generate_gathers_the_root_units_weights(tiny_model_dir, how):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-c", FSDP2_GENERATE, str(tiny_model_dir), how],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    if how == "registered":
        assert done.returncode == 0, done.stderr[-2000:]
        assert "generated 2" in done.stdout
    else:
        # why the registration: PeftModel.generate calls the inner model's forward, past the
        # root unit's hooks, so the weights the root holds (the final norm) stay shards. If
        # this starts to generate, torch / peft / accelerate fixed it upstream.
        assert done.returncode != 0
        assert "got mixed torch.Tensor and DTensor" in done.stderr


@pytest.mark.parametrize(("device", "selected"), [("cuda", []), ("cuda:1", [1])])
def test_make_accelerator_selects_an_indexed_gpu_only(monkeypatch, device, selected):
    """One process gets a bare "cuda" from accelerate: torch.cuda.set_device refused it
    (ValueError in the train stage of `tunesmith identity` on an H200); a torchrun worker's
    "cuda:N" is still made the current GPU."""
    import accelerate
    import torch
    from torch.cuda._utils import _get_device_index

    class FakeAccelerator:
        def __init__(self, **kwargs):
            self.device = torch.device(device)

    calls = []
    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(_get_device_index(d)))
    assert dist.make_accelerator(make_cfg()).device == torch.device(device)
    assert calls == selected
