"""`train.memory_budget`: how many decoder layers to checkpoint, from the measured first steps.

Every decoder layer left un-checkpointed keeps its activations for the backward pass (no
recompute: faster) and costs the same bytes as any other layer, so a step's peak memory is a
line in the number of checkpointed layers k out of L:

    peak(k) = peak(L) + (L - k) * per_layer

`CheckpointPlanner` measures two points of that line on CUDA (`torch.cuda.max_memory_allocated`
over a whole step, optimizer state resident): step 2 with all L layers checkpointed and step 3
with L - 2 (step 1 warms up and creates the optimizer state). `choose_checkpointing`, a pure
function of those numbers, then picks the fewest checkpointed layers whose predicted peak stays
under the budget; when even k = L does not fit, AdamW's state moves to pinned host memory
between steps (`OptimizerStateOffload`). The choice and the measured peaks are printed, and the
peak of the first step run with the choice is printed beside its prediction.

The line assumes steps of the same shape (packed rows of max_length, the recipes' default);
unpacked batches vary in length and the headroom (`HEADROOM`) is all that covers that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tunesmith.compat import transformers as hf_compat
from tunesmith.sizes import GIB, gib

# share of the budget kept free for step-to-step variation (documents per row, attention
# workspaces) that the two measured steps do not show
HEADROOM = 0.03
# `memory_budget: auto` = the card's memory less this share (at least AUTO_MARGIN_MIN): the
# CUDA context and the caching allocator's fragmentation lie outside max_memory_allocated
AUTO_MARGIN = 0.08
AUTO_MARGIN_MIN = 3 * GIB
# layers left un-checkpointed in the second measured step
PROBE_LAYERS = 2


@dataclass(frozen=True)
class PeakPoint:
    """One measured step: `checkpointed` decoder layers, `peak_bytes` allocated at most."""

    checkpointed: int
    peak_bytes: int


@dataclass(frozen=True)
class MemoryChoice:
    checkpoint_layers: int  # the first N decoder layers stay checkpointed
    offload_optimizer: bool  # optimizer state in host memory between steps
    predicted_peak: int  # bytes, for this choice
    per_layer: int  # bytes one un-checkpointed layer adds (the line's slope)
    fits: bool  # predicted_peak within the budget less HEADROOM

    def describe(self, layers: int, budget: int) -> str:
        text = (
            f"checkpointing {self.checkpoint_layers} of {layers} layers"
            f"{', optimizer state offloaded to host memory' if self.offload_optimizer else ''}: "
            f"predicted peak {gib(self.predicted_peak)} of the {gib(budget)} budget"
        )
        if not self.fits:
            text += (
                " - does NOT fit: even every layer checkpointed needs more; lower "
                "train.batch_size or data.max_length, or raise the budget"
            )
        return text


def per_layer_bytes(points: list[PeakPoint]) -> float:
    """Slope of peak over un-checkpointed layers: least squares over >= 2 points with different
    layer counts; never below 0 (checkpointing cannot cost memory)."""
    counts = {p.checkpointed for p in points}
    if len(counts) < 2:
        raise ValueError(f"need peaks at two different checkpointed-layer counts, got {points}")
    xs = [-p.checkpointed for p in points]  # un-checkpointed layers, up to a constant
    ys = [p.peak_bytes for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return max(slope, 0.0)


def choose_checkpointing(
    points: list[PeakPoint],
    layers: int,
    budget: int,
    optimizer_state_bytes: int = 0,
    headroom: float = HEADROOM,
) -> MemoryChoice:
    """The fewest checkpointed layers (of `layers`) whose predicted peak fits `budget` bytes.

    `points` are measured steps with the optimizer state on the GPU. Only when no layer count
    fits does the choice offload the optimizer state (`optimizer_state_bytes` of it): it costs
    two host copies of it a step. If nothing fits, every layer stays checkpointed (with
    offload when there is state to move) and `fits` is False.
    """
    if layers < 0 or budget <= 0:
        raise ValueError(f"layers {layers} and budget {budget} must be >= 0 and > 0")
    slope = per_layer_bytes(points)
    mean_x = sum(layers - p.checkpointed for p in points) / len(points)
    mean_y = sum(p.peak_bytes for p in points) / len(points)
    at_all = mean_y - slope * mean_x  # predicted peak with all layers checkpointed

    def predicted(k: int, offload: bool) -> float:
        return at_all + (layers - k) * slope - (optimizer_state_bytes if offload else 0)

    limit = budget * (1 - headroom)
    for offload in (False, True) if optimizer_state_bytes > 0 else (False,):
        fitting = [k for k in range(layers + 1) if predicted(k, offload) <= limit]
        if fitting:
            k = min(fitting)
            return MemoryChoice(k, offload, round(predicted(k, offload)), round(slope), True)
    offload = optimizer_state_bytes > 0
    return MemoryChoice(layers, offload, round(predicted(layers, offload)), round(slope), False)


def auto_budget(total_bytes: int) -> int:
    """`memory_budget: auto` on a card of `total_bytes`."""
    return total_bytes - max(round(total_bytes * AUTO_MARGIN), AUTO_MARGIN_MIN)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors that sit on a CUDA device."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.is_cuda
    )


class OptimizerStateOffload:
    """The optimizer's CUDA state tensors (AdamW's moments) wait in pinned host memory between
    steps: on the GPU only around `optimizer.step()`, when the activations are gone. Costs a
    host round trip of the state a step (~2 x 1.3 GB for QLoRA r=64 on a 7B)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.devices: dict[tuple[int, str], torch.device] = {}
        self.host: dict[tuple[int, str], torch.Tensor] = {}  # pinned buffers, reused every step

    def restore(self) -> None:
        """Before `optimizer.step()`: the offloaded state back on its device."""
        for state in self.optimizer.state.values():
            for key, value in state.items():
                device = self.devices.get((id(state), key))
                if device is not None and value.device != device:
                    state[key] = value.to(device, non_blocking=True)

    def offload(self) -> None:
        """After `optimizer.step()`: CUDA state tensors to pinned host memory (stream-ordered)."""
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.is_cuda and value.dim() > 0:
                    slot = (id(state), key)
                    host = self.host.get(slot)
                    if host is None or host.shape != value.shape or host.dtype != value.dtype:
                        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                        self.host[slot] = host
                    host.copy_(value, non_blocking=True)
                    state[key] = host
                    self.devices[slot] = value.device


