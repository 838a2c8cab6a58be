"""optimize_for_training: what can be checked without a GPU (the plan, the fallbacks, the helpers)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.config.schema import Config
from tunesmith.model import fast


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def make_cfg(**model) -> Config:
    return Config.model_validate({"model": model})


def test_on_cpu_only_packed_attention_changes_and_logits_stay():
    model = tiny_llama()
    x = torch.randint(0, 128, (2, 12))
    before = model(input_ids=x).logits
    dtypes = {name: p.dtype for name, p in model.named_parameters()}

    out = fast.optimize_for_training(model, make_cfg(use_liger=True))

    assert out is model
    assert model.config._attn_implementation == fast.VARLEN
    assert "forward" not in vars(model)
    assert {name: p.dtype for name, p in model.named_parameters()} == dtypes
    torch.testing.assert_close(model(input_ids=x).logits, before)


def test_plan_off_cuda_is_per_document_attention_and_trained_logits_only():
    assert fast.plan_for(
        make_cfg(), "cpu", liger_available=True, varlen_available=True
    ) == fast.Plan(attention=fast.VARLEN, trained_logits_only=True)
    unpacked = Config.model_validate({"data": {"pack_to_max_length": False}})
    assert fast.plan_for(unpacked, "cpu", True, True) == fast.Plan(trained_logits_only=True)


@pytest.mark.parametrize("tied", [False, True])
def test_trained_logits_only_keeps_the_loss_and_the_gradients(tied):
    """The head on trained positions only: same loss and grads as over every position, also
    with a row that has no trained token and tied embeddings."""
    from peft import LoraConfig, get_peft_model

    x = torch.randint(0, 128, (3, 12))
    labels = x.clone()
    labels[0, :5] = -100  # a prompt
    labels[1, :] = -100  # nothing trained in this row
    labels[2, 3:7] = -100
    pos = torch.tensor([list(range(12)), list(range(6)) * 2, list(range(4)) + list(range(8))])
    n_items = (labels[:, 1:] != -100).sum()
    results = []
    for plan in (fast.Plan(), fast.Plan(trained_logits_only=True)):
        torch.manual_seed(3)
        model = tiny_llama(seed=4)
        if tied:
            model.config.tie_word_embeddings = True
            model.tie_weights()
            assert model.lm_head.weight is model.model.embed_tokens.weight
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
        model = get_peft_model(model, lora).train()
        batch = {"input_ids": x, "labels": labels, "position_ids": pos}
        head = fast.head_inputs(batch, plan)
        loss = model(**batch, use_cache=False, num_items_in_batch=n_items, **head).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads, head))
    (full_loss, full_grads, none), (loss, grads, head) = results
    assert none == {} and head["logits_to_keep"].sum() == n_items == head["shift_labels"].numel()
    torch.testing.assert_close(loss, full_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)


def test_trained_logits_only_is_off_for_a_model_without_logits_to_keep():
    class NoMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, labels=None):
            return input_ids

    assert fast.training_plan(NoMask(), make_cfg()).trained_logits_only is False
    assert fast.training_plan(tiny_llama(), make_cfg()).trained_logits_only is True


def test_per_document_attention_on_cpu_equals_the_masked_row():
    """A packed row run one document at a time gives the logits and grads of SDPA's block mask."""
    x = torch.randint(0, 128, (2, 15))
    pos = torch.tensor([list(range(5)) + list(range(7)) + list(range(3)), list(range(15))])
    _assert_varlen_equals_block_mask(x, pos, seed=2)


def _assert_varlen_equals_block_mask(x, pos, seed):
    """tunesmith's packed attention gives the loss and every grad of SDPA's block mask."""
    reference = tiny_llama(seed=seed).train()
    ref_loss = reference(input_ids=x, position_ids=pos, labels=x, use_cache=False).loss
    ref_loss.backward()

    model = tiny_llama(seed=seed).train()
    fast.register_varlen_attention()
    model.set_attn_implementation(fast.VARLEN)
    loss = model(input_ids=x, position_ids=pos, labels=x, use_cache=False).loss
    loss.backward()

    torch.testing.assert_close(loss, ref_loss)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_plan_on_cuda_uses_liger_varlen_and_compute_dtype():
    plan = fast.plan_for(
        make_cfg(dtype="bf16"), "cuda", liger_available=True, varlen_available=True
    )
    assert plan == fast.Plan(
        cast_frozen_to=torch.bfloat16,
        liger=True,
        attention=fast.VARLEN,
        lora_inputs_in_autocast=True,
    )
    no_liger = fast.plan_for(make_cfg(use_liger=False), "cuda", True, True)
    assert no_liger.trained_logits_only is True  # Liger's fused loss builds no logits anyway


