"""The training recipe: one class, read top to bottom in the order it runs.

    recipe = TrainRecipe(cfg, work_dir="work_dirs/my_run", resume="auto")
    recipe.setup()           # accelerator, tokenizer, data, model (+ LoRA), optimizer, resume
    result = recipe.train()  # the loop; checkpoints, metrics, chat samples, summary

Methods are LoRA / DoRA, QLoRA (bitsandbytes 4/8-bit base weights) and full fine-tuning.
The loss of one optimizer step is the mean over every trainable token of all its
accumulated micro-batches (`num_items_in_batch`), so 2 x batch 1 equals 1 x batch 2.
With a `preference` part the same loop trains on chosen / rejected pairs: the loss of a
step is the mean over its pairs of the DPO / IPO / ORPO / SimPO loss (train/preference.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from tunesmith.compat import transformers as hf_compat
from tunesmith.config.schema import Config
from tunesmith.data.templates import get_template
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_file, atomic_write_text
from tunesmith.model.fast import (
    head_inputs,
    lora_inputs_uncast,
    optimize_for_training,
    training_plan,
)
from tunesmith.model.generate import Generator
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import (
    CollectiveWatchdog,
    engine_name,
    gather_weights_in_generate,
    make_accelerator,
    shards_weights,
)
from tunesmith.train.hooks import (
    ChatSampler,
    StopSignals,
    TrainingDiverged,
    check_finite,
    format_summary,
)
from tunesmith.train.hooks import kept as _kept
from tunesmith.train.memory import CheckpointPlanner, auto_budget
from tunesmith.train.metrics import MetricsLogger
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.plot import plot_loss


@dataclass
class TrainResult:
    work_dir: Path
    step: int
    total_steps: int
    tokens: int
    seconds: float  # the whole train() call, chat samples and saves included
    step_seconds: float  # the optimizer steps alone
    losses: list[float] = field(default_factory=list)  # per optimizer step, from step 1
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    stopped_by_signal: int | None = None

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal that stopped the run (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.stopped_by_signal if self.stopped_by_signal else 0

    def summary(self, resume_command: str | None = None) -> str:
        """The one-screen report printed at the end of `tunesmith train`."""
        minutes, seconds = divmod(round(self.seconds), 60)
        final = f"{self.losses[-1]:.4f}" if self.losses else "-"
        lines = [
            "",
            f"training {'stopped' if self.stopped_by_signal else 'done'}: "
            f"step {self.step}/{self.total_steps}",
            f"  time          {minutes}m{seconds:02d}s ({self.step_seconds:.0f} s in training steps)",
            f"  tokens        {self.tokens:,} ({self.tokens / max(self.step_seconds, 1e-9):,.0f} "
            f"tokens/s in training steps)",
            f"  final loss    {final}",
            f"  checkpoint    {self.last_checkpoint}",
            f"  best          {self.best_checkpoint} (lowest loss over its last 10 steps)",
            f"  metrics       {self.work_dir / 'metrics.jsonl'}, {self.work_dir / 'loss.png'}",
        ]
        if self.stopped_by_signal and resume_command:
            lines.append(f"continue with:\n  {resume_command}")
        if self.best_checkpoint is not None:
            config = self.work_dir / "config.yaml"
            out = self.work_dir / "hf"
            lines.append(
                f"export it with:\n  tunesmith convert pth_to_hf {config} {self.best_checkpoint} {out}"
            )
        return "\n".join(lines)


@dataclass
class StepStats:
    loss: float  # token-weighted mean over the step's micro-batches
    lr: float
    tokens: int  # real tokens of the step, all processes together
    grad_norm: float
    extra: dict = field(default_factory=dict)  # preference metrics; peak_gib (CUDA only)


def epoch_order(cfg, epoch: int, size: int) -> torch.Tensor:
    """The row order of epoch `epoch` (0-based) over `size` rows: a permutation seeded by
    (train.seed, epoch), or 0..size-1 with `data.shuffle: false`."""
    if not cfg.data.shuffle:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator)


class TrainRecipe:
    def __init__(
        self,
        cfg: Config,
        work_dir: str | Path,
        resume: str | None = None,
        dataset=None,
    ):
        """`resume`: None (fresh run), "auto" (newest whole checkpoint, if any) or a path.
        `dataset` replaces `build_dataset(cfg, tokenizer)` (anything with the same contract)."""
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.resume = resume
        self.dataset = dataset

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        from accelerate.utils import set_seed

        self.accelerator = self._setup_accelerator()
        self.engine = engine_name(self.accelerator)
        self._check_inputs()  # everything checkable, before the first write or model load
        self.resume_from = ckpt.resolve_resume(self.resume, self.work_dir) if self.resume else None
        self._check_work_dir()
        if self.dataset is None:
            self._setup_guard()  # the run is accepted: the guard may write into the work dir
        set_seed(self.cfg.train.seed)

        from tunesmith.model.load import load_tokenizer

        self.tokenizer = load_tokenizer(
            self.cfg.model.path, self.cfg.model.trust_remote_code, self.cfg.model.special_tokens
        )
        self._setup_data()
        self.model = self._setup_model()
        self.optimizer, self.scheduler = self._setup_optimizer()
        self.memory_planner = self._setup_memory_budget()
        self._setup_checkpointing()

        self.step, self.losses = 0, []
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        self.last_checkpoint = self.resume_from
        self.saved_step = self.step if self.resume_from is not None else None
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.work_dir / "config.yaml", self._config_yaml())
            self._move_aside_newer_checkpoints()
        self.accelerator.wait_for_everyone()
        self.objective = self._setup_objective() if self.cfg.preference else None
        self.metrics = (
            MetricsLogger(
                self.work_dir, start_step=self.step, tensorboard=self.cfg.runtime.tensorboard
            )
            if self.is_main
            else None
        )
        self.chat_samples = ChatSampler(
            self._make_generator,
            self.cfg.runtime.evaluation_inputs,
            self.cfg.runtime.evaluation_max_new_tokens,
            self.work_dir / "chat_samples.jsonl",
            quiet=not self.is_main,
        )

    def _setup_accelerator(self):
        """accelerate, with DDP / DeepSpeed / FSDP2 when launched for them (train/distributed.py)."""
        return make_accelerator(self.cfg)

    def _check_inputs(self) -> None:
        """Config values, template name, model path, data files and work dir, checked before
        anything is loaded or written; the guard's data file is planned (not yet made) so
        the work dir's config can be compared."""
        from tunesmith.data.general import planned_guard
        from tunesmith.data.templates import check_template_name
        from tunesmith.fileio import check_writable_dir
        from tunesmith.model.resolve import resolve_model_path

        cfg = self.cfg
        if cfg.lora is None and cfg.quantization is not None:
            raise UserError(
                "quantization is set but lora is null: 4/8-bit weights cannot be fully "
                "fine-tuned; add a lora part (QLoRA) or set quantization: null"
            )
        if cfg.preference is not None and cfg.guard.enabled:
            raise UserError(
                "guard.enabled: the forgetting guard mixes SFT records into the data; preference "
                "tuning keeps the model close through its reference instead: set guard.enabled=false"
            )
        check_writable_dir(self.work_dir, "work dir")
        check_template_name(cfg.data.template)
        resolve_model_path(cfg.model.path, with_weights=False)
        self.guard_records = 0
        if self.dataset is None:
            from tunesmith.data.formats import iter_records

            if not cfg.data.files:
                raise UserError("data.files is empty; list at least one .jsonl/.json/.parquet file")
            for entry in cfg.data.files:  # exists, readable, a known type
                next(iter_records(entry.path), None)
            self.cfg, self.guard_records = planned_guard(cfg, self.work_dir)

    def _setup_guard(self) -> None:
        """Forgetting guard (config part `guard`): mix the base model's own answers to general
        prompts into the data files; made once per work dir (data/general.py)."""
        from tunesmith.data.general import write_guard_mix

        with self.accelerator.main_process_first():
            self.cfg = write_guard_mix(self.cfg, self.work_dir, self.guard_records)

    def _setup_data(self) -> None:
        if self.dataset is None:
            from tunesmith.data.dataset import build_dataset

            if self.cfg.preference is not None:
                from tunesmith.data.preference import build_preference_dataset as build_dataset
            with self.accelerator.main_process_first():  # rank 0 builds the cache, others read it
                self.dataset = build_dataset(self.cfg, self.tokenizer)
        if len(self.dataset) == 0:
            raise UserError("data.files: the dataset is empty; add records to the data files")
        if self.is_main:
            print(format_summary(self.dataset.summary), flush=True)
        per_step = self.cfg.train.batch_size * self.accelerator.num_processes
        self.micro_batches_per_epoch = math.ceil(len(self.dataset) / per_step)
        accum = self.cfg.train.accumulative_counts
        if self.cfg.train.max_steps:
            self.total_steps = self.cfg.train.max_steps
        else:
            epochs_of_micro = self.cfg.train.max_epochs * self.micro_batches_per_epoch
            self.total_steps = max(1, math.ceil(epochs_of_micro / accum))

    def _setup_model(self) -> torch.nn.Module:
        from tunesmith.model.load import fit_embeddings, load_model

        cfg = self.cfg
        model_cfg = cfg.model
        dtype = None
        if cfg.method == "full":
            if self.resume_from is not None:
                model_cfg = model_cfg.model_copy(update={"path": str(self.resume_from / "model")})
            if model_cfg.dtype == "auto" and self.accelerator.mixed_precision != "no":
                dtype = "fp32"  # fp32 master weights; compute is autocast to bf16/fp16
        model = load_model(
            model_cfg,
            quantization=cfg.quantization,
            device=str(self.accelerator.device),  # this process's GPU under torchrun
            dtype=dtype,
        )
        # special tokens added (model.special_tokens): new rows, trained in full with LoRA
        resized = fit_embeddings(model, self.tokenizer)
        if cfg.lora is not None:
            from tunesmith.model.adapters import apply_lora, embedding_modules

            model = apply_lora(
                model,
                cfg.lora,
                gradient_checkpointing=cfg.train.gradient_checkpointing,
                modules_to_save=embedding_modules(model) if resized else None,
            )
        elif cfg.train.gradient_checkpointing:
            hf_compat.enable_activation_checkpointing(model)
            model.config.use_cache = False
        # speed-ups: fused kernels and varlen attention on GPU, per-document attention on CPU;
        # no Liger under ZeRO-3 / FSDP2 (see optimize_for_training)
        self.plan = training_plan(model, cfg, sharded_weights=shards_weights(self.accelerator))
        model = optimize_for_training(model, cfg, self.plan)
        model.train()
        if self.is_main:
            trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
            total = sum(_numel(p) for p in model.parameters())
            print(
                f"model: {cfg.model.path} | method {cfg.method} | trainable {trainable:,} of {total:,} parameters"
            )
        return model

    def _setup_objective(self):
        """Preference tuning: the loss and where its reference log-probs come from."""
        from tunesmith.train import preference

        pref = self.cfg.preference
        reference = None
        model = self.accelerator.unwrap_model(self.model)
        if pref.loss in preference.REFERENCE_FREE:
            pass
        elif pref.reference == "precomputed":
            reference = preference.PrecomputedReference(self._reference_table())
        elif self.cfg.lora is not None and pref.reference == "auto":
            reference = preference.AdapterDisabledReference(model)
        else:
            from tunesmith.model.load import load_model

            frozen = load_model(self.cfg.model, device=str(self.accelerator.device))
            reference = preference.FrozenCopyReference(optimize_for_training(frozen, self.cfg))
        return preference.PreferenceObjective(pref, reference)

    def _reference_table(self) -> torch.Tensor:
        """Reference log-probs of every pair: computed before the first step, kept in work_dir
        (a resumed run reads them: the model has moved since)."""
        from safetensors.torch import load_file, save_file

        from tunesmith.train.preference import precompute_reference

        path = self.work_dir / "reference_logps.safetensors"
        if path.is_file():
            with ckpt.reading(path):
                return load_file(str(path))["logps"]
        if self.resume_from is not None:
            raise UserError(
                f"{path} is missing: the reference log-probs of this run are gone; "
                "start over without --resume"
            )
        table = precompute_reference(
            self.model, self.dataset, self.cfg.train.batch_size, self.accelerator.device
        )
        if self.is_main:
            with atomic_file(path) as tmp:  # a kill mid-write leaves no torn table to resume
                save_file({"logps": table}, str(tmp))
        return table

    def _setup_optimizer(self):
        """AdamW, prepared with the model (DDP / DeepSpeed / FSDP2), then the schedule on the
        prepared optimizer: DeepSpeed ZeRO-3 regroups the parameters (seen on H200s: a schedule
        made before `prepare` steps a group count that no longer exists)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.cfg.train)
        self.model, optimizer = self.accelerator.prepare(self.model, optimizer)
        gather_weights_in_generate(self.model, self.accelerator)  # chat samples under FSDP2
        # Not given to accelerate: its scheduler wrapper steps once per process.
        scheduler = build_scheduler(optimizer, self.total_steps, self.cfg.train.warmup_ratio)
        return optimizer, scheduler

    def _setup_memory_budget(self) -> CheckpointPlanner | None:
        """`train.memory_budget`: the planner that measures the first steps on CUDA and sets how
        many layers stay checkpointed (train/memory.py); a printed note and None elsewhere."""
        budget_text = self.cfg.train.memory_budget
        if budget_text is None:
            return None
        if self.accelerator.device.type != "cuda":
            if self.is_main:
                print(
                    f"train.memory_budget={budget_text} is ignored: no CUDA device "
                    f"({self.accelerator.device.type}); every layer stays checkpointed"
                )
            return None
        model = self.accelerator.unwrap_model(self.model)
        if not hf_compat.checkpointed_layers(model):
            if self.is_main:
                print(
                    f"train.memory_budget={budget_text} is ignored: {type(model).__name__} has "
                    "no transformers decoder layers to checkpoint one by one"
                )
            return None
        budget = self.cfg.train.memory_budget_bytes
        if budget is None:  # auto
            budget = auto_budget(
                torch.cuda.get_device_properties(self.accelerator.device).total_memory
            )
        return CheckpointPlanner(
            model,
            self.optimizer,
            budget,
            budget_text,
            say=lambda text: print(text, flush=True) if self.is_main else None,
            can_offload=self.engine is None,  # DeepSpeed / FSDP2 own their optimizer state
        )

    # ------------------------------------------------------------------ train

    def train(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        accum = cfg.train.accumulative_counts
        data = self._micro_batches(start=self.step * accum)
        watchdog = CollectiveWatchdog(
            cfg.runtime.collective_timeout, acc.process_index, acc.num_processes
        )
        tokens, step_seconds, start_time = 0, 0.0, time.perf_counter()
        with watchdog, StopSignals() as stop:
            self._sample(watchdog)
            progress = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc="train",
                unit="step",
                disable=not self.is_main,
            )
            stopping = None  # the signal that stops the run, agreed by every rank
            while self.step < self.total_steps and stopping is None:
                step_start = time.perf_counter()
                watchdog.progress(f"step {self.step + 1}")
                checkpointed = self.memory_planner.before_step() if self.memory_planner else None
                stats = self._train_step([next(data) for _ in range(accum)])
                if self.memory_planner:
                    self.memory_planner.after_step(round(stats.extra["peak_gib"] * 2**30))
                    stats.extra["checkpointed_layers"] = checkpointed  # what this step ran with
                self.step += 1
                self.losses.append(stats.loss)
                tokens += stats.tokens
                elapsed = time.perf_counter() - step_start
                step_seconds += elapsed
                tokens_per_s = stats.tokens / max(elapsed, 1e-9)
                progress.update(1)
                shown = {
                    k: f"{v:.3f}" for k, v in stats.extra.items() if k in ("margin", "accuracy")
                }
                progress.set_postfix(
                    loss=f"{stats.loss:.4f}",
                    **shown,
                    lr=f"{stats.lr:.2e}",
                    tok_s=f"{tokens_per_s:,.0f}",
                )
                if self.metrics and self.step % cfg.runtime.logging_steps == 0:
                    self.metrics.log(
                        self.step,
                        {
                            "loss": stats.loss,
                            "lr": stats.lr,
                            "grad_norm": stats.grad_norm,
                            "tokens": stats.tokens,
                            "tokens_per_s": tokens_per_s,
                            "epoch": self.epoch,
                            **stats.extra,
                        },
                    )
                stopping = self._agree_on_stop(stop.received)
                if self.step % cfg.runtime.save_steps == 0 or stopping is not None:
                    watchdog.progress(f"checkpoint save at step {self.step}")
                    self.save_checkpoint()
                if self.step % cfg.runtime.evaluation_freq == 0:
                    self._sample(watchdog)
            progress.close()
            if self.saved_step != self.step:
                watchdog.progress(f"checkpoint save at step {self.step}")
                self.save_checkpoint()
            if stopping is None and (
                self.sample_after_training or self.step % cfg.runtime.evaluation_freq
            ):
                self._sample(watchdog, final=True)
        seconds = time.perf_counter() - start_time
        return self._finish(tokens, seconds, step_seconds, stopping)

    def _agree_on_stop(self, received: int | None) -> int | None:
        """The signal any rank received, on every rank: a signal reaches the ranks at slightly
        different times, and a rank that stopped a step before the others would wait in the
        save's barrier while they wait in the next step's all-reduce."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return received
        flag = acc.reduce(torch.tensor(received or 0, device=acc.device), "max")
        return int(flag) or None

    def _sample(self, watchdog: CollectiveWatchdog, final: bool = False) -> None:
        """Chat samples on rank 0; under ZeRO-3 / FSDP2 once after training, every rank in
        step (each forward gathers the sharded weights), rank 0 printing and writing."""
        if self.sample_after_training and not final:
            return
        watchdog.progress(f"chat samples at step {self.step}")
        if self.sample_after_training or self.is_main:
            self.chat_samples(self.accelerator.unwrap_model(self.model), self.step)

    def _train_step(self, micro_batches: list[tuple[dict, int]]) -> StepStats:
        """One optimizer step over the accumulated (batch, real tokens) micro-batches."""
        acc, model = self.accelerator, self.model
        batches = [batch for batch, _ in micro_batches]
        if self.objective is None:
            # Trainable tokens of the whole step, over all processes: the loss denominator.
            n_items = sum((b["labels"][:, 1:] != -100).sum() for b in batches)
            n_items = acc.reduce(n_items, "sum") if acc.num_processes > 1 else n_items
        else:  # pairs (and chosen tokens) of the whole step
            n_items = self.objective.denominators(batches)
            if acc.num_processes > 1:
                n_items.pairs = acc.reduce(n_items.pairs, "sum")
                n_items.chosen_tokens = acc.reduce(n_items.chosen_tokens, "sum")
        step_loss = torch.zeros((), device=acc.device)
        extra = torch.zeros(4, device=acc.device)
        # accelerate divides each backward by its accumulation count and DDP averages over
        # processes; the loss is already a mean over the whole step, so undo both.
        scale = acc.gradient_accumulation_steps * acc.num_processes
        with lora_inputs_uncast(model, self.plan):
            for batch in batches:
                with acc.accumulate(model):
                    if self.objective is None:
                        head = head_inputs(batch, self.plan)  # no logits where nothing is trained
                        loss = model(
                            **batch, use_cache=False, num_items_in_batch=n_items, **head
                        ).loss
                    else:
                        loss, sums = self.objective(model, batch, n_items)
                        extra += sums
                    acc.backward(loss * scale)
                step_loss += loss.detach()
        tokens = torch.tensor(sum(n for _, n in micro_batches), device=acc.device)
        if acc.num_processes > 1:
            step_loss = acc.reduce(step_loss, "sum")
            tokens = acc.reduce(tokens, "sum")  # every process's tokens: tokens/s of the run
            extra = acc.reduce(extra, "sum")
        # Checked before the update, so the weights of the last good step stay intact.
        check_finite(float(step_loss), self.step + 1, self.last_checkpoint)
        grad_norm = acc.clip_grad_norm_(model.parameters(), self.cfg.train.max_norm)
        lr = self.scheduler.get_last_lr()[0]  # the lr this step runs at
        offload = self.memory_planner and self.memory_planner.offload
        if offload:
            offload.restore()
        self.optimizer.step()
        if offload:
            offload.offload()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        stats = StepStats(float(step_loss), lr, int(tokens), grad_norm)
        if self.objective is not None:
            from tunesmith.train.preference import METRICS

            means = (extra / n_items.pairs).tolist()
            stats.extra = dict(zip(METRICS, means, strict=True))
        stats.extra.update(self._peak_memory())
        return stats

    def _peak_memory(self) -> dict:
        """Peak GPU memory of every process (GiB), for metrics.jsonl; nothing on a CPU."""
        acc = self.accelerator
        if not torch.cuda.is_available():
            return {}
        peak = torch.tensor(
            [torch.cuda.max_memory_allocated(acc.device) / 2**30], device=acc.device
        )
        per_rank = acc.gather(peak).tolist() if acc.num_processes > 1 else peak.tolist()
        return {"peak_gib": max(per_rank), "peak_gib_per_rank": [round(g, 3) for g in per_rank]}

    @property
    def epoch(self) -> float:
        return self.step * self.cfg.train.accumulative_counts / self.micro_batches_per_epoch

    def _micro_batches(self, start: int) -> Iterator[tuple[dict, int]]:
        """(batch, real tokens) from the global micro-batch index `start` on, epoch after epoch.

        The order of epoch e is a permutation seeded by (seed, e), so a resumed run
        sees exactly the batches the uninterrupted one would have.
        """
        dataset, size = self.dataset, len(self.dataset)
        bs, world, rank = (
            self.cfg.train.batch_size,
            self.accelerator.num_processes,
            self.accelerator.process_index,
        )
        index = start
        while True:
            epoch, position = divmod(index, self.micro_batches_per_epoch)
            order = epoch_order(self.cfg, epoch, size)
            lo = (position * world + rank) * bs
            # One process takes a short last batch; several wrap around so all step together.
            hi = lo + bs if world > 1 else min(lo + bs, size)
            items = [dataset[int(order[k % size])] for k in range(lo, hi)]
            batch = dataset.collate(items)
            tokens = sum(len(item["input_ids"]) for item in items)  # padding not counted
            yield {k: v.to(self.accelerator.device) for k, v in batch.items()}, tokens
            index += 1

    # ------------------------------------------------------------- checkpoints

    def _setup_checkpointing(self) -> None:
        """Which ranks sample, and what accelerate's save_state / load_state carry.

        Without an engine (one process, DDP) every process holds the whole model: accelerate's
        state keeps the optimizer, scaler and RNG of each rank, and the weights are the
        checkpoint's adapter/ or model/ alone (not a second copy of the base model). Under
        DeepSpeed / FSDP2, accelerate saves the engine's own shards of weights and optimizer.
        """
        acc = self.accelerator
        # Generation runs in inference mode: gathered weights it leaves behind cannot be trained
        # on again (seen on H200s under ZeRO-3 offload and FSDP2), so sample after the last step.
        self.sample_after_training = shards_weights(acc) and bool(
            self.cfg.runtime.evaluation_inputs
        )
        if self.sample_after_training and self.is_main:
            print(
                f"chat samples: once after training, every rank taking part ({self.engine} "
                "shards the weights)"
            )
        if self.engine is None:
            acc.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
            acc.register_load_state_pre_hook(lambda models, in_dir: models.clear())

    def save_checkpoint(self) -> Path | None:
        """`work_dir/iter_<step>/`: every rank writes into the temp dir, rank 0 marks it whole
        and renames it; older ones rotated out."""
        acc = self.accelerator
        if not self._trainable_weights_finite():
            # an update with finite loss can still leave NaN/inf weights (an overflowing
            # gradient, a huge lr): never save them as a checkpoint a resume or export trusts
            raise TrainingDiverged(
                f"the trainable weights after step {self.step} hold NaN or inf: nothing saved "
                f"for it, {_kept(self.last_checkpoint)}; try a lower train.lr or "
                f"train.max_norm, or train in fp32 (train.mixed_precision=no)"
            )
        acc.wait_for_everyone()
        if self.is_main:
            ckpt.begin(self.work_dir, self.step)
        acc.wait_for_everyone()
        self._write_checkpoint(ckpt.tmp_dir(self.work_dir, self.step))
        acc.wait_for_everyone()
        path = None
        if self.is_main:
            keep = self.cfg.runtime.save_total_limit
            path = ckpt.commit(self.work_dir, self.step, self._trainer_state(), keep=keep)
        self.last_checkpoint = ckpt.find_latest(self.work_dir) if path is None else path
        self.saved_step = self.step
        acc.wait_for_everyone()
        return path

    def _trainable_weights_finite(self) -> bool:
        """Whether every trainable weight is finite, on every process (each checks its own
        shard: a DTensor's local part; a ZeRO-3 partition's `ds_tensor`)."""
        acc = self.accelerator
        bad = torch.zeros((), device=acc.device)
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.numel() == 0 and getattr(p, "ds_tensor", None) is not None:
                local = p.ds_tensor
            bad += (~torch.isfinite(local.detach())).any()
        if acc.num_processes > 1:
            bad = acc.reduce(bad, "sum")
        return not bool(bad)

    def _write_checkpoint(self, out: Path) -> None:
        """Every rank: accelerate's state (optimizer, scaler, RNG; engine shards) into state/;
        rank 0: whole weights (gathered under ZeRO-3 / FSDP2), schedule and config."""
        acc = self.accelerator
        gathered = acc.get_state_dict(self.model) if shards_weights(acc) else None
        save_kwargs = {}
        if self.engine and self.engine.startswith("zero") and self.cfg.method != "full":
            save_kwargs["exclude_frozen_parameters"] = True  # DeepSpeed: the adapter alone
        acc.save_state(str(out / "state"), **save_kwargs)
        if not self.is_main:
            return
        model = acc.unwrap_model(self.model)
        if self.cfg.method == "full":
            model.save_pretrained(out / "model", state_dict=gathered, safe_serialization=True)
            self.tokenizer.save_pretrained(out / "model")
        else:
            model.save_pretrained(out / "adapter", state_dict=gathered)
        torch.save(self.scheduler.state_dict(), out / "scheduler.pt")
        (out / "config.yaml").write_text(self._config_yaml())

    def _trainer_state(self) -> dict:
        """trainer_state.json: written last, it marks the checkpoint whole."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "data_position": self.step * self.cfg.train.accumulative_counts,
            "total_steps": self.total_steps,
            "loss": self.losses[-1] if self.losses else None,
            "losses": self.losses,
            "engine": self.engine,
            "world_size": self.accelerator.num_processes,
        }

    def _load_checkpoint(self, path: Path) -> None:
        from accelerate.utils import load as accelerate_load

        state = ckpt.read_state(path)
        load_kwargs = {}
        if self.engine and self.engine.startswith("zero"):
            load_kwargs["load_module_strict"] = False  # saved without the frozen base weights
        # accelerate skips a random-state file it cannot read without a word (an INFO log):
        # the resumed run would silently leave the uninterrupted run's loss curve
        rng_file = path / "state" / f"random_states_{self.accelerator.process_index}.pkl"
        with ckpt.reading(rng_file):
            accelerate_load(rng_file)
        with ckpt.reading(path / "state"):
            self.accelerator.load_state(str(path / "state"), **load_kwargs)
        if self.engine is None and self.cfg.method != "full":
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights_file = path / "adapter" / "adapter_model.safetensors"
            with ckpt.reading(weights_file):
                weights = load_file(str(weights_file))
            model = self.accelerator.unwrap_model(self.model)
            set_peft_model_state_dict(model, weights)
        self.scheduler.load_state_dict(ckpt.load_torch(path / "scheduler.pt"))
        self.step = state["step"]
        self.losses = list(state["losses"])
        if self.is_main:
            print(f"resumed from {path} at step {self.step}/{self.total_steps}")

    def _move_aside_newer_checkpoints(self) -> None:
        ckpt.clean_stale_tmp(self.work_dir)
        if self.resume_from is None or self.resume_from.parent.resolve() != self.work_dir.resolve():
            return
        aside = ckpt.move_aside_newer(self.work_dir, self.resume_from)
        if aside is not None:
            names = ", ".join(p.name for p in sorted(aside.iterdir(), key=ckpt.step_of))
            print(
                f"resuming from the older {self.resume_from.name}: moved the newer {names} to {aside}"
            )

    # ------------------------------------------------------------------ helpers

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _check_work_dir(self) -> None:
        """Refuse to overwrite a different run (or this run's checkpoints) without --resume;
        on resume, say which settings differ from the checkpoint's."""
        if self.resume_from is not None:
            saved = ckpt.read_config(self.resume_from)
            refused, accepted = ckpt.resume_changes(saved, yaml.safe_load(self._config_yaml()))
            if refused:
                raise UserError(
                    f"--resume {self.resume_from}: {refused[0]} does not fit this checkpoint; "
                    f"put the setting back, or start a new run in another --work-dir"
                )
            ckpt.check_engine(
                ckpt.read_state(self.resume_from),
                self.engine,
                self.accelerator.num_processes,
                self.resume_from,
            )
            if accepted and self.is_main:
                print(f"resuming with changed settings: {'; '.join(accepted)}")
            return
        saved = self.work_dir / "config.yaml"
        if not saved.is_file():
            return
        changed = config_changes(saved, self._config_yaml())
        if changed:
            raise UserError(
                f"{self.work_dir} holds a run with a different config ({saved}; differs in "
                f"{', '.join(changed[:5])}): pass another --work-dir, or delete it to start over"
            )
        if ckpt.checkpoint_dirs(self.work_dir):
            raise UserError(
                f"{self.work_dir} already holds checkpoints of this run: continue it with "
                f"--resume auto, or pass another --work-dir"
            )

    def _config_yaml(self) -> str:
        from tunesmith.config.loader import dump_config

        return dump_config(self.cfg)

    def _make_generator(self, model) -> Generator:
        template = get_template(self.cfg.data.template, self.tokenizer)
        return Generator(model, self.tokenizer, template, system=self.cfg.data.system)

    def _finish(
        self, tokens: int, seconds: float, step_seconds: float, signum: int | None
    ) -> TrainResult:
        result = TrainResult(
            work_dir=self.work_dir,
            step=self.step,
            total_steps=self.total_steps,
            tokens=tokens,
            seconds=seconds,
            step_seconds=step_seconds,
            losses=list(self.losses),
            last_checkpoint=self.last_checkpoint,
            best_checkpoint=best_checkpoint(self.work_dir),
            stopped_by_signal=signum,
        )
        if self.is_main:
            self.metrics.close()
            plot_loss(self.work_dir / "metrics.jsonl", self.work_dir / "loss.png")
        return result


def config_changes(saved: Path, current_yaml: str) -> list[str]:
    """Dotted keys whose values differ between a saved config.yaml and the current one."""
    if not saved.is_file():
        return []
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        old = exc
    if not isinstance(old, dict):
        raise UserError(
            f"{saved}: the run config of this work dir is damaged ({type(old).__name__}); "
            f"pass another --work-dir, or delete {saved} if the run in it is not wanted"
        )
    old = _flatten(old)
    new = _flatten(yaml.safe_load(current_yaml) or {})
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _numel(param: torch.nn.Parameter) -> int:
    """Whole size of a parameter, also of one ZeRO-3 partitioned (its local numel is 0)."""
    return getattr(param, "ds_numel", None) or param.numel()


def best_checkpoint(work_dir: Path) -> Path | None:
    """The kept checkpoint with the lowest mean loss over its last 10 steps."""
    scored = []
    for path in ckpt.checkpoint_dirs(work_dir):
        losses = ckpt.read_state(path).get("losses") or []
        if losses:
            recent = losses[-10:]
            scored.append((sum(recent) / len(recent), path))
    return min(scored, key=lambda s: s[0])[1] if scored else None