def set_checkpointed_layers(blocks: list[nn.Module], count: int) -> None:
    """Checkpoint the first `count` of `blocks` (decoder layers set up for checkpointing)."""
    for i, block in enumerate(blocks):
        hf_compat.set_layer_checkpointing(block, i < count)


class CheckpointPlanner:
    """Drives the first steps of a CUDA run under `train.memory_budget`.

    The recipe calls `before_step()` and `after_step()` around every optimizer step; after the
    third step the choice is made and applied (an `OptimizerStateOffload` in `offload` when it
    says so), and after the fourth the measured peak is printed beside the prediction.
    `after_step` takes the step's peak over every process (bytes, max_memory_allocated since
    `before_step` reset it); `say` prints on the main process.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        budget: int,
        budget_text: str,
        say: Callable[[str], None],
        can_offload: bool = True,
        reset_peak: Callable[[], None] = torch.cuda.reset_peak_memory_stats,
    ):
        self.blocks = hf_compat.checkpointed_layers(model)
        if not self.blocks:
            raise ValueError("CheckpointPlanner needs transformers decoder layers, found none")
        if not all(hf_compat.layer_checkpointing(b) for b in self.blocks):
            raise ValueError("CheckpointPlanner needs checkpointing enabled on every layer")
        layers = len(self.blocks)
        self.optimizer, self.budget, self.budget_text = optimizer, budget, budget_text
        self.say, self.can_offload, self.reset_peak = say, can_offload, reset_peak
        # checkpointed layers in the measured steps: warm-up, all, all but PROBE_LAYERS
        self.schedule = [layers, layers, max(layers - PROBE_LAYERS, 0)]
        self.points: list[PeakPoint] = []
        self.steps = 0
        self.choice: MemoryChoice | None = None
        self.offload: OptimizerStateOffload | None = None

    @property
    def checkpointed(self) -> int:
        """Decoder layers checkpointed now."""
        return sum(hf_compat.layer_checkpointing(b) for b in self.blocks)

    @property
    def measuring(self) -> bool:
        return self.steps <= len(self.schedule)

    def before_step(self) -> int:
        """Set up the next step; returns the decoder layers it runs checkpointed."""
        if self.measuring:
            if self.steps < len(self.schedule):
                set_checkpointed_layers(self.blocks, self.schedule[self.steps])
            self.reset_peak()
        return self.checkpointed

    def after_step(self, peak: int) -> None:
        if not self.measuring:
            return
        if self.steps == len(self.schedule):
            self.say(
                f"memory budget: measured peak {gib(peak)} with the choice (predicted "
                f"{gib(self.choice.predicted_peak)}, budget {gib(self.budget)})"
            )
        elif self.steps >= 1:
            self.points.append(PeakPoint(self.schedule[self.steps], peak))
        self.steps += 1
        if self.steps == len(self.schedule):
            self._decide()

    def _decide(self) -> None:
        state = optimizer_state_bytes(self.optimizer) if self.can_offload else 0
        layers = len(self.blocks)
        self.choice = choose_checkpointing(self.points, layers, self.budget, state)
        measured = ", ".join(
            f"{gib(p.peak_bytes)} with {p.checkpointed}/{layers} checkpointed" for p in self.points
        )
        self.say(
            f"memory budget {self.budget_text} ({gib(self.budget)}): measured {measured} "
            f"({gib(self.choice.per_layer)} a layer); "
            f"{self.choice.describe(layers, self.budget)}"
        )
        set_checkpointed_layers(self.blocks, self.choice.checkpoint_layers)
        if self.choice.offload_optimizer:
            self.offload = OptimizerStateOffload(self.optimizer)
            self.offload.offload()