def test_plan_without_liger_installed_falls_back_to_plain_kernels():
    plan = fast.plan_for(
        make_cfg(use_liger=True), "cuda", liger_available=False, varlen_available=True
    )
    assert plan.liger is False
    assert plan.attention == fast.VARLEN


def test_plan_honours_use_liger_false():
    plan = fast.plan_for(
        make_cfg(use_liger=False), "cuda", liger_available=True, varlen_available=True
    )
    assert plan.liger is False


def test_plan_keeps_an_explicit_attention_choice():
    cfg = make_cfg(attn_implementation="sdpa")
    assert fast.plan_for(cfg, "cuda", True, True).attention is None


def test_plan_keeps_sdpa_for_padded_batches():
    cfg = Config.model_validate({"data": {"pack_to_max_length": False}})
    assert fast.plan_for(cfg, "cuda", True, True).attention is None


def test_plan_without_varlen_kernel_keeps_sdpa():
    assert fast.plan_for(make_cfg(), "cuda", True, varlen_available=False).attention is None


def test_plan_for_fp32_model_casts_nothing():
    assert fast.plan_for(make_cfg(dtype="fp32"), "cuda", True, True).cast_frozen_to is None


def test_cast_frozen_float32_casts_frozen_weights_and_keeps_trainable_ones():
    model = tiny_llama()
    for param in model.parameters():
        param.requires_grad_(False)
    trainable = model.model.layers[0].self_attn.q_proj.weight
    trainable.requires_grad_(True)

    cast = fast.cast_frozen_float32(model, torch.bfloat16)

    assert cast == sum(1 for _ in model.parameters()) - 1
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert trainable.dtype == torch.float32
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_unwrap_returns_the_model_inside_a_peft_model():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert fast.unwrap(peft_model) is model
    assert fast.unwrap(model) is model


def test_cu_seqlens_from_positions_restarting_per_document():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    offsets, longest = fast.cu_seqlens(positions)
    assert offsets.tolist() == [0, 3, 5, 10, 16, 20]
    assert offsets.dtype == torch.int32
    assert longest == 6


@pytest.mark.parametrize("padded", [False, True])
def test_varlen_attention_off_cuda_gives_sdpa_logits(padded):
    model = tiny_llama()
    x = torch.randint(0, 128, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    if padded:
        mask[1, :4] = 0
    expected = model(input_ids=x, attention_mask=mask).logits

    fast.register_varlen_attention()
    model.set_attn_implementation(fast.VARLEN)
    got = model(input_ids=x, attention_mask=mask).logits

    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep])


def test_varlen_attention_off_cuda_generates_like_sdpa():
    model = tiny_llama(seed=1)
    prompt = torch.randint(0, 128, (1, 8))
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False)

    fast.register_varlen_attention()
    model.set_attn_implementation(fast.VARLEN)

    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), expected)


def _loss_and_grads(model, x):
    model.train()
    model.zero_grad()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_checkpoint_layers_keeps_only_the_first_layers_checkpointed():
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = Config.model_validate({"train": {"gradient_checkpointing": True, "checkpoint_layers": 1}})

    fast.optimize_for_training(model, cfg)

    flags = [layer.gradient_checkpointing for layer in model.model.layers]
    assert flags == [True, False]


def test_checkpoint_layers_leave_the_gradients_unchanged():
    x = torch.randint(0, 128, (2, 16))
    full = tiny_llama()
    full.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    expected_loss, expected = _loss_and_grads(full, x)

    partial = tiny_llama()
    partial.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert fast.limit_checkpointing(partial, 1) == 1
    loss, grads = _loss_and_grads(partial, x)

    torch.testing.assert_close(loss, expected_loss)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def _bf16_lora_model():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama().to(torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    peft_model.eval()
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # non-zero B, so the adapter changes the output
            torch.nn.init.normal_(param, std=0.02)
    return peft_model


def _lora_a_input_dtypes(model, x) -> set:
    seen = set()
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.add(args[0].dtype))
        for name, m in model.named_modules()
        if name.endswith("lora_A.default")
    ]
    out = model(input_ids=x).logits
    for hook in hooks:
        hook.remove()
    return seen, out


