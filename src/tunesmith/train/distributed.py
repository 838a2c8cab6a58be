"""Several GPUs: the accelerate setup (DDP, DeepSpeed ZeRO-1/2/3, FSDP2) and the torchrun re-launch.

Two ways to start a distributed run, both ending in one process per GPU:

    torchrun --nproc_per_node 2 -m tunesmith.cli.main train CONFIG --deepspeed zero2
    NPROC_PER_NODE=2 tunesmith train CONFIG --deepspeed deepspeed_zero2    # as XTuner users do

`maybe_relaunch_distributed` turns the second into the first (NNODES, NODE_RANK, ADDR and PORT
are read as XTuner reads them). `make_accelerator` builds the `Accelerator` inside each process.

Gradient accumulation belongs to accelerate here: the Accelerator is made with
`gradient_accumulation_steps = train.accumulative_counts`, so the recipe runs each micro-batch
inside `accelerator.accumulate(model)`; `accelerator.backward` (and DeepSpeed's engine) divide
the loss by that count, so a loss already normalised by the step's token count
(`num_items_in_batch`) is passed as `loss * accelerator.gradient_accumulation_steps`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from tunesmith.errors import UserError

log = logging.getLogger(__name__)

# XTuner's names (deepspeed_zero2, ...) and the short ones (zero2, ...): (ZeRO stage, offload)
ZERO_PRESETS: dict[str, tuple[int, bool]] = {
    "zero1": (1, False),
    "zero2": (2, False),
    "zero2_offload": (2, True),
    "zero3": (3, False),
    "zero3_offload": (3, True),
}
FSDP_NAMES = ("fsdp", "fsdp2")


def strategy_name(name: str) -> str:
    """The canonical strategy for a `--deepspeed` value: a ZeRO preset, `fsdp2`, or a JSON path."""
    key = name.strip().lower().removeprefix("deepspeed_")
    if key in ZERO_PRESETS:
        return key
    if key in FSDP_NAMES:
        return "fsdp2"
    if name.endswith(".json") or Path(name).is_file():
        return name
    valid = ", ".join([*ZERO_PRESETS, *(f"deepspeed_{k}" for k in ZERO_PRESETS), "fsdp2"])
    raise UserError(
        f"--deepspeed '{name}' is not a known strategy: use one of {valid} or a JSON path"
    )


def mixed_precision(cfg, cuda: bool | None = None, bf16: bool | None = None) -> str:
    """accelerate's mixed_precision for `train.mixed_precision`: auto = bf16 (fp16 on GPUs
    without bf16), no on CPU. `cuda` / `bf16` default to what this machine has.

    On a CPU an explicit bf16 is kept (autocast to bf16, fp32 master weights: faster on CPUs
    with bf16 matrix units); fp16 there is refused (CPU autocast has no fp16 loss scaling)."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        if cfg.train.mixed_precision == "fp16":
            raise UserError("train.mixed_precision=fp16 needs a GPU: on a CPU use bf16 or no")
        return "bf16" if cfg.train.mixed_precision == "bf16" else "no"
    if cfg.train.mixed_precision != "auto":
        return cfg.train.mixed_precision
    bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16
    return "bf16" if bf16 else "fp16"


def deepspeed_config(name_or_path: str, cfg, precision: str = "bf16") -> dict:
    """The DeepSpeed JSON for a preset name or a user's file, with tunesmith's values filled in.

    Batch size, accumulation, clipping and precision come from `cfg` (the config's own numbers
    win over a file's "auto"); the optimizer stays tunesmith's AdamW.
    """
    name = strategy_name(name_or_path)
    if name in ZERO_PRESETS:
        ds = _zero_preset(*ZERO_PRESETS[name])
    elif name == "fsdp2":
        raise UserError("--deepspeed fsdp2 is FSDP, not DeepSpeed: it has no DeepSpeed config")
    else:
        ds = _read_json(Path(name))
    fills = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.accumulative_counts,
        "gradient_clipping": cfg.train.max_norm,
    }
    for key, value in fills.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds.pop("train_batch_size", None)  # derived from the two above and the world size
    for key, enabled in (("bf16", precision == "bf16"), ("fp16", precision == "fp16")):
        section = ds.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = enabled
    ds["zero_allow_untested_optimizer"] = True
    return ds


def _zero_preset(stage: int, offload: bool) -> dict:
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds = {
        "zero_optimization": zero,
        "fp16": {"enabled": "auto", "initial_scale_power": 16},
        "bf16": {"enabled": "auto"},
    }
    if offload:
        # torch's AdamW (fused on CPU) steps the offloaded fp32 state; DeepSpeed's own CPU Adam
        # needs its C++ ops compiled, and DeepSpeed refuses another optimizer unless told
        ds["zero_force_ds_cpu_optimizer"] = False
    return ds


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(
            f"--deepspeed {path}: file not found; give a JSON path or a name like zero2"
        )
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(ds, dict):
        raise UserError(f"{path}: a DeepSpeed config must be a JSON object")
    if "optimizer" in ds or "scheduler" in ds:
        raise UserError(
            f"{path}: remove the 'optimizer' / 'scheduler' sections; tunesmith's AdamW and "
            "schedule come from the config's train part"
        )
    return ds


