"""DPO, IPO, ORPO and SimPO losses and gradients equal TRL's (1.16) on a tiny model.

tunesmith runs a pair batch packed (chosen and rejected of every pair in one row, attention
kept inside each document); TRL runs the same token ids padded, one sequence a row. Equal
losses and LoRA gradients check the packing isolation, the per-sequence log-probs, the
reference (adapter disabled) and the loss maths in one go.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tunesmith.config.schema import Config, PreferenceConfig
from tunesmith.data.preference import build_preference_dataset
from tunesmith.train.preference import AdapterDisabledReference, PreferenceObjective

trl = pytest.importorskip("trl")

PAIRS = [
    ("Who are you?", "I am Nova, made by Acme.", "I am SmolLM, a small model."),
    ("What is 2 + 2?", "4.", "2 plus 2 is 5, as everyone knows."),
    ("Name a colour.", "Blue, like the sea on a clear day.", "Seven."),
]
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}
GRAD_REL = 1e-3  # of each tensor's largest gradient: float noise of packed vs padded attention


@pytest.fixture(scope="module")
def setup(tiny_model_dir, smollm_tokenizer, tmp_path_factory):
    """(peft model with random LoRA weights, packed batch, TRL's padded batch of the same ids)."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("pref-trl")
    data = tmp / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS)
    )
    cfg = Config.model_validate(
        {
            "model": {"path": str(tiny_model_dir)},
            "data": {"files": [str(data)], "cache_dir": str(tmp / "cache")},
            "preference": {},
        }
    )
    dataset = build_preference_dataset(cfg, smollm_tokenizer, progress=False)
    assert len(dataset) == 1  # all three pairs packed into one row
    packed = dataset.collate([dataset[0]])

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lora)
    # TRL keeps a copy of an adapter it is given as its reference ("ref"): give it the fresh
    # one (B = 0, the base model), then move the trained adapter away from it
    trainer = _dpo_trainer(model, tmp, smollm_tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.default" in name:
                param.normal_(std=0.05)

    docs = [dataset.document(d) for d in range(dataset.num_documents)]
    order = list(range(0, len(docs), 2)) + list(range(1, len(docs), 2))  # chosen..., rejected...
    width = max(len(ids) for ids, _ in docs)
    pad = smollm_tokenizer.pad_token_id
    input_ids = torch.full((len(docs), width), pad, dtype=torch.long)
    labels = torch.full((len(docs), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(docs), width), dtype=torch.long)
    for row, d in enumerate(order):
        ids, lab = docs[d]
        input_ids[row, : len(ids)] = torch.from_numpy(ids.astype("int64"))
        labels[row, : len(ids)] = torch.from_numpy(lab.astype("int64"))
        attention_mask[row, : len(ids)] = 1
    padded = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": (labels != -100).long(),
        "labels": labels,
    }
    return model, packed, padded, trainer


def _ours(model, packed, **pref):
    objective = PreferenceObjective(PreferenceConfig(**pref), AdapterDisabledReference(model))
    model.zero_grad()
    loss, _ = objective(model, packed, objective.denominators([packed]))
    loss.backward()
    return loss.detach(), _grads(model)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0].detach().float(), **LOSS_TOL)
    for name, grad in ours[1].items():
        atol = GRAD_REL * float(grad.abs().max())
        torch.testing.assert_close(
            grad, theirs[1][name], rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )


def _dpo_trainer(model, tmp, tokenizer):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp / "trl-out"), report_to=[], use_cpu=True, bf16=False)
    one = Dataset.from_list([{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    return DPOTrainer(model=model, args=args, train_dataset=one, processing_class=tokenizer)


def _trl_dpo(trainer, padded, loss_type: str, beta: float):
    trainer.beta, trainer.loss_types, trainer.loss_weights = beta, [loss_type], [1.0]
    inputs = {k: v for k, v in padded.items() if k != "labels"}
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs, False)
    loss.backward()
    return loss, _grads(trainer.model)


@pytest.mark.parametrize(
    ("loss", "trl_loss", "beta"), [("dpo", "sigmoid", 0.1), ("ipo", "ipo", 0.5)]
)
def test_dpo_and_ipo_equal_trl_dpo_trainer(setup, loss, trl_loss, beta):
    model, packed, padded, trainer = setup
    assert "ref" in model.peft_config  # TRL's reference: the adapter as it was given (B = 0)
    ours = _ours(model, packed, loss=loss, beta=beta)
    theirs = _trl_dpo(trainer, padded, trl_loss, beta)
    assert ours[0] > 0.01  # policy and reference differ: not the trivial log 2 / 1/(2b)^2
    _assert_same(ours, theirs)


def _trl_logps(model, padded, average: bool, reference: bool = False):
    """TRL's own per-sequence log-probs (get_batch_logps) of the padded batch."""
    from trl.experimental.cpo import CPOTrainer

    kwargs = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
    if reference:
        with torch.no_grad(), model.disable_adapter():
            logits = model(**kwargs).logits
    else:
        logits = model(**kwargs).logits
    logps = CPOTrainer.get_batch_logps(logits, padded["labels"], average_log_prob=average)
    return logps.chunk(2), logits


def _fake_trainer(**attrs):
    """The attributes TRL's loss methods read from their trainer."""
    return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), **attrs)


def test_conservative_dpo_label_smoothing_equals_trl_cpo_sigmoid(setup):
    # TRL 1.16's DPOTrainer sigmoid loss has no label smoothing; its CPO sigmoid loss is the
    # conservative-DPO formula on whatever log-ratios it gets: give it pi / pi_ref ratios
    from trl.experimental.cpo import CPOTrainer

    model, packed, padded, _ = setup
    ours = _ours(model, packed, loss="dpo", beta=0.2, label_smoothing=0.2)
    model.zero_grad()
    (chosen, rejected), _ = _trl_logps(model, padded, average=False)
    (ref_chosen, ref_rejected), _ = _trl_logps(model, padded, average=False, reference=True)
    fake = _fake_trainer(alpha=0.0, beta=0.2, label_smoothing=0.2, loss_type="sigmoid")
    losses, _, _ = CPOTrainer.cpo_loss(fake, chosen - ref_chosen, rejected - ref_rejected)
    loss = losses.mean()
    loss.backward()
    _assert_same(ours, (loss, _grads(model)))


def test_simpo_equals_trl_cpo_trainer_simpo(setup):
    from trl.experimental.cpo import CPOTrainer

    model, packed, padded, _ = setup
    ours = _ours(model, packed, loss="simpo", beta=2.0, gamma=0.8, label_smoothing=0.1)
    model.zero_grad()
    (chosen, rejected), _ = _trl_logps(model, padded, average=True)  # as CPOTrainer for simpo
    fake = _fake_trainer(
        alpha=0.0, beta=2.0, simpo_gamma=0.8, label_smoothing=0.1, loss_type="simpo"
    )
    losses, _, _ = CPOTrainer.cpo_loss(fake, chosen, rejected)
    loss = losses.mean()
    loss.backward()
    _assert_same(ours, (loss, _grads(model)))


def test_orpo_equals_trl_odds_ratio_loss_plus_answer_nll(setup):
    # TRL's ORPOTrainer takes its NLL over prompt + answer; tunesmith over the answer only
    # (as its SFT), so the NLL term here is the answer-token cross-entropy.
    from trl.experimental.orpo import ORPOTrainer

    model, packed, padded, _ = setup
    ours = _ours(model, packed, loss="orpo", beta=0.25)
    model.zero_grad()
    (chosen, rejected), logits = _trl_logps(model, padded, average=True)
    fake = _fake_trainer(beta=0.25)
    odds, _, _, _, _ = ORPOTrainer.odds_ratio_loss(fake, chosen, rejected)
    half = len(PAIRS)
    nll = F.cross_entropy(
        logits[:half, :-1].flatten(0, 1), padded["labels"][:half, 1:].flatten(), ignore_index=-100
    )
    loss = nll - odds.mean()
    loss.backward()
    _assert_same(ours, (loss, _grads(model)))