LORA_UNCAST = fast.Plan(lora_inputs_in_autocast=True)


def test_lora_inputs_stay_bf16_under_autocast_with_the_same_output():
    model = _bf16_lora_model()
    x = torch.randint(0, 128, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before_dtypes, before = _lora_a_input_dtypes(model, x)
        with fast.lora_inputs_uncast(model, LORA_UNCAST):
            after_dtypes, after = _lora_a_input_dtypes(model, x)

    assert before_dtypes == {torch.float32}
    assert after_dtypes == {torch.bfloat16}
    torch.testing.assert_close(after, before)


def test_lora_inputs_are_cast_again_after_the_step():
    model = _bf16_lora_model()
    x = torch.randint(0, 128, (2, 8))
    _, before = _lora_a_input_dtypes(model, x)

    with fast.lora_inputs_uncast(model, LORA_UNCAST):
        pass
    dtypes, after = _lora_a_input_dtypes(model, x)

    assert dtypes == {torch.float32}  # the adapter weights' dtype: no dtype mismatch in eval
    assert torch.equal(after, before)


def test_lora_inputs_keep_the_cast_when_the_plan_says_so():
    model = _bf16_lora_model()
    x = torch.randint(0, 128, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16), fast.lora_inputs_uncast(model, fast.Plan()):
        dtypes, _ = _lora_a_input_dtypes(model, x)
    assert dtypes == {torch.float32}


def test_plan_keeps_lora_inputs_in_autocast_only_for_lora_with_mixed_precision():
    assert fast.plan_for(make_cfg(), "cuda", True, True).lora_inputs_in_autocast is True
    no_amp = Config.model_validate({"train": {"mixed_precision": "no"}})
    assert fast.plan_for(no_amp, "cuda", True, True).lora_inputs_in_autocast is False
    dora = Config.model_validate({"lora": {"use_dora": True}})
    assert fast.plan_for(dora, "cuda", True, True).lora_inputs_in_autocast is False


def test_liger_stays_off_under_weight_sharding_engines():
    cfg = make_cfg(use_liger=True)
    assert fast.plan_for(cfg, "cuda", liger_available=True, varlen_available=True).liger
    sharded = fast.plan_for(cfg, "cuda", True, True, sharded_weights=True)
    assert not sharded.liger


def test_document_groups_share_a_call_only_within_the_padding_bound():
    # 90..52: one call (padded work 7 x 90^2 is 1.6x the documents' own); the short ones are
    # not all padded to the 400-token one (at most one fits the 2x bound beside it)
    assert fast.document_groups([52, 61, 70, 75, 80, 88, 90]) == [[6, 5, 4, 3, 2, 1, 0]]
    groups = fast.document_groups([10] * 8 + [400] + [3])
    assert groups[0][0] == 8 and len(groups[0]) == 2
    assert sorted(i for g in groups for i in g) == list(range(10))
    for group in groups:
        longest = max(10 if i < 8 else 400 if i == 8 else 3 for i in group)
        work = sum((10 if i < 8 else 400 if i == 8 else 3) ** 2 for i in group)
        assert len(group) * longest**2 <= 2 * work


def test_document_batches_gather_every_token_once_and_scatter_it_back():
    offsets = [0, 5, 12, 15, 30, 31]  # lengths 5, 7, 3, 15, 1: several groups, a 1-token document
    plan = fast.document_batches(offsets)
    tokens = torch.arange(31.0)
    padded = torch.cat([torch.cat([tokens, torch.tensor([-1.0])])[i] for i, _, _ in plan.gathers])
    torch.testing.assert_close(padded[plan.scatter], tokens)
    assert (padded == -1).sum() == sum(d * m for _, d, m in plan.gathers) - 31


@pytest.mark.parametrize("lengths", [[5, 7, 3, 15], [1, 2, 30, 4, 4, 4, 4, 1], [40]])
def test_documents_as_a_batch_give_the_masked_rows_loss_and_grads(lengths):
    """Documents of mixed lengths (several padded groups) in two rows: the loss and every
    gradient of SDPA's block mask over the packed rows."""
    pos = torch.cat([torch.arange(n) for n in lengths])
    pos = torch.stack([pos, torch.cat([torch.arange(len(pos) - 3), torch.arange(3)])])
    x = torch.randint(0, 128, pos.shape)
    _assert_varlen_equals_block_mask(x, pos, seed=3)