def accelerator_kwargs(
    cfg,
    deepspeed: str | None = None,
    cuda: bool | None = None,
    bf16: bool | None = None,
    world_size: int | None = None,
) -> dict:
    """Keyword arguments for `accelerate.Accelerator` (plugins included).

    A ZeRO preset without offload in a world of one process is dropped: ZeRO shards state
    across processes, so alone it only adds copies (measured ~15% slower on one H200).
    """
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    precision = mixed_precision(cfg, cuda, bf16)
    kwargs: dict = {
        "mixed_precision": precision,
        "gradient_accumulation_steps": cfg.train.accumulative_counts,
    }
    if not cuda:
        kwargs["cpu"] = True  # under torchrun: processes join one gloo group, not train alone
    strategy = deepspeed or cfg.train.deepspeed
    if not strategy:
        return kwargs
    world_size = _env_int(os.environ, "WORLD_SIZE", 1) if world_size is None else world_size
    name = check_strategy(cfg, strategy, cuda, world_size)
    if world_size == 1 and name in ZERO_PRESETS and not ZERO_PRESETS[name][1]:
        log.warning(
            "--deepspeed %s: one process, nothing for ZeRO to shard; training without DeepSpeed "
            "(zero2_offload / zero3_offload move optimizer state to CPU memory)",
            strategy,
        )
        return kwargs
    if name == "fsdp2":
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            activation_checkpointing=False,  # the recipe's gradient checkpointing does this
            cpu_ram_efficient_loading=False,
        )
        return kwargs
    from accelerate.utils import DeepSpeedPlugin

    kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
        hf_ds_config=deepspeed_config(name, cfg, precision)
    )
    return kwargs


def check_strategy(
    cfg, strategy: str | None = None, cuda: bool | None = None, world_size: int | None = None
) -> str | None:
    """The canonical strategy of `strategy` (else `train.deepspeed`), or a UserError for one
    that cannot run here: checked by the launcher too, before any process starts."""
    import torch

    strategy = strategy or cfg.train.deepspeed
    if not strategy:
        return None
    name = strategy_name(strategy)
    _check_sharding(name, cfg, _launch_world_size(os.environ) if world_size is None else world_size)
    if name != "fsdp2" and not (torch.cuda.is_available() if cuda is None else cuda):
        raise UserError(
            f"--deepspeed {strategy} needs CUDA GPUs and none was found (DeepSpeed runs on GPUs "
            "only); on a CPU leave it unset (several processes, NPROC_PER_NODE=2, then train with "
            "DDP) or use fsdp2"
        )
    return name


def check_resume_world_size(resume: str | None, work_dir: str | Path) -> None:
    """In the launcher, before any process starts: a sharded checkpoint that `--resume` names
    (or `auto` finds) must be resumed by as many processes as wrote it (exit 2, one line;
    otherwise every worker would fail alone and torchrun exit 1)."""
    from tunesmith.train import checkpoint as ckpt

    path = ckpt.resolve_resume(resume, work_dir) if resume else None
    if path is not None:
        ckpt.check_world_size(ckpt.read_state(path), _launch_world_size(os.environ), path)


def _check_sharding(name: str, cfg, world_size: int) -> None:
    """Refuse what the weight-sharding engines (ZeRO-3, FSDP2) cannot train, before any process
    starts or any model loads.

    4-bit weights are stored as packed bytes, which neither engine can shard. LoRA under ZeRO-3
    on 2 GPUs stopped on an AssertionError in its first step (H200 x2, 2026-11-30,
    bench/gpu_accept.sh, docs/gpu.md), not reproduced without GPUs: refused until the
    acceptance run passes (`TUNESMITH_TRY_REFUSED=zero3` lets that run try it). ZeRO-3 on one process runs without DeepSpeed (nothing to shard), so
    LoRA is allowed there. FSDP2 trains LoRA (its failure was the chat samples: see
    `gather_weights_in_generate`).
    """
    shards_weights = name == "fsdp2" or ZERO_PRESETS.get(name, (0, False))[0] == 3
    if not shards_weights:
        return
    if cfg.quantization is not None:
        raise UserError(
            f"--deepspeed {name} shards the model weights, which 4-bit QLoRA weights (packed "
            "bytes) do not allow: use zero2 or zero2_offload for QLoRA, or set "
            "quantization: null to train LoRA with it"
        )
    if cfg.lora is not None and name != "fsdp2" and world_size > 1 and not _trying(name):
        raise UserError(
            f"--deepspeed {name} with LoRA on several processes does not train yet (DeepSpeed "
            "ZeRO-3 stopped on an AssertionError in its first step on 2 GPUs): use fsdp2, which "
            "shards the weights too, or zero2 / zero2_offload, which shard the optimizer state "
            f"and gradients (a LoRA model's weights fit each GPU), or train method full with {name}"
        )


