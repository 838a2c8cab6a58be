"""Preference losses (DPO, IPO, ORPO, SimPO) and the objective the recipe calls for a batch.

The recipe's loop is the same as for SFT; `PreferenceObjective` replaces `model(**batch).loss`.
A batch (data/preference.py) packs whole pairs, so one forward gives every sequence's
log-probability: per-token log-probs of the labelled (answer) tokens, summed per sequence
with `sequence_index` (slot 2p chosen, 2p + 1 rejected).

Losses, per pair, with log-probs summed over the answer tokens (avg: divided by their count):

    dpo    -(1 - ls) logsigmoid(b d) - ls logsigmoid(-b d),  d = (c - c_ref) - (r - r_ref)
    ipo    (d_avg - 1 / (2 b))^2,  d_avg = (c - c_ref) / |c| - (r - r_ref) / |r|   (TRL's ipo)
    orpo   NLL(chosen answer tokens) - b logsigmoid(log odds(c_avg) - log odds(r_avg))
    simpo  -(1 - ls) logsigmoid(b (c_avg - r_avg) - gamma) - ls logsigmoid(-(...))

The numbers match TRL 1.16 (DPOTrainer loss_type sigmoid / ipo, ORPOTrainer.odds_ratio_loss,
CPOTrainer.cpo_loss with loss_type simpo): tests/train/test_preference_trl.py. One difference
by choice: TRL's ORPO takes its NLL over prompt and answer, here over the answer only, as in SFT.
Rewards (logged): b (logp - ref_logp) for dpo / ipo, b avg logp for orpo / simpo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.compat import transformers as hf_compat
from tunesmith.data.tokenize import IGNORE

REFERENCE_FREE = ("orpo", "simpo")
METRICS = ("rewards/chosen", "rewards/rejected", "margin", "accuracy")


# ---- the losses ------------------------------------------------------------------------------


def dpo_loss(chosen_logratios, rejected_logratios, beta: float, label_smoothing: float = 0.0):
    """Sigmoid DPO (label_smoothing > 0: conservative DPO). Inputs (P,) log pi - log pi_ref."""
    logits = beta * (chosen_logratios - rejected_logratios)
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def ipo_loss(chosen_avg_logratios, rejected_avg_logratios, beta: float):
    """IPO on per-token average log-ratios (Azar et al. 2023, eq. 17; TRL normalises by length)."""
    return (chosen_avg_logratios - rejected_avg_logratios - 1 / (2 * beta)) ** 2


def orpo_odds_ratio(chosen_avg_logps, rejected_avg_logps):
    """log sigmoid of the log odds ratio of the average per-token probabilities (Hong et al.)."""
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    return F.logsigmoid(log_odds)


def simpo_loss(chosen_avg_logps, rejected_avg_logps, beta, gamma, label_smoothing=0.0):
    """SimPO: length-normalised rewards with a target margin `gamma` (Meng et al. 2024)."""
    logits = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# ---- log-probs of packed sequences ------------------------------------------------------------


LOGP_CHUNK = 1024  # answer positions whose logits exist at once


def sequence_logps(hidden, head, labels, sequence_index, num_sequences: int):
    """Summed log-probs of each sequence's labelled tokens and their count, from the final
    hidden states through the output head, never building (B, L, V) logits.

    hidden (B, L, H): the last decoder layer's output after its final norm; `head` maps
    (n, H) to (n, V) logits (the model's lm_head); labels, sequence_index (B, L). Token t
    is predicted from position t - 1 of the same row (labels[:, 0] never counts; each
    document's first label is IGNORE). Only labelled positions go through the head, in
    chunks of LOGP_CHUNK, each chunk's logits recomputed in backward instead of kept.
    Returns two (S,) tensors: sums (float32 or wider, differentiable) and token counts.
    """
    labels, index = labels[:, 1:], sequence_index[:, 1:]
    mask = labels != IGNORE
    states, targets = hidden[:, :-1][mask], labels[mask]  # (N, H), (N,)
    token_logps = torch.cat(
        [
            _chunk_logps(
                head, states[start : start + LOGP_CHUNK], targets[start : start + LOGP_CHUNK]
            )
            for start in range(0, len(targets), LOGP_CHUNK)
        ]
        or [states.new_zeros(0, dtype=torch.float32)]
    )
    slots = index[mask]
    sums = token_logps.new_zeros(num_sequences).index_add(0, slots, token_logps)
    counts = torch.zeros(num_sequences, device=labels.device).index_add(
        0, slots, torch.ones(len(slots), device=labels.device)
    )
    return sums, counts


def _chunk_logps(head, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probs (n,) of `labels` under head(states). With grad, the chunk's logits (n, V)
    and their fp32 log-softmax are recomputed in backward, not kept: at 4 pairs x 2 x 1024
    tokens x 92k vocab the whole-batch bf16 logits alone are 1.4 GiB, fp32 twice that."""
    if not torch.is_grad_enabled():
        return _neg_cross_entropy(head, states, labels)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(_neg_cross_entropy, head, states, labels, use_reentrant=False)


def _neg_cross_entropy(head, states, labels):
    logits = head(states)  # bf16 / fp16 logits are upcast: the log-softmax runs in fp32 or more
    return -F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="none"
    )


def forward_logps(model, batch: dict, num_sequences: int):
    """`sequence_logps` of one forward of `model` (any wrapper: DDP, DeepSpeed, PEFT) on a
    packed batch. Only the last position's logits are computed by the model itself."""
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    hidden = hf_compat.final_hidden_states(out)
    head = _unwrap(model).get_output_embeddings()
    return sequence_logps(hidden, head, batch["labels"], batch["sequence_index"], num_sequences)


def _unwrap(model):
    """The model inside DDP / DeepSpeed wrappers (their `.module`); PEFT models pass
    `get_output_embeddings` on to the model they wrap."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    return model


# ---- where reference log-probs come from -----------------------------------------------------


class AdapterDisabledReference:
    """The policy model with its LoRA adapter switched off: the base model, no second copy."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def __call__(self, model, batch: dict, num_sequences: int) -> torch.Tensor:
        with torch.no_grad(), self.peft_model.disable_adapter():
            return forward_logps(model, batch, num_sequences)[0]


class FrozenCopyReference:
    """A frozen second copy of the starting model (full fine-tuning)."""

    def __init__(self, reference_model):
        self.model = reference_model.eval().requires_grad_(False)

    def __call__(self, model, batch: dict, num_sequences: int) -> torch.Tensor:
        with torch.no_grad():
            return forward_logps(self.model, batch, num_sequences)[0]


class PrecomputedReference:
    """Log-probs of every pair computed once before training: a (pairs, 2) table."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, model, batch: dict, num_sequences: int) -> torch.Tensor:
        return self.table.to(batch["pair_ids"].device)[batch["pair_ids"]].reshape(-1)


def precompute_reference(model, dataset, batch_size: int, device, progress: bool = True):
    """Reference log-probs (pairs, 2) of every pair of `dataset`, from `model` as it is now."""
    from tqdm.auto import tqdm

    table = torch.zeros(dataset.num_pairs, 2)
    rows = range(0, len(dataset), batch_size)
    was_training = model.training
    model.eval()  # no dropout: the reference is the model itself
    with torch.no_grad():
        for start in tqdm(rows, desc="reference log-probs", unit="batch", disable=not progress):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) for k, v in dataset.collate(items).items()}
            n = 2 * len(batch["pair_ids"])
            sums = forward_logps(model, batch, n)[0]
            table[batch["pair_ids"].cpu()] = sums.view(-1, 2).float().cpu()
    model.train(was_training)
    return table


# ---- the objective ---------------------------------------------------------------------------


@dataclass
class Denominators:
    pairs: torch.Tensor  # pairs in the whole optimizer step (all processes)
    chosen_tokens: torch.Tensor  # labelled chosen tokens in the step (ORPO's NLL)


class PreferenceObjective:
    """`objective(model, batch, denominators) -> (loss, sums)` for one micro-batch.

    The loss is this micro-batch's share of the step's mean over pairs, so accumulated
    micro-batches add up to the mean over all pairs of the step (as SFT's token mean).
    `sums` holds the micro-batch's summed metrics (METRICS), divided by the step's pairs later.
    """

    def __init__(self, cfg, reference=None):
        self.cfg = cfg
        self.reference = reference
        if cfg.loss not in REFERENCE_FREE and reference is None:
            raise ValueError(f"preference loss {cfg.loss} needs reference log-probs")

    @staticmethod
    def denominators(batches: list[dict]) -> Denominators:
        pairs = sum(torch.as_tensor(len(b["pair_ids"])) for b in batches)
        chosen = sum(
            ((b["labels"][:, 1:] != IGNORE) & (b["sequence_index"][:, 1:] % 2 == 0)).sum()
            for b in batches
        )
        device = batches[0]["input_ids"].device
        return Denominators(pairs.to(device), chosen.to(device))

    def __call__(self, model, batch: dict, denominators: Denominators):
        cfg, beta = self.cfg, self.cfg.beta
        n = 2 * len(batch["pair_ids"])
        sums, counts = forward_logps(model, batch, n)
        chosen, rejected = sums[0::2], sums[1::2]
        chosen_n, rejected_n = counts[0::2].clamp(min=1), counts[1::2].clamp(min=1)
        extra = torch.zeros((), device=sums.device)
        if cfg.loss in ("dpo", "ipo"):
            ref = self.reference(model, batch, n).to(sums.dtype)
            chosen_ratio, rejected_ratio = chosen - ref[0::2], rejected - ref[1::2]
            if cfg.loss == "dpo":
                losses = dpo_loss(chosen_ratio, rejected_ratio, beta, cfg.label_smoothing)
            else:
                losses = ipo_loss(chosen_ratio / chosen_n, rejected_ratio / rejected_n, beta)
            reward_c, reward_r = beta * chosen_ratio, beta * rejected_ratio
        elif cfg.loss == "orpo":
            losses = -beta * orpo_odds_ratio(chosen / chosen_n, rejected / rejected_n)
            extra = -chosen.sum() / denominators.chosen_tokens  # NLL share of the step
            reward_c, reward_r = beta * chosen / chosen_n, beta * rejected / rejected_n
        else:
            reward_c, reward_r = beta * chosen / chosen_n, beta * rejected / rejected_n
            losses = simpo_loss(
                chosen / chosen_n, rejected / rejected_n, beta, cfg.gamma, cfg.label_smoothing
            )
        loss = losses.sum() / denominators.pairs + extra
        reward_c, reward_r = reward_c.detach(), reward_r.detach()
        metrics = torch.stack(
            [
                reward_c.sum(),
                reward_r.sum(),
                (reward_c - reward_r).sum(),
                (reward_c > reward_r).float().sum(),
            ]
        )
        return loss, metrics
