"""The accelerate internals in tunesmith/compat/accelerate.py still behave as accelerate does.

A failure here means an accelerate release changed one of them: update that module (written
against accelerate 1.15) and the version range in pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys

import accelerate

WHERE = f"accelerate {accelerate.__version__}: update src/tunesmith/compat/accelerate.py"

# in a process of its own: accelerate's state is one per process
SCRIPT = """
import os
from tunesmith.train.distributed import single_process_env
os.environ.update(single_process_env(os.environ))
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from tunesmith.compat.accelerate import use_fsdp_on_cpu

plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
print("alone", accelerator.distributed_type.name)
use_fsdp_on_cpu(accelerator, plugin)
AcceleratorState()  # a later state (peft, transformers make them) copies PartialState's
model = torch.nn.Sequential(torch.nn.Linear(4, 4))
model, _ = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
print("set", accelerator.distributed_type.name, isinstance(model, FSDPModule))
"""


def test_fsdp_on_cpu_needs_the_state_set_and_then_prepares_with_fsdp2():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    # accelerate now runs FSDP on a CPU itself: use_fsdp_on_cpu can go
    assert "alone MULTI_CPU" in lines, f"{WHERE}: {lines}"
    assert "set FSDP True" in lines, f"{WHERE}: {lines}"