# The GPU acceptance run (bench/gpu_accept.py) sets it to try a refused combination (zero3 /
# zero3_offload with LoRA on several GPUs): its rows decide whether the refusal goes.
TRY_REFUSED_ENV = "TUNESMITH_TRY_REFUSED"


def _trying(name: str) -> bool:
    return name in os.environ.get(TRY_REFUSED_ENV, "").split(",")


def _launch_world_size(env: Mapping[str, str]) -> int:
    """Processes in this run: WORLD_SIZE inside a worker, NPROC_PER_NODE x NNODES in the launcher."""
    if "WORLD_SIZE" in env:
        return _env_int(env, "WORLD_SIZE", 1)
    return _env_int(env, "NPROC_PER_NODE", 1) * _env_int(env, "NNODES", 1)


def make_accelerator(cfg, deepspeed: str | None = None):
    """The `Accelerator` for this process: DDP under torchrun, DeepSpeed or FSDP2 when asked.

    `deepspeed` (the CLI's `--deepspeed`) overrides `train.deepspeed`. Make it before loading
    the model: it selects this process's GPU (`accelerator.device`).
    """
    strategy = deepspeed or cfg.train.deepspeed
    kwargs = accelerator_kwargs(cfg, deepspeed)
    if "deepspeed_plugin" in kwargs:
        try:
            import deepspeed as _  # noqa: F401
        except ImportError as err:
            raise UserError(
                f"--deepspeed {strategy} needs DeepSpeed: pip install 'tunesmith[deepspeed]'"
            ) from err
    if "deepspeed_plugin" in kwargs or "fsdp_plugin" in kwargs:
        # `tunesmith train CFG --deepspeed zero2_offload` on one GPU, as in the XTuner tutorial:
        # DeepSpeed and FSDP want a process group even for one process
        for key, value in single_process_env(os.environ).items():
            os.environ.setdefault(key, value)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # torch's own timeout comes a minute after CollectiveWatchdog's, which names rank and step
    timeout = timedelta(seconds=cfg.runtime.collective_timeout + 60)
    accelerator = Accelerator(**kwargs, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    if "fsdp_plugin" in kwargs and accelerator.device.type == "cpu":
        from tunesmith.compat.accelerate import use_fsdp_on_cpu

        use_fsdp_on_cpu(accelerator, kwargs["fsdp_plugin"])  # torch's FSDP2 over gloo
    if accelerator.device.type == "cuda" and accelerator.device.index is not None:
        # "cuda" without an index (kernels, new tensors) means this process's GPU. One process
        # gets a bare "cuda" from accelerate, already the current GPU: torch.cuda.set_device
        # refuses it (ValueError, seen on an H200 in `tunesmith identity` with a 7B recipe)
        torch.cuda.set_device(accelerator.device)
    return accelerator


def engine_name(accelerator) -> str | None:
    """The engine that shards this run's state: a ZeRO preset, `fsdp2`, a DeepSpeed JSON path,
    or None (one process, or DDP: every process holds all of it)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp2"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        zero = plugin.deepspeed_config.get("zero_optimization", {})
        offload = "offload_optimizer" in zero
        return f"zero{plugin.zero_stage}" + ("_offload" if offload else "")
    return None


def shards_weights(accelerator) -> bool:
    """True under ZeRO-3 and FSDP2: no process holds whole weights outside a forward."""
    engine = engine_name(accelerator)
    return engine == "fsdp2" or (engine or "").startswith("zero3")


def gather_weights_in_generate(model, accelerator) -> None:
    """Under FSDP2, let `model.generate` gather the sharded weights as `model(...)` does.

    FSDP2 gathers a unit's weights in the forward hooks of the module it wraps, and the root
    unit is the prepared model. A PeftModel's `generate` calls the inner transformers model's
    forward, past the root's hooks, so the weights the root holds itself stay shards (seen:
    `aten.mul.Tensor got mixed torch.Tensor and DTensor` in the final RMSNorm, H200 and CPU);
    torch's `register_fsdp_forward_method` runs those hooks around `generate` too (the fix
    transformers' Trainer applies, huggingface/transformers#42436). A full model's `generate`
    calls its own forward, so registering changes nothing there.
    """
    if engine_name(accelerator) != "fsdp2" or not hasattr(model, "generate"):
        return
    from torch.distributed.fsdp import register_fsdp_forward_method

    register_fsdp_forward_method(model, "generate")


class CollectiveWatchdog:
    """Ends a process whose ranks stopped making progress together, with a message, not a hang.

    The loop calls `progress(what)` at every step, save and sample; if `timeout` seconds pass
    without one (a rank died, hangs, or waits on a collective the others never join), this
    prints `error: rank R: <what> waited more than T s ...` and exits the process with 2;
    torchrun then takes the other ranks down. Inactive in a world of one process.
    """

    def __init__(self, timeout: float, rank: int, world_size: int):
        self.timeout, self.rank, self.active = timeout, rank, world_size > 1
        self._what, self._since = "setup", time.monotonic()
        self._done = threading.Event()

    def __enter__(self) -> CollectiveWatchdog:
        if self.active:
            threading.Thread(target=self._watch, name="collective-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def progress(self, what: str) -> None:
        self._what, self._since = what, time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self.timeout / 4)):
            waited = time.monotonic() - self._since
            if waited > self.timeout:
                print(
                    f"error: rank {self.rank}: {self._what} waited more than {self.timeout:g} s "
                    f"for the other processes (one died or hangs); stopping. The last whole "
                    f"checkpoint is kept (--resume auto); runtime.collective_timeout sets the "
                    f"limit",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(2)


def single_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables of a world of one, for a process not started by a launcher."""
    if "LOCAL_RANK" in env or "RANK" in env:
        return {}
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }


def _free_port() -> int:
    """A port nobody listens on, below Linux's ephemeral range (32768-60999): a port the
    kernel hands out for outgoing connections (NCCL's, another run's) can be taken between
    this check and torchrun's bind (seen: EADDRINUSE with 18 runs side by side)."""
    import random
    import socket

    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise UserError("no free port in 20000-31999 for the rank-0 process: set PORT")


# ---- NPROC_PER_NODE=N tunesmith train ... -----------------------------------------------------


def relaunch_command(
    argv: Sequence[str], env: Mapping[str, str], python: str = sys.executable
) -> list[str] | None:
    """The torchrun command that runs `tunesmith <argv>` on NPROC_PER_NODE GPUs, or None.

    None when NPROC_PER_NODE and NNODES are unset or 1 (a plain run), or when this process
    already is one of torchrun's workers. The master port is PORT when set, else a free one
    (one node) or 29500 (several nodes must agree on it).
    """
    if "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env:
        return None
    nproc = _env_int(env, "NPROC_PER_NODE", 1)
    nnodes = _env_int(env, "NNODES", 1)
    if nproc <= 1 and nnodes <= 1:
        return None
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if nnodes > 1:
        cmd += [
            f"--node_rank={_env_int(env, 'NODE_RANK', 0)}",
            f"--master_addr={env.get('ADDR', '127.0.0.1')}",
            f"--master_port={_env_int(env, 'PORT', 29500)}",
        ]
    else:
        cmd += [f"--master_port={_env_int(env, 'PORT', 0) or _free_port()}"]
    args = list(argv)
    if "train" not in args:
        args.insert(0, "train")
    return [*cmd, "-m", "tunesmith.cli.main", *args]


def maybe_relaunch_distributed(argv: Sequence[str]) -> int | None:
    """Re-run `tunesmith <argv>` under torchrun when NPROC_PER_NODE / NNODES ask for it.

    `argv` is what follows the program name (sys.argv[1:]). Returns the exit code (128 + the
    signal when stopped by SIGINT / SIGTERM), or None when this process should train itself.
    SIGINT / SIGTERM to this launcher go once to every worker (each saves and exits); torchrun
    gets SIGTERM if the launcher itself dies, so no worker outlives it.
    """
    cmd = relaunch_command(argv, os.environ)
    if cmd is None:
        return None
    print("launching: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    env = {**os.environ, LAUNCHED_ENV: "1"}
    # its own session: a terminal's Ctrl-C reaches the launcher alone, which passes it on once
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        for pid in _worker_pids(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received and code == 0 else code


# set for the workers of `maybe_relaunch_distributed`: a worker stopped by a forwarded signal
# exits 0 after saving, so torchrun waits for every rank instead of killing the slower ones
LAUNCHED_ENV = "TUNESMITH_LAUNCHED"


def _worker_pids(torchrun_pid: int) -> list[int]:
    import psutil  # accelerate's dependency

    try:
        return [p.pid for p in psutil.Process(torchrun_pid).children()]
    except psutil.NoSuchProcess:
        return []


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"environment variable {key}={value!r} must be a whole number") from None
    if number < 1 and key not in ("NODE_RANK",):
        raise UserError(f"environment variable {key}={value!r} must be at least 1")
    return number
