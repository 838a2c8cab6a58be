"""accelerate internals tunesmith relies on (written against accelerate 1.15).

- FSDP2 in CPU processes. torch's `fully_shard` runs on CPU tensors over gloo, but
  `AcceleratorState.__init__` selects `DistributedType.FSDP` only for GPU-like devices: a CPU
  run stays `MULTI_CPU` and its `fsdp_plugin` is dropped, so `prepare` would wrap the model in
  DDP. `use_fsdp_on_cpu` sets what that branch would have set: the distributed type in both
  shared states (every new `AcceleratorState` copies `PartialState`'s, accelerate's own code
  writes both) and the plugin. Without mixed precision (CPU runs have none) the plugin needs
  nothing else.
"""

from __future__ import annotations

import accelerate.state as accelerate_state


def use_fsdp_on_cpu(accelerator, fsdp_plugin) -> None:
    """Make `accelerator` (made with `cpu=True` under torchrun) prepare models with FSDP2."""
    fsdp = accelerate_state.DistributedType.FSDP
    state = accelerator.state
    state.fsdp_plugin = fsdp_plugin
    state.distributed_type = fsdp
    accelerate_state.PartialState._shared_state["distributed_type"] = fsdp
